"""Checkpoints: atomic writes survive a crash, keep-last-K, RNG snapshots, weight checks."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from toolkit.train import checkpoint as ck


def _save(run, step, w=0.0, **kw):
    return ck.save_checkpoint(run, step, model_state={"w": torch.full((2,), w)},
                              ema_state={"w": torch.full((2,), w)},
                              optimizer_state={"state": {}, "param_groups": []},
                              state={"step": step}, config_yaml="a: 1\n", **kw)


def test_crash_mid_write_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    first = _save(tmp_path, 1, w=1.0)

    def crash(*a, **k):
        raise OSError("disk died mid-write")

    monkeypatch.setattr(ck.torch, "save", crash)  # optimizer.pt is written after the weights
    with pytest.raises(OSError, match=r"mid-write.*step_00000001 is intact"):
        _save(tmp_path, 2, w=2.0)
    monkeypatch.undo()
    assert ck.list_checkpoints(tmp_path) == [first]
    assert ck.latest_checkpoint(tmp_path) == first
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "checkpoints").iterdir())
    data = ck.load_checkpoint(first)
    assert torch.equal(data["model"]["w"], torch.ones(2)) and data["state"]["step"] == 1
    second = _save(tmp_path, 2, w=2.0)  # the next save cleans the stale temp dir
    assert ck.latest_checkpoint(tmp_path) == second
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "checkpoints").iterdir())


def test_resave_same_step_replaces_atomically(tmp_path):
    _save(tmp_path, 3, w=1.0)
    p = _save(tmp_path, 3, w=5.0)
    assert torch.equal(ck.load_checkpoint(p)["model"]["w"], torch.full((2,), 5.0))
    assert len(ck.list_checkpoints(tmp_path)) == 1


def test_keep_last_k(tmp_path):
    for s in range(1, 6):
        _save(tmp_path, s)
        ck.prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]
    assert ck.prune_checkpoints(tmp_path, keep_last=0) == []  # 0 keeps everything


def test_rng_snapshot_roundtrip():
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    snap = ck.rng_state()
    a = (torch.rand(3), random.random(), np.random.rand())
    ck.set_rng_state(snap)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    g = torch.Generator().manual_seed(5)
    s = ck.generator_state(g)
    x = torch.randn(4, generator=g)
    ck.set_generator_state(g, s)
    assert torch.equal(x, torch.randn(4, generator=g))


def test_load_weights_names_the_mismatch(tmp_path):
    net = nn.Linear(2, 3)
    with pytest.raises(ValueError, match=r"shape mismatch weight: checkpoint \(4, 2\)"):
        ck.load_weights(net, {"weight": torch.zeros(4, 2), "bias": torch.zeros(3)}, "ckpt X")
    with pytest.raises(ValueError, match=r"missing \['bias'\]"):
        ck.load_weights(net, {"weight": torch.zeros(3, 2)}, "ckpt X")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        ck.resolve_checkpoint(tmp_path / "nowhere", tmp_path)
