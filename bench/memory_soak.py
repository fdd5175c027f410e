"""Resource hygiene over a long run: memory stays flat, loader workers and temp files go.

Trains the 2-D flow (``TimeMLP`` on moons, the model of ``recipe=toy2d_cfm``) for 10,000
steps with 2 data-loader worker processes, a checkpoint every 1,000 steps (keep 3) and
validation samples every 2,000, recording this process's resident memory (VmRSS) every 250
steps from inside the task's loss. Reports the RSS growth between step 1,000 (after
warm-up: allocator pools, first checkpoint) and the end, from just after the first
validation (a one-off step: plotting, sampler buffers) to the end, and over the second
half; the worker processes still alive after ``fit`` returns; and temporary files left in
the run directory, or new in the temp folder (that list counts any process's files).

    .venv/bin/python -m bench.memory_soak                 # 10k steps, ~2-4 min on 2 cores
    .venv/bin/python -m bench.memory_soak --steps 2000    # quicker
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from toolkit.train.tasks import VectorCFMTask


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux ``/proc``; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class RSSProbe(VectorCFMTask):
    """The 2-D CFM task, recording ``(step, RSS MiB)`` every ``every`` steps."""

    def __init__(self, every: int = 250, **kw: Any) -> None:
        super().__init__(**kw)
        self.every, self.trace = int(every), []

    def loss(self, model: Any, batch: Any, ctx: Any) -> Any:  # noqa: D102
        if ctx.micro == 0 and ctx.step % self.every == 0:
            self.trace.append((ctx.step, rss_mb()))
        return super().loss(model, batch, ctx)


def _temp_entries() -> set[str]:
    return set(os.listdir(tempfile.gettempdir()))


def soak(steps: int = 10_000, workers: int = 2, root: str | None = None) -> dict[str, Any]:
    """Run the soak and return its measurements (see the module docstring)."""
    from toolkit.nn.mlp import TimeMLP
    from toolkit.train.config import TrainerConfig
    from toolkit.train.tasks import SamplerSpec, toy2d_dataset
    from toolkit.train.trainer import Trainer

    torch.manual_seed(0)
    before_tmp = _temp_entries()
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        run = Path(tmp) / "run"
        task = RSSProbe(val_samples=512, sampler=SamplerSpec(steps=8))
        cfg = TrainerConfig(max_steps=steps, batch_size=256, lr=2e-3, checkpoint_every=1000,
                            keep_last=3, val_every=2000, log_every=50, num_workers=workers,
                            progress=False, tensorboard=False)
        tr = Trainer(TimeMLP(dim=2, hidden=128, depth=3), task, toy2d_dataset("moons", n=8192),
                     cfg, run, seed=0)
        t0 = time.perf_counter()
        tr.fit()
        wall = time.perf_counter() - t0
        time.sleep(0.5)  # give exiting workers a moment
        alive = [p.pid for p in multiprocessing.active_children()]
        leftovers = [str(p.relative_to(run)) for p in run.rglob("*")
                     if p.name.startswith(".") and ("tmp" in p.name or "trash" in p.name)]
        ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    trace = task.trace
    base = next((r for s, r in trace if s >= 1000), trace[0][1])
    growth = trace[-1][1] - base
    # the first validation (matplotlib, the sampler's buffers) is a one-off step up: the
    # leak test is the growth from the first probe after it to the end
    after = [(s, r) for s, r in trace if s > cfg.val_every] or trace
    half = [(s, r) for s, r in after if s >= (after[0][0] + after[-1][0]) / 2] or after
    return {"steps": steps, "workers": workers, "wall_s": wall, "rss_start_mb": trace[0][1],
            "rss_at_1k_mb": base, "rss_end_mb": trace[-1][1], "rss_growth_mb": growth,
            "rss_after_first_val_mb": after[0][1],
            "rss_growth_after_first_val_mb": trace[-1][1] - after[0][1],
            "rss_growth_second_half_mb": half[-1][1] - half[0][1],
            "rss_max_mb": max(r for _, r in trace), "workers_alive_after_fit": alive,
            "run_dir_temp_files": leftovers, "checkpoints_kept": ckpts,
            "new_temp_entries": sorted(_temp_entries() - before_tmp), "trace": trace}


def main(argv: list[str] | None = None) -> int:
    """Print the soak's measurements as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    res = soak(args.steps, args.workers)
    trace = res.pop("trace")
    print(json.dumps(res, indent=1))
    print("RSS MiB by step: " + ", ".join(f"{s}:{r:.0f}" for s, r in trace[::4]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
