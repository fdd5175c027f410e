"""Normalizer: exact round trips, ranges per mode, constant features, clipping, and errors
that name the feature and both shapes."""

from __future__ import annotations

import pytest
import torch

from modalities.actions.normalize import MODES, Normalizer


def _stats(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"mean": x.mean(0), "std": x.std(0), "min": x.min(0).values,
            "max": x.max(0).values, "q01": torch.quantile(x, 0.01, 0),
            "q99": torch.quantile(x, 0.99, 0)}


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    state = torch.randn(500, 4, generator=g) * torch.tensor([1.0, 10.0, 0.1, 0.0]) + 3.0
    action = torch.rand(500, 2, generator=g) * torch.tensor([2.0, 50.0]) - 1.0
    return {"observation.state": state, "action": action}


def fitted(data, mode, **kw) -> Normalizer:
    n = Normalizer({k: (v.shape[1],) for k, v in data.items()}, mode, **kw)
    return n.fit({k: _stats(v) for k, v in data.items()})


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_all_modes(data, mode):
    n = fitted(data, mode)
    for name, x in data.items():
        y = n.normalize(name, x)
        assert torch.isfinite(y).all()
        assert torch.allclose(n.unnormalize(name, y), x, atol=1e-5, rtol=1e-6)
        assert torch.allclose(n.normalize(name, n.unnormalize(name, y)), y, atol=1e-5)


def test_ranges_per_mode(data):
    a = data["action"]
    y = fitted(data, "min_max").normalize("action", a)
    assert torch.allclose(y.min(0).values, -torch.ones(2), atol=1e-5)
    assert torch.allclose(y.max(0).values, torch.ones(2), atol=1e-5)
    y = fitted(data, "quantile").normalize("action", a)
    assert torch.allclose(torch.quantile(y, 0.01, 0), -torch.ones(2), atol=1e-4)
    assert torch.allclose(torch.quantile(y, 0.99, 0), torch.ones(2), atol=1e-4)
    y = fitted(data, "mean_std").normalize("action", a)
    assert torch.allclose(y.mean(0), torch.zeros(2), atol=1e-4)
    assert torch.allclose(y.std(0), torch.ones(2), atol=1e-4)
    assert torch.equal(fitted(data, "identity").normalize("action", a), a)


def test_constant_feature_is_centred_not_blown_up(data):
    for mode in ("mean_std", "min_max", "quantile"):
        n = fitted(data, mode)
        y = n.normalize("observation.state", data["observation.state"])
        assert torch.allclose(y[:, 3], torch.zeros(500), atol=1e-6), mode  # constant dim 3


def test_per_feature_modes_and_buffers_in_state_dict(data):
    n = fitted(data, {"observation.state": "mean_std", "action": "quantile"})
    sd = n.state_dict()
    assert "stats.observation__state.loc" in sd and "stats.action.scale" in sd
    assert bool(sd["fitted"])
    fresh = Normalizer({"observation.state": 4, "action": 2})
    fresh.load_state_dict(sd)
    x = data["action"]
    assert torch.equal(fresh.normalize("action", x), n.normalize("action", x))


def test_clipping_is_counted(data):
    n = fitted(data, "min_max", clip_actions=True)
    y = torch.tensor([[0.0, 0.0], [1.5, -3.0], [1.0, 1.0]])
    with pytest.warns(UserWarning, match="clipping 'action'"):
        x = n.unnormalize("action", y)
    lo, hi = data["action"].min(0).values, data["action"].max(0).values
    assert (x >= lo - 1e-6).all() and (x <= hi + 1e-6).all()
    assert n.clipped["action"] == 2
    n.unnormalize("observation.state", torch.full((1, 4), 99.0))  # state is never clipped
    assert n.clipped["action"] == 2


def test_errors_name_feature_and_shapes(data):
    n = Normalizer({"observation.state": (7,), "action": (2,)})
    with pytest.raises(RuntimeError, match="not fitted"):
        n.normalize("action", torch.zeros(2))
    stats = {k: _stats(v) for k, v in data.items()}
    with pytest.raises(ValueError, match=r"'observation.state' has shape \(4,\) in the "
                                         r"statistics \('mean'\) but \(7,\) in the model"):
        n.fit(stats)
    with pytest.raises(KeyError, match="no statistics for feature.*'action'"):
        Normalizer({"action": 2}).fit({"observation.state": stats["observation.state"]})
    partial = {"action": {"mean": stats["action"]["mean"], "std": stats["action"]["std"]}}
    with pytest.raises(KeyError, match=r"'action' \(mode 'quantile'\).*\['q01', 'q99'\]"):
        Normalizer({"action": 2}, "quantile").fit(partial)
    big = Normalizer({"observation.state": (39,), "action": (2,)})
    with pytest.raises(ValueError, match=r"'observation.state' has shape \(39,\) in the "
                                         r"checkpoint but \(7,\) in the model"):
        n.load_state_dict(big.state_dict())
    other = Normalizer({"observation.environment_state": (7,), "action": (2,)})
    with pytest.raises(KeyError, match="observation.environment_state"):
        n.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match=r"'observation.state' has shape \(7,\) in the model "
                                         r"but \(4,\) in the data"):
        n.check_features({"observation.state": (4,), "action": (2,)})
    f = fitted(data, "mean_std")
    with pytest.raises(ValueError, match=r"'action' has shape \(3,\) in the input"):
        f.normalize("action", torch.zeros(5, 3))
    with pytest.raises(KeyError, match="unknown feature 'gripper'"):
        f.normalize("gripper", torch.zeros(2))
    with pytest.raises(ValueError, match="unknown normalisation mode 'zscore'"):
        Normalizer({"action": 2}, "zscore")
