"""Two CPU processes (torchrun, gloo) reproduce one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from toolkit.train.config import compose_recipe
from toolkit.train.logging import read_metrics
from toolkit.train.trainer import train_recipe

ROOT = Path(__file__).resolve().parents[3]
COMMON = [
    "trainer.max_steps=4", "trainer.checkpoint_every=4", "trainer.val_every=0",
    "trainer.log_every=1", "trainer.progress=false", "trainer.tensorboard=false",
    "trainer.warmup_steps=1", "model.hidden=16", "model.depth=1", "data.n=64",
    "trainer.lr=1e-2",
]


def test_two_process_gloo_matches_one_process(tmp_path):
    per_proc = 8
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "toolkit.cli", "train", "recipe=toy2d_cfm", *COMMON,
           f"trainer.batch_size={per_proc}", f"run_dir={tmp_path / 'ddp'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 and "gloo" in proc.stderr.lower() and "not" in proc.stderr.lower():
        pytest.skip(f"gloo unavailable: {proc.stderr[-500:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = train_recipe(compose_recipe("toy2d_cfm", [
        *COMMON, f"trainer.batch_size={2 * per_proc}", f"run_dir={tmp_path / 'one'}"]))
    ckpt = tmp_path / "ddp" / "checkpoints" / "step_00000004"
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(ckpt / name)), load_file(str(one["checkpoint"] / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{name}:{k}")
    losses = [r["loss"] for r in read_metrics(tmp_path / "ddp") if "loss" in r]
    assert losses == pytest.approx(one["history"], rel=1e-5)
    state = (ckpt / "state.json").read_text()
    assert '"world_size": 2' in state and (ckpt / "rng_rank1.json").is_file()
