"""Two CPU processes (torchrun, gloo) reproduce one process, for one recipe per family.

Each recipe runs tiny (``conftest.TINY_BY_RECIPE``) for 3 steps with a per-process batch B
on 2 processes and with batch 2B on 1 process; the losses and the final weights agree (the
task draws all noise through the step context, so both runs see the same global noise).
SGD, not Adam: Adam's first steps are ~ lr * sign(g), which turns float-rounding noise in
near-zero gradients (reduction order differs between 1 and 2 processes) into lr-sized
weight differences; SGD keeps the comparison at rounding level.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.toolkit.train.conftest import TINY, TINY_BY_RECIPE, tiny_data_overrides
from toolkit.train.config import compose_recipe
from toolkit.train.logging import read_metrics
from toolkit.train.trainer import train_recipe

ROOT = Path(__file__).resolve().parents[3]
#: one recipe per family: images (pixel U-Net, text DiT, codec), speech, robot policies,
#: structures, trajectories, AR + diffusion hybrids
FAMILIES = ["class2img_cfm", "text2img_cfm", "vae_train", "text2speech_cfm",
            "metaworld_flow_policy", "protein_backbone_se3fm", "rigid_trajectory_se3fm",
            "diffusion_forcing_traj", "mar_mnist", "transfusion_mnist"]


#: dropout masks come from each process's own RNG (not the step context): switched off here
NO_DROPOUT = {"text2speech_cfm": ["model.enc_dropout=0", "model.dp_dropout=0"]}


def _overrides(recipe: str, tmp: Path, batch: int, run: str) -> list[str]:
    tiny = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.batch_size",
                                                  "trainer.checkpoint_every"))]
    return [*tiny, *TINY_BY_RECIPE.get(recipe, []), *tiny_data_overrides(recipe, tmp),
            *NO_DROPOUT.get(recipe, []),
            "trainer.max_steps=3", "trainer.checkpoint_every=3", "trainer.val_every=0",
            f"trainer.batch_size={batch}", "trainer.warmup_steps=1", f"run_dir={tmp / run}",
            "trainer.optimizer=sgd", "trainer.lr=0.01"]


@pytest.mark.parametrize("recipe", FAMILIES)
def test_two_processes_match_one(recipe, tmp_path):
    if recipe not in TINY_BY_RECIPE:
        pytest.fail(f"{recipe} has no tiny overrides in conftest.TINY_BY_RECIPE")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "toolkit.cli", "train", f"recipe={recipe}",
           *_overrides(recipe, tmp_path, 2, "ddp")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = train_recipe(compose_recipe(recipe, _overrides(recipe, tmp_path, 4, "one")))
    ckpt = tmp_path / "ddp" / "checkpoints" / "step_00000003"
    losses = [r["loss"] for r in read_metrics(tmp_path / "ddp") if "loss" in r]
    assert losses == pytest.approx(one["history"], rel=1e-4, abs=1e-6)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(ckpt / name)), load_file(str(one["checkpoint"] / name))
        assert a.keys() == b.keys()
        for k in a:
            if not a[k].is_floating_point():  # integer / bool buffers: exactly equal
                assert torch.equal(a[k], b[k]), f"{name}:{k} differs"
                continue
            err = (a[k] - b[k]).abs().max().item()
            assert err <= 1e-5 + 1e-4 * b[k].abs().max().item(), f"{name}:{k} differs by {err}"
