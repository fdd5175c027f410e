"""Adams–Bashforth multistep solvers of the PF-ODE: iPNDM (Zhang & Chen 2023) and variants.

EDM coordinates. For any affine path ``x_t = alpha_t x_1 + sigma_t x_0`` put
``y = x / alpha`` and the noise level ``r = sigma / alpha``. Then ``y = x1_hat + r eps_hat``
along the probability-flow ODE and

    dy/dr = eps_hat(x_t, t)                 # Karras et al. 2022, eq. 4 (s = alpha, sigma = r)

for every path (the schedule only reparametrises r), and ``r`` runs from the prior
(``r = inf`` on flow paths) to 0 at the data. A linear multistep method integrates
``eps_hat`` over ``r`` with the polynomial through the last ``k`` evaluations:

    y_{n+1} = y_n + sum_j w_j eps_{n-j},    w_j = int_{r_n}^{r_{n+1}} L_j(r) dr,

where ``L_j`` are the Lagrange basis polynomials on ``r_n, ..., r_{n-k+1}``
(variable-step Adams–Bashforth). iPNDM (Zhang & Chen 2023, "Fast sampling of diffusion
models with exponential integrator", App. B; Zhou et al. 2024 call it iPNDM) uses the
constant-step weights ``h (1) | h (3, -1)/2 | h (23, -16, 5)/12 | h (55, -59, 37, -9)/24``
with ``h = r_{n+1} - r_n`` and a lower-order warm start instead of PNDM's Runge–Kutta
start. One network evaluation per step; the last step lands on ``r = 0`` by extrapolation,
so no evaluation at sigma = 0 is needed and no extra denoising evaluation is spent.

Numerics: since ``sum_j w_j = r_{n+1} - r_n`` and ``y_n = x1_hat_n + r_n eps_n``, the update is
written as ``y_{n+1} = x1_hat_n + r_{n+1} eps_n + sum_{j>0} w_j (eps_{n-j} - eps_n)``, which
stays finite at the prior end of flow paths (``alpha = 0``: the first step is DDIM) and
avoids the cancellation of ``x / alpha`` for tiny alpha.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from toolkit.field import Denoiser
from toolkit.registry import unknown_name_error
from toolkit.samplers.common import Callback, report
from toolkit.samplers.registry import register

__all__ = ["ipndm", "ab_weights", "IPNDM_WEIGHTS"]

# Constant-step Adams–Bashforth weights, newest first (Zhang & Chen 2023, iPNDM).
IPNDM_WEIGHTS = (
    (1.0,),
    (3.0 / 2.0, -1.0 / 2.0),
    (23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0),
    (55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0),
)
_GL_X, _GL_W = np.polynomial.legendre.leggauss(4)  # exact for degree <= 7


def ab_weights(nodes: list[float], a: float, b: float) -> list[float]:
    """``w_j = int_a^b L_j(r) dr`` for the Lagrange basis on ``nodes`` (at most 4 of them).

    Nodes are shifted and scaled by ``b - a`` first so the weights stay accurate when the
    noise levels span many orders of magnitude.
    """
    h = b - a
    u = [(r - a) / h for r in nodes]  # nodes in units of the step, the step is [0, 1]
    q = 0.5 * (_GL_X + 1.0)  # Gauss–Legendre points mapped to [0, 1]
    out = []
    for j, uj in enumerate(u):
        basis = np.ones_like(q)
        for m, um in enumerate(u):
            if m != j:
                basis *= (q - um) / (uj - um)
        out.append(float(h * 0.5 * np.dot(_GL_W, basis)))
    return out


def _check(name: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise unknown_name_error(name, value, valid)
    return value


@register("ipndm", aliases=("ipndm_eps", "deis_tab"))
def ipndm(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
    callback: Callback = None, order: int = 4, weights: str = "fixed", space: str = "eps",
) -> Tensor:
    """iPNDM: Adams–Bashforth multistep on ``dy/dr = eps_hat`` (1 NFE per step).

    Args:
        order: maximum number of past evaluations (1 to 4); the first steps use fewer.
        weights: ``"fixed"`` iPNDM constant-step weights (Zhang & Chen 2023) or
            ``"variable"`` exact variable-step Adams–Bashforth weights on the actual
            noise levels (DEIS's tAB in ``r``).
        space: ``"eps"`` integrates ``eps_hat`` over ``r = sigma/alpha`` (EDM coordinates,
            any path); ``"velocity"`` integrates the velocity over ``t`` (the flow form,
            sensible on flow paths whose velocity stays bounded at t = 1).

    Returns:
        The state at ``ts[-1]``; the final interval onto sigma = 0 is an extrapolating
        multistep step (no evaluation at sigma = 0).
    """
    if isinstance(order, bool) or order not in (1, 2, 3, 4):
        raise ValueError(f"ipndm: order must be 1, 2, 3 or 4, got {order!r}")
    _check("weights", weights, ("fixed", "variable"))
    _check("space", space, ("eps", "velocity"))
    t64 = torch.as_tensor(ts, dtype=torch.float64)
    alpha = den.path.alpha(t64).tolist()
    sigma = den.path.sigma(t64).tolist()
    if space == "eps":
        nodes = [s / a if a > 0 else math.inf for a, s in zip(alpha, sigma, strict=True)]
    else:
        nodes = t64.tolist()
    hist_r: list[float] = []
    hist_d: list[Tensor] = []
    for i in range(len(ts) - 1):
        t = float(ts[i])
        pred = den(x, t)
        if space == "eps":
            x1, eps = pred.data_noise()  # (B, ...), (B, ...)
            d = eps
        else:
            d = pred.velocity
        r, r_next = nodes[i], nodes[i + 1]
        if math.isfinite(r):
            hist_r = (hist_r + [r])[-order:]
            hist_d = (hist_d + [d])[-order:]
        else:  # alpha = 0 (r = inf): a first-order (DDIM) step, kept out of the history
            hist_r, hist_d = [r], [d]
        k = len(hist_r)
        if not math.isfinite(r):
            w = [math.inf]  # only enters through the rearranged first-order form below
        elif weights == "fixed":
            w = [(r_next - r) * c for c in IPNDM_WEIGHTS[k - 1]]
        else:
            w = ab_weights(hist_r[::-1], r, r_next)
        # newest first: correction sum_{j>0} w_j (d_{n-j} - d_n)
        corr = None
        for wj, dj in zip(w[1:], hist_d[::-1][1:], strict=True):
            term = wj * (dj - d)
            corr = term if corr is None else corr + term
        if space == "eps":
            # x_{n+1} = alpha_{n+1} y_{n+1} with y_{n+1} = x1_n + r_{n+1} eps_n + corr
            x = alpha[i + 1] * x1 + sigma[i + 1] * eps
            if corr is not None:
                x = x + alpha[i + 1] * corr
        else:
            x = x + (r_next - r) * d
            if corr is not None:
                x = x + corr
        if not math.isfinite(r):
            hist_r, hist_d = [], []
        report(callback, i, float(ts[i + 1]), x)
    return x
