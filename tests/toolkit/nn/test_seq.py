"""1-D sequence transformer: shapes, per-token time, causal / block / padding masks,
cross-attention and prefix conditioning, permutation equivariance, autocast, errors."""

import pytest
import torch

from conditioners.base import Condition
from toolkit.nn.seq import SeqTransformer, block_causal_mask

SMALL = dict(in_dim=5, hidden_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


def _cond(b=2, S=4, dp=6, dt=8, valid=2):
    mask = torch.zeros(b, S, dtype=torch.bool)
    mask[:, :valid] = True
    return Condition(pooled=torch.randn(b, dp), tokens=torch.randn(b, S, dt), mask=mask)


def _net(**kw):
    torch.manual_seed(0)
    return SeqTransformer(**{**SMALL, "pooled_dim": 6, "token_dim": 8, "zero_init": False, **kw})


@pytest.mark.parametrize("mode", ["cross", "prefix"])
@pytest.mark.parametrize("pos", ["sincos", "learned", "none"])
def test_shapes_per_sample_and_per_token_time(mode, pos):
    net = _net(cond_mode=mode, pos_embed=pos, max_len=16, out_dim=3)
    x = torch.randn(2, 7, 5)
    for t in (torch.rand(2), torch.rand(2, 7), torch.tensor(0.3)):
        out = net(x, t, cond=_cond())
        assert out.shape == (2, 7, 3) and torch.isfinite(out).all()
    assert net(x, torch.rand(2)).shape == (2, 7, 3)


@pytest.mark.parametrize("mode", ["cross", "prefix"])
def test_zero_init_output_is_exactly_zero(mode):
    net = SeqTransformer(**SMALL, pooled_dim=6, token_dim=8, cond_mode=mode)
    assert torch.count_nonzero(net(torch.randn(2, 7, 5), torch.rand(2, 7), cond=_cond())) == 0


def test_each_token_output_depends_on_its_own_time():
    net = _net()
    x, t, c = torch.randn(2, 6, 5), torch.rand(2, 6), _cond()
    out = net(x, t, cond=c)
    t2 = t.clone()
    t2[:, 3] += 0.2
    diff = (net(x, t2, cond=c) - out).abs().amax(dim=(0, 2))  # (L,)
    assert diff[3] > 1e-4
    # with attention restricted to the diagonal, only token 3 may change
    eye = torch.eye(6, dtype=torch.bool)
    out_d, out_d2 = net(x, t, cond=c, attn_mask=eye), net(x, t2, cond=c, attn_mask=eye)
    d = (out_d2 - out_d).abs().amax(dim=(0, 2))
    assert d[3] > 1e-4 and d[torch.arange(6) != 3].max() < 1e-6
    # per-token t equal everywhere reproduces per-sample t
    ts = torch.rand(2)
    assert torch.allclose(net(x, ts, cond=c), net(x, ts[:, None].expand(2, 6), cond=c),
                          atol=1e-5)


@pytest.mark.parametrize("mode", ["cross", "prefix"])
def test_causal_output_ignores_the_future(mode):
    net = _net(cond_mode=mode, causal=True)
    x, t, c = torch.randn(2, 8, 5), torch.rand(2, 8), _cond()
    out = net(x, t, cond=c)
    x2, t2 = x.clone(), t.clone()
    x2[:, 5:] = torch.randn(2, 3, 5)
    t2[:, 5:] = torch.rand(2, 3)
    out2 = net(x2, t2, cond=c)
    assert torch.allclose(out2[:, :5], out[:, :5], atol=1e-5)
    assert (out2[:, 5:] - out[:, 5:]).abs().amax() > 1e-4
    x3 = x.clone()
    x3[:, 2] += 1.0  # a past token does matter
    assert (net(x3, t, cond=c)[:, 4] - out[:, 4]).abs().amax() > 1e-4


def test_block_causal_attn_mask_passed_in():
    net = _net()
    x, t = torch.randn(2, 8, 5), torch.rand(2)
    am = block_causal_mask(8, 4)  # two chunks of 4
    out = net(x, t, attn_mask=am)
    x2 = x.clone()
    x2[:, 6] += 1.0  # second chunk: first chunk unchanged, whole second chunk changes
    out2 = net(x2, t, attn_mask=am)
    assert torch.allclose(out2[:, :4], out[:, :4], atol=1e-5)
    assert (out2[:, 4] - out[:, 4]).abs().amax() > 1e-4


@pytest.mark.parametrize("mode", ["cross", "prefix"])
def test_condition_tokens_masking_and_pooled(mode):
    net = _net(cond_mode=mode)
    x, t, c = torch.randn(2, 6, 5), torch.rand(2), _cond()
    out = net(x, t, cond=c)
    tok = c.tokens.clone()
    tok[:, 2:] = 50.0 * torch.randn(2, 2, 8)
    assert torch.allclose(net(x, t, cond=Condition(c.pooled, tok, c.mask)), out, atol=1e-5)
    tok = c.tokens.clone()
    tok[:, 1] += torch.randn(2, 8)
    assert (net(x, t, cond=Condition(c.pooled, tok, c.mask)) - out).abs().amax() > 1e-4
    assert (net(x, t, cond=Condition(c.pooled + 1, c.tokens, c.mask)) - out).abs().amax() > 1e-4


def test_padding_mask_isolates_padded_frames():
    net = _net()
    x, t = torch.randn(2, 6, 5), torch.rand(2, 6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    out = net(x, t, mask=mask)
    x2 = x.clone()
    x2[0, 4:] = torch.randn(2, 5)
    out2 = net(x2, t, mask=mask)
    assert torch.allclose(out2, out, atol=1e-5)
    assert torch.all(out[0, 4:] == 0)


def test_permutation_equivariance_without_positions():
    net = _net(pos_embed="none")
    x, t, c = torch.randn(2, 7, 5), torch.rand(2, 7), _cond()
    perm = torch.randperm(7)
    out = net(x, t, cond=c)
    assert torch.allclose(net(x[:, perm], t[:, perm], cond=c), out[:, perm], atol=1e-5)


@pytest.mark.parametrize("autocast", [False, True])
def test_float32_and_bf16_autocast_forward(autocast):
    net = _net(cond_mode="prefix", causal=True)
    x, t, c = torch.randn(2, 6, 5), torch.rand(2, 6), _cond()
    ref = net(x, t, cond=c)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = net(x, t, cond=c)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().amax() <= 0.05 * ref.abs().amax() + 1e-6


def test_bad_inputs_are_named():
    net = _net(pos_embed="learned", max_len=8)
    with pytest.raises(ValueError, match=r"t must have shape \(2,\) or \(2, 6\)"):
        net(torch.randn(2, 6, 5), torch.rand(2, 5))
    with pytest.raises(ValueError, match="exceeds max_len 8"):
        net(torch.randn(2, 9, 5), torch.rand(2))
    with pytest.raises(ValueError, match=r"mask must be \(2, 6\)"):
        net(torch.randn(2, 6, 5), torch.rand(2), mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="attn_mask must be boolean"):
        net(torch.randn(2, 6, 5), torch.rand(2), attn_mask=torch.ones(6, 6))
    with pytest.raises(ValueError, match=r"x of shape \(B, L, 5\)"):
        net(torch.randn(2, 6, 4), torch.rand(2))
    with pytest.raises(ValueError, match="cond_mode must be one of"):
        SeqTransformer(cond_mode="film")
