"""``toolkit sample`` / ``toolkit eval`` for rigid-trajectory runs (``rigid_trajectory_se3fm``).

``toolkit sample checkpoint=RUN cls=asymmetric n=4 out=DIR`` writes ``DIR/trajectories.png``
(centre paths with body axes, recovered body rates and energy) and ``DIR/trajectories.npz``
(``rots (n, T, 3, 3)``, ``trans (n, T, 3)``, ``cls``).

``toolkit eval checkpoint=RUN n=256`` uses the held-out test split (other seeds than training):

* **generation**: ``n`` class-conditional trajectories (balanced over classes); the relative
  drift of kinetic energy, of ``|L|`` (body frame) and of the space-frame vector ``L``,
  recovered from the poses alone (second-order angular velocity, class inertia), next to the
  same numbers for the real test trajectories;
* **forecasting**: the first ``context`` poses of each test trajectory are given and the rest
  is generated; geodesic rotation error (rad, mean over forecast frames) and position error,
  next to the constant-velocity baseline (:func:`~.metrics.constant_velocity_forecast`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modalities.trajectory.metrics import (
    constant_velocity_forecast,
    geodesic_error,
    invariant_drift,
    plot_trajectories,
    translation_error,
)
from modalities.trajectory.sim import CLASS_NAMES, CLASSES, TrajectoryDataset
from modalities.trajectory.task import generate_trajectories
from toolkit.files import atomic_write
from toolkit.geometry.se3 import Rigid

SAMPLE_KEYS = {"checkpoint": str, "cls": str, "n": int, "steps": int, "seed": int, "out": str,
               "ckpt": str, "guidance": float}
EVAL_KEYS = {"checkpoint": str, "n": int, "steps": int, "seed": int, "ckpt": str,
             "guidance": float, "context": int, "batch_size": int}


def class_index(name: str) -> int:
    """Index of an inertia class name (ValueError listing the valid ones)."""
    if name not in CLASS_NAMES:
        raise ValueError(f"unknown inertia class {name!r}; valid: {', '.join(CLASS_NAMES)}")
    return CLASS_NAMES.index(name)


def _load(run: str, ckpt: str) -> tuple[Any, Any, Any]:
    from toolkit.train.checkpoint import load_run

    model, task, cfg, _ = load_run(run, ckpt)
    if not hasattr(task, "max_context"):
        raise ValueError(f"run {run!r} is not a rigid-trajectory run ({type(task).__name__})")
    return model, task, cfg


def _nominal(cls: torch.Tensor) -> torch.Tensor:
    table = torch.tensor([CLASSES[c].moments for c in CLASS_NAMES], dtype=torch.float64)
    return table[cls]  # (B, 3)


def sample_run(kv: dict[str, Any]) -> dict[str, Any]:
    """Class-conditional samples as a picture and an ``.npz`` file (module docstring)."""
    model, task, _ = _load(kv["checkpoint"], kv.get("ckpt", "latest"))
    n = int(kv.get("n", 4))
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    cls = torch.full((n,), class_index(kv.get("cls", "asymmetric")), dtype=torch.long)
    gen = torch.Generator().manual_seed(int(kv.get("seed", 0)))
    t0 = time.perf_counter()
    T = generate_trajectories(model, task, cls, task.n_frames, generator=gen,
                              steps=kv.get("steps"), guidance=kv.get("guidance"))
    seconds = time.perf_counter() - t0
    out = Path(kv.get("out") or Path(kv["checkpoint"]) / "samples" / f"seed{kv.get('seed', 0)}")
    out.mkdir(parents=True, exist_ok=True)
    png = plot_trajectories(T.rots, T.trans, out / "trajectories.png", n=min(n, 6), dt=task.dt,
                            inertia=_nominal(cls))
    npz = out / "trajectories.npz"

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, rots=T.rots.numpy(), trans=T.trans.numpy(), cls=cls.numpy())

    atomic_write(npz, write)
    drift = invariant_drift(T.rots.double(), _nominal(cls), task.dt, order=2)
    return {"png": str(png), "npz": str(npz), "seconds_per_trajectory": seconds / n,
            "drift_median": {k: float(v.median()) for k, v in drift.items()}}


def _stats(d: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        out[f"{k}_median"] = float(v.median())
        out[f"{k}_p90"] = float(torch.quantile(v.double(), 0.9))
    return out


def eval_run(kv: dict[str, Any]) -> dict[str, Any]:
    """Generation drift and forecasting errors on the test split (module docstring)."""
    run = Path(kv["checkpoint"])
    model, task, cfg = _load(str(run), kv.get("ckpt", "latest"))
    n, k = int(kv.get("n", 256)), int(kv.get("context", task.max_context))
    bs = int(kv.get("batch_size", 128))
    if n < len(CLASS_NAMES) or not 2 <= k < task.n_frames:
        raise ValueError(f"need n >= {len(CLASS_NAMES)} and 2 <= context < {task.n_frames}, "
                         f"got n={n}, context={k}")
    test = TrajectoryDataset("test", n=n, n_frames=task.n_frames, dt=task.dt,
                             classes=cfg.data.get("classes"), seed=int(cfg.data.get("seed", 0)))
    gen = torch.Generator().manual_seed(int(kv.get("seed", 0)))
    steps, w = kv.get("steps"), kv.get("guidance")
    # 1. class-conditional generation vs the real trajectories
    cls = test.cls[:n].long()
    t0 = time.perf_counter()
    parts = [generate_trajectories(model, task, cls[i:i + bs], task.n_frames, generator=gen,
                                   steps=steps, guidance=w) for i in range(0, n, bs)]
    seconds = time.perf_counter() - t0
    G = Rigid(torch.cat([p.rots for p in parts]), torch.cat([p.trans for p in parts]))
    gen_drift = invariant_drift(G.rots.double(), _nominal(cls), task.dt, order=2)
    real_drift = invariant_drift(test.rots[:n].double(), test.inertia[:n].double(), task.dt,
                                 order=2)
    # 2. forecasting from the first k poses
    x = test.trans[:n] - test.trans[:n, :1]
    ctx = Rigid(test.rots[:n, :k], x[:, :k])
    preds = [generate_trajectories(model, task, cls[i:i + bs], task.n_frames,
                                   context=Rigid(ctx.rots[i:i + bs], ctx.trans[i:i + bs]),
                                   generator=gen, steps=steps, guidance=w)
             for i in range(0, n, bs)]
    P = Rigid(torch.cat([p.rots for p in preds]), torch.cat([p.trans for p in preds]))
    base_r, base_x = constant_velocity_forecast(ctx.rots, ctx.trans, task.n_frames - k)
    true_r, true_x = test.rots[:n, k:], x[:, k:]
    fc = {"model_geodesic_rad": geodesic_error(P.rots[:, k:], true_r),
          "baseline_geodesic_rad": geodesic_error(base_r, true_r),
          "model_position": translation_error(P.trans[:, k:], true_x),
          "baseline_position": translation_error(base_x, true_x)}
    per_class = {name: {key: float(v[cls == c].mean()) for key, v in fc.items()}
                 for c, name in enumerate(CLASS_NAMES) if (cls == c).any()}
    out = run / "eval"
    out.mkdir(parents=True, exist_ok=True)
    pick = torch.tensor([int((cls == c).nonzero()[0]) for c in range(len(CLASS_NAMES))
                        if (cls == c).any()])
    plot_trajectories(G.rots[pick], G.trans[pick], out / "generated.png", dt=task.dt,
                      inertia=_nominal(cls[pick]))
    plot_trajectories(P.rots[pick], P.trans[pick], out / "forecast.png", dt=task.dt,
                      inertia=_nominal(cls[pick]))
    res = {"run": str(run), "n": n, "context": k, "n_frames": task.n_frames,
           "seconds_per_trajectory": seconds / n,
           "generated_drift": _stats(gen_drift), "real_drift": _stats(real_drift),
           "forecast": {key: float(v.mean()) for key, v in fc.items()},
           "forecast_per_class": per_class}
    text = json.dumps(res, indent=1)
    atomic_write(run / "eval.json", lambda tmp: Path(tmp).write_text(text))
    return res


def format_eval(res: dict[str, Any]) -> str:
    """Human-readable tables of :func:`eval_run`'s result."""
    g, r = res["generated_drift"], res["real_drift"]
    lines = [f"{res['run']}: {res['n']} test trajectories of {res['n_frames']} poses "
             f"({res['seconds_per_trajectory'] * 1e3:.1f} ms/trajectory generated)",
             "| invariant drift (relative, from poses) | generated median | p90 | real median "
             "| p90 |", "| --- | --- | --- | --- | --- |"]
    for key in ("energy", "momentum", "momentum_vector"):
        lines.append(f"| {key} | {g[key + '_median']:.2e} | {g[key + '_p90']:.2e} | "
                     f"{r[key + '_median']:.2e} | {r[key + '_p90']:.2e} |")
    f = res["forecast"]
    lines += ["", f"forecast from {res['context']} poses | model | constant velocity",
              f"geodesic error (rad) | {f['model_geodesic_rad']:.4f} | "
              f"{f['baseline_geodesic_rad']:.4f}",
              f"position error | {f['model_position']:.4f} | {f['baseline_position']:.4f}"]
    for name, v in res["forecast_per_class"].items():
        lines.append(f"  {name}: geodesic {v['model_geodesic_rad']:.4f} vs "
                     f"{v['baseline_geodesic_rad']:.4f} rad")
    return "\n".join(lines)
