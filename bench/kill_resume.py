"""Kill-and-resume trials: SIGKILL a training run at random moments, resume, compare.

Each trial trains ``recipe=toy2d_cfm`` (a wider MLP, a checkpoint every 2 steps) in a
subprocess and sends it SIGKILL ``kills`` times, restarting it with ``resume=latest`` each
time: odd-numbered kills come at a random moment 3-12 s after the start, even-numbered ones
the moment a checkpoint write is under way (its ``.tmp-*`` directory appears; a random one
of the first six writes). The last attempt runs to the end. The finished run
must equal an uninterrupted reference run of the same recipe and seed on the CPU:

- the losses logged for every step (``metrics.jsonl``) are identical (bit-exact floats);
- the final model and EMA weights are identical;
- every checkpoint left on disk passes its checksums.

A kill that lands while a checkpoint is being written leaves a ``.tmp-*`` directory; those
are counted separately (the previous checkpoint must still be used).

    .venv/bin/python -m bench.kill_resume --trials 20          # ~10 min on 2 cores
    .venv/bin/python -m bench.kill_resume --trials 2 --kills 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = [
    "trainer.max_steps=60", "trainer.checkpoint_every=2", "trainer.keep_last=2",
    "trainer.val_every=0", "trainer.log_every=1", "trainer.progress=false",
    "trainer.tensorboard=false", "model.hidden=512", "model.depth=3", "data.n=256",
    "trainer.batch_size=64",
]


def _cmd(run_dir: Path, resume: bool) -> list[str]:
    extra = ["resume=latest"] if resume else []
    return [sys.executable, "-m", "toolkit.cli", "train", "recipe=toy2d_cfm", *OVERRIDES,
            f"run_dir={run_dir}", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for ln in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(ln)
        if "loss" in rec:
            out[int(rec["step"])] = rec["loss"]
    return out


def _wait_for_write(ckdir: Path, proc: subprocess.Popen, skip: int = 0) -> None:
    """Poll every 0.5 ms until the ``skip + 1``-th checkpoint write starts (or the run ends)."""
    seen, inside = 0, False
    while proc.poll() is None:
        now = ckdir.is_dir() and any(p.name.startswith(".tmp-") for p in ckdir.iterdir())
        if now and not inside:
            if seen == skip:
                return
            seen += 1
        inside = now
        time.sleep(0.0005)


def _same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    for name in ("model.safetensors", "ema.safetensors"):
        x, y = load_file(str(a / name)), load_file(str(b / name))
        if x.keys() != y.keys() or any(not bool((x[k] == y[k]).all()) for k in x):
            return False
    return True


def reference(root: Path) -> Path:
    """The uninterrupted run (trained once per ``root``)."""
    run = root / "reference"
    if not (run / "checkpoints").is_dir():
        subprocess.run(_cmd(run, False), cwd=ROOT, env=_env(), check=True,
                       capture_output=True, timeout=600)
    return run


def trial(root: Path, ref: Path, seed: int, kills: int = 2, max_delay: float = 12.0
          ) -> dict[str, object]:
    """One trial: ``kills`` SIGKILLs at random moments, then a resumed run to the end."""
    from toolkit.train import checkpoint as ck

    rng = random.Random(seed)
    run = root / f"trial_{seed}"
    shutil.rmtree(run, ignore_errors=True)
    mid_write, landed = 0, 0
    for k in range(kills):
        proc = subprocess.Popen(_cmd(run, k > 0 and (run / "checkpoints").is_dir()), cwd=ROOT,
                                env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if k % 2 == 0:  # at a random moment
            time.sleep(rng.uniform(3.0, max_delay))
        else:  # as soon as a checkpoint write is under way (its .tmp-* directory exists)
            _wait_for_write(run / "checkpoints", proc, skip=rng.randrange(0, 6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        proc.wait()
        ckdir = run / "checkpoints"
        if ckdir.is_dir() and any(p.name.startswith(".tmp-") for p in ckdir.iterdir()):
            mid_write += 1
    resume = (run / "checkpoints").is_dir()
    done = subprocess.run(_cmd(run, resume), cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=600)
    if done.returncode != 0:
        return {"seed": seed, "ok": False, "error": done.stderr[-2000:]}
    a, b = _losses(ref), _losses(run)
    same_losses = a == b
    same_weights = _same_weights(ck.latest_checkpoint(run), ck.latest_checkpoint(ref))
    intact = all(ck.verify_checkpoint(p) is None for p in ck.list_checkpoints(run))
    return {"seed": seed, "ok": same_losses and same_weights and intact, "kills": landed,
            "mid_write": mid_write, "same_losses": same_losses, "same_weights": same_weights,
            "checkpoints_intact": intact, "steps": len(b)}


def main(argv: list[str] | None = None) -> int:
    """Run the trials and print one line each plus a summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--kills", type=int, default=2, help="SIGKILLs per trial")
    ap.add_argument("--root", default="/tmp/kill_resume")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    ref = reference(root)
    results = []
    for i in range(args.trials):
        r = trial(root, ref, args.seed + i, kills=args.kills)
        results.append(r)
        print(json.dumps(r), flush=True)
    ok = sum(bool(r["ok"]) for r in results)
    kills = sum(int(r.get("kills", 0)) for r in results)
    mid = sum(int(r.get("mid_write", 0)) for r in results)
    print(f"{ok}/{len(results)} trials equal to the uninterrupted run; {kills} SIGKILLs "
          f"landed, {mid} of them during a checkpoint write")
    return 0 if ok == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
