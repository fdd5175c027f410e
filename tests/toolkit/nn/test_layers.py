"""Shared blocks: attention masking, embeddings, condition validation, param_count."""

import pytest
import torch
from torch import nn

from conditioners.base import Condition
from toolkit.nn.layers import (
    Attention,
    TimestepEmbedding,
    check_time,
    param_count,
    sincos_1d,
    sincos_2d,
    unpack_condition,
)
from toolkit.nn.seq import block_causal_mask, causal_mask


def test_param_count_counts_and_respects_trainable_only():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert param_count(net) == 3 * 4 + 4 + 4 * 2 + 2
    net[0].requires_grad_(False)
    assert param_count(net, trainable_only=True) == 4 * 2 + 2


def test_cross_attention_ignores_masked_keys_and_all_masked_gives_zero():
    torch.manual_seed(0)
    att = Attention(16, 4, context_dim=8)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 1, 0, 1, 1]], dtype=torch.bool)
    out = att(x, ctx, key_mask=mask)
    ctx2 = ctx.clone()
    ctx2[~mask] = 100.0 * torch.randn_like(ctx2[~mask])
    assert torch.allclose(att(x, ctx2, key_mask=mask), out, atol=1e-6)
    ctx3 = ctx.clone()
    ctx3[0, 0] += 1.0
    assert not torch.allclose(att(x, ctx3, key_mask=mask)[0], out[0], atol=1e-4)
    empty = torch.zeros(2, 6, dtype=torch.bool)
    empty[1, 2] = True
    out_e = att(x, ctx, key_mask=empty)
    assert torch.all(out_e[0] == 0) and out_e[1].abs().sum() > 0 and torch.isfinite(out_e).all()


def test_self_attention_is_permutation_equivariant():
    torch.manual_seed(0)
    att = Attention(16, 2)
    x = torch.randn(3, 7, 16)
    perm = torch.randperm(7)
    assert torch.allclose(att(x)[:, perm], att(x[:, perm]), atol=1e-5)


def test_attention_mask_errors():
    att = Attention(8, 2)
    x = torch.randn(2, 4, 8)
    with pytest.raises(TypeError, match="boolean"):
        att(x, attn_mask=torch.ones(4, 4))
    with pytest.raises(ValueError, match="attention mask"):
        att(x, attn_mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="key mask"):
        att(x, key_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 4)


def test_sincos_embeddings_shapes_and_distinct_positions():
    e2 = sincos_2d(4, 6, 32)
    assert e2.shape == (24, 32)
    assert torch.cdist(e2, e2).add(torch.eye(24)).min() > 1e-3  # all positions distinct
    assert torch.equal(e2[:6, :16], e2[:1, :16].expand(6, 16))  # first half encodes the row
    assert sincos_1d(10, 8).shape == (10, 8)
    with pytest.raises(ValueError, match="dim % 4"):
        sincos_2d(2, 2, 6)


def test_timestep_embedding_per_token_matches_per_sample():
    torch.manual_seed(0)
    emb = TimestepEmbedding(16, freq_dim=32)
    t = torch.rand(3, 5)
    per_tok = emb(t)
    assert per_tok.shape == (3, 5, 16)
    assert torch.allclose(per_tok[:, 2], emb(t[:, 2]), atol=1e-6)


def test_unpack_condition_validates():
    pooled, tokens = torch.randn(2, 4), torch.randn(2, 3, 5)
    cond = Condition(pooled=pooled, tokens=tokens)
    p, tk, m = unpack_condition(cond, 2, 4, 5, "Net")
    assert p is pooled and tk is tokens and m is None
    assert unpack_condition({"pooled": pooled}, 2, 4, None, "Net")[0] is pooled
    with pytest.raises(ValueError, match="without pooled_dim"):
        unpack_condition(cond, 2, None, 5, "Net")
    with pytest.raises(ValueError, match="without token_dim"):
        unpack_condition(cond, 2, 4, None, "Net")
    with pytest.raises(ValueError, match=r"pooled must have shape \(2, 7\)"):
        unpack_condition(cond, 2, 7, 5, "Net")
    with pytest.raises(ValueError, match=r"tokens must have shape \(3, L, 5\)"):
        unpack_condition(Condition(tokens=tokens), 3, None, 5, "Net")
    with pytest.raises(TypeError, match="cond must be a Condition"):
        unpack_condition(torch.randn(2, 4), 2, 4, None, "Net")
    with pytest.raises(ValueError, match="unknown condition field"):
        unpack_condition({"text": pooled}, 2, 4, None, "Net")


def test_check_time_and_masks():
    assert check_time(0.5, 3, None, "N").shape == (3,)
    assert check_time(torch.rand(3, 4), 3, 4, "N").shape == (3, 4)
    with pytest.raises(ValueError, match=r"t must have shape \(3,\), got \(3, 4\)"):
        check_time(torch.rand(3, 4), 3, None, "N")
    assert torch.equal(causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]]).bool())
    bm = block_causal_mask(4, 2)
    assert bm[0, 1] and not bm[1, 2] and bm[3, 0] and bm[2, 3]
