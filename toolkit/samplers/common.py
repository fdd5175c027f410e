"""Helpers shared by solvers."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from toolkit.field import Denoiser

Callback = Callable[[dict], None] | None


def denoise_step(den: Denoiser, x: Tensor, t: float) -> Tensor:
    """Final step onto a zero-noise end: ``x_1 = E[x_1 | x_t]`` (one evaluation).

    Any consistent first-order solver reduces to this when the target has sigma = 0, and
    higher-order corrections there would need the network at sigma = 0 (Karras et al. 2022,
    Alg. 1 takes an Euler step for the same reason).
    """
    return den.data(x, t)


def report(callback: Callback, i: int, t: float, x: Tensor, **extra) -> None:
    """Call a user callback with the step index, time and state."""
    if callback is not None:
        callback({"i": i, "t": t, "x": x, **extra})
