"""``toolkit eval checkpoint=RUN_DIR env=metaworld task=push-v3 episodes=50`` for policy runs.

Loads the run with :meth:`~modalities.actions.policy.Policy.from_pretrained` (EMA weights),
rolls it out in the simulator on held-out configurations (seeds >= 100000, never used for
demonstrations; :func:`modalities.actions.sim.evaluate`) and reports the success rate with a
Wilson 95 % interval, per-``select_action`` latency and per-chunk latency. ``task=mt10`` (or a
comma list) evaluates every task and the average. Results go to ``RUN_DIR/eval_<task>.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

__all__ = ["evaluate_policy_run", "format_policy_report"]


def evaluate_policy_run(run_dir: str | Path, env: str = "metaworld", task: str | None = None,
                        episodes: int = 50, *, seed_offset: int = 100_000,
                        n_action_steps: int | None = None, steps: int | None = None,
                        solver: str | None = None, rtc: bool = False,
                        inference_delay: int = 0, checkpoint: str = "latest",
                        threads: int | None = 1, max_steps: int | None = None,
                        progress: bool = True,
                        write: bool = True) -> dict[str, Any]:
    """Simulator success of a policy run (see the module docstring).

    Args:
        run_dir: a ``metaworld_*_policy`` run. env: only ``metaworld``. task: a task name,
            a comma list or ``mt10`` (default: the tasks the run was trained on).
        episodes: held-out episodes per task. seed_offset: first evaluation seed.
        n_action_steps: actions executed per chunk (default: the policy's, H / 2).
        steps / solver: override the sampler. rtc / inference_delay: real-time chunking.
        threads: torch intra-op threads while evaluating (None: leave as is). One thread is
            the fastest for a batch-1 policy of this size on a CPU (measured: 11 ms vs 36 ms
            per chunk with two threads on a busy 2-core machine).
    """
    import torch
    from omegaconf import OmegaConf

    from modalities.actions.collect import resolve_tasks
    from modalities.actions.policy import Policy
    from modalities.actions.sim import evaluate

    if env != "metaworld":
        raise ValueError(f"env={env!r} is not supported; use env=metaworld")
    run = Path(run_dir)
    if not run.exists():
        raise FileNotFoundError(f"checkpoint directory {str(run)!r} does not exist")
    if task is None:
        cfg = OmegaConf.load(run / "config.yaml")
        task = str(OmegaConf.select(cfg, "data.collect.tasks", default="") or "")
        if not task:
            raise ValueError("the run's data has no collect.tasks; pass task=NAME")
    tasks = resolve_tasks(task)
    image_keys = OmegaConf.select(OmegaConf.load(run / "config.yaml"), "data.image_keys")
    image_size = None
    policy = Policy.from_pretrained(run, checkpoint=checkpoint, n_action_steps=n_action_steps,
                                    steps=steps, solver=solver, rtc=rtc,
                                    inference_delay=inference_delay)
    if image_keys:
        image_size = _image_size(run)
    per_task: dict[str, Any] = {}
    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        with torch.inference_mode():
            for name in tasks:
                per_task[name] = evaluate(policy, name, episodes=episodes,
                                          seed_offset=seed_offset, image_size=image_size,
                                          progress=progress, max_steps=max_steps)
        n_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(old_threads)
    rates = [r["success_rate"] for r in per_task.values()]
    out: dict[str, Any] = {
        "env": env, "tasks": tasks, "episodes_per_task": episodes, "seed_offset": seed_offset,
        "average_success_rate": sum(rates) / len(rates), "per_task": per_task,
        "chunk_latency_ms": policy.latency, "n_action_steps": policy.n_action_steps,
        "rtc": bool(rtc), "seconds": time.perf_counter() - t0,
        "threads": n_threads,
    }
    if write:
        tag = "mt10" if task == "mt10" else "_".join(tasks) if len(tasks) <= 3 else "multi"
        (run / f"eval_{tag}.json").write_text(json.dumps(out, indent=1, default=float))
    return out


def _image_size(run: Path) -> int:
    """Render size of the run's image observations (from the dataset's features)."""
    from omegaconf import OmegaConf

    from modalities.actions.data import ChunkDataset

    cfg = OmegaConf.load(run / "config.yaml")
    ds = ChunkDataset(cfg.data.root, horizon=int(cfg.data.horizon),
                      image_keys=list(cfg.data.image_keys))
    shape = ds.features[list(cfg.data.image_keys)[0]]
    return int(shape[-1] if shape[0] == 3 else shape[0])


def format_policy_report(res: dict[str, Any]) -> str:
    """Readable lines of :func:`evaluate_policy_run`'s result."""
    lines = [f"{'task':<26}{'success':>10}{'95% CI (Wilson)':>20}{'ms/action':>11}"]
    for name, r in res["per_task"].items():
        lo, hi = r["ci95"]
        lines.append(f"{name:<26}{100 * r['success_rate']:>9.1f}%"
                     f"{f'[{100 * lo:.1f}, {100 * hi:.1f}]':>20}{r['latency_ms']['mean']:>11.2f}")
    if len(res["per_task"]) > 1:
        lines.append(f"{'average':<26}{100 * res['average_success_rate']:>9.1f}%")
    lat = res["chunk_latency_ms"]
    nan = float("nan")
    lines.append(f"per-chunk latency: mean {lat.get('mean_ms', nan):.2f} ms, p50 "
                 f"{lat.get('p50_ms', nan):.2f}, p95 {lat.get('p95_ms', nan):.2f} "
                 f"({lat.get('count', 0)} chunks, {res['threads']} threads); "
                 f"{res['n_action_steps']} actions executed per chunk")
    return "\n".join(lines)
