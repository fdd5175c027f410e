"""Reflow (Liu et al. 2023): pairs come from the model's ODE, and one reflow round makes the
flow straighter."""

import torch

import toolkit
from toolkit import paths
from toolkit.data import toy2d
from toolkit.losses import cfm_loss
from toolkit.metrics import straightness
from toolkit.nn import TimeMLP
from toolkit.reflow import ReflowDataset, fit, make_reflow_pairs, train_reflow
from toolkit.testing.gmm import ring_gmm


def test_pairs_are_the_ode_map_and_batching_is_invisible():
    gmm = ring_gmm(4)
    model = gmm.model(paths.LinearPath(), "velocity")
    kw = dict(shape=(2,), solver="rk4", steps=8, dtype=torch.float64)
    x0, x1 = make_reflow_pairs(model, 300, generator=torch.Generator().manual_seed(0),
                               batch_size=64, **kw)
    x0b, x1b = make_reflow_pairs(model, 300, generator=torch.Generator().manual_seed(0),
                                 batch_size=1000, **kw)
    torch.testing.assert_close(x0, x0b)
    torch.testing.assert_close(x1, x1b)
    ref = toolkit.sample(model, x0, solver="rk4", steps=8)
    torch.testing.assert_close(x1, ref)
    ds = ReflowDataset(x0, x1)
    a, b, _ = ds.batch(16, torch.Generator().manual_seed(0))
    # pairs stay together
    idx = torch.cdist(a, x0).argmin(1)
    torch.testing.assert_close(b, x1[idx])


def test_one_reflow_round_straightens():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    base = TimeMLP(2, hidden=64, depth=3, time_dim=32)
    fit(base, lambda _: cfm_loss(base, toy2d.sample("8gaussians", 256, generator=g),
                                 generator=g).loss, 800)
    x0, x1 = make_reflow_pairs(base, 4000, shape=(2,), solver="rk4", steps=8, generator=g)
    re = TimeMLP(2, hidden=64, depth=3, time_dim=32)
    re.load_state_dict(base.state_dict())  # warm start, as in Liu et al. 2023
    train_reflow(re, ReflowDataset(x0, x1), steps=600, generator=g)
    z = torch.randn(500, 2, generator=torch.Generator().manual_seed(9))
    s0, s1 = straightness(base, z, steps=16), straightness(re, z, steps=16)
    print(f"straightness base={s0:.4f} reflow={s1:.4f}")
    assert s1 < 0.5 * s0
