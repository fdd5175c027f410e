"""Inference API: action queue and reset, observation formats and errors, real-time
chunking, diffusion-policy baseline and the ``from_pretrained`` round trip."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from modalities.actions.nets import FlowPolicyNet, TemporalUNet1d
from modalities.actions.policy import FlowPolicy, Policy, rtc_weights
from modalities.actions.task import DiffusionPolicyTask, FlowPolicyTask
from tests.modalities.actions.test_task import A, FakeChunkDataset, H, S, train_tiny_policy


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """An untrained (noise-sensitive) flow policy with a camera and hashed instructions."""
    torch.manual_seed(0)
    task = FlowPolicyTask(text=True, text_kind="hash", text_path="16", val_batch=0)
    model = task.wrap_model(FlowPolicyNet(S, A, H, width=32, depth=2, heads=2, text_dim=16,
                                          cameras=("top",)))
    task.setup(FakeChunkDataset(camera=True), tmp_path_factory.mktemp("flow"), model)
    return model, task


def obs_single(seed: int = 0, hwc: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return {"observation.state": rng.uniform(-1, 1, S).astype(np.float32),
            "observation.images.top": img if hwc else torch.from_numpy(img).permute(2, 0, 1)
            .float() / 255.0, "task": "push the block left"}


def obs_batch(b: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"observation.state": torch.rand(b, S, generator=g) * 2 - 1,
            "observation.images.top": torch.rand(b, 3, 16, 16, generator=g),
            "task": ["push the block left"] * b}


def test_select_action_contract_queue_and_reset(flow):
    pol = Policy(*flow, seed=1)
    assert pol.n_action_steps == H // 2 and FlowPolicy is Policy
    acts = [pol.select_action(obs_single()) for _ in range(pol.n_action_steps)]
    assert all(a.shape == (A,) and a.dtype == torch.float32 for a in acts)
    assert pol.latency["count"] == 1  # one chunk for n_action_steps actions
    ref = Policy(*flow, seed=1).predict_action_chunk(obs_single())  # same noise
    assert ref.shape == (1, H, A)
    assert torch.allclose(torch.stack(acts), ref[0, : pol.n_action_steps], atol=1e-5)
    pol.select_action(obs_single())
    assert pol.latency["count"] == 2 and pol.latency["mean_ms"] > 0
    pol.select_action(obs_single())
    pol.reset()  # drops the queue: the next call plans again
    pol.select_action(obs_single())
    assert pol.latency["count"] == 3
    # numpy HxWx3 uint8 == torch (3, h, w) float; batched (B, S) -> (B, A)
    a1 = Policy(*flow, seed=2).select_action(obs_single(hwc=True))
    a2 = Policy(*flow, seed=2).select_action(obs_single(hwc=False))
    assert torch.allclose(a1, a2, atol=1e-5)
    pol.reset()
    out = pol.select_action(obs_batch(3))
    assert out.shape == (3, A) and out.dtype == torch.float32
    assert pol.predict_action_chunk(obs_batch(3)).shape == (3, H, A)


def test_bad_observations_name_the_key(flow):
    pol = Policy(*flow)
    good = obs_single()
    for key in ("observation.state", "observation.images.top", "task"):
        with pytest.raises(KeyError, match=key):
            pol.select_action({k: v for k, v in good.items() if k != key})
    with pytest.raises(ValueError, match=r"'observation.state' must be \(3,\) or \(B, 3\)"):
        pol.select_action(dict(good, **{"observation.state": np.zeros(4, np.float32)}))
    with pytest.raises(ValueError, match="'observation.images.top' must be"):
        pol.select_action(dict(good, **{"observation.images.top": np.zeros((16, 16))}))
    bad = good["observation.state"].copy()
    bad[1] = np.nan
    with pytest.raises(ValueError, match="'observation.state' contains NaN"):
        pol.select_action(dict(good, **{"observation.state": bad}))
    with pytest.raises(ValueError, match="disagree on the batch size"):
        pol.select_action(dict(obs_batch(3), **{"observation.images.top": torch.rand(
            2, 3, 16, 16)}))
    with pytest.raises(TypeError, match="'task' must be"):
        pol.select_action(dict(good, task=[1]))
    pol.select_action(obs_batch(3))
    with pytest.raises(ValueError, match="batch size changed from 3 to 2; call reset"):
        pol.select_action(obs_batch(2))
    with pytest.raises(ValueError, match="n_action_steps"):
        Policy(*flow, n_action_steps=H + 1)
    with pytest.raises(ValueError, match="d <= n_action_steps"):
        Policy(*flow, rtc=True, n_action_steps=H - 1, inference_delay=2)


def test_rtc_weights_follow_the_soft_mask():
    w = rtc_weights(16, 3, 6)
    assert torch.equal(w[:3], torch.ones(3)) and torch.equal(w[10:], torch.zeros(6))
    assert (w[3:10] > 0).all() and (w[3:10] < 1).all() and (w[3:10].diff() < 0).all()
    c = (16 - 6 - 3) / (16 - 6 - 3 + 1)
    assert abs(float(w[3]) - c * np.expm1(c) / np.expm1(1.0)) < 1e-6


def test_rtc_inpaints_the_overlap_with_the_previous_chunk(flow):
    d, s = 2, 4
    first = obs_batch(4, seed=0)
    later = dict(first, **{"observation.state": first["observation.state"] + 0.1})
    rtc = Policy(*flow, rtc=True, inference_delay=d, n_action_steps=s, seed=3)
    prev = rtc.predict_action_chunk(first)  # (B, H, A)
    new = rtc.predict_action_chunk(later, prev_chunk=prev)
    plain = Policy(*flow, n_action_steps=s, seed=4).predict_action_chunk(later)
    err_rtc = (new[:, :d] - prev[:, s:s + d]).abs().max()
    err_plain = (plain[:, :d] - prev[:, s:s + d]).abs().max()
    scale = prev.abs().mean()
    assert err_rtc < 0.2 * scale and err_plain > 0.5 * scale, (err_rtc, err_plain, scale)
    assert err_rtc < 0.1 * err_plain
    # through select_action: the d delay steps replay A_prev[s:s+d], then the new chunk
    pol = Policy(*flow, rtc=True, inference_delay=d, n_action_steps=s, seed=5)
    o = obs_batch(2, seed=1)
    out = [pol.select_action(o) for _ in range(s)]
    old = pol.last_chunk.clone()
    out += [pol.select_action(o) for _ in range(s)]
    new = pol.last_chunk
    assert not torch.equal(new, old) and pol.latency["count"] == 2
    for j in range(d):
        assert torch.equal(out[s + j], old[:, s + j])
    assert torch.equal(out[s + d], new[:, d])
    assert (new[:, :d] - old[:, s:s + d]).abs().max() < 0.2 * old.abs().mean()


def test_diffusion_policy_baseline(tmp_path):
    torch.manual_seed(0)
    task = DiffusionPolicyTask(val_batch=0, clip_actions=True)
    model = task.wrap_model(TemporalUNet1d(S, A, H, down_dims=(16, 32), obs_dim=16,
                                           step_dim=16))
    data = FakeChunkDataset()
    task.setup(data, tmp_path, model)
    pol = Policy(model, task, n_action_steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an untrained model's actions get clipped
        a = pol.select_action({"observation.state": np.zeros(S, np.float32)})
        chunk = pol.predict_action_chunk({"observation.state": torch.zeros(2, S)})
    assert a.shape == (A,) and torch.isfinite(a).all() and chunk.shape == (2, H, A)
    lo, hi = data.stats["action"]["min"], data.stats["action"]["max"]
    assert (chunk >= lo - 1e-5).all() and (chunk <= hi + 1e-5).all()
    assert set(pol.clipped) == {"action"} and pol.clipped["action"] >= 0
    with pytest.raises(ValueError, match="flow policy"):
        Policy(model, task, rtc=True, inference_delay=1)


def test_from_pretrained_round_trip(tmp_path):
    trainer, _ = train_tiny_policy(tmp_path / "run", steps=20)
    pol = Policy.from_pretrained(tmp_path / "run", device="cpu", seed=7)
    assert isinstance(pol.task, FlowPolicyTask) and bool(pol.model.normalizer.fitted)
    obs = {"observation.state": torch.rand(2, S), "task": ["push the block right"] * 2}
    chunk = pol.predict_action_chunk(obs)
    ref = trainer.task.predict_chunk(trainer.ema.model.eval(), obs,
                                     torch.Generator().manual_seed(7))
    assert chunk.shape == (2, H, A) and torch.allclose(chunk, ref, atol=1e-5)
    pol.reset()
    a = pol.select_action({"observation.state": obs["observation.state"][0].numpy(),
                           "task": "push the block right"})
    assert a.shape == (A,)
    with pytest.raises(FileNotFoundError):
        Policy.from_pretrained(tmp_path / "nothing")
