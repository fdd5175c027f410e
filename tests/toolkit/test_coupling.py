"""Couplings and conditional paths: parity with torchcfm, OT optimality, label handling."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

torchcfm = pytest.importorskip("torchcfm")
from torchcfm.conditional_flow_matching import (  # noqa: E402
    ConditionalFlowMatcher,
    ExactOptimalTransportConditionalFlowMatcher,
    SchrodingerBridgeConditionalFlowMatcher,
)

from toolkit import coupling  # noqa: E402
from toolkit.losses import bridge_xt_ut, cfm_loss  # noqa: E402
from toolkit.paths import LinearPath  # noqa: E402

B = 64


def _batch(seed, b=B, d=2):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, d, generator=g, dtype=torch.float64)
    x1 = torch.randn(b, d, generator=g, dtype=torch.float64) * 0.5 + 2.0
    t = torch.rand(b, generator=g, dtype=torch.float64) * 0.98 + 0.01
    return x0, x1, t


def _rows(a, b):
    """Index of each row of ``a`` in ``b`` (exact match)."""
    d = torch.cdist(a, b)
    assert torch.all(d.min(1).values < 1e-6)  # (cdist is not bit-exact at 0)
    return d.argmin(1)


@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_icfm_parity(sigma):
    x0, x1, t = _batch(0)
    ref = ConditionalFlowMatcher(sigma=sigma)
    _, xt_ref, ut_ref, eps = ref.sample_location_and_conditional_flow(x0, x1, t, return_noise=True)
    # torchcfm's x0 is the source at t = 0 and x1 the target at t = 1: our convention
    xt, ut = bridge_xt_ut(x0, x1, t, LinearPath(0.0), "constant", sigma, z=eps)
    torch.testing.assert_close(xt, xt_ref)
    torch.testing.assert_close(ut, ut_ref)
    out = cfm_loss(lambda x, t: torch.zeros_like(x), x1, x0, t=t, bridge="constant",
                   bridge_sigma=sigma, generator=torch.Generator().manual_seed(0))
    if sigma == 0.0:
        torch.testing.assert_close(out.x_t, xt_ref)
        torch.testing.assert_close(out.loss, (ut_ref**2).mean())


def test_exact_ot_parity_and_optimality():
    x0, x1, t = _batch(1)
    ref = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
    plan = coupling.ot_plan(x0, x1, "exact")
    torch.testing.assert_close(plan, torch.as_tensor(ref.ot_sampler.get_map(x0, x1)))
    ours = coupling.ExactOT()(x0, x1)
    # a permutation: every x1 once, every x0 once, x1 order kept
    assert torch.equal(ours.i1, torch.arange(B))
    assert torch.equal(torch.sort(ours.i0).values, torch.arange(B))
    # same pairing as the Hungarian algorithm (continuous data: no ties)
    r, c = linear_sum_assignment(coupling.sq_cost(x0, x1).numpy())
    assert torch.equal(ours.i0[torch.as_tensor(c)], torch.as_tensor(r))
    # torchcfm's OT-CFM = pairs drawn (with replacement) from this plan + the I-CFM path
    np.random.seed(0)
    x0_ref, x1_ref = ref.ot_sampler.sample_plan(x0, x1)
    j, i = _rows(x1_ref, x1), _rows(x0_ref, x0)
    assert torch.equal(ours.i0[j], i)  # every pair torchcfm draws is one of ours
    _, xt_ref, ut_ref = ConditionalFlowMatcher.sample_location_and_conditional_flow(
        ref, x0_ref, x1_ref, t)
    xt, ut = bridge_xt_ut(ours.x0[j], ours.x1[j], t, LinearPath(0.0), None, 0.0)
    torch.testing.assert_close(xt, xt_ref)
    torch.testing.assert_close(ut, ut_ref)


def test_schrodinger_bridge_parity():
    sigma = 0.7
    x0, x1, t = _batch(2)
    ref = SchrodingerBridgeConditionalFlowMatcher(sigma=sigma, ot_method="sinkhorn")
    sb = coupling.SchrodingerBridge(sigma)
    assert sb.reg == pytest.approx(2 * sigma**2)
    plan = coupling.ot_plan(x0, x1, "sinkhorn", reg=sb.reg)
    plan_ref = torch.as_tensor(ref.ot_sampler.get_map(x0, x1))
    torch.testing.assert_close(plan, plan_ref, atol=1e-7, rtol=1e-3)
    np.random.seed(0)
    x0_ref, x1_ref = ref.ot_sampler.sample_plan(x0, x1)
    _, xt_ref, ut_ref, eps = ConditionalFlowMatcher.sample_location_and_conditional_flow(
        ref, x0_ref, x1_ref, t, return_noise=True)  # SB-CFM's path methods are overridden
    xt, ut = bridge_xt_ut(x0_ref, x1_ref, t, LinearPath(0.0), "brownian", sigma, z=eps)
    torch.testing.assert_close(xt, xt_ref)
    torch.testing.assert_close(ut, ut_ref, atol=1e-6, rtol=1e-6)
    # the pairs torchcfm drew have positive mass under our plan
    j, i = _rows(x1_ref, x1).tolist(), _rows(x0_ref, x0).tolist()
    assert torch.all(plan[i, j] > 0)


def test_sinkhorn_marginals_and_small_reg_limit():
    x0, x1, _ = _batch(3, b=32)
    p = coupling.ot_plan(x0, x1, "sinkhorn", reg=0.1)
    torch.testing.assert_close(p.sum(0), torch.full((32,), 1 / 32, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    exact = coupling.ot_plan(x0, x1, "exact")
    cost = coupling.sq_cost(x0, x1)
    c_exact, c_ent = float((exact * cost).sum()), float((p * cost).sum())
    c_indep = float(cost.mean())
    assert c_exact <= c_ent < c_exact + 0.1 * (c_indep - c_exact)


def test_within_labels_coupling():
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(60, 2, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (60,), generator=g)
    x1 = torch.randn(60, 2, generator=g, dtype=torch.float64) + 3.0 * labels[:, None]
    out = coupling.ExactOT(within_labels=True)(x0, x1, labels=labels)
    assert torch.equal(out.labels, labels) and torch.equal(out.i1, torch.arange(60))
    for c in range(3):
        idx = torch.nonzero(labels == c).flatten()
        assert set(out.i0[idx].tolist()) == set(idx.tolist())  # noise stays in its group
        # optimal within the group
        cost = coupling.sq_cost(x0[idx], x1[idx]).numpy()
        r, col = linear_sum_assignment(cost)
        ours = ((out.x0[idx] - out.x1[idx]) ** 2).sum()
        assert float(ours) == pytest.approx(cost[r, col].sum())
    # sinkhorn pairs draw x1 with replacement: labels and conds follow x1
    out = coupling.SinkhornOT(reg=0.5)(x0, x1, labels=labels, generator=g)
    assert torch.equal(out.labels, labels[out.i1])
    cond = {"y": labels, "emb": x1 * 2}
    taken = out.take(cond)
    assert torch.equal(taken["emb"], out.x1 * 2)


def test_cfm_loss_reindexes_cond_and_mask():
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(16, 3, 2, generator=g, dtype=torch.float64)
    y = torch.arange(16)
    seen = {}

    def model(x, t, y):
        seen["y"] = y
        return torch.zeros_like(x)

    out = cfm_loss(model, x1, coupling=coupling.SinkhornOT(reg=1.0), cond={"y": y},
                   generator=g)
    assert out.loss.ndim == 0 and out.per_sample.shape == (16,)
    # the labels the model saw belong to the x1 each sample was built from
    x1_used = out.x_t + (1 - out.t)[:, None, None] * out.target
    torch.testing.assert_close(x1_used, x1[seen["y"]])
    assert out.x_t.shape == x1.shape


def test_bad_coupling_name():
    with pytest.raises(ValueError, match="Valid couplings"):
        coupling.get("exact_oot")
    with pytest.raises(ValueError, match="needs labels"):
        coupling.ExactOT(within_labels=True)(torch.randn(4, 2), torch.randn(4, 2))
