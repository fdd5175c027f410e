"""Invariants recovered from poses, estimator orders, forecast baseline and plotting."""

import pytest
import torch

from modalities.trajectory.metrics import (
    constant_velocity_forecast,
    geodesic_error,
    invariant_drift,
    omega_from_rots,
    plot_trajectories,
    translation_error,
)
from modalities.trajectory.sim import CLASS_NAMES, sample_trajectories, simulate
from toolkit.geometry import so3

F64 = torch.float64


@pytest.fixture(scope="module")
def data():
    return sample_trajectories(64, 64, seed=11)  # default settings, float32


@pytest.mark.parametrize("order", [1, 2, 4, 6])
def test_omega_exact_for_constant_rotation_rate(order):
    w = torch.tensor([0.9, -2.0, 1.1], dtype=F64)
    R = so3.random_uniform((), generator=torch.Generator().manual_seed(0), dtype=F64)
    rots = R @ so3.exp(0.05 * torch.arange(20, dtype=F64)[:, None] * w)  # (20, 3, 3)
    torch.testing.assert_close(omega_from_rots(rots, 0.05, order), w.expand(20, 3))


@pytest.fixture(scope="module")
def asymmetric_runs():
    I = torch.tensor([1.0, 2.0, 2.6], dtype=F64)
    w0, z = torch.tensor([1.0, 2.0, -1.5], dtype=F64), torch.zeros(3, dtype=F64)
    return [(dt, *simulate(I, torch.eye(3, dtype=F64), w0, z, z, dt, round(1.6 / dt), 2))
            for dt in (0.04, 0.02)]


@pytest.mark.parametrize("order", [1, 2, 4])
def test_omega_estimator_order(order, asymmetric_runs):
    errs = [(omega_from_rots(poses.rots, dt, order) - w).norm(dim=-1).max()
            for dt, poses, w in asymmetric_runs]
    assert 0.7 * 2**order < errs[0] / errs[1] < 1.4 * 2**order


def test_ground_truth_invariants_drift_below_threshold(data):
    drift = invariant_drift(data["rots"], data["inertia"], 0.05)
    for key in ("energy", "momentum", "momentum_vector"):
        assert drift[key].shape == (64,)
        assert drift[key].max() <= 4e-4, key
    assert set(data["cls"].tolist()) == set(range(len(CLASS_NAMES)))


def test_drift_detects_non_physical_trajectories(data):
    g = torch.Generator().manual_seed(0)
    noise = so3.exp(2e-3 * torch.randn(*data["rots"].shape[:2], 3, generator=g))
    drift = invariant_drift(data["rots"] @ noise, data["inertia"], 0.05)
    assert drift["energy"].median() > 1e-2
    # wrong inertia for an asymmetric body: the rates are right, E is not conserved
    asym = data["cls"] == CLASS_NAMES.index("asymmetric")
    wrong = invariant_drift(data["rots"][asym], torch.tensor([1.0, 1.0, 3.0]), 0.05)
    assert wrong["energy"].min() > 1e-2


def test_geodesic_and_translation_error():
    g = torch.Generator().manual_seed(1)
    R = so3.random_uniform((2, 5), generator=g, dtype=F64)
    axis = torch.nn.functional.normalize(torch.randn(2, 5, 3, generator=g, dtype=F64), dim=-1)
    torch.testing.assert_close(geodesic_error(R, R), torch.zeros(2, dtype=F64), atol=1e-6, rtol=0)
    err = geodesic_error(R @ so3.exp(0.3 * axis), R)
    torch.testing.assert_close(err, torch.full((2,), 0.3, dtype=F64))
    x = torch.zeros(2, 5, 3)
    torch.testing.assert_close(translation_error(x + torch.tensor([3.0, 4.0, 0.0]), x),
                               torch.full((2,), 5.0, dtype=F64))


def test_constant_velocity_forecast(data):
    K, Fut = 8, 24
    rots, trans, cls = data["rots"].double(), data["trans"].double(), data["cls"]
    r, x = constant_velocity_forecast(rots[:, :K], trans[:, :K], Fut)
    assert r.shape == (64, Fut, 3, 3) and x.shape == (64, Fut, 3)
    geo = geodesic_error(r, rots[:, K:K + Fut])  # (64,)
    sphere, asym = cls == CLASS_NAMES.index("sphere"), cls == CLASS_NAMES.index("asymmetric")
    assert geo[sphere].max() < 1e-5  # constant body omega: the baseline is exact
    assert geo[asym].min() > 1e-3
    assert translation_error(x, trans[:, K:K + Fut]).max() < 1e-4  # ballistic, no gravity


def test_plot_trajectories_writes_png(tmp_path, data):
    path = plot_trajectories(data["rots"], data["trans"], tmp_path / "traj.png", n=2, dt=0.05,
                             inertia=data["inertia"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["traj.png"]


def test_metrics_reject_bad_arguments(data):
    R, x = data["rots"], data["trans"]
    with pytest.raises(ValueError, match="order"):
        omega_from_rots(R, 0.05, order=3)
    with pytest.raises(ValueError, match="dt"):
        omega_from_rots(R, 0.0)
    with pytest.raises(ValueError, match="frames"):
        omega_from_rots(R[:, :4], 0.05, order=4)
    with pytest.raises(ValueError, match="inertia"):
        invariant_drift(R, torch.ones(2), 0.05)
    with pytest.raises(ValueError, match="n_future"):
        constant_velocity_forecast(R[:, :8], x[:, :8], 0)
    with pytest.raises(ValueError, match="trans_ctx"):
        constant_velocity_forecast(R[:, :8], x[:, :7], 4)
    with pytest.raises(ValueError, match="shapes differ"):
        geodesic_error(R[:, :3], R[:, :4])
