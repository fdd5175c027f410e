"""Training objectives: denoising regression in any parameterization, conditional flow
matching with couplings and bridges, and classifier-free-guidance condition dropout.

Notation (t = 0 noise, t = 1 data): ``x_t = alpha x1 + sigma x0``, ``SNR = alpha^2/sigma^2``,
EDM noise level ``sigma_edm = sigma / alpha``.

Weightings are defined on the **data-space** error, as in Hang et al. 2023 (Min-SNR) and
Kingma et al. 2021 (VDM): ``L = w_data(t) ||x1_hat - x1||^2``. For fixed ``(x_t, t)`` every
prediction kind Q is affine in x1_hat, so ``||Q_hat - Q||^2 = c_Q(t)^2 ||x1_hat - x1||^2``
with

    c_data = 1,  c_noise = alpha/sigma,  c_velocity = alpha' - sigma' alpha/sigma,
    c_v = -(alpha^2 + sigma^2)/sigma,  c_score = alpha/sigma^2,

and the loss measured in space Q uses ``w_Q = w_data / c_Q^2``. Hence

- ``snr``:     w_data = SNR  (plain noise-prediction MSE, Ho et al. 2020)
- ``min_snr``: w_data = min(SNR, gamma) (Hang et al. 2023, eq. 7): for noise prediction
  ``w_noise = min(SNR, gamma)/SNR``; for v prediction on a VP path
  ``w_v = min(SNR, gamma)/(SNR + 1)``; for velocity ``min(SNR, gamma)/c_velocity^2``
- ``edm``:     w_data = (sigma_edm^2 + sigma_d^2)/(sigma_edm sigma_d)^2 (Karras et al. 2022,
  Table 1, lambda(sigma))
- ``truncated_snr``: w_data = max(SNR, 1) (Salimans & Ho 2022)
- ``sigmoid``: w_data = SNR sigmoid(b - log SNR) (Kingma & Gao 2023, eq. 24 form)
- ``uniform``: plain MSE in the measured space (no conversion)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from toolkit import coupling as coupling_mod
from toolkit import paths as paths_mod
from toolkit import timesteps as timesteps_mod
from toolkit.param import check_prediction, convert, from_data_noise
from toolkit.paths.base import GaussianPath, expand_like, tiny
from toolkit.registry import unknown_name_error

WEIGHTINGS = ("uniform", "snr", "min_snr", "edm", "truncated_snr", "sigmoid")


@dataclass
class LossOutput:
    """A training loss and its parts (all detached except ``loss`` and ``per_sample``)."""

    loss: Tensor  # () scalar
    per_sample: Tensor  # (B,)
    t: Tensor  # (B,) or (B, L)
    x_t: Tensor
    target: Tensor  # in the measured space
    pred: Tensor  # in the measured space
    weight: Tensor  # (B,) or (B, L)


def _lam(path: GaussianPath, t: Tensor) -> Tensor:
    return path.log_snr(t).clamp(-80.0, 80.0)  # float64 safe


def space_coef(path: GaussianPath, t: Tensor, space: str) -> Tensor:
    """``c_Q(t)`` with ``||Q_hat - Q|| = |c_Q| ||x1_hat - x1||`` at fixed ``(x_t, t)``."""
    space = check_prediction(space)
    t = torch.as_tensor(t, dtype=torch.float64)
    a, s = path.alpha(t), path.sigma(t).clamp_min(tiny(t.dtype))
    if space == "data":
        return torch.ones_like(t)
    if space == "noise":
        return a / s
    if space == "velocity":
        return path.d_alpha(t) - path.d_sigma(t) * a / s
    if space == "v":
        return -(a * a + s * s) / s
    return a / (s * s)  # score


def data_weight(
    path: GaussianPath, t: Tensor, weighting: str, gamma: float = 5.0,
    sigma_data: float = 0.5, bias: float = 0.0,
) -> Tensor:
    """Weight ``w_data(t)`` on the data-space MSE for a named weighting (float64)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    lam = _lam(path, t)
    snr = torch.exp(lam)
    if weighting == "snr":
        return snr
    if weighting == "min_snr":
        return snr.clamp(max=gamma)  # Hang et al. 2023, eq. 7
    if weighting == "truncated_snr":
        return snr.clamp(min=1.0)
    if weighting == "edm":
        sig2 = torch.exp(-lam)  # sigma_edm^2
        return (sig2 + sigma_data**2) / (sig2 * sigma_data**2)  # Karras et al. 2022, Table 1
    if weighting == "sigmoid":
        return snr * torch.sigmoid(bias - lam)
    raise unknown_name_error("weighting", weighting, WEIGHTINGS)


def loss_weight(
    path: GaussianPath, t: Tensor, weighting: str, space: str, **kw: float
) -> Tensor:
    """Weight on the squared error measured in ``space``: ``w_data / c_space^2``."""
    if weighting == "uniform":
        return torch.ones_like(torch.as_tensor(t, dtype=torch.float64))
    c = space_coef(path, t, space)
    return data_weight(path, t, weighting, **kw) / (c * c).clamp_min(1e-300)


def _reduce(err: Tensor, w: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Weighted masked mean: (scalar over all valid elements, per-sample (B,))."""
    err = err * expand_like(w.to(err.dtype), err)
    if mask is None:
        m = torch.ones_like(err)
    else:
        m = expand_like(mask.to(err.dtype), err).expand_as(err)
    dims = tuple(range(1, err.ndim))
    num, cnt = (err * m).sum(dims), m.sum(dims)
    per_sample = num / cnt.clamp_min(1.0)
    return num.sum() / cnt.sum().clamp_min(1.0), per_sample


def _draw_t(
    t: Tensor | None, t_sampler: Any, x1: Tensor, per_token: bool,
    generator: torch.Generator | None,
) -> Tensor:
    if t is not None:
        return torch.as_tensor(t, dtype=x1.dtype, device=x1.device)
    shape = tuple(x1.shape[:2]) if per_token else (x1.shape[0],)
    sampler = timesteps_mod.get(t_sampler)
    return sampler(shape, generator=generator).to(device=x1.device, dtype=x1.dtype)


def regression_loss(
    model: Callable[..., Tensor],
    x1: Tensor,
    path: str | GaussianPath = "vp",
    prediction: str = "noise",
    *,
    x0: Tensor | None = None,
    t: Tensor | None = None,
    t_sampler: str | Callable = "uniform",
    per_token: bool = False,
    weighting: str = "uniform",
    loss_space: str | None = None,
    cond: dict[str, Any] | None = None,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    gamma: float = 5.0,
    sigma_data: float = 0.5,
    sigmoid_bias: float = 0.0,
) -> LossOutput:
    """Denoising regression of the model's output against the exact conditional target.

    ``x_t = alpha x1 + sigma x0``; the target of kind Q is ``from_data_noise(x1, x0)``
    (velocity: ``alpha' x1 + sigma' x0``, Lipman et al. 2023; score: ``-x0/sigma``,
    denoising score matching, Vincent 2011 / Song et al. 2021). The network output of kind
    ``prediction`` is converted exactly to ``loss_space`` before the squared error.

    Args:
        model: ``model(x_t, t, **cond) -> Tensor`` shaped like ``x1``.
        x1: data ``(B, ...)``. path: path name or object. prediction: the model's kind.
        x0: noise (default ``randn``). t: times ``(B,)`` / ``(B, L)`` (default: drawn).
        t_sampler: name or sampler from :mod:`toolkit.timesteps`.
        per_token: draw ``t`` of shape ``(B, L)`` (``L = x1.shape[1]``).
        weighting: one of ``uniform | snr | min_snr | edm | truncated_snr | sigmoid``.
        loss_space: the kind in which the error is measured (default: ``prediction``).
        cond: keyword conditions for the model. mask: ``(B, ...)`` 1 = valid element.
        generator: RNG for t and x0. gamma: Min-SNR gamma. sigma_data: EDM sigma_d.
        sigmoid_bias: bias b of the sigmoid weighting.

    Returns:
        :class:`LossOutput`; ``loss`` averages over valid elements.
    """
    path = paths_mod.get(path)
    prediction = check_prediction(prediction)
    space = check_prediction(loss_space or prediction)
    if weighting not in WEIGHTINGS:
        raise unknown_name_error("weighting", weighting, WEIGHTINGS)
    if x0 is None:
        x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype).to(x1.device)
    if x0.shape != x1.shape:
        raise ValueError(f"x0 shape {tuple(x0.shape)} != x1 shape {tuple(x1.shape)}")
    t = _draw_t(t, t_sampler, x1, per_token, generator)
    if t.shape != x1.shape[: t.ndim] or t.ndim == 0:
        raise ValueError(f"t of shape {tuple(t.shape)} does not match x1 {tuple(x1.shape)}")
    x_t = path.sample_xt(x1, x0, t)
    out = model(x_t, t, **(cond or {}))
    if out.shape != x1.shape:
        raise ValueError(f"model output {tuple(out.shape)} != data shape {tuple(x1.shape)}")
    pred = convert(out, x_t, t, path, prediction, space)
    if space == "velocity":
        target = path.target_velocity(x1, x0, t)
    else:
        target = from_data_noise(x1, x0, x_t, t, path, space)
    w = loss_weight(path, t, weighting, space, gamma=gamma, sigma_data=sigma_data,
                    bias=sigmoid_bias).to(x1.dtype)
    loss, per_sample = _reduce((pred - target.detach()) ** 2, w, mask)
    return LossOutput(loss, per_sample, t, x_t.detach(), target.detach(), pred.detach(), w)


def bridge_xt_ut(
    x0: Tensor, x1: Tensor, t: Tensor, path: GaussianPath, bridge: str | None,
    sigma: float, z: Tensor | None = None, generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample ``x_t`` and the conditional velocity ``u_t`` of a (possibly noisy) bridge.

    ``mu_t = alpha x1 + sigma_t x0`` from ``path`` plus bridge noise ``b(t) z``:
    ``constant`` b = sigma (torchcfm's I-/OT-CFM with sigma > 0, Tong et al. 2024, eq. 14),
    ``brownian`` b = sigma sqrt(t (1 - t)) (SB-CFM, Tong et al. 2024). The target is
    ``u_t = mu_t' + b'(t) z`` (= ``mu_t' + (b'/b)(x_t - mu_t)``, their eq. 15 / 21).
    """
    mu = path.sample_xt(x1, x0, t)
    u = path.target_velocity(x1, x0, t)
    if bridge is None or sigma == 0.0:
        return mu, u
    if z is None:
        z = torch.randn(x1.shape, generator=generator, dtype=x1.dtype).to(x1.device)
    t64 = t.to(torch.float64)
    if bridge == "constant":
        b, db = torch.full_like(t64, sigma), torch.zeros_like(t64)
    elif bridge == "brownian":
        tt = (t64 * (1.0 - t64)).clamp_min(tiny(torch.float64))
        b = sigma * torch.sqrt(tt)
        db = sigma * (1.0 - 2.0 * t64) / (2.0 * torch.sqrt(tt))  # d/dt sigma sqrt(t(1-t))
    else:
        raise unknown_name_error("bridge", bridge, ("constant", "brownian"))
    b, db = expand_like(b.to(x1.dtype), x1), expand_like(db.to(x1.dtype), x1)
    return mu + b * z, u + db * z


def cfm_loss(
    model: Callable[..., Tensor],
    x1: Tensor,
    x0: Tensor | None = None,
    *,
    path: str | GaussianPath | None = None,
    coupling: str | coupling_mod.Coupling | None = None,
    t_sampler: str | Callable = "uniform",
    t: Tensor | None = None,
    per_token: bool = False,
    cond: dict[str, Any] | None = None,
    labels: str | Tensor | None = None,
    mask: Tensor | None = None,
    bridge: str | None = None,
    bridge_sigma: float = 0.0,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """Conditional flow matching (Lipman et al. 2023; Tong et al. 2024): regress the
    velocity model on ``u_t(x | x0, x1)`` for coupled pairs ``(x0, x1) ~ pi``.

    ``L = E_{t, (x0, x1) ~ pi} || v(x_t, t) - u_t ||^2`` with ``x_t = alpha x1 + sigma_t x0``
    (default path ``LinearPath(0)``: ``x_t = t x1 + (1 - t) x0``, ``u_t = x1 - x0``).

    Args:
        model: velocity model ``model(x_t, t, **cond)``. x1: data ``(B, ...)``.
        x0: source samples (default ``randn_like``); pairs ``(x0[k], x1[k])`` are kept when
            ``coupling`` is None (e.g. reflow pairs).
        path: path name/object (default linear). coupling: name or :mod:`toolkit.coupling`
            object; a :class:`~toolkit.coupling.SchrodingerBridge` also sets the bridge.
        t_sampler / t / per_token: as in :func:`regression_loss`.
        cond: model conditions, re-indexed with x1 by the coupling; ``mask`` likewise.
        labels: per-sample labels (or the key of ``cond`` holding them) for
            ``within_labels`` couplings.
        bridge: ``None | "constant" | "brownian"``; bridge_sigma: its sigma.
        generator: RNG for x0, t, bridge noise and plan sampling.
    """
    path = paths_mod.LinearPath(0.0) if path is None else paths_mod.get(path)
    if x0 is None:
        x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype).to(x1.device)
    if isinstance(labels, str):
        if not cond or labels not in cond:
            raise ValueError(f"labels key {labels!r} not found in cond")
        labels = cond[labels]
    if coupling is not None:
        cpl = coupling_mod.get(coupling)
        paired = cpl(x0, x1, labels=labels, generator=generator)
        x0, x1 = paired.x0, paired.x1
        cond, mask = paired.take(cond), paired.take(mask)
        if isinstance(cpl, coupling_mod.SchrodingerBridge) and bridge is None:
            bridge, bridge_sigma = cpl.bridge, cpl.bridge_sigma
    t = _draw_t(t, t_sampler, x1, per_token, generator)
    x_t, u = bridge_xt_ut(x0, x1, t, path, bridge, bridge_sigma, generator=generator)
    out = model(x_t, t, **(cond or {}))
    if out.shape != x1.shape:
        raise ValueError(f"model output {tuple(out.shape)} != data shape {tuple(x1.shape)}")
    w = torch.ones_like(t)
    loss, per_sample = _reduce((out - u.detach()) ** 2, w, mask)
    return LossOutput(loss, per_sample, t, x_t.detach(), u.detach(), out.detach(), w)


def drop_condition(
    cond: Tensor | dict[str, Tensor],
    p: float,
    null: Any,
    generator: torch.Generator | None = None,
    mask: Tensor | None = None,
    exact: bool = False,
) -> tuple[Tensor | dict[str, Tensor], Tensor]:
    """Classifier-free guidance training: replace each sample's condition by ``null`` with
    probability ``p`` (Ho & Salimans 2022).

    Args:
        cond: ``(B, ...)`` tensor (class indices, embeddings) or a dict of such tensors
            (one mask is shared by all entries).
        p: drop probability in [0, 1].
        null: the null condition broadcastable to one sample (a null class index, a zero
            vector, or a learned ``nn.Parameter`` whose gradient flows); a dict for dicts.
        generator: RNG. mask: a given ``(B,)`` bool mask (then ``p`` is unused).
        exact: drop exactly ``round(p B)`` samples (random subset) instead of Bernoulli.

    Returns:
        ``(new_cond, dropped)`` with ``dropped`` a ``(B,)`` bool tensor (True = replaced).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability must be in [0, 1], got {p}")
    first = next(iter(cond.values())) if isinstance(cond, dict) else cond
    n = first.shape[0]
    if mask is None:
        if exact:
            mask = torch.zeros(n, dtype=torch.bool)
            mask[torch.randperm(n, generator=generator)[: round(p * n)]] = True
        else:
            mask = torch.rand(n, generator=generator) < p
    mask = mask.to(first.device)
    if mask.shape != (n,):
        raise ValueError(f"mask must have shape ({n},), got {tuple(mask.shape)}")

    def one(c: Tensor, nl: Any) -> Tensor:
        nl = torch.as_tensor(nl, device=c.device)
        if not nl.is_floating_point():
            nl = nl.to(c.dtype)
        m = mask.reshape(n, *([1] * (c.ndim - 1)))  # (B, 1, ...)
        return torch.where(m, nl.expand(c.shape[1:]), c)

    if isinstance(cond, dict):
        if not isinstance(null, dict) or set(null) != set(cond):
            raise ValueError(f"null must be a dict with keys {sorted(cond)}")
        return {k: one(v, null[k]) for k, v in cond.items()}, mask
    return one(cond, null), mask


__all__ = [
    "LossOutput", "WEIGHTINGS", "regression_loss", "cfm_loss", "bridge_xt_ut",
    "drop_condition", "space_coef", "data_weight", "loss_weight",
]
