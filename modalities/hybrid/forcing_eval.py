"""Long-rollout evaluation of Diffusion Forcing runs (``recipe=diffusion_forcing_traj``).

Given the first ``context`` ground-truth tokens of held-out sequences, a run rolls out
``length`` more (default ``4 H``, ``H`` the training horizon) with sliding windows
(:meth:`~.forcing_task.DiffusionForcingTask.rollout`); the continuation is compared with the
simulator's. For pose tokens the errors per future frame ``h`` are the translation distance
``|x_hat_h - x_h|`` and the rotation geodesic ``|log(R_hat_h^T R_h)|`` (rad); for vector
tokens the Euclidean distance. Reported at ``h = H, 2H, 4H`` (error *at* frame ``h`` and mean
over frames ``1..h``; median and mean over sequences, non-finite rollouts excluded and
counted), next to the constant-velocity continuation
(:func:`~modalities.trajectory.metrics.constant_velocity_forecast`: last body rate and last
linear velocity held; for vectors the last difference repeated). Also NFE and milliseconds
per sequence. ``eval_run`` writes ``RUN/eval.json`` and ``RUN/eval/rollouts.png``.

``toolkit eval checkpoint=RUN`` keys: :data:`EVAL_KEYS`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from toolkit.files import atomic_write

__all__ = ["EVAL_KEYS", "errors", "eval_run", "format_eval", "plot_rollouts"]

EVAL_KEYS = {"checkpoint": str, "n": int, "context": int, "length": int, "schedule": str,
             "steps": int, "chunk": int, "stabilization": float, "context_mode": str,
             "seed": int, "ckpt": str, "batch_size": int}


def errors(pred: Tensor, true: Tensor, representation: str) -> dict[str, Tensor]:
    """Per-frame errors ``(B, T)`` (float64): ``translation`` and ``rotation_rad`` for pose
    tokens, ``l2`` for vectors."""
    if pred.shape != true.shape or pred.ndim != 3:
        raise ValueError(f"errors: expected equal (B, T, D) shapes, got {tuple(pred.shape)} vs "
                         f"{tuple(true.shape)}")
    p, q = pred.double(), true.double()
    if representation != "rigid":
        return {"l2": (p - q).norm(dim=-1)}
    from modalities.hybrid.forcing_data import tokens_to_rigid
    from toolkit.geometry import so3

    (Rp, xp), (Rq, xq) = tokens_to_rigid(p), tokens_to_rigid(q)
    return {"translation": (xp - xq).norm(dim=-1),
            "rotation_rad": so3.geodesic_distance(Rp, Rq)}


def plot_rollouts(path: str | Path, pred: Tensor, truth: Tensor, k: int,
                  curves: dict[str, dict[str, Tensor]], representation: str,
                  title: str = "", n_paths: int = 3) -> Path:
    """PNG: median error per future frame for each entry of ``curves`` (one panel per error
    kind) and, right, up to ``n_paths`` rolled-out paths (dashed) against the truth.

    Args:
        path: output file. pred / truth: ``(B, k + T, D)`` raw tokens (context included).
        k: context tokens. curves: ``{name: {error kind: (B, T)}}``.
        representation: ``"rigid"`` (x-y of the centre) or ``"vector"`` (dims 0, 1 vs time).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(next(iter(curves.values())))
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(4.2 * (len(kinds) + 1), 3.4))
    for ax, kind in zip(axes, kinds):
        for name, errs in curves.items():
            e = errs[kind]
            frames = torch.arange(1, e.shape[1] + 1)
            ax.plot(frames, e.nanmedian(0).values, lw=1.2, label=name)
        ax.set_xlabel("future frame")
        ax.set_ylabel(f"median {kind} error")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax = axes[-1]
    T = min(pred.shape[1], truth.shape[1])
    for i in range(min(n_paths, pred.shape[0])):
        c = f"C{i}"
        if representation == "rigid":
            ax.plot(truth[i, :T, 0], truth[i, :T, 1], color=c, lw=1)
            ax.plot(pred[i, k:T, 0], pred[i, k:T, 1], color=c, lw=1, ls="--")
            ax.scatter(truth[i, k - 1, 0], truth[i, k - 1, 1], color=c, s=10)
            ax.set_xlabel("x")
            ax.set_ylabel("y")
        else:
            for d, ls in ((0, "-"), (1, ":")):
                if d < truth.shape[-1]:
                    ax.plot(truth[i, :T, d], color=c, lw=1, ls=ls)
                    ax.plot(torch.arange(k, T), pred[i, k:T, d], color=c, lw=1, ls="--")
            ax.axvline(k - 0.5, color="k", lw=0.5)
            ax.set_xlabel("frame")
    ax.set_title("truth (solid) vs rollout (dashed)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    finally:
        plt.close(fig)


def _summary(errs: dict[str, Tensor], horizons: list[int], ok: Tensor) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, e in errs.items():
        e = e[ok]
        for h in horizons:
            at, upto = e[:, h - 1], e[:, :h].mean(1)
            out[f"{kind}@{h}"] = {"median": float(at.median()), "mean": float(at.mean()),
                                  "upto_median": float(upto.median()),
                                  "upto_mean": float(upto.mean())}
    return out


def _test_sequences(task: Any, cfg: Any, n: int, total: int) -> tuple[Tensor, Tensor | None, str]:
    if task.representation == "rigid":
        from modalities.hybrid.forcing_data import rigid_to_tokens
        from modalities.trajectory.sim import TrajectoryDataset

        d = cfg.data
        ds = TrajectoryDataset("test", n=n, n_frames=total, dt=float(d.get("dt", 0.05)),
                               classes=d.get("classes"), seed=int(d.get("seed", 0)))
        return rigid_to_tokens(ds.rots, ds.trans), ds.cls, "test (simulator, held-out seeds)"
    from hydra.utils import instantiate

    ds = instantiate(cfg.data, _convert_="all")
    x, y = ds.long_sequences(n, min_length=total)
    if x.shape[1] < total:
        raise ValueError(f"no sequence of the run's data has {total} tokens (longest "
                         f"{x.shape[1]}); lower context= or length=")
    return x[:, :total], y, "training data (no held-out split)"


def eval_run(run_dir: str | Path, n: int = 64, context: int | None = None,
             length: int | None = None, schedule: str | None = None, steps: int | None = None,
             chunk: int | None = None, stabilization: float | None = None,
             context_mode: str | None = None, seed: int = 0, ckpt: str = "latest",
             batch_size: int = 64) -> dict[str, Any]:
    """Roll out ``length`` tokens (default ``4 H``) after ``context`` (default ``H - chunk``)
    ground-truth ones for ``n`` held-out sequences; errors at ``H, 2H, 4H`` vs the truth, next
    to constant velocity (module docstring). Unset sampling options take the run's mode
    defaults. Writes ``eval.json`` and ``eval/rollouts.png`` into ``run_dir``."""
    from modalities.hybrid.forcing_task import _constant_velocity
    from toolkit.train.checkpoint import load_run

    run = Path(run_dir)
    model, task, cfg, _ = load_run(run, ckpt)
    if not hasattr(task, "rollout_defaults"):
        raise ValueError(f"run {str(run)!r} is not a Diffusion Forcing run "
                         f"({type(task).__name__})")
    H = task.horizon
    c = int(chunk or task.chunk)
    k = int(context if context is not None else max(2, H - c))
    length = int(length or 4 * H)
    if n < 1 or not 2 <= k < H or length < 1:
        raise ValueError(f"need n >= 1, 2 <= context < horizon={H} and length >= 1, got n={n}, "
                         f"context={k}, length={length}")
    seqs, y, split = _test_sequences(task, cfg, n, k + length)
    n = seqs.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    info: dict[str, Any] = {"nfe": 0, "windows": 0}
    t0 = time.perf_counter()
    parts = []
    for i in range(0, n, batch_size):
        part_info: dict[str, Any] = {}
        parts.append(task.rollout(model, seqs[i:i + batch_size, :k], length,
                                  y=None if y is None else y[i:i + batch_size], generator=gen,
                                  schedule=schedule, steps=steps, chunk=c,
                                  stabilization=stabilization, context_mode=context_mode,
                                  info=part_info).cpu())
        info["nfe"] += part_info["nfe"]
        info["windows"] += part_info["windows"]
    seconds = time.perf_counter() - t0
    pred = torch.cat(parts)  # (n, k + length, D)
    truth = seqs[:, k:].to(pred.dtype)
    ok = torch.isfinite(pred).flatten(1).all(1)  # (n,)
    if not bool(ok.any()):
        raise FloatingPointError("every rollout became non-finite")
    err = errors(pred[:, k:].nan_to_num(), truth, task.representation)
    base = errors(_constant_velocity(seqs[:, :k].to(pred.dtype), length, task.representation),
                  truth, task.representation)
    horizons = [h for h in (H, 2 * H, 4 * H) if h <= length] or [length]
    d = task.rollout_defaults()
    res = {"run": str(run), "noise_mode": task.noise_mode, "split": split, "n": n,
           "horizon": H, "context": k, "length": length, "chunk": c,
           "schedule": schedule or d["schedule"], "steps": int(steps or task.steps),
           "stabilization": d["stabilization"] if stabilization is None else stabilization,
           "context_mode": context_mode or d["context_mode"],
           "fraction_finite": float(ok.double().mean()),
           "nfe_per_sequence": info["nfe"] / max(1, -(-n // batch_size)),
           "ms_per_sequence": 1e3 * seconds / n, "horizons": horizons,
           "model": _summary(err, horizons, ok),
           "constant_velocity": _summary(base, horizons, torch.ones_like(ok))}
    out = run / "eval"
    out.mkdir(parents=True, exist_ok=True)
    plot_rollouts(out / "rollouts.png", pred, seqs.to(pred.dtype), k,
                  {"model": err, "constant velocity": base}, task.representation,
                  title=f"{task.noise_mode}: {res['schedule']} schedule, context {k}, "
                        f"{length} frames (H = {H})")
    text = json.dumps(res, indent=1)
    atomic_write(run / "eval.json", lambda tmp: Path(tmp).write_text(text))
    return res


def format_eval(res: dict[str, Any]) -> str:
    """A Markdown table of :func:`eval_run`'s result (median / mean error at each horizon)."""
    lines = [f"{res['run']} ({res['noise_mode']}): {res['n']} {res['split']} sequences, context "
             f"{res['context']}, {res['length']} generated (H = {res['horizon']}), "
             f"{res['schedule']} schedule x {res['steps']} steps, chunk {res['chunk']}, "
             f"stabilisation {res['stabilization']}, context {res['context_mode']}",
             f"finite: {100 * res['fraction_finite']:.1f} %, NFE/sequence "
             f"{res['nfe_per_sequence']:.0f}, {res['ms_per_sequence']:.1f} ms/sequence", "",
             "| error at frame h | model median | model mean | const. vel. median | "
             "const. vel. mean |", "| --- | --- | --- | --- | --- |"]
    for key, m in res["model"].items():
        b = res["constant_velocity"][key]
        lines.append(f"| {key} | {m['median']:.4f} | {m['mean']:.4f} | {b['median']:.4f} | "
                     f"{b['mean']:.4f} |")
    return "\n".join(lines)
