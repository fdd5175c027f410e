"""Trainer: bit-exact resume, NaN stop, accumulation, schedules, init_from, guards."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from toolkit.train import checkpoint as ck
from toolkit.train.config import TrainerConfig, resolve_precision
from toolkit.train.logging import read_metrics
from toolkit.train.tasks import VectorCFMTask
from toolkit.train.trainer import GlobalBatchSampler, NonFiniteLossError


def _weights(ckpt):
    return load_file(str(ckpt / "model.safetensors")), load_file(str(ckpt / "ema.safetensors"))


def test_resume_is_bit_exact(tmp_path, tiny):
    a = tmp_path / "a"
    # 24 samples / batch 8: 3 batches per epoch, so 6 steps cross epochs (data order state)
    full = tiny(a, max_steps=6, checkpoint_every=3, keep_last=0).fit()
    b = tmp_path / "b"
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints" / "step_00000006")  # "crashed" after step 3
    torch.manual_seed(123)  # the resumed process starts from a different global RNG state
    res = tiny(b, max_steps=6, checkpoint_every=3, keep_last=0, resume="latest").fit()
    assert res["history"] == full["history"][3:]  # identical subsequent losses
    for x, y in zip(_weights(full["checkpoint"]), _weights(res["checkpoint"])):
        for k in x:
            assert torch.equal(x[k], y[k]), k
    assert [r["step"] for r in read_metrics(b) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in read_metrics(b)] == [r["loss"] for r in read_metrics(a)]


def test_run_dir_with_checkpoints_needs_resume(tmp_path, tiny):
    tiny(tmp_path, max_steps=2).fit()
    with pytest.raises(FileExistsError, match="resume=latest"):
        tiny(tmp_path, max_steps=2)


class NaNTask(VectorCFMTask):
    def loss(self, model, batch, ctx):
        out = super().loss(model, batch, ctx)
        return out["loss"] * float("nan") if ctx.step >= 2 else out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny):
    tr = tiny(tmp_path, task=NaNTask(val_samples=8), max_steps=5, checkpoint_every=1)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 3.*step_00000002"):
        tr.fit()
    ckpts = ck.list_checkpoints(tmp_path)
    assert ckpts[-1].name == "step_00000002"
    w = ck.load_checkpoint(ckpts[-1])["model"]
    assert all(torch.isfinite(v).all() for v in w.values())


class DeterministicTask(VectorCFMTask):
    """A noise-free objective, so accumulation can be compared with one big batch."""

    def loss(self, model, batch, ctx):
        x = batch[0]
        return ((model(x, torch.full((x.shape[0],), 0.5)) - x) ** 2).mean()


def test_grad_accumulation_matches_big_batch(tmp_path, tiny):
    kw = dict(max_steps=3, n=48, optimizer="sgd", betas=[0.0, 0.999], grad_clip=None)
    big = tiny(tmp_path / "big", task=DeterministicTask(), batch_size=8, grad_accum=1, **kw)
    acc = tiny(tmp_path / "acc", task=DeterministicTask(), batch_size=4, grad_accum=2, **kw)
    hb, ha = big.fit()["history"], acc.fit()["history"]
    assert hb == pytest.approx(ha, rel=1e-6)
    wa, wb = _weights(acc.last_ckpt)[0], _weights(big.last_ckpt)[0]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-6, atol=1e-7)
    assert hb[0] != hb[-1]  # it did train


def test_global_batch_sharding_and_resume_position():
    one = iter(GlobalBatchSampler(40, 8, seed=3))
    r0 = iter(GlobalBatchSampler(40, 4, world_size=2, rank=0, seed=3))
    r1 = iter(GlobalBatchSampler(40, 4, world_size=2, rank=1, seed=3))
    for _ in range(12):  # crosses epochs (5 global batches per epoch)
        assert next(one) == next(r0) + next(r1)
    later = iter(GlobalBatchSampler(40, 8, seed=3, start=12))
    assert next(later) == next(one)
    with pytest.raises(ValueError, match="fewer than one global micro-batch"):
        GlobalBatchSampler(7, 4, world_size=2)


def test_lr_schedules():
    c = TrainerConfig(lr=1.0, max_steps=11, warmup_steps=1, schedule="cosine", min_lr_ratio=0.1)
    assert c.lr_at(0) == 1.0 and c.lr_at(11) == pytest.approx(0.1)
    assert c.lr_at(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    w = TrainerConfig(lr=2.0, max_steps=10, warmup_steps=4, schedule="linear")
    assert [w.lr_at(s) for s in range(4)] == [0.5, 1.0, 1.5, 2.0]
    assert w.lr_at(7) == pytest.approx(2.0 * (1 - 3 / 6))
    assert TrainerConfig(lr=3.0, schedule="constant").lr_at(500) == 3.0
    with pytest.raises(ValueError, match="Did you mean 'cosine'"):
        TrainerConfig(schedule="cosin")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainerConfig(batch_size=0)


def test_init_from_loads_ema_and_refuses_other_models(tmp_path, tiny):
    src = tiny(tmp_path / "src", max_steps=2).fit()
    ema = load_file(str(src["checkpoint"] / "ema.safetensors"))
    tr = tiny(tmp_path / "ft", max_steps=1)
    from toolkit.train.trainer import Trainer

    tr2 = Trainer(tr.acc.unwrap_model(tr.model), tr.task, tr.dataset, tr.cfg, tmp_path / "ft2",
                  init_from=str(tmp_path / "src"))
    for k, v in tr2.acc.unwrap_model(tr2.model).state_dict().items():
        assert torch.equal(v, ema[k])
    from toolkit.nn.mlp import TimeMLP

    with pytest.raises(ValueError, match="does not fit this model.*shape mismatch"):
        Trainer(TimeMLP(dim=2, hidden=8, depth=1), tr.task, tr.dataset, tr.cfg,
                tmp_path / "ft3", init_from=str(tmp_path / "src"))
    with pytest.raises(ValueError, match="comes from recipe 'tiny'.*recipe 'other'"):
        Trainer(TimeMLP(dim=2, hidden=16, depth=1), tr.task, tr.dataset, tr.cfg,
                tmp_path / "ft5", init_from=str(tmp_path / "src"),
                model_cfg={"hidden": 16}, recipe="other")
    with pytest.raises(ValueError, match="different model.*model.hidden"):
        Trainer(TimeMLP(dim=2, hidden=8, depth=1), tr.task, tr.dataset, tr.cfg,
                tmp_path / "ft4", init_from=str(tmp_path / "src"),
                model_cfg={"hidden": 8}, recipe="tiny")


def test_bf16_autocast_on_cpu_and_fp16_needs_cuda(tmp_path, tiny):
    tr = tiny(tmp_path, max_steps=1, mixed_precision="bf16")
    assert tr.acc.mixed_precision == "bf16"
    res = tr.fit()
    assert math.isfinite(res["history"][0])
    w = _weights(res["checkpoint"])[0]
    assert all(v.dtype == torch.float32 for v in w.values())  # fp32 master weights
    if not torch.cuda.is_available():
        assert resolve_precision("auto") == "no"
        with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
            resolve_precision("fp16")
