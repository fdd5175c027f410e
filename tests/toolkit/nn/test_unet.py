"""U-Net: shapes, zero init, FiLM / cross-attention conditioning contract, autocast, errors."""

import pytest
import torch

from conditioners.base import Condition
from toolkit.nn.unet import UNet

SMALL = dict(base_channels=8, num_res_blocks=1, num_heads=2, groups=4)


def _cond(b=2, L=4, dp=6, dt=8, valid=2):
    mask = torch.zeros(b, L, dtype=torch.bool)
    mask[:, :valid] = True
    return Condition(pooled=torch.randn(b, dp), tokens=torch.randn(b, L, dt), mask=mask)


@pytest.mark.parametrize(
    "kw, shape, out_ch",
    [
        (dict(channel_mults=(1, 2)), (2, 3, 8, 8), 3),
        (dict(channel_mults=[1, 2, 2], attn_levels=[1, 2], in_channels=1, out_channels=2),
         (2, 1, 16, 12), 2),
        (dict(channel_mults=(1,), attn_levels=(0,), in_channels=4), (2, 4, 5, 7), 4),
    ],
)
def test_output_shapes(kw, shape, out_ch):
    kw = {"in_channels": 3, **kw}
    net = UNet(**kw, **SMALL, pooled_dim=6, token_dim=8, zero_init=False)
    out = net(torch.randn(shape), torch.rand(shape[0]), cond=_cond())
    assert out.shape == (shape[0], out_ch, *shape[2:]) and torch.isfinite(out).all()
    assert net(torch.randn(shape), torch.rand(shape[0])).shape == out.shape  # unconditional


def test_zero_init_output_is_exactly_zero_and_gradients_reach_output_layer():
    torch.manual_seed(0)
    net = UNet(channel_mults=(1, 2), pooled_dim=6, token_dim=8, **SMALL)
    out = net(torch.randn(2, 3, 8, 8), torch.rand(2), cond=_cond())
    assert torch.count_nonzero(out) == 0
    out.square().add(out).sum().backward()
    assert net.out[-1].weight.grad.abs().sum() > 0
    assert net.param_count() == sum(p.numel() for p in net.parameters())


def test_conditioning_contract():
    torch.manual_seed(0)
    net = UNet(channel_mults=(1, 2), pooled_dim=6, token_dim=8, zero_init=False, **SMALL)
    x, t, c = torch.randn(2, 3, 8, 8), torch.rand(2), _cond()
    out = net(x, t, cond=c)
    tok = c.tokens.clone()
    tok[:, 2:] = 50.0 * torch.randn(2, 2, 8)  # masked-out tokens: no effect
    assert torch.allclose(net(x, t, cond=Condition(c.pooled, tok, c.mask)), out, atol=1e-5)
    tok = c.tokens.clone()
    tok[:, 0] += torch.randn(2, 8)  # a valid token
    assert (net(x, t, cond=Condition(c.pooled, tok, c.mask)) - out).abs().amax() > 1e-4
    assert (net(x, t, cond=Condition(c.pooled + 1.0, c.tokens, c.mask)) - out).abs().amax() > 1e-4
    assert (net(x, t + 0.1, cond=c) - out).abs().amax() > 1e-4  # time matters
    # per-sample: changing sample 1's condition leaves sample 0 unchanged
    pooled = c.pooled.clone()
    pooled[1] += 1.0
    out2 = net(x, t, cond=Condition(pooled, c.tokens, c.mask))
    assert torch.allclose(out2[0], out[0], atol=1e-5) and not torch.allclose(out2[1], out[1])


@pytest.mark.parametrize("autocast", [False, True])
def test_float32_and_bf16_autocast_forward(autocast):
    torch.manual_seed(0)
    net = UNet(channel_mults=(1, 2), pooled_dim=6, token_dim=8, zero_init=False, **SMALL)
    x, t, c = torch.randn(2, 3, 8, 8), torch.rand(2), _cond()
    ref = net(x, t, cond=c)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = net(x, t, cond=c)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().amax() <= 0.05 * ref.abs().amax() + 1e-6


def test_bad_inputs_are_named():
    net = UNet(channel_mults=(1, 2, 2), **SMALL)
    with pytest.raises(ValueError, match="not divisible by 4"):
        net(torch.randn(1, 3, 6, 8), torch.rand(1))
    with pytest.raises(ValueError, match=r"x of shape \(B, 3, H, W\)"):
        net(torch.randn(1, 2, 8, 8), torch.rand(1))
    with pytest.raises(ValueError, match="without token_dim"):
        net(torch.randn(2, 3, 8, 8), torch.rand(2), cond=Condition(tokens=torch.randn(2, 4, 8)))
    with pytest.raises(ValueError, match="attn_levels"):
        UNet(channel_mults=(1, 2), attn_levels=(2,), **SMALL)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        UNet(base_channels=6, num_heads=4)


def test_pos_embed_option_changes_attention_inputs_only():
    """``pos_embed`` adds no parameters; with identical weights it changes the output (the
    attention now sees absolute position); bad widths are refused."""
    torch.manual_seed(0)
    kw = dict(in_channels=3, base_channels=8, channel_mults=(1,), num_res_blocks=1,
              num_heads=2, groups=4, zero_init=False)
    with_pos, without = UNet(pos_embed=True, **kw), UNet(pos_embed=False, **kw)
    without.load_state_dict(with_pos.state_dict())  # same parameter set
    x, t = torch.randn(2, 3, 8, 8), torch.full((2,), 0.5)
    assert with_pos(x, t).shape == (2, 3, 8, 8)
    assert not torch.allclose(with_pos(x, t), without(x, t), atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 4"):
        UNet(in_channels=3, base_channels=6, channel_mults=(1,), num_heads=2, groups=3,
             pos_embed=True)


def test_layout_attn_makes_the_caption_address_pixels():
    """With ``layout_attn`` a fresh (zero-init) net is the plain U-Net; with non-zero
    weights its per-pixel embedding map depends on the pixel's position *and* on the
    tokens (which pixels a token addresses changes with the token); it needs tokens."""
    torch.manual_seed(0)
    kw = dict(in_channels=3, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
              num_heads=2, groups=4, pooled_dim=6, token_dim=8)
    lay, plain = UNet(layout_attn=True, **kw), UNet(**kw)
    missing = plain.load_state_dict(lay.state_dict(), strict=False)
    assert missing.missing_keys == [] and all(
        k.startswith("layout") for k in missing.unexpected_keys)
    x, t, c = torch.randn(2, 3, 16, 16), torch.full((2,), 0.3), _cond()
    assert torch.equal(lay(x, t, cond=c), plain(x, t, cond=c))  # zero-init: plain U-Net
    for p in lay.parameters():  # as if trained: the zero-initialised layers become non-zero
        if p.ndim > 1 and not p.any():
            torch.nn.init.normal_(p, std=0.1)
    maps = []
    hook = lay.layout.register_forward_hook(lambda m, i, o: maps.append(o.detach()))
    c2 = Condition(c.pooled, c.tokens.clone(), c.mask)
    c2.tokens[:, 0] += 1.0
    lay(x, t, cond=c), lay(x, t, cond=c2)
    hook.remove()
    a, b = maps  # (B, H*W, E)
    assert a.shape == (2, 64, 32)  # the map is at half resolution (8 x 8)
    # varies over pixels (a query without position would give the same row everywhere,
    # up to float round-off ~1e-7)
    assert a.std(1).mean() > 1e-3 * a.abs().mean()
    d = (b - a).norm(dim=-1)  # (B, H*W): a token edit moves pixels by different amounts
    assert (d.std(1) > 1e-3 * d.mean(1)).all()
    with pytest.raises(ValueError, match="layout_attn needs condition tokens"):
        UNet(layout_attn=True, **{**kw, "token_dim": None})


def test_patch_size_runs_at_reduced_resolution_and_keeps_the_contract():
    torch.manual_seed(0)
    net = UNet(channel_mults=(1, 2), pooled_dim=6, token_dim=8, patch_size=2, zero_init=False,
               layout_attn=True, **SMALL)
    assert net.conv_in.in_channels == 12 and net.out[-1].out_channels == 12
    x, t, c = torch.randn(2, 3, 8, 8), torch.rand(2), _cond()
    seen = []
    hook = net.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    out = net(x, t, cond=c)
    hook.remove()
    assert out.shape == x.shape and seen == [torch.Size([2, 8, 4, 4])]
    # space-to-depth is lossless: the output layer's channel (c, dy, dx) lands on pixel
    # (2i + dy, 2j + dx) of channel c, so perturbing one unfolded channel moves one phase only
    with torch.no_grad():
        net.out[-1].bias[5] += 1.0  # channel c=1, (dy, dx) = (0, 1)
    diff = (net(x, t, cond=c) - out).abs()
    assert torch.allclose(diff[:, 1, 0::2, 1::2], torch.ones(2, 4, 4), atol=1e-5)
    assert diff.sum().item() == pytest.approx(diff[:, 1, 0::2, 1::2].sum().item(), rel=1e-5)
    zero = UNet(channel_mults=(1, 2), patch_size=2, **SMALL)
    assert torch.count_nonzero(zero(x, t)) == 0
    with pytest.raises(ValueError, match="not divisible by 4"):
        UNet(channel_mults=(1, 2), patch_size=2, **SMALL)(torch.randn(1, 3, 6, 6), torch.rand(1))
    with pytest.raises(ValueError, match="patch_size"):
        UNet(patch_size=0, **SMALL)
