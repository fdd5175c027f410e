"""Rigid-trajectory flow task: conditioning, context (forecasting) and the CLI."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modalities.structure.nets import FrameNet
from modalities.trajectory.sim import CLASS_NAMES, sample_trajectories
from modalities.trajectory.task import RigidTrajectoryTask, generate_trajectories
from toolkit.geometry.se3 import Rigid
from toolkit.testing.fit import fit_fixed_batch
from toolkit.train.tasks import StepContext

ROOT = Path(__file__).resolve().parents[3]


def _net() -> FrameNet:
    torch.manual_seed(0)
    net = FrameNet(width=32, pair_width=8, depth=2, heads=2, num_classes=len(CLASS_NAMES),
                   max_len=32, max_dist=4.0, pair_update=True)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net


def _batch(n: int = 8, frames: int = 12) -> dict[str, torch.Tensor]:
    d = sample_trajectories(n, frames, seed=3)
    return {"rots": d["rots"], "trans": d["trans"] - d["trans"][:, :1], "cls": d["cls"]}


def test_loss_learns_and_uses_class_dropout_and_prefix_context():
    net, task = _net(), RigidTrajectoryTask(n_frames=12, max_context=4, cond_drop=0.5,
                                            motif_prob=0.5)
    batch = _batch()
    ctx = StepContext(0, 0, torch.Generator().manual_seed(0))
    kw = task.model_kwargs(batch, ctx)
    assert kw["y"].shape == (8,) and (kw["y"] == len(CLASS_NAMES)).any()  # some dropped
    mask = torch.ones(8, 12, dtype=torch.bool)
    fixed = None
    for seed in range(10):
        fixed = task._motif(mask, StepContext(0, 0, torch.Generator().manual_seed(seed)))
        if fixed is not None:
            break
    assert fixed is not None
    k = fixed.sum(1)
    assert (k >= 1).all() and (k <= 4).all()
    assert all(fixed[i, :k[i]].all() and not fixed[i, k[i]:].any() for i in range(8))  # prefix
    before, after = fit_fixed_batch(task, net, batch, 120)
    assert after < 0.7 * before


def test_generate_keeps_the_context_and_checks_arguments():
    net, task = _net().eval(), RigidTrajectoryTask(n_frames=12, max_context=4, steps=4)
    b = _batch(4)
    ctx = Rigid(b["rots"][:, :3], b["trans"][:, :3] + 2.0)
    out = generate_trajectories(net, task, b["cls"][:4], 12, context=ctx,
                                generator=torch.Generator().manual_seed(0), guidance=2.0)
    assert out.rots.shape == (4, 12, 3, 3) and torch.isfinite(out.trans).all()
    assert torch.allclose(out.rots[:, :3], ctx.rots, atol=1e-6)
    assert torch.allclose(out.trans[:, :3], ctx.trans, atol=1e-5)  # in the context's frame
    det = torch.linalg.det(out.rots)
    assert torch.allclose(det, torch.ones_like(det), atol=1e-4)
    with pytest.raises(ValueError, match="cls"):
        generate_trajectories(net, task, torch.tensor([9]), 12)
    with pytest.raises(ValueError, match="context"):
        generate_trajectories(net, task, b["cls"][:4], 3, context=ctx)
    with pytest.raises(ValueError, match="max_context"):
        RigidTrajectoryTask(n_frames=8, max_context=8)


def test_cli_train_sample_eval(tmp_path):
    run = tmp_path / "run"
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(ROOT), TOOLKIT_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "toolkit.cli"]
    r = subprocess.run(cmd + ["train", "recipe=rigid_trajectory_se3fm", "model.width=32",
                              "model.pair_width=8", "model.depth=1", "trainer.max_steps=3",
                              "trainer.batch_size=4", "trainer.val_every=0", "data.n=16",
                              "data.n_frames=12", "task.max_context=4", "task.steps=3",
                              "trainer.progress=false", f"run_dir={run}"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(cmd + ["sample", f"checkpoint={run}", "cls=oblate", "n=2",
                              f"out={tmp_path / 's'}"], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "s" / "trajectories.png").is_file()
    assert (tmp_path / "s" / "trajectories.npz").is_file()
    r = subprocess.run(cmd + ["sample", f"checkpoint={run}", "cls=cube"], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 2 and "cube" in r.stderr and "asymmetric" in r.stderr
    r = subprocess.run(cmd + ["eval", f"checkpoint={run}", "n=8", "context=3"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "constant velocity" in r.stdout and (run / "eval.json").is_file()


def test_invalid_context_rotations_are_refused_or_fixed():
    net, task = _net().eval(), RigidTrajectoryTask(n_frames=12, max_context=4, steps=2)
    b = _batch(2)
    rots = b["rots"][:, :3].clone()
    rots[0, 1] *= 1.02
    ctx = Rigid(rots, b["trans"][:, :3])
    with pytest.raises(ValueError, match="context rotations"):
        generate_trajectories(net, task, b["cls"][:2], 12, context=ctx)
    with pytest.warns(UserWarning, match="re-orthogonalised"):
        out = generate_trajectories(net, task, b["cls"][:2], 12, context=ctx, on_invalid="fix")
    det = torch.linalg.det(out.rots[0, :3])
    assert torch.allclose(det, torch.ones_like(det), atol=1e-5)
