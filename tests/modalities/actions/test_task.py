"""Policy tasks: masked losses, set-up checks, and a tiny Trainer run that learns.

Also home of :class:`FakeChunkDataset`, a synthetic dataset with the chunk-dataset contract
whose action chunk is a deterministic function of the state (and of the instruction).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modalities.actions.nets import FlowPolicyNet, TemporalUNet1d
from modalities.actions.task import DiffusionPolicyTask, FlowPolicyTask
from toolkit.train.config import TrainerConfig
from toolkit.train.tasks import StepContext
from toolkit.train.trainer import Trainer

S, A, H = 3, 2, 8
TASKS = ["push the block left", "push the block right"]


class FakeChunkDataset(torch.utils.data.Dataset):
    """``n`` items: state ``s ~ U[-1, 1]^S``, chunk ``a_k = sign * (s[:A] (1 + k/H) + 0.5 s[2])``
    (``sign = -1`` for the "left" instruction), the last chunk steps of every 4th item
    padded (garbage actions there), optional camera ``top`` (3, 16, 16) in [0, 1]."""

    def __init__(self, n: int = 64, seed: int = 0, camera: bool = False,
                 state_dim: int = S, horizon: int = H) -> None:
        g = torch.Generator().manual_seed(seed)
        self.state_dim, self.action_dim, self.horizon = state_dim, A, horizon
        self.state = torch.rand(n, state_dim, generator=g) * 2 - 1  # (n, S)
        self.task_id = torch.randint(0, 2, (n,), generator=g)
        sign = (self.task_id * 2 - 1).float()[:, None, None]  # (n, 1, 1)
        k = torch.arange(horizon).float()[None, :, None] / horizon
        base = self.state[:, None, :A] * (1 + k) + 0.5 * self.state[:, None, 2:3]
        self.action = (sign * base).float()  # (n, H, A)
        self.pad = torch.zeros(n, horizon, dtype=torch.bool)
        self.pad[::4, -3:] = True
        self.action[self.pad] = 100.0  # must never reach the loss
        self.camera = camera
        self.images = torch.rand(n, 3, 16, 16, generator=g)
        self.tasks = list(TASKS)
        flat = self.action[~self.pad]  # (m, A)
        self.stats = {k: _stats(v) for k, v in (("observation.state", self.state),
                                                ("action", flat))}
        self.features = {"observation.state": (state_dim,), "action": (A,)}
        if camera:
            self.features["observation.images.top"] = (3, 16, 16)

    def __len__(self) -> int:
        return len(self.state)

    def __getitem__(self, i: int) -> dict:
        item = {"observation.state": self.state[i], "action": self.action[i],
                "action_is_pad": self.pad[i], "task": TASKS[int(self.task_id[i])]}
        if self.camera:
            item["observation.images.top"] = self.images[i]
        return item


def _stats(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"mean": x.mean(0), "std": x.std(0), "min": x.min(0).values,
            "max": x.max(0).values, "q01": torch.quantile(x, 0.01, 0),
            "q99": torch.quantile(x, 0.99, 0)}


def flow_setup(tmp_path: Path, text: bool = False, camera: bool = False, **net_kw):
    data = FakeChunkDataset(camera=camera)
    task = FlowPolicyTask(text=text, text_kind="hash", text_path="16" if text else None,
                          val_batch=8)
    net = FlowPolicyNet(S, A, H, width=32, depth=2, heads=2, text_dim=16 if text else None,
                        cameras=("top",) if camera else (), **net_kw)
    model = task.wrap_model(net)
    task.setup(data, tmp_path, model)
    return data, task, model


def batch_of(data, idx) -> dict:
    return torch.utils.data.default_collate([data[i] for i in idx])


def test_setup_fits_normalizer_and_loss_ignores_padding(tmp_path):
    data, task, model = flow_setup(tmp_path, text=True, camera=True)
    assert bool(model.normalizer.fitted)
    b = batch_of(data, range(8))
    ctx = lambda: StepContext(0, 0, torch.Generator().manual_seed(3))  # noqa: E731
    loss = task.loss(model, b, ctx())["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    b2 = dict(b, action=b["action"].clone())
    b2["action"][b["action_is_pad"]] = -1e4  # other garbage in padded steps: same loss
    assert torch.allclose(task.loss(model, b2, ctx())["loss"], loss)
    loss.backward()
    assert model.net.text_proj.weight.grad is not None
    assert model.net.cams["top"].pos.grad is not None
    out = task.predict_chunk(model, b, torch.Generator().manual_seed(0), steps=2)
    assert out.shape == (8, H, A) and out.dtype == torch.float32
    res = task.validate(model, 0, tmp_path, torch.Generator().manual_seed(0))
    assert set(res) == {"val/loss", "val/chunk_mse"}


def test_state_noise_perturbs_training_states_only(tmp_path):
    data, task, model = flow_setup(tmp_path)
    b = batch_of(data, range(8))
    clean = task.model_obs(model, b)["state"]
    ctx = StepContext(0, 0, torch.Generator().manual_seed(3))
    assert torch.equal(task.train_obs(model, b, ctx)["state"], clean)  # default: no noise
    task.state_noise = 0.5
    noisy = task.train_obs(model, b, ctx)["state"]
    assert 0.3 < (noisy - clean).std().item() < 0.7
    assert torch.equal(task.model_obs(model, b)["state"], clean)  # inference stays clean
    l1 = task.loss(model, b, StepContext(0, 0, torch.Generator().manual_seed(3)))["loss"]
    task.state_noise = 0.0
    l0 = task.loss(model, b, StepContext(0, 0, torch.Generator().manual_seed(3)))["loss"]
    assert torch.isfinite(l1) and not torch.allclose(l0, l1)
    with pytest.raises(ValueError, match="state_noise"):
        FlowPolicyTask(state_noise=-0.1)


def test_setup_rejects_mismatched_data(tmp_path):
    task = FlowPolicyTask(val_batch=0)
    model = task.wrap_model(FlowPolicyNet(S + 4, A, H, width=32, depth=1, heads=2))
    with pytest.raises(ValueError, match=r"'observation.state' has shape \(7,\) in the model "
                                         r"but \(3,\) in the data"):
        task.setup(FakeChunkDataset(), tmp_path, model)
    model = task.wrap_model(FlowPolicyNet(S, A, H + 1, width=32, depth=1, heads=2))
    with pytest.raises(ValueError, match="horizon"):
        task.setup(FakeChunkDataset(), tmp_path, model)
    model = task.wrap_model(FlowPolicyNet(S, A, H, width=32, depth=1, heads=2, cameras=("top",)))
    with pytest.raises(KeyError, match="top"):
        task.setup(FakeChunkDataset(), tmp_path, model)
    with pytest.raises(ValueError, match="text_dim"):
        FlowPolicyTask(text=True, text_kind="hash").wrap_model(
            FlowPolicyNet(S, A, H, width=32, depth=1, heads=2, text_dim=8))


def test_diffusion_task_loss_and_ddim(tmp_path):
    data = FakeChunkDataset()
    task = DiffusionPolicyTask(val_batch=4)
    model = task.wrap_model(TemporalUNet1d(S, A, H, down_dims=(16, 32), obs_dim=16,
                                           step_dim=16))
    task.setup(data, tmp_path, model)
    assert task.path.num_train_timesteps == 100 and task.sampler.solver == "ddim"
    b = batch_of(data, range(8))
    loss = task.loss(model, b, StepContext(0, 0, torch.Generator().manual_seed(0)))["loss"]
    assert torch.isfinite(loss)
    out = task.predict_chunk(model, b, torch.Generator().manual_seed(0))
    assert out.shape == (8, H, A) and torch.isfinite(out).all()
    # clip_sample: the clean-chunk estimate is clipped to [-1, 1] at every DDIM step, so
    # even an untrained net's normalised sample stays in range (without it, the estimate
    # (x - sigma eps) / alpha at alpha ~ 0 blows up: measured chunk MSE 1e3 on push-v3)
    obs = task.model_obs(model, b)
    x0 = torch.randn(8, H, A, generator=torch.Generator().manual_seed(1))
    clipped = task.sample_normalized(model, obs, x0, 10, None)
    assert clipped.abs().max() <= 1.0 + 1e-5
    task.clip_sample = False
    free = task.sample_normalized(model, obs, x0, 10, None)
    assert free.abs().max() > clipped.abs().max()


def _eval_loss(task, model, batch) -> float:
    with torch.no_grad():
        return float(task.chunk_loss(model, batch, StepContext(0, 0,
                                                               torch.Generator().manual_seed(9))))


CONFIG = """recipe: tiny_policy
seed: 0
model:
  _target_: modalities.actions.nets.FlowPolicyNet
  state_dim: 3
  action_dim: 2
  horizon: 8
  width: 32
  depth: 2
  heads: 2
  text_dim: 16
task:
  _target_: modalities.actions.task.FlowPolicyTask
  text: true
  text_kind: hash
  text_path: '16'
  val_batch: 8
"""


def train_tiny_policy(run_dir: Path, steps: int = 200) -> tuple[Trainer, dict]:
    """A tiny text+state flow policy trained by the toolkit Trainer on FakeChunkDataset."""
    torch.manual_seed(0)
    task = FlowPolicyTask(text=True, text_kind="hash", text_path="16", val_batch=8)
    model = task.wrap_model(FlowPolicyNet(S, A, H, width=32, depth=2, heads=2, text_dim=16))
    cfg = TrainerConfig(max_steps=steps, batch_size=32, checkpoint_every=steps,
                        val_every=steps, log_every=50, progress=False, tensorboard=False,
                        lr=3e-3, warmup_steps=10, ema_decay=0.9)
    trainer = Trainer(model, task, FakeChunkDataset(n=256), cfg, run_dir, seed=0,
                      config_yaml=CONFIG, recipe="tiny_policy")
    return trainer, trainer.fit()


def test_trainer_reduces_flow_loss(tmp_path):
    data = FakeChunkDataset(n=64, seed=1)
    batch = batch_of(data, range(64))
    torch.manual_seed(0)
    task = FlowPolicyTask(text=True, text_kind="hash", text_path="16")
    fresh = task.wrap_model(FlowPolicyNet(S, A, H, width=32, depth=2, heads=2, text_dim=16))
    task.setup(FakeChunkDataset(n=256), tmp_path / "x", fresh)
    before = _eval_loss(task, fresh, batch)
    trainer, out = train_tiny_policy(tmp_path / "run")
    after = _eval_loss(trainer.task, trainer.ema.model, batch)
    assert out["step"] == 200 and after < 0.5 * before, (before, after)
    logs = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "val/chunk_mse" in logs
    # resume with data of another state shape: refused, naming the feature and both shapes
    cfg = TrainerConfig(max_steps=210, batch_size=32, progress=False, tensorboard=False)
    task2 = FlowPolicyTask(text=True, text_kind="hash", text_path="16")
    model2 = task2.wrap_model(FlowPolicyNet(5, A, H, width=32, depth=2, heads=2, text_dim=16))
    with pytest.raises(ValueError, match=r"'observation.state' has shape \(3,\) in the "
                                         r"checkpoint but \(5,\) in the data"):
        Trainer(model2, task2, FakeChunkDataset(state_dim=5), cfg, tmp_path / "run",
                resume="latest", config_yaml=CONFIG, recipe="tiny_policy")
