"""ConditionNorm: per-feature standardisation fitted on training embeddings."""

import pytest
import torch

from conditioners.base import Condition
from conditioners.norm import ConditionNorm, feature_stats


def _cond(g: torch.Generator, b: int = 64, L: int = 5) -> Condition:
    shared = torch.linspace(-3, 3, 8)  # a large offset every row shares
    pooled = shared + 0.01 * torch.randn(b, 8, generator=g)
    tokens = 5.0 + torch.randn(b, L, 6, generator=g) * torch.arange(1, 7)
    mask = torch.arange(L)[None] < torch.randint(1, L + 1, (b, 1), generator=g)
    return Condition(pooled, tokens, mask)


def test_identity_until_fitted_then_standardised():
    g = torch.Generator().manual_seed(0)
    c = _cond(g, 4000)
    norm = ConditionNorm(8, 6)
    same = norm(c)
    assert torch.equal(same.pooled, c.pooled) and torch.equal(same.tokens, c.tokens)
    norm.fit(c.pooled, c.tokens[c.mask])
    z = norm(c)
    torch.testing.assert_close(z.pooled.mean(0), torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.pooled.std(0), torch.ones(8), atol=1e-3, rtol=0)
    valid = z.tokens[c.mask]  # (M, 6)
    torch.testing.assert_close(valid.mean(0), torch.zeros(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(valid.std(0), torch.ones(6), atol=1e-3, rtol=0)
    assert torch.equal(z.tokens[~c.mask], c.tokens[~c.mask])  # padding untouched
    # the relative difference between two rows grows: the shared offset is gone
    d_raw = (c.pooled[0] - c.pooled[1]).norm() / c.pooled[0].norm()
    d_std = (z.pooled[0] - z.pooled[1]).norm() / z.pooled[0].norm()
    assert d_std > 20 * d_raw


def test_state_dict_roundtrip_and_errors():
    g = torch.Generator().manual_seed(1)
    c = _cond(g)
    a = ConditionNorm(8, 6).fit(c.pooled, c.tokens[c.mask])
    b = ConditionNorm(8, 6)
    b.load_state_dict(a.state_dict())
    assert bool(b.fitted) and torch.equal(b(c).tokens, a(c).tokens)
    with pytest.raises(ValueError, match=r"pooled rows must be \(N, 8\)"):
        ConditionNorm(8, 6).fit(torch.zeros(10, 7))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(torch.zeros(1, 3))
    # a constant feature is not blown up
    rows = torch.randn(100, 4, generator=g)
    rows[:, 2] = 1.0
    _, std = feature_stats(rows)
    assert std[2] > 0 and torch.isfinite(1 / std).all()
