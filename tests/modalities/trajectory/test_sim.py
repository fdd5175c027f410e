"""Torque-free rigid-body simulator: analytic cases, conservation, sampling and dataset cache."""

import math

import pytest
import torch

from modalities.trajectory import sim
from modalities.trajectory.sim import (
    CLASS_NAMES,
    CLASSES,
    TrajectoryDataset,
    sample_inertia,
    sample_trajectories,
    simulate,
)
from toolkit.geometry import so3

F64 = torch.float64


def _zeros() -> torch.Tensor:
    return torch.zeros(3, dtype=F64)


def _run(inertia, omega0, n_steps=100, dt=0.05, substeps=5, R0=None):
    I = torch.as_tensor(inertia, dtype=F64)
    R0 = torch.eye(3, dtype=F64) if R0 is None else R0
    return simulate(I, R0, torch.as_tensor(omega0, dtype=F64), _zeros(), _zeros(), dt, n_steps,
                    substeps)


def test_sphere_constant_omega_and_exact_exponential():
    g = torch.Generator().manual_seed(0)
    R0 = so3.random_uniform((), generator=g, dtype=F64)
    w0 = torch.tensor([1.3, -2.1, 0.7], dtype=F64)
    dt, T = 0.05, 81
    poses, omega = _run([2.0, 2.0, 2.0], w0, T - 1, dt, R0=R0)
    assert poses.shape == (T,) and omega.shape == (T, 3)
    torch.testing.assert_close(omega, w0.expand(T, 3), atol=1e-13, rtol=0)
    k = torch.arange(T, dtype=F64)[:, None]
    expected = R0 @ so3.exp(k * dt * w0)  # R_k = R0 exp(k dt omega)
    assert (poses.rots - expected).abs().max() < 1e-11


@pytest.mark.parametrize("I3", [0.3, 1.8])
def test_symmetric_top_precesses_at_analytic_rate(I3):
    I1, w0 = 1.0, torch.tensor([0.8, -0.5, 2.0], dtype=F64)
    dt, T = 0.05, 121
    _, omega = _run([I1, I1, I3], w0, T - 1, dt)
    rate = (I3 - I1) / I1 * w0[2]  # body precession rate (L&L §33)
    t = dt * torch.arange(T, dtype=F64)
    c, s = torch.cos(rate * t), torch.sin(rate * t)
    closed = torch.stack((w0[0] * c - w0[1] * s, w0[0] * s + w0[1] * c, w0[2].expand(T)), -1)
    assert (omega - closed).abs().max() < 1e-8 * w0.norm()
    assert (omega[:, :2] - w0[:2]).abs().max() > 0.5  # it does precess


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_energy_and_momentum_conserved(name):
    d = sample_trajectories(16, 64, classes=[name], seed=3, dtype=F64)
    I, w, R = d["inertia"][:, None], d["omega"], d["rots"]
    E = 0.5 * (I * w * w).sum(-1)  # (n, T)
    M = (I * w).norm(dim=-1)  # (n, T)
    L = (R @ (I * w)[..., None])[..., 0]  # (n, T, 3) space frame
    assert ((E - E[:, :1]).abs() / E[:, :1]).max() < 1e-6
    assert ((M - M[:, :1]).abs() / M[:, :1]).max() < 1e-6
    assert ((L - L[:, :1]).norm(dim=-1) / L[:, :1].norm(dim=-1)).max() < 1e-6


def test_rotation_update_is_fourth_order():
    w0 = torch.tensor([1.0, 2.0, -1.5], dtype=F64)
    ref, _ = _run([1.0, 2.0, 2.6], w0, 32, substeps=64)
    err = [so3.geodesic_distance(_run([1.0, 2.0, 2.6], w0, 32, substeps=s)[0].rots,
                                 ref.rots).max() for s in (2, 4)]
    assert 10 < err[0] / err[1] < 22  # ~2^4


def test_tennis_racket_instability():
    eps, I = 1e-3, torch.tensor(CLASSES["asymmetric"].moments, dtype=F64)
    w0 = torch.tensor([[eps, 3.0, eps], [3.0, eps, eps], [eps, eps, 3.0]], dtype=F64)
    R0 = torch.eye(3, dtype=F64)
    z = torch.zeros(3, 3, dtype=F64)
    _, w = simulate(I, R0, w0, z, z, 0.1, 150, 4)  # (3, T, 3), 15 time units
    assert w[0, :, 1].min() < -2.5  # rotation about the intermediate axis flips
    assert w[1, :, 0].min() > 2.9 and w[2, :, 2].min() > 2.9  # extreme axes are stable


def test_ballistic_centre_with_gravity():
    x0, v0 = torch.tensor([1.0, 2.0, 3.0], dtype=F64), torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    g = torch.tensor([0.0, 0.0, -9.81], dtype=F64)
    dt, T = 0.1, 11
    poses, _ = simulate(torch.ones(3, dtype=F64), torch.eye(3, dtype=F64), _zeros(), x0, v0, dt,
                        T - 1, 2, gravity=g)
    t = dt * torch.arange(T, dtype=F64)[:, None]
    torch.testing.assert_close(poses.trans, x0 + v0 * t + 0.5 * g * t**2)


def test_samples_orthonormal_deterministic_and_balanced():
    a = sample_trajectories(12, 24, seed=7)
    b = sample_trajectories(12, 24, seed=7)
    c = sample_trajectories(12, 24, seed=8)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["rots"], c["rots"])
    R = a["rots"]
    assert R.shape == (12, 24, 3, 3) and a["trans"].shape == (12, 24, 3)
    assert a["omega"].shape == (12, 24, 3) and a["inertia"].shape == (12, 3)
    assert a["cls"].dtype == torch.int64 and torch.bincount(a["cls"]).tolist() == [3, 3, 3, 3]
    eye = torch.eye(3).expand_as(R)
    assert (R.transpose(-1, -2) @ R - eye).abs().max() < 1e-5
    assert (torch.linalg.det(R) - 1).abs().max() < 1e-5
    step = so3.geodesic_distance(R[:, :-1], R[:, 1:])  # rotation per frame
    assert step.max() < 0.5 and step.min() > 0.03


def test_class_subset_and_inertia_jitter():
    d = sample_trajectories(8, 4, classes=["oblate", "sphere"], seed=0)
    assert set(d["cls"].tolist()) == {CLASS_NAMES.index("oblate"), CLASS_NAMES.index("sphere")}
    cls = torch.arange(len(CLASS_NAMES)).repeat(50)
    I = sample_inertia(cls, torch.Generator().manual_seed(0))  # (200, 3)
    sym = torch.tensor([CLASSES[CLASS_NAMES[c]].symmetric for c in cls.tolist()])
    assert torch.equal(I[sym, 0], I[sym, 1])  # symmetric tops keep I1 = I2
    assert torch.equal(I[cls == 0], torch.ones(50, 3, dtype=F64))  # sphere: no jitter
    assert (I[:, 2] <= I[:, 0] + I[:, 1]).all()  # triangle inequality of a physical body
    assert I[cls == 3, 2].std() > 0  # jitter is present


def test_dataset_cache_determinism_and_items(tmp_path, monkeypatch):
    kw = dict(n=8, n_frames=16, cache_dir=tmp_path)
    a = TrajectoryDataset("train", seed=1, **kw)
    assert not a.loaded_from_cache and a.path.exists()
    assert len(list(tmp_path.glob("*.tmp"))) == 0

    def fail(*args, **kwargs):
        raise AssertionError("regenerated instead of reading the cache")

    monkeypatch.setattr(sim, "sample_trajectories", fail)
    b = TrajectoryDataset("train", seed=1, **kw)
    assert b.loaded_from_cache
    monkeypatch.undo()
    assert torch.equal(a.rots, b.rots) and torch.equal(a.trans, b.trans)
    c = TrajectoryDataset("train", seed=2, **kw)
    v = TrajectoryDataset("val", seed=1, **kw)
    assert not torch.equal(a.rots, c.rots) and not torch.equal(a.rots, v.rots)
    item = a[3]
    assert item["rots"].shape == (16, 3, 3) and item["trans"].shape == (16, 3)
    assert item["cls"].shape == () and item["cls"].dtype == torch.int64
    assert item["inertia"].shape == (3,)
    assert torch.equal(item["trans"][0], torch.zeros(3))
    torch.testing.assert_close(item["trans"], a.trans[3] - a.trans[3, :1])
    a.path.write_bytes(b"corrupt")
    with pytest.warns(UserWarning, match="regenerating"):
        d = TrajectoryDataset("train", seed=1, **kw)
    assert torch.equal(d.rots, a.rots)


@pytest.mark.parametrize("kwargs, name", [
    (dict(dt=0.0), "dt"), (dict(n_steps=-1), "n_steps"), (dict(substeps=0), "substeps"),
    (dict(inertia=torch.tensor([1.0, -1.0, 1.0], dtype=F64)), "inertia"),
    (dict(R0=torch.eye(4, dtype=F64)), "R0"),
])
def test_simulate_rejects_bad_arguments(kwargs, name):
    args = dict(inertia=torch.ones(3, dtype=F64), R0=torch.eye(3, dtype=F64),
                omega0_body=_zeros(), x0=_zeros(), v0=_zeros(), dt=0.1, n_steps=3, substeps=2)
    with pytest.raises(ValueError, match=name):
        simulate(**{**args, **kwargs})


def test_sampler_and_dataset_reject_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="classes"):
        sample_trajectories(4, classes=["cube"])
    with pytest.raises(ValueError, match="n_frames"):
        sample_trajectories(4, n_frames=1)
    with pytest.raises(ValueError, match="rot_per_frame"):
        sample_trajectories(4, rot_per_frame=(0.1, math.pi))
    with pytest.raises(ValueError, match="split"):
        TrajectoryDataset("holdout", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="n must"):
        TrajectoryDataset("train", n=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="dt"):
        TrajectoryDataset("train", n=4, dt=-1.0, cache_dir=tmp_path)
