"""Explicit Runge–Kutta solvers of the probability-flow ODE ``dx/dt = v(x, t)``.

Orders: Euler 1, midpoint 2, Heun 2, RK4 4.

The final interval onto a zero-noise end (``final_step``): ``"auto"`` takes the full
Runge–Kutta step when the model predicts velocity, the path's velocity is bounded there
(linear, trig: the network is then evaluated at t = 1 exactly as trained) and the last
interval is coarse (it starts above sigma/alpha = 0.01), and otherwise a denoising step
(:func:`toolkit.samplers.common.denoise_step`), because converting a noise/data/score
prediction to a velocity is singular at sigma = 0 (and the VP velocity itself diverges
there). ``"denoise"`` and ``"full"`` force either.
"""

from __future__ import annotations

import torch
from torch import Tensor

from toolkit.field import Denoiser
from toolkit.registry import unknown_name_error
from toolkit.samplers.common import Callback, denoise_step, report
from toolkit.samplers.registry import register

FINAL_STEPS = ("auto", "denoise", "full")


def _full_final_step(den: Denoiser, ts: Tensor, final_step: str) -> bool:
    if final_step not in FINAL_STEPS:
        raise unknown_name_error("final_step", final_step, FINAL_STEPS)
    if final_step != "auto" or len(ts) < 2:
        return final_step == "full"
    _, _, da, ds = den.coefs(float(ts[-1]))
    a, s, _, _ = den.coefs(float(ts[-2]))
    # A grid that already ends with a short denoising interval (karras/logsnr stop at a
    # small sigma/alpha, 2e-3 by default) keeps it: denoising there is 1 NFE and exact to
    # O(sigma^2); a coarse last interval (uniform grids) is worth the full step.
    coarse = s > 1e-2 * a
    return den.prediction == "velocity" and max(abs(da), abs(ds)) < 1e6 and coarse


def _rk_loop(
    den: Denoiser, x: Tensor, ts: Tensor, stepper, callback: Callback, final_step: str
) -> Tensor:
    n = len(ts) - 1
    full_end = _full_final_step(den, ts, final_step)
    tl = torch.as_tensor(ts, dtype=torch.float64).tolist()
    for i in range(n):
        t, t_next = tl[i], tl[i + 1]
        if den.ends_at_data(t_next) and not full_end:
            x = denoise_step(den, x, t)
        else:
            x = stepper(x, t, t_next - t)
        report(callback, i, t_next, x)
    return x


@register("euler")
def euler(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator=None, callback: Callback = None,
    final_step: str = "auto",
) -> Tensor:
    """Euler: ``x_{n+1} = x_n + h v(x_n, t_n)`` (order 1)."""

    def step(x: Tensor, t: float, h: float) -> Tensor:
        return torch.add(x, den.velocity(x, t), alpha=h)

    return _rk_loop(den, x, ts, step, callback, final_step)


@register("midpoint")
def midpoint(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator=None, callback: Callback = None,
    final_step: str = "auto",
) -> Tensor:
    """Explicit midpoint: ``x + h v(x + h/2 v(x, t), t + h/2)`` (order 2)."""

    def step(x: Tensor, t: float, h: float) -> Tensor:
        k1 = den.velocity(x, t)
        return x + h * den.velocity(x + 0.5 * h * k1, t + 0.5 * h)

    return _rk_loop(den, x, ts, step, callback, final_step)


@register("heun")
def heun(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator=None, callback: Callback = None,
    final_step: str = "auto",
) -> Tensor:
    """Heun's method (explicit trapezoid; Karras et al. 2022, Alg. 1) (order 2)."""

    def step(x: Tensor, t: float, h: float) -> Tensor:
        k1 = den.velocity(x, t)
        x_e = x + h * k1
        k2 = den.velocity(x_e, t + h)
        return x + 0.5 * h * (k1 + k2)

    return _rk_loop(den, x, ts, step, callback, final_step)


@register("rk4")
def rk4(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator=None, callback: Callback = None,
    final_step: str = "auto",
) -> Tensor:
    """Classical fourth-order Runge–Kutta (order 4)."""

    def step(x: Tensor, t: float, h: float) -> Tensor:
        k1 = den.velocity(x, t)
        k2 = den.velocity(x + 0.5 * h * k1, t + 0.5 * h)
        k3 = den.velocity(x + 0.5 * h * k2, t + 0.5 * h)
        k4 = den.velocity(x + h * k3, t + h)
        return x + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)

    return _rk_loop(den, x, ts, step, callback, final_step)


__all__ = ["euler", "midpoint", "heun", "rk4"]
