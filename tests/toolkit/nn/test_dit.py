"""DiT: shapes, AdaLN-Zero init, cross-attention masking, pooled conditioning, overfitting,
autocast, config-friendly construction and clear errors."""

import pytest
import torch

from conditioners.base import Condition
from toolkit.losses import cfm_loss
from toolkit.nn.dit import DiT

SMALL = dict(hidden_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


def _cond(b=2, L=5, dp=6, dt=8, valid=3):
    mask = torch.zeros(b, L, dtype=torch.bool)
    mask[:, :valid] = True
    return Condition(pooled=torch.randn(b, dp), tokens=torch.randn(b, L, dt), mask=mask)


@pytest.mark.parametrize(
    "kw, shape, out_ch",
    [
        (dict(in_channels=3, image_size=8, patch_size=2), (2, 3, 8, 8), 3),
        (dict(in_channels=1, image_size=(8, 12), patch_size=4, out_channels=2), (2, 1, 8, 12), 2),
        (dict(in_channels=4, image_size=4, patch_size=1, pos_embed="learned"), (2, 4, 4, 4), 4),
    ],
)
def test_output_shapes(kw, shape, out_ch):
    net = DiT(**kw, **SMALL, pooled_dim=6, token_dim=8, zero_init=False)
    out = net(torch.randn(shape), torch.rand(shape[0]), cond=_cond())
    assert out.shape == (shape[0], out_ch, *shape[2:]) and torch.isfinite(out).all()
    assert net(torch.randn(shape), torch.rand(shape[0])).shape == out.shape  # unconditional


def test_sincos_dit_accepts_other_sizes():
    net = DiT(in_channels=3, image_size=8, patch_size=2, **SMALL)
    assert net(torch.randn(1, 3, 12, 4), torch.rand(1)).shape == (1, 3, 12, 4)


def test_zero_init_output_is_exactly_zero():
    torch.manual_seed(0)
    net = DiT(in_channels=3, image_size=8, patch_size=2, pooled_dim=6, token_dim=8, **SMALL)
    out = net(torch.randn(2, 3, 8, 8), torch.rand(2), cond=_cond())
    assert torch.count_nonzero(out) == 0
    assert net.param_count() == sum(p.numel() for p in net.parameters()) > 0


def test_cross_attention_mask_and_pooled_condition():
    torch.manual_seed(0)
    net = DiT(in_channels=3, image_size=8, patch_size=2, pooled_dim=6, token_dim=8,
              zero_init=False, **SMALL)
    x, t, c = torch.randn(2, 3, 8, 8), torch.rand(2), _cond()
    out = net(x, t, cond=c)
    tok = c.tokens.clone()
    tok[:, 3:] = 50.0 * torch.randn(2, 2, 8)  # masked-out tokens
    assert torch.allclose(net(x, t, cond=Condition(c.pooled, tok, c.mask)), out, atol=1e-5)
    tok = c.tokens.clone()
    tok[:, 1] += torch.randn(2, 8)  # a valid token
    assert (net(x, t, cond=Condition(c.pooled, tok, c.mask)) - out).abs().amax() > 1e-4
    pooled = c.pooled + 1.0
    assert (net(x, t, cond=Condition(pooled, c.tokens, c.mask)) - out).abs().amax() > 1e-4
    # token order does not matter (no position embedding on condition tokens)
    perm = torch.tensor([2, 0, 1, 4, 3])
    permuted = Condition(c.pooled, c.tokens[:, perm], c.mask[:, perm])
    assert torch.allclose(net(x, t, cond=permuted), out, atol=1e-5)
    # an all-masked token sequence equals no tokens at all
    none_valid = Condition(c.pooled, c.tokens, torch.zeros_like(c.mask))
    assert torch.allclose(net(x, t, cond=none_valid), net(x, t, cond=Condition(c.pooled)),
                          atol=1e-6)


def adam_fit(net, loss_fn, steps: int, lr: float) -> list[float]:
    """Plain Adam (Kingma & Ba 2015, alg. 1) written out: avoids torch.optim's lazy import
    of torch._dynamo, which dominates a short test's time without cached bytecode."""
    params = [p for p in net.parameters() if p.requires_grad]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    losses = []
    for i in range(1, steps + 1):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params)
        losses.append(loss.item())
        with torch.no_grad():
            for p, g, mi, vi in zip(params, grads, m, v, strict=True):
                mi.mul_(0.9).add_(g, alpha=0.1)
                vi.mul_(0.999).addcmul_(g, g, value=0.001)
                p.sub_(lr * (mi / (1 - 0.9**i)) / ((vi / (1 - 0.999**i)).sqrt() + 1e-8))
    return losses


def test_tiny_dit_overfits_one_batch():
    torch.manual_seed(0)
    net = DiT(in_channels=3, image_size=8, patch_size=2, **SMALL)
    g = torch.Generator().manual_seed(0)
    x1, x0 = torch.randn(8, 3, 8, 8, generator=g), torch.randn(8, 3, 8, 8, generator=g)
    t = torch.rand(8, generator=g)
    losses = adam_fit(net, lambda: cfm_loss(net, x1, x0, t=t).loss, steps=100, lr=3e-3)
    assert losses[-1] < losses[0] / 10, losses[::20]


@pytest.mark.parametrize("autocast", [False, True])
def test_float32_and_bf16_autocast_forward(autocast):
    torch.manual_seed(0)
    net = DiT(in_channels=3, image_size=8, patch_size=2, pooled_dim=6, token_dim=8,
              zero_init=False, **SMALL)
    x, t, c = torch.randn(2, 3, 8, 8), torch.rand(2), _cond()
    ref = net(x, t, cond=c)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = net(x, t, cond=c)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().amax() <= 0.05 * ref.abs().amax() + 1e-6


def test_hydra_instantiate_with_list_config():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"_target_": "toolkit.nn.dit.DiT", "image_size": [8, 8],
                            "patch_size": 4, "hidden_dim": 16, "depth": 1, "num_heads": 2})
    net = instantiate(cfg)
    assert isinstance(net, DiT) and net.image_size == (8, 8)


def test_bad_inputs_are_named():
    net = DiT(in_channels=3, image_size=8, patch_size=2, pos_embed="learned", **SMALL)
    with pytest.raises(ValueError, match=r"x of shape \(B, 3, H, W\)"):
        net(torch.randn(2, 1, 8, 8), torch.rand(2))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        net(torch.randn(2, 3, 7, 8), torch.rand(2))
    with pytest.raises(ValueError, match="learned pos_embed"):
        net(torch.randn(2, 3, 4, 4), torch.rand(2))
    with pytest.raises(ValueError, match="without pooled_dim"):
        net(torch.randn(2, 3, 8, 8), torch.rand(2), cond=Condition(pooled=torch.randn(2, 6)))
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        net(torch.randn(2, 3, 8, 8), torch.rand(3))
    with pytest.raises(ValueError, match="pos_embed must be one of"):
        DiT(pos_embed="rope")
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        DiT(image_size=10, patch_size=4)


def test_works_with_toolkit_sample_and_cfg():
    import toolkit
    from toolkit import guidance

    torch.manual_seed(0)
    net = DiT(in_channels=3, image_size=8, patch_size=2, pooled_dim=6, token_dim=8,
              zero_init=False, **SMALL)
    c = _cond()
    null = Condition(pooled=torch.zeros(2, 6), tokens=c.tokens, mask=torch.zeros_like(c.mask))
    guided = guidance.cfg(net, scale=3.0, cond={"cond": c}, uncond={"cond": null}, batched=False)
    x0 = torch.randn(2, 3, 8, 8)
    out = toolkit.sample(guided, x0, path="linear", prediction="velocity", solver="heun", steps=2)
    plain = toolkit.sample(net, x0, path="linear", prediction="velocity", solver="heun",
                           steps=2, cond={"cond": c})
    assert out.shape == x0.shape and torch.isfinite(out).all()
    assert (out - plain).abs().amax() > 1e-4  # guidance changes the samples
