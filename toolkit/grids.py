"""Time grids, independent of the solver.

A grid is a strictly increasing 1-D float64 tensor of ``steps + 1`` times in [0, 1] running
from the prior end to the data end. Solvers take one interval per step. Where the path
reaches ``sigma = 0`` at the data end, the last interval is a deliberate denoising step
(solvers never evaluate the network at sigma = 0).

- ``uniform``: equal steps in t.
- ``karras``: equal steps in ``(sigma/alpha)^(1/rho)`` (Karras et al. 2022, eq. 5).
- ``logsnr``: equal steps in ``lambda = log(alpha^2/sigma^2)`` (Lu et al. 2022, DPM-Solver).
- ``shifted``: uniform in noise time ``s = 1 - t`` warped by ``s' = k s / (1 + (k - 1) s)``
  (Esser et al. 2024, SD3, eq. 23 with shift ``k``).
- a user tensor/list of times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from toolkit.paths.base import GaussianPath
from toolkit.registry import unknown_name_error

GRIDS = ("uniform", "karras", "logsnr", "shifted", "power")


def check_steps(steps: int) -> int:
    """Validate a number of steps (an int >= 1)."""
    if isinstance(steps, bool) or not isinstance(steps, int | float) or int(steps) != steps:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return int(steps)


def validate(ts: Tensor | Sequence[float]) -> Tensor:
    """Check a user grid: 1-D, at least 2 points, strictly increasing, inside [0, 1]."""
    ts = torch.as_tensor(ts, dtype=torch.float64).flatten()
    if ts.numel() < 2:
        raise ValueError(f"a time grid needs at least 2 points, got {ts.numel()}")
    if not torch.all(torch.isfinite(ts)):
        raise ValueError("time grid contains NaN or inf")
    if ts.min() < 0.0 or ts.max() > 1.0:
        raise ValueError(
            f"time grid must lie in [0, 1] (t = 0 noise, t = 1 data); got range "
            f"[{ts.min().item():.4g}, {ts.max().item():.4g}]"
        )
    if not torch.all(ts[1:] > ts[:-1]):
        raise ValueError("time grid must be strictly increasing (from noise at 0 to data at 1)")
    return ts


def _endpoints(
    path: GaussianPath, t_start: float | None, t_end: float | None
) -> tuple[float, float]:
    t0 = path.t_min if t_start is None else float(t_start)
    t1 = path.t_max if t_end is None else float(t_end)
    if not 0.0 <= t0 < t1 <= 1.0:
        raise ValueError(f"need 0 <= t_start < t_end <= 1, got t_start={t0}, t_end={t1}")
    return t0, t1


def _ratio(path: GaussianPath, t: float) -> float:
    return float(path.sigma_ratio(torch.tensor(t, dtype=torch.float64)))


def _noise_warped(
    path: GaussianPath,
    steps: int,
    t0: float,
    t1: float,
    to_u,
    from_u,
    ratio_min: float,
    ratio_max: float | None,
) -> Tensor:
    """Equal steps in a warped noise level ``u = to_u(sigma/alpha)``; exact ends kept.

    The warp starts at the path's noise level at ``t0``, capped at ``ratio_max`` (default 80,
    EDM's sigma_max; the prior end of flow paths is infinite, VP's is ~150): the first
    interval then runs from ``t0`` to the cap in one step, where the flow is nearly linear.
    That interval does not shrink with more steps, so convergence studies pass
    ``sigma_max=None`` (the path's own level where finite).
    """
    r0 = _ratio(path, t0)
    if ratio_max is None:
        ratio_max = r0 if math.isfinite(r0) else 80.0
    r_max = min(r0, ratio_max)
    r_end = _ratio(path, t1)
    # A data end below the grid's sigma_min (e.g. exactly 0) gets a final denoising interval.
    clean_end = r_end < ratio_min
    r_min = ratio_min if clean_end else r_end
    n_warp = steps if clean_end else steps + 1  # reserve the last interval for denoising
    u = torch.linspace(to_u(r_max), to_u(r_min), n_warp, dtype=torch.float64)
    ts = path.t_from_sigma_ratio(from_u(u)).to(torch.float64)
    ts[0] = t0
    if clean_end:
        ts = torch.cat([ts, torch.tensor([t1], dtype=torch.float64)])
    else:
        ts[-1] = t1
    return ts


def karras(
    steps: int,
    path: GaussianPath,
    rho: float = 7.0,
    sigma_min: float = 2e-3,
    sigma_max: float | None = 80.0,
    t_start: float | None = None,
    t_end: float | None = None,
) -> Tensor:
    """Karras et al. (2022) grid, eq. 5, in the path's EDM noise level ``sigma/alpha``.

    If the path reaches zero noise at ``t_end``, the warped part ends at ``sigma_min`` and
    the last interval denoises to ``t_end``. ``sigma_max`` caps the starting noise level
    (``None``: the path's own, or 80 where that is infinite).
    """
    t0, t1 = _endpoints(path, t_start, t_end)
    return _noise_warped(
        path,
        check_steps(steps),
        t0,
        t1,
        lambda r: r ** (1 / rho),
        lambda u: u**rho,
        sigma_min,
        sigma_max,
    )


def logsnr(
    steps: int,
    path: GaussianPath,
    sigma_min: float = 2e-3,
    sigma_max: float | None = 80.0,
    t_start: float | None = None,
    t_end: float | None = None,
) -> Tensor:
    """Equal steps in log-SNR (DPM-Solver's ``logSNR`` skip type, Lu et al. 2022)."""
    t0, t1 = _endpoints(path, t_start, t_end)
    return _noise_warped(
        path, check_steps(steps), t0, t1, math.log, torch.exp, sigma_min, sigma_max
    )


def uniform(
    steps: int,
    path: GaussianPath | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
) -> Tensor:
    """``steps`` equal intervals between ``t_start`` and ``t_end`` (default: the path's ends)."""
    t0 = 0.0 if t_start is None else t_start
    t1 = 1.0 if t_end is None else t_end
    if path is not None:
        t0, t1 = _endpoints(path, t_start, t_end)
    return torch.linspace(t0, t1, check_steps(steps) + 1, dtype=torch.float64)


def shifted(
    steps: int,
    path: GaussianPath | None = None,
    shift: float = 3.0,
    t_start: float | None = None,
    t_end: float | None = None,
) -> Tensor:
    """SD3 timestep shift (Esser et al. 2024, eq. 23): more steps at high noise for shift > 1."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    s = 1.0 - uniform(steps, path, t_start, t_end)
    return 1.0 - shift * s / (1.0 + (shift - 1.0) * s)


def power(
    steps: int,
    path: GaussianPath | None = None,
    exponent: float = 2.0,
    t_start: float | None = None,
    t_end: float | None = None,
) -> Tensor:
    """``t = 1 - (1 - u)^p`` over a uniform ``u``: for ``p > 1`` the steps shrink towards the
    data end (t = 1), so the last network call sees an almost clean input."""
    if exponent <= 0:
        raise ValueError(f"exponent must be > 0, got {exponent}")
    u = uniform(steps, path, t_start, t_end)
    t0, t1 = float(u[0]), float(u[-1])
    return t0 + (t1 - t0) * (1.0 - (1.0 - (u - t0) / (t1 - t0)) ** exponent)


def get_grid(
    grid: str | Tensor | Sequence[float], steps: int | None, path: GaussianPath, **kwargs
) -> Tensor:
    """Build a grid by name (``uniform | karras | logsnr | shifted | power``) or validate a user
    one."""
    if not isinstance(grid, str):
        ts = validate(grid)
        if steps is not None and check_steps(steps) != ts.numel() - 1:
            raise ValueError(f"user grid has {ts.numel() - 1} intervals but steps={steps}")
        return ts
    fns = {"uniform": uniform, "karras": karras, "logsnr": logsnr, "shifted": shifted,
           "power": power}
    if grid not in fns:
        raise unknown_name_error("grid", grid, GRIDS)
    if steps is None:
        raise ValueError(f"grid {grid!r} needs steps")
    return validate(fns[grid](steps, path, **kwargs))
