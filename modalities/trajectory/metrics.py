"""Rigid-body trajectory metrics from poses alone: recovered invariants and forecast errors.

Angular velocity from poses. For frame ``k`` let ``c(s) = log(R_k^T R(t_k + s))``; it is
smooth with ``c(0) = 0`` and ``c'(0) = omega_k`` (body frame, ``dR/dt = R hat(omega)``), so any
finite-difference stencil applied to ``c_j = log(R_k^T R_{k+j})`` estimates ``omega_k``
with the stencil's order (Iserles, Munthe-Kaas, Norsett & Zanna 2000, Acta Numerica, §2):

* ``order=1``: ``log(R_k^T R_{k+1}) / dt``, error ``O(dt)`` (backward at the last frame);
* ``order=2``: central ``(c_1 - c_{-1}) / (2 dt)``, error ``O(dt^2)``;
* ``order=4`` (default) / ``6``: 5- / 7-point central stencils, error ``O(dt^4)`` / ``O(dt^6)``.

Near the ends the window is shifted (one-sided stencils of the same order, larger constant).
Stencil weights come from the moment conditions ``sum_j w_j j^m = [m == 1]`` (Fornberg 1988).
Higher orders need ``|omega| dt`` small enough that ``order/2`` frames stay below pi and
amplify pose noise more (weights grow); ``order=2`` is the robust choice for noisy samples.

Invariants (Landau & Lifshitz, Mechanics §32 and §36): kinetic energy ``E = omega.I omega / 2``;
body angular momentum ``M = I omega`` with ``|M|`` conserved; space-frame ``L = R I omega``
conserved as a vector. All computations run in float64.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from toolkit.files import atomic_write
from toolkit.geometry import so3

__all__ = ["angular_momentum", "constant_velocity_forecast", "geodesic_error", "invariant_drift",
           "kinetic_energy", "omega_from_rots", "plot_trajectories", "translation_error"]

ORDERS = (1, 2, 4, 6)


def _check_rots(rots: Tensor, fn: str, min_frames: int) -> None:
    if not isinstance(rots, Tensor) or rots.dim() < 3 or rots.shape[-2:] != (3, 3):
        raise ValueError(f"{fn}: rots must be (..., T, 3, 3), got "
                         f"{tuple(getattr(rots, 'shape', ()))}")
    if rots.shape[-3] < min_frames:
        raise ValueError(f"{fn}: rots needs >= {min_frames} frames, got {rots.shape[-3]}")


def _check_dt(dt: float, fn: str) -> float:
    if not (isinstance(dt, int | float) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"{fn}: dt must be a finite number > 0, got {dt!r}")
    return float(dt)


@lru_cache(maxsize=64)
def _stencil(offsets: tuple[int, ...]) -> tuple[float, ...]:
    # first-derivative weights at 0: sum_j w_j j^m = [m == 1], m = 0..p (Fornberg 1988)
    s = np.asarray(offsets, dtype=np.float64)
    V = s[None, :] ** np.arange(len(s))[:, None]  # (p+1, p+1) Vandermonde
    rhs = np.zeros(len(s))
    rhs[1] = 1.0
    return tuple(np.linalg.solve(V, rhs).tolist())


def omega_from_rots(rots: Tensor, dt: float, order: int = 4) -> Tensor:
    """Body angular velocity at every frame from the rotations alone (module docstring).

    Args:
        rots: ``(..., T, 3, 3)`` rotations, ``T >= order + 1``.
        dt: time between frames, > 0.
        order: finite-difference order, one of 1, 2, 4, 6.

    Returns:
        ``(..., T, 3)`` float64 body angular velocities.
    """
    fn = "omega_from_rots"
    if order not in ORDERS:
        raise ValueError(f"{fn}: order must be one of {ORDERS}, got {order!r}")
    _check_rots(rots, fn, order + 1)
    dt = _check_dt(dt, fn)
    R = rots.to(torch.float64)
    T = R.shape[-3]
    k = torch.arange(T)
    start = (k - order // 2).clamp(0, T - 1 - order) - k  # (T,) window start offset (<= 0)
    offsets = start[:, None] + torch.arange(order + 1)  # (T, p+1) offsets j
    W = torch.tensor([_stencil(tuple(o)) for o in offsets.tolist()], dtype=torch.float64)
    Rk = R[..., :, None, :, :]  # (..., T, 1, 3, 3)
    Rj = R[..., k[:, None] + offsets, :, :]  # (..., T, p+1, 3, 3)
    c = so3.log(Rk.transpose(-1, -2) @ Rj)  # (..., T, p+1, 3) c_j = log(R_k^T R_{k+j})
    return (W[..., None] * c).sum(-2) / dt  # omega_k = sum_j w_j c_j / dt


def kinetic_energy(omega: Tensor, inertia: Tensor) -> Tensor:
    """``E = omega.I omega / 2`` (L&L §32, principal axes) for ``(..., 3)`` inputs -> ``(...)``."""
    return 0.5 * (inertia * omega * omega).sum(-1)


def angular_momentum(omega: Tensor, inertia: Tensor, rots: Tensor | None = None) -> Tensor:
    """Angular momentum: body ``M = I omega`` or, with ``rots (..., 3, 3)``, space ``L = R M``.

    Args:
        omega: ``(..., 3)`` body angular velocities.
        inertia: ``(..., 3)`` principal moments (broadcast).
        rots: optional body -> space rotations.

    Returns:
        ``(..., 3)`` angular momenta (L&L §32-33).
    """
    M = inertia * omega  # (..., 3)
    return M if rots is None else (rots @ M[..., None])[..., 0]


def invariant_drift(rots: Tensor, inertia: Tensor, dt: float,
                    order: int = 4) -> dict[str, Tensor]:
    """Relative drift of the torque-free invariants recovered from the rotations.

    Args:
        rots: ``(..., T, 3, 3)`` rotations of one or more trajectories.
        inertia: ``(..., 3)`` principal moments, broadcast against the trajectory batch shape.
        dt: time between frames.
        order: angular-velocity estimator order (:func:`omega_from_rots`).

    Returns:
        Per-trajectory ``(...)`` float64: ``"energy"`` ``max_k |E_k - E_0| / E_0``,
        ``"momentum"`` ``max_k ||M_k| - |M_0|| / |M_0|`` and ``"momentum_vector"``
        ``max_k |L_k - L_0| / |L_0|`` (space frame).
    """
    fn = "invariant_drift"
    _check_rots(rots, fn, 2)
    if not isinstance(inertia, Tensor) or inertia.shape[-1:] != (3,):
        raise ValueError(f"{fn}: inertia must be a (..., 3) tensor, got "
                         f"{tuple(getattr(inertia, 'shape', ()))}")
    omega = omega_from_rots(rots, dt, order)  # (..., T, 3)
    I = inertia.to(torch.float64)[..., None, :]  # (..., 1, 3)
    E = kinetic_energy(omega, I)  # (..., T)
    M = angular_momentum(omega, I).norm(dim=-1)  # (..., T)
    L = angular_momentum(omega, I, rots.to(torch.float64))  # (..., T, 3)
    tiny = torch.finfo(torch.float64).tiny
    return {
        "energy": ((E - E[..., :1]).abs().amax(-1) / E[..., 0].clamp_min(tiny)),
        "momentum": ((M - M[..., :1]).abs().amax(-1) / M[..., 0].clamp_min(tiny)),
        "momentum_vector": ((L - L[..., :1, :]).norm(dim=-1).amax(-1)
                            / L[..., 0, :].norm(dim=-1).clamp_min(tiny)),
    }


def geodesic_error(R_pred: Tensor, R_true: Tensor) -> Tensor:
    """Mean over frames of the geodesic distance ``|log(R_pred^T R_true)|`` (radians).

    Args:
        R_pred: ``(..., T, 3, 3)`` predicted rotations.
        R_true: ``(..., T, 3, 3)`` true rotations (same shape).

    Returns:
        ``(...)`` mean angles in [0, pi].
    """
    _check_rots(R_pred, "geodesic_error", 1)
    if R_pred.shape != R_true.shape:
        raise ValueError(f"geodesic_error: shapes differ, {tuple(R_pred.shape)} vs "
                         f"{tuple(R_true.shape)}")
    return so3.geodesic_distance(R_pred.to(torch.float64), R_true.to(torch.float64)).mean(-1)


def translation_error(x_pred: Tensor, x_true: Tensor) -> Tensor:
    """Mean over frames of the Euclidean distance, ``(..., T, 3)`` inputs -> ``(...)``."""
    if x_pred.shape != x_true.shape or x_pred.dim() < 2 or x_pred.shape[-1] != 3:
        raise ValueError(f"translation_error: expected equal (..., T, 3) shapes, got "
                         f"{tuple(x_pred.shape)} vs {tuple(x_true.shape)}")
    return (x_pred.to(torch.float64) - x_true.to(torch.float64)).norm(dim=-1).mean(-1)


def constant_velocity_forecast(rots_ctx: Tensor, trans_ctx: Tensor,
                               n_future: int) -> tuple[Tensor, Tensor]:
    """Baseline: keep the last body angular velocity and the last linear velocity.

    With ``v = log(R_{K-2}^T R_{K-1})`` (rotation per frame, body frame) and ``u = x_{K-1} -
    x_{K-2}``: ``R_{K-1+m} = R_{K-1} exp(m v)`` and ``x_{K-1+m} = x_{K-1} + m u``; exact for a
    sphere without gravity (constant body omega, L&L §37).

    Args:
        rots_ctx: ``(..., K, 3, 3)`` context rotations, ``K >= 2``.
        trans_ctx: ``(..., K, 3)`` context positions.
        n_future: number of frames to forecast, >= 1.

    Returns:
        ``(rots (..., n_future, 3, 3), trans (..., n_future, 3))`` in the dtype of the inputs.
    """
    fn = "constant_velocity_forecast"
    _check_rots(rots_ctx, fn, 2)
    if trans_ctx.shape != rots_ctx.shape[:-1]:
        raise ValueError(f"{fn}: trans_ctx must be (..., K, 3) = {tuple(rots_ctx.shape[:-1])}, "
                         f"got {tuple(trans_ctx.shape)}")
    if isinstance(n_future, bool) or int(n_future) != n_future or n_future < 1:
        raise ValueError(f"{fn}: n_future must be an integer >= 1, got {n_future!r}")
    R = rots_ctx.to(torch.float64)
    x = trans_ctx.to(torch.float64)
    m = torch.arange(1, int(n_future) + 1, dtype=torch.float64)[:, None]  # (F, 1)
    v = so3.log(R[..., -2, :, :].transpose(-1, -2) @ R[..., -1, :, :])  # (..., 3)
    rots = R[..., -1:, :, :] @ so3.exp(m * v[..., None, :])  # (..., F, 3, 3)
    trans = x[..., -1:, :] + m * (x[..., -1:, :] - x[..., -2:-1, :])  # (..., F, 3)
    return rots.to(rots_ctx.dtype), trans.to(trans_ctx.dtype)


def plot_trajectories(rots: Tensor, trans: Tensor, path: str | os.PathLike, n: int = 4,
                      dt: float = 1.0, inertia: Tensor | None = None,
                      n_axes: int = 6) -> Path:
    """PNG of up to ``n`` trajectories: 3-D centre path with body axes, and recovered rates.

    Row ``i`` shows trajectory ``i``: left, the centre of mass path with the body axes (x red,
    y green, z blue) drawn at ``n_axes`` frames (equal-aspect box); right, the body angular
    velocity components recovered from the poses (:func:`omega_from_rots`, order 4) and,
    with ``inertia``, the recovered relative energy error ``E / E_0 - 1``.

    Args:
        rots: ``(B, T, 3, 3)`` or ``(T, 3, 3)`` rotations.
        trans: ``(B, T, 3)`` or ``(T, 3)`` positions.
        path: output PNG (written atomically).
        n: number of trajectories drawn.
        dt: time between frames (``|omega|`` in rad per time unit).
        inertia: optional ``(B, 3)`` or ``(3,)`` principal moments.
        n_axes: frames at which the body axes are drawn.

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fn = "plot_trajectories"
    if rots.dim() == 3:
        rots, trans = rots[None], trans[None]
        inertia = None if inertia is None else inertia.reshape(1, 3)
    _check_rots(rots, fn, 3)
    if rots.dim() != 4 or trans.shape != rots.shape[:-1]:
        raise ValueError(f"{fn}: expected rots (B, T, 3, 3) and trans (B, T, 3), got "
                         f"{tuple(rots.shape)} and {tuple(trans.shape)}")
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"{fn}: n must be an integer >= 1, got {n!r}")
    b = min(int(n), rots.shape[0])
    R, x = rots[:b].double().cpu(), trans[:b].double().cpu()
    omega = omega_from_rots(R, dt, order=4 if R.shape[1] >= 5 else 2)  # (b, T, 3)
    t = dt * torch.arange(R.shape[1])
    fig = plt.figure(figsize=(10, 3.4 * b))
    for i in range(b):
        ax = fig.add_subplot(b, 2, 2 * i + 1, projection="3d")
        ax.plot(*x[i].T.numpy(), color="k", lw=1)
        lo, hi = x[i].amin(0), x[i].amax(0)
        half = 0.5 * float((hi - lo).max().clamp_min(1.0))
        for lim, mid in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), (0.5 * (lo + hi)).tolist()):
            lim(mid - 1.1 * half, mid + 1.1 * half)  # equal aspect: axes drawn to scale
        for k in torch.linspace(0, R.shape[1] - 1, n_axes).round().long().tolist():
            for a, colour in enumerate("rgb"):
                ax.quiver(*x[i, k].numpy(), *(0.25 * half * R[i, k, :, a]).numpy(),
                          color=colour, lw=1)
        ax.set_title(f"trajectory {i}: centre path and body axes", fontsize=8)
        ax2 = fig.add_subplot(b, 2, 2 * i + 2)
        for a, colour in enumerate("rgb"):
            ax2.plot(t, omega[i, :, a], color=colour, lw=1, label=f"omega_{'xyz'[a]} (body)")
        ax2.set_xlabel("time", fontsize=8)
        ax2.set_ylabel("recovered body omega", fontsize=8)
        ax2.legend(fontsize=6, loc="upper left")
        if inertia is not None:
            I = inertia.reshape(-1, 3)[min(i, inertia.reshape(-1, 3).shape[0] - 1)].double()
            E = kinetic_energy(omega[i], I)  # (T,)
            ax3 = ax2.twinx()
            rel = E / E[0] - 1
            ax3.plot(t, rel, color="k", ls="--", lw=1)
            bound = max(1e-3, 1.2 * float(rel.abs().max()))
            ax3.set_ylim(-bound, bound)
            ax3.ticklabel_format(axis="y", style="sci", scilimits=(0, 0), useOffset=False)
            ax3.set_ylabel("E / E0 - 1 (dashed)", fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    finally:
        plt.close(fig)
