"""Policy networks: pi0's block-causal attention (checked by perturbation), prefix caching
(identical velocities and sampled chunks), key padding, and the Diffusion-Policy U-Net."""

from __future__ import annotations

import pytest
import torch

from modalities.actions.nets import FlowPolicyNet, TemporalUNet1d

S, A, H, B = 5, 3, 10, 3


def make_net(**kw) -> FlowPolicyNet:
    torch.manual_seed(0)
    kw = {"width": 32, "depth": 3, "heads": 4, "cameras": ("top",), "text_dim": 8,
          "state_tokens": 2, **kw}
    return FlowPolicyNet(S, A, H, **kw).eval()


def make_obs(seed: int = 0, b: int = B) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, 6, dtype=torch.bool)
    mask[0, 3:] = False  # padded instruction tokens
    mask[-1, 1:] = False
    return {"state": torch.randn(b, S, generator=g),
            "images": {"top": torch.rand(b, 3, 16, 16, generator=g)},
            "text": torch.randn(b, 6, 8, generator=g), "text_mask": mask}


def test_block_causal_mask_by_perturbation():
    net, obs = make_net(), make_obs()
    x, t = torch.randn(B, H, A), torch.rand(B)
    with torch.no_grad():
        v, pre = net(x, t, obs, return_prefix=True)
        # changing the action tokens (noisy actions and time) never changes prefix outputs
        v2, pre2 = net(torch.randn(B, H, A), torch.rand(B), obs, return_prefix=True)
        assert torch.equal(pre, pre2) or torch.allclose(pre, pre2, atol=1e-6, rtol=0)
        assert not torch.allclose(v, v2)
        # changing the prefix (state, image or instruction) changes the action outputs
        for key in ("state", "images", "text"):
            o = dict(obs)
            if key == "images":
                o["images"] = {"top": torch.rand(B, 3, 16, 16)}
            else:
                o[key] = obs[key] + 1.0
            assert not torch.allclose(net(x, t, o), v, atol=1e-4), key
        # every action token sees every other action token (bidirectional within the suffix)
        x3 = x.clone()
        x3[:, -1] += 1.0
        assert (net(x3, t, obs)[:, 0] - v[:, 0]).abs().max() > 1e-5


def test_padded_text_tokens_are_ignored():
    net, obs = make_net(), make_obs()
    x, t = torch.randn(B, H, A), torch.rand(B)
    o = dict(obs, text=obs["text"].clone())
    o["text"][~obs["text_mask"]] = 50.0  # garbage under the key-padding mask
    with torch.no_grad():
        v, pre = net(x, t, obs, return_prefix=True)
        v2, pre2 = net(x, t, o, return_prefix=True)
        assert torch.allclose(v, v2, atol=1e-5)
        valid = torch.cat([torch.ones(B, 2 + 16, dtype=torch.bool), obs["text_mask"]], 1)
        assert torch.allclose(pre[valid], pre2[valid], atol=1e-5)
        c = net.encode_prefix(o)
        assert torch.allclose(net.velocity(x, t, c), v, atol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"cameras": (), "text_dim": None, "state_tokens": 1}])
def test_prefix_cache_matches_uncached_forward(kw):
    net, obs = make_net(**kw), make_obs(1)
    with torch.no_grad():
        cache = net.encode_prefix(obs)
        assert len(cache.keys) == len(net.layers) and cache.batch_size == B
        for _ in range(3):
            x, t = torch.randn(B, H, A), torch.rand(B)
            assert torch.allclose(net.velocity(x, t, cache), net(x, t, obs), atol=1e-5)
        # whole Euler chunks (10 steps) agree too
        x0 = torch.randn(B, H, A)
        xa, xb = x0.clone(), x0.clone()
        for k in range(10):
            tk = torch.full((B,), k / 10)
            xa = xa + 0.1 * net.velocity(xa, tk, cache)
            xb = xb + 0.1 * net(xb, tk, obs)
        assert torch.allclose(xa, xb, atol=1e-5)
        tb = net.time_bias(torch.tensor([0.3]))
        x, t = torch.randn(1, H, A), torch.full((1,), 0.3)
        c1 = net.encode_prefix({k: v[:1] if k != "images" else {"top": v["top"][:1]}
                                for k, v in obs.items()})
        assert torch.allclose(net.velocity(x, t, c1, tb), net.velocity(x, t, c1), atol=1e-6)


def test_flow_net_errors_and_gradients():
    net = make_net()
    with pytest.raises(ValueError, match=r"x_t must be \(B, 10, 3\)"):
        net(torch.randn(B, H, A + 1), torch.rand(B), make_obs())
    with pytest.raises(ValueError, match="divisible"):
        FlowPolicyNet(S, A, H, width=30, heads=4)
    with pytest.raises(ValueError, match="prefix"):
        FlowPolicyNet(S, A, H, state_tokens=0)
    net.train()
    net(torch.randn(B, H, A), torch.rand(B), make_obs()).square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    # the action expert is narrower than the prefix (pi0's smaller action expert)
    assert net.action_width == 16 and net.layers[0].action.qkv.weight.shape == (96, 16)


def test_temporal_unet_shapes_and_conditioning():
    torch.manual_seed(0)
    for h in (10, 16, 7):  # horizons not divisible by 4 are padded and cropped
        u = TemporalUNet1d(S, A, h, down_dims=(16, 32, 64), obs_dim=16, step_dim=16,
                           cameras=("top",), text_dim=8).eval()
        obs = make_obs(2)
        x, t = torch.randn(B, h, A), torch.rand(B)
        with torch.no_grad():
            out = u(x, t, obs)
            assert out.shape == (B, h, A)
            assert not torch.allclose(u(x, t, dict(obs, state=obs["state"] + 1)), out)
            assert not torch.allclose(u(x, 1 - t, obs), out)
            emb = u.encode_obs(obs)
            assert torch.allclose(u.denoise(x, t, emb), out)
    with pytest.raises(ValueError, match="x_t must be"):
        u(torch.randn(B, h + 1, A), t, obs)
    u.train()
    u(x, t, obs).square().mean().backward()
    assert u.cams["top"].out.weight.grad is not None and u.text_proj.weight.grad is not None
