"""Exact log-likelihoods through the probability-flow ODE.

Along ``dx/dt = v(x, t)`` the log-density obeys the instantaneous change of variables
(Chen et al. 2018, "Neural ODEs", Thm. 1):

    d/dt log p_t(x_t) = -div v(x_t, t),

so with ``x_t`` obtained by integrating *backward* from ``x_1`` (t = 1, data) to the prior end
``t_0``,

    log p_1(x_1) = log N(x_{t_0}; 0, prior_std(t_0)^2 I) - int_{t_0}^{1} div v(x_t, t) dt.

The augmented state ``(x, l)`` with ``dl/dt = div v`` is integrated by
:func:`toolkit.odeint.odeint` from ``l(1) = 0``, giving ``l(t_0) = -int_{t_0}^1 div v dt``.
The divergence is exact (one autograd pass per dimension; fine for small D) or the
Hutchinson estimate ``E[eps^T (dv/dx) eps]`` (Grathwohl et al. 2019, FFJORD, eq. 6) with
``n_probes`` Rademacher or Gaussian probes drawn once and held fixed along the trajectory,
which keeps the estimate of the integral unbiased.

Ends of the path. If ``sigma(1) > 0`` (e.g. ``linear`` with ``sigma_min > 0``, ``ve``) the
result is the density of the path's own ``p_1`` (data convolved with ``N(0, sigma(1)^2)``),
computed exactly from t = 1. If ``sigma(1) = 0`` a velocity model is evaluated at t = 1
exactly whenever the path's velocity coefficients stay bounded there (linear, trig, subvp,
edm); otherwise (non-velocity models, whose velocity divides by sigma, and VP paths, where
``d sigma/dt`` diverges) the integration starts at ``t = 1 - t_eps`` (default ``1e-5``) and
the result is ``log p_{1 - t_eps}(x_1)``, biased by ``O(sigma(1 - t_eps)^2)`` relative to the
data density (about 1e-6 nats per unit curvature on VP with beta_min = 0.1). At the prior
end, a non-velocity model on a path with ``alpha(0) = 0`` stops at ``t_0 = 1e-3`` where its
velocity is defined; the Gaussian prior with std ``prior_std(t_0)`` then misses the signal
``alpha(t_0) x_1`` (error ``O(alpha(t_0))``); VP/VE priors are likewise approximations.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from toolkit.field import Denoiser, Model
from toolkit.odeint import odeint
from toolkit.param import check_prediction
from toolkit.paths import GaussianPath
from toolkit.paths import get as get_path
from toolkit.registry import unknown_name_error

__all__ = ["log_likelihood", "bits_per_dim", "divergence_exact", "divergence_hutchinson"]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


def divergence_exact(v: Tensor, x: Tensor) -> Tensor:
    """``sum_i d v_i / d x_i`` per sample by autograd (``v = f(x)`` built with grad), (B,)."""
    vf = v.flatten(1)  # (B, D)
    div = torch.zeros(x.shape[0], dtype=v.dtype, device=v.device)
    for i in range(vf.shape[1]):
        (g,) = torch.autograd.grad(vf[:, i].sum(), x, retain_graph=True)
        div = div + g.flatten(1)[:, i]
    return div


def divergence_hutchinson(v: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """Hutchinson estimate ``mean_k eps_k^T (dv/dx) eps_k`` with probes ``(K, B, ...)``, (B,)."""
    est = torch.zeros(x.shape[0], dtype=v.dtype, device=v.device)
    for eps in probes:
        (g,) = torch.autograd.grad((v * eps).sum(), x, retain_graph=True)  # eps^T dv/dx
        est = est + (g * eps).flatten(1).sum(1)
    return est / probes.shape[0]


def _bounded_velocity_at(path: GaussianPath, t: float) -> bool:
    """Whether alpha'(t), sigma'(t) are finite and moderate (no 1/sigma blow-up)."""
    tt = torch.tensor(t, dtype=torch.float64)
    d = torch.stack([path.d_alpha(tt), path.d_sigma(tt)])
    return bool(torch.all(torch.isfinite(d)) and d.abs().max() < 1e6)


def _time_range(
    den: Denoiser, t_eps: float | None, t_prior: float | None
) -> tuple[float, float]:
    path = den.path
    t_hi = path.t_max
    if den.ends_at_data(t_hi):
        if t_eps is None:
            exact = den.prediction == "velocity" and _bounded_velocity_at(path, t_hi)
            t_eps = 0.0 if exact else 1e-5
        t_hi = t_hi - float(t_eps)
    elif t_eps is not None:
        t_hi = t_hi - float(t_eps)
    if t_prior is None:
        t_lo = path.t_min
        alpha0 = float(path.alpha(torch.tensor(t_lo, dtype=torch.float64)))
        if den.prediction != "velocity" and alpha0 <= 0.0:
            t_lo = t_lo + 1e-3
    else:
        t_lo = float(t_prior)
    if not 0.0 <= t_lo < t_hi <= 1.0:
        raise ValueError(
            f"log_likelihood: need 0 <= t_prior < 1 - t_eps <= 1, got t_prior={t_lo}, "
            f"start {t_hi}"
        )
    return t_lo, t_hi


def log_likelihood(
    model: Model,
    x1: Tensor,
    *,
    path: str | GaussianPath = "linear",
    prediction: str = "velocity",
    cond: dict[str, Any] | None = None,
    divergence: str = "exact",
    n_probes: int = 1,
    probe: str = "rademacher",
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: int | None = None,
    t_eps: float | None = None,
    t_prior: float | None = None,
    generator: torch.Generator | None = None,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """Per-sample ``log p_1(x_1)`` in nats under the model's probability-flow ODE.

    Args:
        model: ``model(x_t, t, **cond) -> Tensor``.
        x1: data ``(B, ...)``, float32 or float64 (the result has the same dtype).
        path / prediction: the model's path and output kind.
        cond: keyword arguments for the model.
        divergence: ``exact`` (D autograd passes per evaluation) or ``hutchinson``.
        n_probes: Hutchinson probes (fixed along the trajectory).
        probe: ``rademacher`` or ``gaussian``.
        method: :func:`toolkit.odeint.odeint` method; fixed-step ones need ``steps``.
        rtol / atol: dopri5 tolerances (on x and the log-density increment).
        steps: fixed number of steps (disables adaptivity).
        t_eps: start at ``t = 1 - t_eps`` (default: 0 where exact, else 1e-5; see module doc).
        t_prior: the prior end (default ``path.t_min``, or 1e-3 where the model needs it).
        generator: RNG for the Hutchinson probes.
        info: if a dict, receives ``nfe``, ``steps``, ``rejected``, ``t_data``, ``t_prior``,
            ``prior_logp`` (B,) and ``delta_logp`` (B,) (so log p = prior_logp + delta_logp).

    Returns:
        ``(B,)`` log-likelihoods (detached).
    """
    if divergence not in DIVERGENCES:
        raise unknown_name_error("divergence", divergence, DIVERGENCES)
    if probe not in PROBES:
        raise unknown_name_error("probe", probe, PROBES)
    if isinstance(n_probes, bool) or int(n_probes) != n_probes or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}")
    if not isinstance(x1, Tensor) or x1.dtype not in (torch.float32, torch.float64):
        raise TypeError("log_likelihood: x1 must be a float32 or float64 Tensor")
    if x1.ndim < 2:
        raise ValueError(
            f"log_likelihood: x1 must be (B, ...) with data dims, got {tuple(x1.shape)}"
        )
    den = Denoiser(model, get_path(path), check_prediction(prediction), dict(cond or {}))
    t_lo, t_hi = _time_range(den, t_eps, t_prior)
    x = x1.detach()
    probes = None
    if divergence == "hutchinson":
        shape = (int(n_probes), *x.shape)
        if probe == "gaussian":
            probes = torch.randn(shape, dtype=x.dtype, generator=generator).to(x.device)
        else:
            bits = torch.randint(0, 2, shape, generator=generator).to(device=x.device)
            probes = bits.to(x.dtype) * 2 - 1

    def f(t: float, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            xg = state[0].detach().requires_grad_(True)
            v = den.velocity(xg, t)
            if probes is None:
                div = divergence_exact(v, xg)
            else:
                div = divergence_hutchinson(v, xg, probes)
        return v.detach(), div.detach()  # d/dt (x, l) = (v, div v)

    odeint_info: dict[str, Any] = {}
    delta0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    x_prior, delta = odeint(
        f, (x, delta0), t_hi, t_lo, method=method, steps=steps, rtol=rtol, atol=atol,
        info=odeint_info,
    )
    # log N(x; 0, s^2 I) = -D/2 log(2 pi s^2) - |x|^2 / (2 s^2)
    s2 = float(den.path.prior_std(torch.tensor(t_lo, dtype=torch.float64))) ** 2
    d = x[0].numel()
    sq = x_prior.flatten(1).pow(2).sum(1)
    prior = -0.5 * d * math.log(2 * math.pi * s2) - 0.5 * sq / s2
    if info is not None:
        info.update(
            nfe=den.nfe, steps=odeint_info["steps"], rejected=odeint_info["rejected"],
            t_data=t_hi, t_prior=t_lo, prior_logp=prior, delta_logp=delta,
        )
    return (prior + delta).to(x1.dtype)


def bits_per_dim(
    model: Model,
    x_uint8: Tensor,
    *,
    n_dequant: int = 1,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
    info: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Tensor:
    """Bits per dimension of 8-bit data under uniform dequantization, (B,).

    The model's density ``p_Z`` lives on ``z = (x + u) / 128 - 1`` in [-1, 1], ``u ~ U[0,1)^D``
    (Theis et al. 2016; Ho et al. 2019, Flow++, sec. 3.1). The discrete probability is bounded
    by Jensen: ``log P(x) >= E_u[log p_V(x + u)] = E_u[log p_Z(z)] + D log(2 / 256)``
    (``dz/dv = 1/128`` per dim), so

        ``bpd = -(E_u[log p_Z(z)] + D log(2 / 256)) / (D ln 2)``

    with ``E_u`` averaged over ``n_dequant`` draws: an upper bound on the true bpd.

    Args:
        model: model of data scaled to [-1, 1].
        x_uint8: integers in {0, ..., 255}, ``(B, ...)`` (any integer dtype).
        n_dequant: number of uniform noise draws per sample.
        dtype: float dtype of the computation. generator: RNG (dequantization and probes).
        info: receives ``nfe`` (summed) and ``log_p`` (B,) (mean log p_Z over the draws).
        **kwargs: passed to :func:`log_likelihood` (``path``, ``prediction``, ...).
    """
    if x_uint8.is_floating_point():
        raise TypeError("bits_per_dim expects integer pixel values in {0..255}, got floats")
    if x_uint8.min() < 0 or x_uint8.max() > 255:
        raise ValueError("bits_per_dim: pixel values must lie in {0, ..., 255}")
    if isinstance(n_dequant, bool) or int(n_dequant) != n_dequant or n_dequant < 1:
        raise ValueError(f"n_dequant must be a positive integer, got {n_dequant!r}")
    x = x_uint8.to(dtype)
    d = x[0].numel()
    total, nfe = torch.zeros(x.shape[0], dtype=dtype, device=x.device), 0
    for _ in range(int(n_dequant)):
        u = torch.rand(x.shape, dtype=dtype, generator=generator).to(x.device)
        z = (x + u) / 128.0 - 1.0
        sub: dict[str, Any] = {}
        total = total + log_likelihood(model, z, generator=generator, info=sub, **kwargs)
        nfe += sub["nfe"]
    log_pz = total / n_dequant
    if info is not None:
        info.update(nfe=nfe, log_p=log_pz)
    return -(log_pz + d * math.log(2.0 / 256.0)) / (d * math.log(2.0))
