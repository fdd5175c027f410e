"""Fault tolerance: damaged checkpoints are detected and skipped, a full disk loses nothing,
non-finite losses follow ``trainer.nonfinite``."""

from __future__ import annotations

import errno
import math
import shutil

import pytest
import torch

from toolkit.train import checkpoint as ck
from toolkit.train.config import TrainerConfig
from toolkit.train.logging import read_metrics
from toolkit.train.tasks import VectorCFMTask
from toolkit.train.trainer import NonFiniteLossError


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_ema", "state_json"])
def test_damaged_checkpoint_falls_back_with_warning(tmp_path, tiny, damage):
    tiny(tmp_path, max_steps=4, checkpoint_every=2, keep_last=0).fit()
    good, bad = ck.list_checkpoints(tmp_path)
    assert ck.verify_checkpoint(bad) is None
    if damage == "truncate":
        _truncate(bad / "model.safetensors")
    elif damage == "flip":  # same size, different bytes: only the checksum sees it
        _flip_byte(bad / "ema.safetensors")
    elif damage == "delete_ema":
        (bad / "ema.safetensors").unlink()
    else:
        _truncate(bad / "state.json", 0.3)
    assert ck.verify_checkpoint(bad) is not None
    with pytest.warns(RuntimeWarning, match="step_00000004.*damaged.*falling back"):
        assert ck.latest_checkpoint(tmp_path) == good
    with pytest.raises(ValueError, match="step_00000004.*damaged"):
        ck.resolve_checkpoint(bad, tmp_path)  # an explicit checkpoint is refused, not replaced


def test_resume_after_corruption_reproduces_the_uninterrupted_run(tmp_path, tiny):
    a, b = tmp_path / "a", tmp_path / "b"
    full = tiny(a, max_steps=6, checkpoint_every=2, keep_last=0).fit()
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints" / "step_00000006")  # killed after writing step 4 ...
    _flip_byte(b / "checkpoints" / "step_00000004" / "model.safetensors")  # ... damaged
    with pytest.warns(RuntimeWarning, match="falling back"):
        res = tiny(b, max_steps=6, checkpoint_every=2, keep_last=0, resume="latest").fit()
    assert res["history"] == full["history"][2:]  # resumed from step 2, same losses


def test_disk_full_during_write_keeps_previous_checkpoint(tmp_path, tiny, monkeypatch):
    tr = tiny(tmp_path, max_steps=4, checkpoint_every=2)

    real = ck.save_file
    calls = {"n": 0}

    def full_disk(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] > 2:  # step 2 saves model + ema; step 4's first file hits a full disk
            real(tensors, path, *a, **k)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ck, "save_file", full_disk)
    with pytest.raises(OSError, match=r"No space left.*step_00000002 is intact"):
        tr.fit()
    monkeypatch.undo()
    (only,) = ck.list_checkpoints(tmp_path)
    assert only.name == "step_00000002" and ck.verify_checkpoint(only) is None
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "checkpoints").iterdir())


class SpikeTask(VectorCFMTask):
    """A loss that is NaN at the listed steps."""

    def __init__(self, bad_steps, **kw):
        super().__init__(**kw)
        self.bad_steps = set(bad_steps)

    def loss(self, model, batch, ctx):
        out = super().loss(model, batch, ctx)
        return out["loss"] * float("nan") if ctx.step in self.bad_steps else out


@pytest.mark.parametrize("policy", ["skip", "reduce_lr"])
def test_nonfinite_skip_and_reduce_lr(tmp_path, tiny, policy):
    ref = tiny(tmp_path / "ref", max_steps=3, lr=1e-2).fit()
    tr = tiny(tmp_path / "run", task=SpikeTask([1], val_samples=8), max_steps=6,
              nonfinite=policy, schedule="constant", lr=1e-2)
    w0 = {k: v.clone() for k, v in tr.model.state_dict().items()}
    res = tr.fit()
    hist = res["history"]
    assert math.isnan(hist[1]) and all(math.isfinite(v) for i, v in enumerate(hist) if i != 1)
    assert hist[0] == ref["history"][0]
    assert any(not torch.equal(w0[k], v) for k, v in tr.model.state_dict().items())
    logged = [r for r in read_metrics(tmp_path / "run") if "nonfinite" in r]
    assert logged and logged[0]["step"] == 2 and logged[0]["nonfinite"] == 1.0
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run") if "lr" in r]
    scale = 0.5 if policy == "reduce_lr" else 1.0
    assert lrs[-1] == pytest.approx(1e-2 * scale)
    # the policy state survives a resume
    state = ck.load_checkpoint(res["checkpoint"])["state"]
    assert state["nonfinite"]["total"] == 1 and state["nonfinite"]["lr_scale"] == scale


def test_nonfinite_streak_stops(tmp_path, tiny):
    tr = tiny(tmp_path, task=SpikeTask(range(1, 10), val_samples=8), max_steps=8,
              nonfinite="skip", max_nonfinite=2)
    with pytest.raises(NonFiniteLossError, match=r"3 bad steps in a row, trainer.max_nonfinite=2"):
        tr.fit()


def test_nonfinite_config_is_checked():
    with pytest.raises(ValueError, match="trainer.nonfinite"):
        TrainerConfig(nonfinite="ignore")
    with pytest.raises(ValueError, match="nonfinite_lr_factor"):
        TrainerConfig(nonfinite_lr_factor=1.5)
