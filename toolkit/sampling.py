"""``toolkit.sample``: integrate from noise at t = 0 to data at t = 1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from toolkit import grids as grids_mod
from toolkit import paths as paths_mod
from toolkit import samplers as samplers_mod
from toolkit.field import Denoiser, Model
from toolkit.param import check_prediction
from toolkit.samplers.registry import solver_options


def sample(
    model: Model,
    x0: Tensor,
    *,
    path: str | paths_mod.GaussianPath = "linear",
    prediction: str = "velocity",
    solver: str = "euler",
    steps: int | None = 10,
    grid: str | Tensor | Sequence[float] = "uniform",
    grid_options: dict[str, Any] | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    cond: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    callback=None,
    info: dict[str, Any] | None = None,
    **options: Any,
) -> Tensor:
    """Generate samples by integrating from the prior (t = 0) to data (t = 1).

    Args:
        model: ``model(x_t, t, **cond) -> Tensor`` with ``t`` of shape ``(B,)``.
        x0: standard normal noise ``(B, ...)``; the solver starts from
            ``path.prior_std(t_0) * x0``.
        path: a path name (see :func:`toolkit.paths.available`) or path object; a manifold
            path of :mod:`toolkit.paths.riemannian` (SO(3), SE(3)^N) takes prior frames as
            ``x0`` and dispatches to :func:`~toolkit.paths.riemannian.sample_riemannian`.
        prediction: what the model outputs: ``noise | data | velocity | score | v``.
        solver: a name from :func:`toolkit.samplers.available`.
        steps: number of grid intervals (ignored by adaptive solvers if ``grid`` is a name).
        grid: ``uniform | karras | logsnr | shifted`` or an increasing tensor of times.
        grid_options: extra arguments of the grid (``rho``, ``shift``, ``sigma_min``).
        t_start / t_end: integration range (default: the path's ends).
        cond: keyword arguments passed to the model on every call.
        generator: RNG for stochastic solvers.
        callback: called after every step with ``{"i", "t", "x"}``.
        info: if a dict is given it receives ``nfe`` (network evaluations) and ``grid``.
        **options: solver options (e.g. ``eta`` for DDIM, ``rtol``/``atol`` for dopri5).

    Returns:
        The samples at ``t_end``, same shape and dtype as ``x0``.

    Raises:
        ValueError: unknown names, bad steps/grid, bad shapes (messages name the problem).
    """
    from toolkit.paths.riemannian import is_riemannian, sample_riemannian

    if is_riemannian(path):  # SO(3) / SE(3)^N: the path applies each step through exp
        if prediction != "velocity":
            raise ValueError(f"a manifold path needs prediction='velocity', got {prediction!r}")
        if isinstance(grid, str) and grid != "uniform" or grid_options:
            raise ValueError("a manifold path integrates on a uniform grid or an explicit "
                             f"increasing tensor of times; got grid={grid!r}, "
                             f"grid_options={grid_options!r}")
        times = None if isinstance(grid, str) else grid
        return sample_riemannian(model, x0, path=path, solver=solver, steps=steps,
                                 t_start=t_start, t_end=t_end, cond=cond, info=info,
                                 times=times, **options)
    path = paths_mod.get(path)
    prediction = check_prediction(prediction)
    fn = samplers_mod.get(solver)
    valid = solver_options(fn)
    bad = sorted(set(options) - set(valid))
    if bad:
        raise ValueError(
            f"solver {solver!r} got unknown option(s) {bad}; it accepts {valid or 'no options'}"
        )
    if not isinstance(x0, Tensor) or not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating-point Tensor, got {type(x0).__name__}")
    if x0.ndim < 1 or x0.shape[0] == 0:
        raise ValueError(f"x0 must have a non-empty batch dimension, got shape {tuple(x0.shape)}")
    ts = grids_mod.get_grid(grid, steps, path, **_grid_kwargs(grid, grid_options, t_start, t_end))
    den = Denoiser(model, path, prediction, dict(cond or {}))
    den.precompute(ts)
    x = x0 * float(path.prior_std(ts[0]))
    with torch.no_grad():
        out = fn(den, x, ts, generator=generator, callback=callback, **options)
    if info is not None:
        info["nfe"] = den.nfe
        info["grid"] = ts
    return out


def _grid_kwargs(grid, grid_options, t_start, t_end) -> dict[str, Any]:
    kw = dict(grid_options or {})
    if isinstance(grid, str):
        if t_start is not None:
            kw["t_start"] = t_start
        if t_end is not None:
            kw["t_end"] = t_end
    elif t_start is not None or t_end is not None:
        raise ValueError("t_start/t_end cannot be combined with an explicit grid")
    return kw
