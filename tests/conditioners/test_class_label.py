"""Class-label conditioner: null class index, exact drop, drop rate, zero null, errors."""

import pytest
import torch

from conditioners import ClassConditioner, sample_drop_mask


def test_null_index_and_exact_drop():
    cc = ClassConditioner(10, 8, tokens=True)
    assert cc.null_index == 10 and cc.pooled_dim == 8 and cc.token_dim == 8
    y = torch.tensor([0, 3, 9, 5])
    drop = torch.tensor([False, True, False, True])
    c = cc(y, drop=drop)
    null_row = cc.embedding.weight[10]
    assert torch.equal(c.pooled[1], null_row) and torch.equal(c.pooled[3], null_row)
    assert torch.equal(c.pooled[[0, 2]], cc.embedding.weight[[0, 9]])
    assert torch.equal(c.tokens[:, 0], c.pooled) and c.mask.all()
    assert torch.equal(cc.null(4).pooled, null_row.expand(4, -1))
    # explicit null labels give the null condition too
    assert torch.equal(cc(cc.null_labels(2)).pooled, cc.null(2).pooled)


def test_learned_null_gets_gradient_zero_null_is_zero():
    cc = ClassConditioner(4, 3)
    cc(torch.tensor([1, 2]), drop=torch.tensor([True, False])).pooled.sum().backward()
    assert cc.embedding.weight.grad[4].abs().sum() > 0
    assert cc.embedding.weight.grad[0].abs().sum() == 0
    cz = ClassConditioner(4, 3, null="zero")
    c = cz(torch.tensor([1, 2]), drop=torch.tensor([True, False]))
    assert torch.equal(c.pooled[0], torch.zeros(3)) and c.pooled[1].abs().sum() > 0


def test_drop_rate_matches_p():
    cc = ClassConditioner(5, 4, p_drop=0.25)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (4000,), generator=g)
    drop = cc.sample_drop(4000, g)
    c = cc(y, drop=drop)
    is_null = (c.pooled == cc.embedding.weight[5]).all(-1)
    assert torch.equal(is_null, drop)
    assert abs(is_null.float().mean().item() - 0.25) < 0.03
    assert not sample_drop_mask(10, 0.0).any()


def test_bad_labels():
    cc = ClassConditioner(3, 4)
    with pytest.raises(ValueError, match="out of range"):
        cc(torch.tensor([0, 7]))
    with pytest.raises(TypeError, match="integers"):
        cc(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="drop mask"):
        cc(torch.tensor([0, 1]), drop=torch.tensor([True]))
    with pytest.raises(ValueError, match="null mode"):
        ClassConditioner(3, 4, null="empty")
