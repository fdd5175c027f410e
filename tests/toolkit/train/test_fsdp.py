"""``trainer.strategy=fsdp``: 2 CPU processes (torchrun, gloo, FSDP2) reproduce 1 process.

As in ``test_ddp_families``: 3 SGD steps, per-process batch B on 2 processes vs batch 2B on
1 process; losses and final model + EMA weights agree. Checkpoints written under FSDP are
full state dicts (same keys and shapes, load in one process, optimizer state included), and
resume crosses strategies in both directions: FSDP resumes a 1-process checkpoint and one
process resumes an FSDP checkpoint, and the two continuations agree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.toolkit.train.conftest import TINY_BY_RECIPE
from tests.toolkit.train.test_ddp_families import _overrides
from toolkit.train.checkpoint import load_checkpoint, load_run
from toolkit.train.config import TrainerConfig, compose_recipe
from toolkit.train.fsdp import shard_units
from toolkit.train.logging import read_metrics
from toolkit.train.trainer import build, train_recipe

ROOT = Path(__file__).resolve().parents[3]
STEP3 = Path("checkpoints") / "step_00000003"


def _torchrun(recipe: str, overrides: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "toolkit.cli", "train", f"recipe={recipe}", *overrides,
           "trainer.strategy=fsdp"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _assert_weights_close(a_dir: Path, b_dir: Path) -> None:
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(a_dir / name)), load_file(str(b_dir / name))
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].shape == b[k].shape, k
            err = (a[k] - b[k]).abs().max().item()
            assert err <= 1e-5 + 1e-4 * b[k].abs().max().item(), f"{name}:{k} differs by {err}"


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]


@pytest.fixture(scope="module")
def class2img(tmp_path_factory):
    """One FSDP (2 x batch 2) and one 1-process (batch 4) run of class2img_cfm, 3 steps."""
    tmp = tmp_path_factory.mktemp("fsdp_class2img")
    _torchrun("class2img_cfm", _overrides("class2img_cfm", tmp, 2, "fsdp"))
    one = train_recipe(compose_recipe("class2img_cfm", _overrides("class2img_cfm", tmp, 4, "one")))
    return tmp, one


@pytest.mark.parametrize("recipe", ["class2img_cfm", "mar_mnist"])
def test_fsdp_two_processes_match_one(recipe, class2img, tmp_path):
    assert recipe in TINY_BY_RECIPE
    model, _, _ = build(compose_recipe(recipe, _overrides(recipe, tmp_path, 2, "x")),
                        with_data=False)
    assert len(shard_units(model)) >= 2  # the policy really shards blocks, not just the root
    if recipe == "class2img_cfm":
        tmp, one = class2img
    else:  # a transformer, with gradient accumulation (no reduce-scatter on micro-batch 1)
        tmp, accum = tmp_path, ["trainer.grad_accum=2"]
        _torchrun(recipe, [*_overrides(recipe, tmp, 2, "fsdp"), *accum])
        one = train_recipe(compose_recipe(recipe, [*_overrides(recipe, tmp, 4, "one"), *accum]))
    assert _losses(tmp / "fsdp") == pytest.approx(one["history"], rel=1e-4, abs=1e-6)
    _assert_weights_close(tmp / "fsdp" / STEP3, one["checkpoint"])


def test_fsdp_checkpoint_is_full_and_resumes_across_strategies(class2img):
    tmp, one = class2img
    fsdp_ckpt = tmp / "fsdp" / STEP3
    data, ref = load_checkpoint(fsdp_ckpt), load_checkpoint(one["checkpoint"])
    assert data["state"]["world_size"] == 2 and data["state"]["strategy"] == "fsdp"
    # full, unsharded: the same keys and shapes as the 1-process checkpoint, optimizer too
    for part in ("model", "ema"):
        assert {k: v.shape for k, v in data[part].items()} == {
            k: v.shape for k, v in ref[part].items()}
    opt, opt_ref = data["optimizer"], ref["optimizer"]
    assert opt["param_groups"][0]["params"] == opt_ref["param_groups"][0]["params"]
    for i, s in opt_ref["state"].items():
        for k, v in s.items():
            torch.testing.assert_close(opt["state"][i][k], v, rtol=1e-4, atol=1e-5)
    model, _, _, _ = load_run(tmp / "fsdp")  # what `toolkit sample` / `toolkit eval` do
    for k, v in model.state_dict().items():
        if k in data["ema"]:
            assert torch.equal(v, data["ema"][k]), k
    # FSDP resumes the 1-process run, one process resumes the FSDP run: same step 4
    shutil.copytree(tmp / "one", tmp / "fsdp_from_one")
    shutil.copytree(tmp / "fsdp", tmp / "one_from_fsdp")
    more = ["trainer.max_steps=4", "trainer.checkpoint_every=4", "resume=latest"]
    _torchrun("class2img_cfm", [*_overrides("class2img_cfm", tmp, 2, "fsdp_from_one"), *more])
    res = train_recipe(compose_recipe(
        "class2img_cfm", [*_overrides("class2img_cfm", tmp, 4, "one_from_fsdp"), *more]))
    assert res["step"] == 4 and len(res["history"]) == 1
    a = _losses(tmp / "fsdp_from_one")
    assert len(a) == 4 and a[:3] == pytest.approx(one["history"], rel=1e-4, abs=1e-6)
    assert a[3] == pytest.approx(res["history"][0], rel=1e-4, abs=1e-6)
    _assert_weights_close(tmp / "fsdp_from_one" / "checkpoints" / "step_00000004",
                          res["checkpoint"])


def test_bad_strategy_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"trainer\.strategy.*Did you mean 'fsdp'"):
        TrainerConfig(strategy="fsd")
    cfg = compose_recipe("toy2d_cfm", ["trainer.strategy=zero3", f"run_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"trainer\.strategy"):
        train_recipe(cfg)


def test_fsdp_single_process_is_plain(tiny, tmp_path):
    tr = tiny(tmp_path / "one", strategy="fsdp", max_steps=2)
    assert not tr.fsdp and type(tr.model).__name__ == "TimeMLP"  # nothing wrapped
    assert tr.fit()["step"] == 2
