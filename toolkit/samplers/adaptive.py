"""Adaptive Dormand–Prince 5(4) sampler of the probability-flow ODE ``dx/dt = v(x, t)``.

Registered as ``"dopri5"`` (alias ``"adaptive"``). The step sizes come from the embedded
error estimate (:func:`toolkit.odeint.odeint`), so the grid's intermediate points are
ignored: only ``ts[0]`` and ``ts[-1]`` matter, and ``steps`` only shapes that grid.

Zero-noise end. DOPRI5 evaluates its last stage at the end of each step, and at
``sigma = 0`` the velocity of a data/noise/score model is not defined (it divides by sigma).
If ``ts[-1]`` is such an end (``den.ends_at_data``), the ODE is integrated to
``t_end = path.t_from_sigma_ratio(sigma_end)`` (noise level ``sigma/alpha = sigma_end``,
default ``1e-3``) and finished by the denoising step ``x_1 = E[x_1 | x_{t_end}]``. The data
prediction there is recovered exactly from the FSAL velocity already computed at
``(x_{t_end}, t_end)``, so the denoising step costs no extra network evaluation. For the
linear path this is exactly an Euler step over ``[t_end, 1]`` (error O(sigma_end^2)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from toolkit.field import Denoiser
from toolkit.odeint import odeint
from toolkit.param import convert
from toolkit.samplers.common import Callback, report
from toolkit.samplers.registry import register


def data_end_time(den: Denoiser, t_start: float, t_end: float, sigma_end: float) -> float:
    """Where to stop the ODE before a zero-noise end ``t_end`` (noise level ``sigma_end``)."""
    if sigma_end <= 0:
        raise ValueError(f"sigma_end must be > 0, got {sigma_end}")
    t_stop = float(den.path.t_from_sigma_ratio(torch.tensor(sigma_end, dtype=torch.float64)))
    if not t_start < t_stop < t_end:
        raise ValueError(
            f"dopri5: the stopping time t={t_stop:.6g} for sigma_end={sigma_end} is not inside "
            f"({t_start:.6g}, {t_end:.6g}); use a smaller sigma_end or an earlier t_start"
        )
    return t_stop


@register("dopri5", aliases=("adaptive",))
def dopri5(
    den: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    sigma_end: float = 1e-3,
    max_steps: int = 10_000,
    first_step: float | None = None,
    norm: str = "rms",
) -> Tensor:
    """Adaptive DOPRI5 on ``dx/dt = den.velocity(x, t)`` from ``ts[0]`` to ``ts[-1]``.

    Args:
        den: the bound model (its ``nfe`` counts every network evaluation).
        x: state at ``ts[0]``, ``(B, ...)``.
        ts: time grid; only its first and last points are used.
        generator: unused (deterministic solver).
        callback: called after every accepted step with ``{"i", "t", "x"}``.
        rtol / atol: local error tolerances (Hairer I, eq. 4.11).
        sigma_end: noise level ``sigma/alpha`` at which to stop before a zero-noise end
            and denoise (see module docstring).
        max_steps: raise ``RuntimeError`` after this many attempted steps.
        first_step: initial step size (default: Hairer's heuristic, one extra evaluation).
        norm: ``"rms"`` or ``"max"`` error norm over the whole batch.

    Returns:
        The state at ``ts[-1]``.
    """
    t_start, t_end = float(ts[0]), float(ts[-1])
    denoise = den.ends_at_data(t_end)
    t_stop = data_end_time(den, t_start, t_end, sigma_end) if denoise else t_end
    count = [0]

    def on_step(t: float, y: Tensor) -> None:
        report(callback, count[0], t, y)
        count[0] += 1

    info: dict = {}
    x = odeint(
        lambda t, y: den.velocity(y, t), x, t_start, t_stop, method="dopri5", rtol=rtol,
        atol=atol, max_steps=max_steps, first_step=first_step, norm=norm,
        callback=on_step if callback is not None else None, info=info,
    )
    if denoise:
        v = info.get("f_end")
        if v is None:  # pragma: no cover - odeint always returns it for dopri5
            return den.data(x, t_stop)
        t = torch.full((x.shape[0],), t_stop, dtype=x.dtype, device=x.device)
        x = convert(v, x, t, den.path, "velocity", "data")  # exact, no network call
        report(callback, count[0], t_end, x)
    return x


__all__ = ["dopri5", "data_end_time"]
