"""Exponential integrators in log-SNR with data prediction: DDIM, DPM-Solver++ 2M/3M, UniPC.

Derivation for ANY affine path ``x_t = alpha_t x_1 + sigma_t x_0`` (t = 0 noise, t = 1 data).
With the half log-SNR ``lambda_t = log(alpha_t / sigma_t)`` (increasing in t) and the data
prediction ``x1_hat = E[x_1 | x_t]``, the probability-flow ODE ``dx/dt = alpha' x1_hat +
sigma' eps_hat`` with ``eps_hat = (x - alpha x1_hat) / sigma`` reads

    dx/dt = (sigma'/sigma) x + alpha (d lambda/dt) x1_hat,

because ``alpha' - alpha sigma'/sigma = alpha (alpha'/alpha - sigma'/sigma)``. The linear part is
solved exactly by variation of constants, ``d(x/sigma)/dt = e^lambda (d lambda/dt) x1_hat``:

    x_t = (sigma_t / sigma_s) x_s + sigma_t * int_{lambda_s}^{lambda_t} e^lambda x1_hat d lambda
                                                     # Lu et al. 2022b (DPM-Solver++), eq. 9

No variance-preserving assumption enters, so the same update serves flow, VP, VE and EDM paths.
Expanding ``x1_hat(lambda) = sum_k x1_hat^(k)(lambda_s) (lambda - lambda_s)^k / k!`` and using
``sigma_t e^{lambda_t} = alpha_t`` with ``h = lambda_t - lambda_s`` gives

    x_t = (sigma_t / sigma_s) x_s + alpha_t * sum_k c_k(h) x1_hat^(k)(lambda_s),
    c_k(h) = int_0^h e^{u - h} u^k / k! du      (c_0 = 1 - e^{-h}, c_k = h^k / k! - c_{k-1}).

DDIM (k = 0) is the first-order case; DPM-Solver++(2M/3M) estimate the derivatives from past
data predictions (multistep); UniPC adds a corrector that reuses the next model evaluation.

Ends of the grid: at a flow path's prior end ``alpha = 0`` (``lambda = -inf``, ``h = inf``) the
first-order step ``x_t = (sigma_t/sigma_s) x_s + alpha_t x1_hat`` stays exact for a constant
``x1_hat``; such points are never used for derivative estimates. A final interval onto a
zero-noise end (``sigma_t = 0``, ``h = +inf``) is necessarily first order and equals denoising,
``x_t = alpha_t x1_hat``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from toolkit.field import Denoiser, Prediction
from toolkit.registry import unknown_name_error
from toolkit.samplers.common import Callback, report
from toolkit.samplers.registry import register

__all__ = ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "phi", "schedule", "ddim_step", "randn_like"]


def phi(k: int, h: float) -> float:
    """``c_k(h) = int_0^h e^{u-h} u^k / k! du``, the weight of ``x1_hat^(k)`` in one step.

    Small ``h`` uses the series ``sum_{j>k} (-1)^{j-k-1} h^j / j!`` (no cancellation);
    ``h = +inf`` (a step onto sigma = 0 or off alpha = 0) gives ``c_0 = 1``.
    """
    if math.isinf(h):
        return 1.0 if k == 0 else math.inf
    if abs(h) < 0.5:
        term, total = h**k / math.factorial(k), 0.0
        for j in range(k + 1, k + 30):
            term *= h / j
            total += term if (j - k - 1) % 2 == 0 else -term
        return total
    c = -math.expm1(-h)
    for j in range(1, k + 1):
        c = h**j / math.factorial(j) - c
    return c


def schedule(den: Denoiser, ts: Tensor) -> tuple[list[float], list[float], list[float]]:
    """``(alpha, sigma, lambda)`` at every grid time as Python floats (float64).

    ``lambda = log(alpha / sigma)`` is half the path's log-SNR (``-inf`` where alpha = 0,
    ``+inf`` where sigma = 0).
    """
    t = torch.as_tensor(ts, dtype=torch.float64)
    path = den.path
    return path.alpha(t).tolist(), path.sigma(t).tolist(), (0.5 * path.log_snr(t)).tolist()


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x`` drawn from ``generator`` (reproducible)."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def ddim_step(
    pred: Prediction, a_next: float, s_next: float, h: float, eta: float,
    generator: torch.Generator | None,
) -> Tensor:
    """One DDIM step from ``pred``'s ``(x_t, t)`` to the next (cleaner) time.

    Generalised DDIM (Song et al. 2021, "Denoising diffusion implicit models", eq. 12) for an
    affine path, with ``e^{-h} = alpha_t sigma_next / (alpha_next sigma_t)``:

        x_next = alpha_next x1_hat + sqrt(sigma_next^2 - c^2) eps_hat + c z,
        c = eta * sigma_next * sqrt(1 - e^{-2h}).

    ``c^2`` at ``eta = 1`` is the variance of the DDPM posterior ``q(x_next | x_t, x_1)`` of the
    path (Ho et al. 2020, eq. 7, written for general alpha/sigma). ``eta = 0`` is deterministic
    and equals first-order DPM-Solver++. For ``eta > 1`` ``c`` is capped at ``sigma_next``.
    """
    x1, eps = pred.data_noise()  # (B, ...) each
    if s_next == 0.0:
        return a_next * x1
    c = min(eta * s_next * math.sqrt(-math.expm1(-2.0 * h)), s_next) if eta > 0 else 0.0
    out = a_next * x1 + math.sqrt(max(s_next * s_next - c * c, 0.0)) * eps
    if c > 0.0:
        out = out + c * randn_like(out, generator)
    return out


def _check_nonneg(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"option {name} must be a finite number >= 0, got {value!r}")
    return value


@register("ddim")
def ddim(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
    callback: Callback = None, eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021) for any affine path; ``eta = 0`` is deterministic (order 1).

    Args:
        eta: stochasticity, ``c = eta * sigma_next * sqrt(1 - e^{-2h})`` (see :func:`ddim_step`);
            1 gives ancestral DDPM sampling. Noise comes from ``generator``.
    """
    eta = _check_nonneg("eta", eta)
    alpha, sigma, lam = schedule(den, ts)
    for i in range(len(ts) - 1):
        pred = den(x, float(ts[i]))
        x = ddim_step(pred, alpha[i + 1], sigma[i + 1], lam[i + 1] - lam[i], eta, generator)
        report(callback, i, float(ts[i + 1]), x)
    return x


# -- DPM-Solver++ multistep ---------------------------------------------------------------
def _usable(lams: list[float]) -> int:
    """How many of the newest history points (newest last) have finite lambda."""
    n = 0
    for lam in reversed(lams):
        if not math.isfinite(lam):
            break
        n += 1
    return max(n, 1)


def _dpmpp_update(
    x: Tensor, s_ratio: float, a_next: float, h: float, lams: list[float], ms: list[Tensor],
    solver_type: str,
) -> Tensor:
    """DPM-Solver++ step of order ``len(ms)``; ``lams``/``ms`` newest FIRST.

    Derivatives of ``x1_hat`` in lambda at ``lambda_s = lams[0]`` come from Newton divided
    differences through the stored points: ``f01 = (m0 - m1)/(l0 - l1)``,
    ``f012 = (f01 - f12)/(l0 - l2)``, ``x1_hat' ~ f01 + (l0 - l1) f012``, ``x1_hat'' ~ 2 f012``.
    """
    out = s_ratio * x + (a_next * phi(0, h)) * ms[0]  # first order: DDIM
    if len(ms) == 1:
        return out
    f01 = (ms[0] - ms[1]) / (lams[0] - lams[1])  # (B, ...)
    if len(ms) == 2:
        # Lu et al. 2022b, Alg. 2: D = m0 + (m0 - m1) / (2 r), r = h_prev / h  ("midpoint");
        # "taylor" uses the exact weight c_1(h) of x1_hat' instead of h c_0(h) / 2.
        w = 0.5 * h * phi(0, h) if solver_type in ("midpoint", "dpmsolver") else phi(1, h)
        return out + (a_next * w) * f01
    f12 = (ms[1] - ms[2]) / (lams[1] - lams[2])
    f012 = (f01 - f12) / (lams[0] - lams[2])
    d1 = f01 + (lams[0] - lams[1]) * f012  # x1_hat'(lambda_s), error O(h^2)
    # x1_hat'' ~ 2 f012 ("taylor"). The reference DPM-Solver / diffusers 3M code weights f012
    # by c_2 alone (half the Taylor weight), which is only second order ("dpmsolver").
    w2 = 2.0 * phi(2, h) if solver_type == "taylor" else phi(2, h)
    return out + (a_next * phi(1, h)) * d1 + (a_next * w2) * f012


def _step_order(
    den: Denoiser, order: int, lams: list[float], i: int, n: int, t_next: float, cap_final: bool,
) -> int:
    """Order of step ``i``: warm-up, finite-lambda history, zero-noise end, final cap."""
    k = min(order, _usable(lams))
    if den.ends_at_data(t_next):
        return 1
    if cap_final:
        k = min(k, n - i)
    return k


def _dpmpp(
    den: Denoiser, x: Tensor, ts: Tensor, order: int, lower_order_final: bool, solver_type: str,
    callback: Callback,
) -> Tensor:
    alpha, sigma, lam = schedule(den, ts)
    n = len(ts) - 1
    hist_l: list[float] = []
    hist_m: list[Tensor] = []
    for i in range(n):
        t = float(ts[i])
        hist_l.append(lam[i])
        hist_m.append(den(x, t).data)
        hist_l, hist_m = hist_l[-order:], hist_m[-order:]
        k = _step_order(den, order, hist_l, i, n, float(ts[i + 1]), lower_order_final and n < 15)
        h = lam[i + 1] - lam[i]
        s_ratio = sigma[i + 1] / sigma[i]
        x = _dpmpp_update(x, s_ratio, alpha[i + 1], h, hist_l[::-1][:k], hist_m[::-1][:k],
                          solver_type)
        report(callback, i, float(ts[i + 1]), x)
    return x


def _check_choice(kind: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise unknown_name_error(kind, value, valid)
    return value


@register("dpmpp_2m", aliases=("dpm++2m", "dpmsolver++", "dpm_solver_pp_2m"))
def dpmpp_2m(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
    callback: Callback = None, lower_order_final: bool = True, solver_type: str = "midpoint",
) -> Tensor:
    """DPM-Solver++(2M), multistep data prediction (Lu et al. 2022b, Alg. 2). Order 2, 1 NFE/step.

    Args:
        lower_order_final: with fewer than 15 steps, take the last step at first order (as
            diffusers does). A final step onto sigma = 0 is always first order (= denoising).
        solver_type: ``"midpoint"`` (the paper's Alg. 2) or ``"taylor"`` (exact phi_2 weight;
            diffusers' ``solver_type="heun"``).
    """
    _check_choice("solver_type", solver_type, ("midpoint", "taylor"))
    return _dpmpp(den, x, ts, 2, lower_order_final, solver_type, callback)


@register("dpmpp_3m", aliases=("dpm++3m", "dpm_solver_pp_3m"))
def dpmpp_3m(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
    callback: Callback = None, lower_order_final: bool = True, solver_type: str = "taylor",
) -> Tensor:
    """DPM-Solver++(3M): third-order multistep with the exact Taylor weights ``c_1, c_2``.

    ``x_t = (sigma_t/sigma_s) x_s + alpha_t [c_0 m_0 + c_1 x1_hat' + c_2 x1_hat'']`` with the
    derivatives from the last three data predictions (Lu et al. 2022b, Sec. 4 / App. B). The
    first two steps warm up at orders 1 and 2.

    Args:
        lower_order_final: with fewer than 15 steps, the last two steps use orders 1 and 2 (as
            diffusers does). A final step onto sigma = 0 is always first order (= denoising).
        solver_type: ``"taylor"`` (order 3) or ``"dpmsolver"``: the second-difference weight of
            the reference implementations (DPM-Solver repo, diffusers), which halves the
            ``x1_hat''`` term and is only second order; kept for parity tests.
    """
    _check_choice("solver_type", solver_type, ("taylor", "dpmsolver"))
    return _dpmpp(den, x, ts, 3, lower_order_final, solver_type, callback)


# -- UniPC -----------------------------------------------------------------------------------
def _unipc_weights(rs: list[float], h: float, b_neg: float, simplified: bool) -> list[float]:
    """Solve ``sum_m a_m r_m^(k-1) = k! c_k(h) / (h^k B)`` for k = 1..len(rs).

    Zhao et al. 2023 (UniPC), eq. 8 / Alg. 2 with ``B(h)``; in our notation
    ``k! psi_k(-h) / B(-h)`` with ``psi_k = -c_k / h^k`` and ``-B = b_neg``.
    A single node uses the paper's simplified ``a = 1/2``.
    """
    p = len(rs)
    if p == 1 and simplified:
        return [0.5]
    rhs = torch.tensor(
        [math.factorial(k) * phi(k, h) / (h**k * b_neg) for k in range(1, p + 1)],
        dtype=torch.float64,
    )
    mat = torch.tensor([[r ** (k - 1) for r in rs] for k in range(1, p + 1)], dtype=torch.float64)
    return torch.linalg.solve(mat, rhs).tolist()


def _unipc_update(
    x: Tensor, s_ratio: float, a_next: float, h: float, lams: list[float], ms: list[Tensor],
    m_new: Tensor | None, variant: str,
) -> Tensor:
    """UniP-p (``m_new is None``) or UniC-p step; ``lams``/``ms`` newest first, p = len(ms).

    ``x_t = (sigma_t/sigma_s) x_s + alpha_t c_0(h) m_s + alpha_t (-B(h)) sum_m a_m D_m / r_m``
    with ``r_m = (lambda_m - lambda_s)/h``, ``D_m = m_m - m_s``; the corrector adds the node
    ``r = 1`` holding the fresh evaluation ``m_new`` at the step's end (Zhao et al. 2023, Alg. 1-2).
    """
    c0 = phi(0, h)
    out = s_ratio * x + (a_next * c0) * ms[0]
    rs = [(lam - lams[0]) / h for lam in lams[1:]]
    ds = [(m - ms[0]) / r for m, r in zip(ms[1:], rs)]
    if m_new is not None:
        rs.append(1.0)
        ds.append(m_new - ms[0])
    if not rs:
        return out
    b_neg = c0 if variant == "bh2" else h  # -B(h): bh2 B = e^{-h} - 1, bh1 B = -h
    # the predictor with one past node keeps a = 1/2 (= DPM-Solver++(2M)); so does UniC-1.
    a = _unipc_weights(rs, h, b_neg, simplified=True)
    corr = sum(w * d for w, d in zip(a, ds))
    return out + (a_next * b_neg) * corr


@register("unipc", aliases=("uni_pc",))
def unipc(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
    callback: Callback = None, order: int = 2, corrector: bool = True, variant: str = "bh2",
    lower_order_final: bool = True,
) -> Tensor:
    """UniPC (Zhao et al. 2023): UniP-p predictor + UniC-p corrector, data prediction.

    The corrector of step i reuses the model evaluation at the start of step i + 1, so the
    NFE equals the number of steps; with the corrector the order is p + 1. The last step is
    predictor only. Steps off a prior end with ``alpha = 0`` (``h = inf``) are not corrected.

    Args:
        order: predictor order p in {1, 2, 3}.
        corrector: apply UniC (``False`` gives UniP alone).
        variant: ``"bh2"`` (B(h) = e^h - 1) or ``"bh1"`` (B(h) = h).
        lower_order_final: step ``i`` of ``n`` uses order at most ``n - i`` (diffusers'
            behaviour). A final step onto sigma = 0 is always first order (= denoising).
    """
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"unipc: order must be 1, 2 or 3, got {order!r}")
    _check_choice("variant", variant, ("bh1", "bh2"))
    alpha, sigma, lam = schedule(den, ts)
    n = len(ts) - 1
    hist_l: list[float] = []
    hist_m: list[Tensor] = []
    prev: tuple[Tensor, int] | None = None  # (x at the previous node, order used there)
    for i in range(n):
        t = float(ts[i])
        m = den(x, t).data
        if corrector and prev is not None and math.isfinite(lam[i] - lam[i - 1]):
            x_s, p = prev
            x = _unipc_update(x_s, sigma[i] / sigma[i - 1], alpha[i], lam[i] - lam[i - 1],
                              hist_l[::-1][:p], hist_m[::-1][:p], m, variant)
        hist_l, hist_m = (hist_l + [lam[i]])[-order:], (hist_m + [m])[-order:]
        p = _step_order(den, order, hist_l, i, n, float(ts[i + 1]), lower_order_final)
        prev = (x, p)
        x = _unipc_update(x, sigma[i + 1] / sigma[i], alpha[i + 1], lam[i + 1] - lam[i],
                          hist_l[::-1][:p], hist_m[::-1][:p], None, variant)
        report(callback, i, float(ts[i + 1]), x)
    return x
