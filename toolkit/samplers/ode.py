"""Explicit Runge–Kutta solvers of the probability-flow ODE ``dx/dt = v(x, t)``.

Orders: Euler 1, midpoint 2, Heun 2, RK4 4. An interval that ends where sigma = 0 is taken
as a denoising step (see :func:`toolkit.samplers.common.denoise_step`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from toolkit.field import Denoiser
from toolkit.samplers.common import Callback, denoise_step, report
from toolkit.samplers.registry import register


def _rk_loop(den: Denoiser, x: Tensor, ts: Tensor, stepper, callback: Callback) -> Tensor:
    n = len(ts) - 1
    for i in range(n):
        t, t_next = float(ts[i]), float(ts[i + 1])
        if den.ends_at_data(t_next):
            x = denoise_step(den, x, t)
        else:
            x = stepper(x, t, t_next - t)
        report(callback, i, t_next, x)
    return x


@register("euler")
def euler(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator=None, callback: Callback = None
) -> Tensor:
    """Euler: ``x_{n+1} = x_n + h v(x_n, t_n)`` (order 1)."""

    def step(x: Tensor, t: float, h: float) -> Tensor:
        return torch.add(x, den.velocity(x, t), alpha=h)

    return _rk_loop(den, x, ts, step, callback)


@register("midpoint")
def midpoint(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator=None, callback: Callback = None
) -> Tensor:
    """Explicit midpoint: ``x + h v(x + h/2 v(x, t), t + h/2)`` (order 2)."""

    def step(x: Tensor, t: float, h: float) -> Tensor:
        k1 = den.velocity(x, t)
        return x + h * den.velocity(x + 0.5 * h * k1, t + 0.5 * h)

    return _rk_loop(den, x, ts, step, callback)


@register("heun")
def heun(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator=None, callback: Callback = None
) -> Tensor:
    """Heun's method (explicit trapezoid; Karras et al. 2022, Alg. 1) (order 2)."""

    def step(x: Tensor, t: float, h: float) -> Tensor:
        k1 = den.velocity(x, t)
        x_e = x + h * k1
        k2 = den.velocity(x_e, t + h)
        return x + 0.5 * h * (k1 + k2)

    return _rk_loop(den, x, ts, step, callback)


@register("rk4")
def rk4(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator=None, callback: Callback = None
) -> Tensor:
    """Classical fourth-order Runge–Kutta (order 4)."""

    def step(x: Tensor, t: float, h: float) -> Tensor:
        k1 = den.velocity(x, t)
        k2 = den.velocity(x + 0.5 * h * k1, t + 0.5 * h)
        k3 = den.velocity(x + 0.5 * h * k2, t + 0.5 * h)
        k4 = den.velocity(x + h * k3, t + h)
        return x + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)

    return _rk_loop(den, x, ts, step, callback)


__all__ = ["euler", "midpoint", "heun", "rk4"]
