"""Condition container, drop masks and the flat-keyword bridge to batched guidance."""

import pytest
import torch

from conditioners.base import Condition, condition_kwargs_model, sample_drop_mask
from toolkit import guidance


def _cond(b=3, n=4, d=5, dp=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, 2:] = False
    return Condition(torch.randn(b, dp, generator=g), torch.randn(b, n, d, generator=g), mask)


def test_condition_validates_shapes():
    with pytest.raises(ValueError, match="pooled must be"):
        Condition(pooled=torch.zeros(3))
    with pytest.raises(ValueError, match="tokens must be"):
        Condition(tokens=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="mask must be a bool"):
        Condition(tokens=torch.zeros(3, 4, 2), mask=torch.ones(3, 4))
    with pytest.raises(ValueError, match="batch"):
        Condition(torch.zeros(2, 3), torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match="tokens is None"):
        Condition(mask=torch.ones(3, 4, dtype=torch.bool))


def test_where_pads_and_replaces_rows_exactly():
    a = _cond(3, 4)
    other = Condition(torch.full((3, 6), 7.0), torch.full((3, 2, 5), 9.0),
                      torch.ones(3, 2, dtype=torch.bool))
    drop = torch.tensor([False, True, False])
    out = a.where(drop, other)
    assert out.tokens.shape == (3, 4, 5)
    assert torch.equal(out.pooled[0], a.pooled[0]) and torch.equal(out.pooled[2], a.pooled[2])
    assert torch.equal(out.pooled[1], other.pooled[1])
    assert torch.equal(out.tokens[1, :2], other.tokens[1]) and not out.mask[1, 2:].any()
    assert torch.equal(out.tokens[[0, 2]], a.tokens[[0, 2]])
    assert torch.equal(out.mask[[0, 2]], a.mask[[0, 2]])
    with pytest.raises(ValueError, match="drop mask"):
        a.where(torch.tensor([1, 0, 1]), other)


def test_cat_and_to():
    a, b = _cond(2, 3), _cond(1, 5)
    c = Condition.cat([a, b])
    assert c.tokens.shape == (3, 5, 5) and c.mask.dtype == torch.bool
    assert not c.mask[:2, 3:].any()
    d = c.to(torch.float64)
    assert d.tokens.dtype == torch.float64 and d.mask.dtype == torch.bool


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_sample_drop_mask_rate(p):
    g = torch.Generator().manual_seed(1)
    m = sample_drop_mask(20_000, p, g)
    assert m.dtype == torch.bool and m.shape == (20_000,)
    assert abs(m.float().mean().item() - p) < 0.015
    with pytest.raises(ValueError, match="probability"):
        sample_drop_mask(4, 1.5)


def test_flat_kwargs_make_batched_cfg_work():
    """cfg(batched=True) concatenates tensor keywords; the wrapper rebuilds the Condition."""
    calls = []

    def net(x, t, cond=None):
        calls.append(x.shape[0])
        w = (cond.tokens * cond.mask[..., None]).sum((1, 2)) + cond.pooled.sum(-1)
        return x + w[:, None]

    c, u = _cond(3, 4, seed=1), _cond(3, 4, seed=2)
    x, t = torch.randn(3, 2), torch.full((3,), 0.5)
    g = guidance.cfg(condition_kwargs_model(net), 3.0, cond=c.to_kwargs(), uncond=u.to_kwargs())
    out = g(x, t)
    ref = net(x, t, cond=u) + 3.0 * (net(x, t, cond=c) - net(x, t, cond=u))
    assert calls[0] == 6  # one doubled batch
    torch.testing.assert_close(out, ref)
