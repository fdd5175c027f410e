"""Sample-based metrics: exact Wasserstein-2 between point clouds, and the straightness of
a learned flow (Liu et al. 2023, "Flow straight and fast", eq. 6 / Def. 3.5)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from toolkit import paths as paths_mod
from toolkit.field import Denoiser, Model
from toolkit.sampling import sample


def w2(x: Tensor, y: Tensor, squared: bool = False) -> float:
    """Exact 2-Wasserstein distance between the empirical measures of ``x`` and ``y``.

    ``W2^2 = min_P sum_ij P_ij ||x_i - y_j||^2`` over couplings with uniform marginals,
    solved as a linear program (POT ``ot.emd2``). Points are flattened; float64 throughout.
    """
    a = x.detach().reshape(x.shape[0], -1).to(torch.float64).cpu()
    b = y.detach().reshape(y.shape[0], -1).to(torch.float64).cpu()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"w2: dimension mismatch {a.shape[1]} vs {b.shape[1]}")
    cost = torch.cdist(a, b).pow(2).numpy()
    import ot  # POT; imported lazily (it pulls in scipy.sparse and friends)

    val = float(ot.emd2(ot.unif(len(a)), ot.unif(len(b)), cost, numItermax=10_000_000))
    val = max(val, 0.0)
    return val if squared else float(np.sqrt(val))


def trajectory(
    model: Model, x0: Tensor, *, path: Any = "linear", prediction: str = "velocity",
    solver: str = "rk4", steps: int = 32, cond: dict[str, Any] | None = None, **options: Any,
) -> tuple[Tensor, Tensor]:
    """States of the probability-flow ODE on a uniform grid: ``(ts (S+1,), xs (S+1, B, ...))``."""
    path = paths_mod.get(path)
    xs: list[Tensor] = []
    x_start = x0 * float(path.prior_std(torch.tensor(0.0, dtype=torch.float64)))
    sample(model, x0, path=path, prediction=prediction, solver=solver, steps=steps, cond=cond,
           callback=lambda d: xs.append(d["x"].detach()), **options)
    ts = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    return ts, torch.stack([x_start, *xs])


def straightness(
    model: Model, x0: Tensor, *, path: Any = "linear", prediction: str = "velocity",
    solver: str = "rk4", steps: int = 32, cond: dict[str, Any] | None = None,
    **options: Any,
) -> float:
    """Straightness ``S = int_0^1 E ||(Z_1 - Z_0) - dZ_t/dt||^2 dt`` of the model's ODE flow
    (Liu et al. 2023, eq. 6); 0 iff every trajectory is a straight line at constant speed.

    The trajectory is integrated with ``solver`` on a uniform grid of ``steps`` intervals,
    the velocity is evaluated at every node and the time integral uses the trapezoid rule.
    Velocities at a zero-noise end come from the model as-is (no solver step needed there).
    """
    path = paths_mod.get(path)
    ts, xs = trajectory(model, x0, path=path, prediction=prediction, solver=solver,
                        steps=steps, cond=cond, **options)
    den = Denoiser(model, path, prediction, dict(cond or {}))
    chord = xs[-1] - xs[0]  # (B, ...)
    vals = []
    with torch.no_grad():
        for t, x in zip(ts, xs):
            v = den.velocity(x, float(t))
            vals.append((chord - v).pow(2).reshape(x.shape[0], -1).sum(-1).mean())
    v = torch.stack(vals).to(torch.float64)
    h = 1.0 / steps
    return float(h * (v.sum() - 0.5 * (v[0] + v[-1])))


def one_step_error(
    model: Model, x0: Tensor, *, path: Any = "linear", prediction: str = "velocity",
    ref_solver: str = "rk4", ref_steps: int = 32, cond: dict[str, Any] | None = None,
) -> float:
    """Mean squared distance between a single Euler step and an accurate ODE solution from
    the same noise; small for straight flows (Liu et al. 2023, sec. 2.2)."""
    one = sample(model, x0, path=path, prediction=prediction, solver="euler", steps=1,
                 cond=cond)
    ref = sample(model, x0, path=path, prediction=prediction, solver=ref_solver,
                 steps=ref_steps, cond=cond)
    return float((one - ref).pow(2).reshape(x0.shape[0], -1).sum(-1).mean())


__all__ = ["w2", "trajectory", "straightness", "one_step_error"]
