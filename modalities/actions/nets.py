"""Action-chunk networks: a pi0-style flow transformer and a Diffusion-Policy 1-D U-Net.

Both map a noisy normalised chunk ``x_t (B, H, A)``, a time ``t (B,)`` (t = 0 noise, t = 1
data) and an observation dict to a prediction of the same shape. The observation dict is
what :class:`~modalities.actions.task.PolicyModel` builds from a batch:
``{"state": (B, S) normalised, "images": {cam: (B, 3, h, w) in [0, 1]},
"text": (B, L, D_text), "text_mask": (B, L) bool}`` (each entry optional per config).

:class:`FlowPolicyNet` (Black et al. 2024, "pi0", sec. IV / fig. 3): a prefix of observation
tokens (state -> MLP -> ``state_tokens`` tokens; per camera a small CNN whose feature map is
pooled to a ``grid x grid`` patch grid; instruction tokens projected from a frozen text
encoder) and a suffix of ``H`` action tokens ``MLP([W_a a_k, phi(t)]) + pos_k`` (pi0's action
expert input: action and sinusoidal time embedding fused by an MLP). Prefix and suffix have
their own weights in every layer (pi0's two "experts") and meet only in attention, under
pi0's block-causal mask: prefix tokens attend bidirectionally to the (valid) prefix, never
to actions; action tokens attend to the prefix and to all action tokens. Hence the prefix
keys/values do not depend on ``(x_t, t)``: :meth:`FlowPolicyNet.encode_prefix` computes them
once per observation and :meth:`FlowPolicyNet.velocity` runs only the action tokens. (pi0
puts the state token in a middle block run by the action expert; it never attends to the
actions either, so here it simply joins the cached prefix.) As in pi0, the action expert is
narrower (``action_width``, default ``width / 2``) and projects into the shared attention
width, so each denoising step costs a fraction of a prefix pass.

:class:`TemporalUNet1d` (Chi et al. 2023, "Diffusion Policy", CNN-based variant): a 1-D
convolutional U-Net over the horizon, FiLM-conditioned (Perez et al. 2018) in every residual
block on ``[diffusion-step embedding, observation embedding]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conditioners.observation import ImageEncoder

__all__ = ["FlowPolicyNet", "PrefixCache", "TemporalUNet1d", "sinusoidal"]

Obs = Mapping[str, Any]


def sinusoidal(t: Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0
               ) -> Tensor:
    """Sine-cosine embedding ``(..., dim)`` of a scalar with periods log-spaced in
    ``[min_period, max_period]`` (pi0's time embedding, Black et al. 2024, sec. IV)."""
    frac = torch.linspace(0.0, 1.0, dim // 2, device=t.device, dtype=torch.float32)
    period = min_period * (max_period / min_period) ** frac  # (dim/2,)
    ang = t.float()[..., None] * (2.0 * math.pi / period)  # (..., dim/2)
    return torch.cat([ang.sin(), ang.cos()], -1)


@dataclass
class PrefixCache:
    """Per-layer keys/values of the observation prefix (``(B, heads, Lp, dh)`` each) and
    the attention mask of action queries over ``[prefix, actions]`` (None = all valid)."""

    keys: list[Tensor]
    values: list[Tensor]
    attn_mask: Tensor | None  # (B, 1, 1, Lp + H) bool
    weights: tuple | None = None  # FlowPolicyNet.action_weights(), fetched once per chunk

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]


class _Expert(nn.Module):
    """One token group's weights in one layer: pre-norm projections of its width into the
    shared attention space ``attn_dim`` (and back), then an MLP."""

    def __init__(self, width: int, attn_dim: int, mlp_ratio: float, kv_only: bool = False
                 ) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1, self.qkv = nn.LayerNorm(width), nn.Linear(width, 3 * attn_dim)
        if not kv_only:  # the last layer's prefix only provides keys/values
            self.norm2, self.proj = nn.LayerNorm(width), nn.Linear(attn_dim, width)
            self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(),
                                     nn.Linear(hidden, width))

    # the math lives in _qkv / _finish (plain tensors); these methods only fetch the weights
    def qkv_heads(self, x: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
        return _qkv(x, self.weights()[:5], heads)

    def finish(self, x: Tensor, o: Tensor) -> Tensor:
        return _finish(x, o, self.weights()[5:])

    def weights(self) -> tuple:
        """The expert's tensors as a flat tuple: ``[:5]`` for :func:`_qkv` (norm1, qkv),
        ``[5:]`` for :func:`_finish` (proj, norm2, MLP; absent for a ``kv_only`` expert)."""
        n1 = self.norm1
        head = (n1.weight, n1.bias, n1.eps, self.qkv.weight, self.qkv.bias)
        if not hasattr(self, "proj"):
            return head
        n2, fc1, fc2 = self.norm2, self.mlp[0], self.mlp[2]
        return head + (self.proj.weight, self.proj.bias, n2.weight, n2.bias, n2.eps,
                       fc1.weight, fc1.bias, fc2.weight, fc2.bias)


def _qkv(x: Tensor, w: tuple, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pre-norm QKV projection ``(B, n, W) -> 3 x (B, heads, n, dh)``."""
    n1w, n1b, eps1, qkv_w, qkv_b = w
    b, n, d = x.shape
    h = F.layer_norm(x, (d,), n1w, n1b, eps1)
    qkv = F.linear(h, qkv_w, qkv_b).view(b, n, 3, heads, -1)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, heads, n, dh)


def _finish(x: Tensor, o: Tensor, w: tuple) -> Tensor:
    """Attention output projection + residual, then the pre-norm MLP + residual."""
    pw, pb, n2w, n2b, eps2, f1w, f1b, f2w, f2b = w
    b, h, n, d = o.shape
    x = x + F.linear(o.transpose(1, 2).reshape(b, n, h * d), pw, pb)
    y = F.layer_norm(x, x.shape[-1:], n2w, n2b, eps2)
    return x + F.linear(F.silu(F.linear(y, f1w, f1b)), f2w, f2b)


def _action_layer(a: Tensor, kp: Tensor, vp: Tensor, w: tuple, heads: int,
                  mask: Tensor | None) -> Tensor:
    """One action-expert layer against cached prefix keys/values, on the plain tensors of
    :meth:`_Expert.weights` (fetched once per chunk: no ``nn.Module`` lookups per step)."""
    qa, ka, va = _qkv(a, w[:5], heads)
    o = F.scaled_dot_product_attention(qa, torch.cat([kp, ka], 2), torch.cat([vp, va], 2),
                                       attn_mask=mask)  # (B, heads, H, dh)
    return _finish(a, o, w[5:])


class _Layer(nn.Module):
    def __init__(self, width: int, action_width: int, mlp_ratio: float, last: bool) -> None:
        super().__init__()
        self.prefix = _Expert(width, width, mlp_ratio, kv_only=last)
        self.action = _Expert(action_width, width, mlp_ratio)


class _PatchCNN(nn.Module):
    """Camera image (B, 3, h, w) in [0, 1] -> ``grid**2`` patch tokens (B, grid**2, W)."""

    def __init__(self, width: int, grid: int, channels: Sequence[int] = (32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for co in (*channels, width):
            layers += [nn.Conv2d(c, co, 3, stride=2, padding=1), nn.GroupNorm(8, co), nn.SiLU()]
            c = co
        self.body, self.grid = nn.Sequential(*layers[:-1]), grid
        self.pos = nn.Parameter(torch.randn(grid * grid, width) * 0.02)

    def forward(self, img: Tensor) -> Tensor:
        f = F.adaptive_avg_pool2d(self.body(img * 2.0 - 1.0), self.grid)  # (B, W, g, g)
        return f.flatten(2).transpose(1, 2) + self.pos  # (B, g*g, W)


class FlowPolicyNet(nn.Module):
    """pi0-style velocity network over action chunks (see the module docstring).

    Args:
        state_dim / action_dim / horizon: S, A, H. width / depth / heads / mlp_ratio:
            transformer size. state_tokens: tokens the state MLP produces (0 = no state).
        cameras: camera names (one patch CNN each). image_grid: patch grid side.
        text_dim: width of the frozen text encoder's token states (None = no text).
    """

    def __init__(self, state_dim: int, action_dim: int, horizon: int, width: int = 128,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0,
                 action_width: int | None = None, state_tokens: int = 1,
                 cameras: Sequence[str] = (), image_grid: int = 4,
                 text_dim: int | None = None) -> None:
        super().__init__()
        if depth < 1 or width % heads or width % 2:
            raise ValueError(f"need depth >= 1 and model.width={width} even and divisible by "
                             f"heads={heads}")
        if state_tokens < 1 and not cameras and not text_dim:
            raise ValueError("FlowPolicyNet needs a prefix: state_tokens >= 1, cameras or text")
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self.horizon = int(horizon)
        self.width, self.heads, self.state_tokens = int(width), int(heads), int(state_tokens)
        self.action_width = int(action_width or width // 2)
        self.cameras, self.text_dim = tuple(cameras), text_dim
        w = self.width
        if self.state_tokens:
            self.state_mlp = nn.Sequential(nn.Linear(state_dim, w), nn.SiLU(),
                                           nn.Linear(w, w * self.state_tokens))
            self.state_pos = nn.Parameter(torch.randn(self.state_tokens, w) * 0.02)
        self.cams = nn.ModuleDict({c: _PatchCNN(w, image_grid) for c in self.cameras})
        if self.cameras:
            self.cam_emb = nn.Parameter(torch.randn(len(self.cameras), w) * 0.02)
        if text_dim:
            self.text_proj = nn.Linear(int(text_dim), w)
        aw = self.action_width
        self.action_in = nn.Linear(action_dim, aw)
        self.action_time_mlp = nn.Sequential(nn.Linear(2 * aw, aw), nn.SiLU(), nn.Linear(aw, aw))
        self.action_pos = nn.Parameter(torch.randn(horizon, aw) * 0.02)
        self.layers = nn.ModuleList([_Layer(w, aw, mlp_ratio, i + 1 == depth)
                                     for i in range(depth)])
        self.norm_out, self.head = nn.LayerNorm(aw), nn.Linear(aw, action_dim)

    # ------------------------------------------------------------------ embeddings
    def embed_prefix(self, obs: Obs) -> tuple[Tensor, Tensor]:
        """Observation tokens ``(B, Lp, W)`` and their validity ``(B, Lp)`` bool."""
        tokens: list[Tensor] = []  # each (B, n, W)
        if self.state_tokens:
            s = obs["state"]  # (B, S)
            e = self.state_mlp(s).view(s.shape[0], self.state_tokens, self.width)
            tokens.append(e + self.state_pos)
        for i, cam in enumerate(self.cameras):
            tokens.append(self.cams[cam](obs["images"][cam]) + self.cam_emb[i])
        b = tokens[0].shape[0] if tokens else obs["text"].shape[0]
        valid = [torch.ones(b, sum(x.shape[1] for x in tokens), dtype=torch.bool,
                            device=self.action_pos.device)]
        if self.text_dim:
            txt = obs["text"]  # (B, L, D_text)
            pos = sinusoidal(torch.arange(txt.shape[1], device=txt.device).float(), self.width,
                             1.0, 1e4)  # (L, W) token positions
            tokens.append(self.text_proj(txt.to(self.action_pos.dtype)) + pos)
            valid.append(obs.get("text_mask", torch.ones(txt.shape[:2], dtype=torch.bool,
                                                          device=txt.device)))
        return torch.cat(tokens, 1), torch.cat(valid, 1)

    def time_bias(self, t: Tensor) -> Tensor:
        """Time part ``W_1phi phi(t) + b_1`` ``(..., Wa)`` of the action-time MLP's first layer
        (precomputable for a whole time grid at once)."""
        lin1, w = self.action_time_mlp[0], self.action_width
        phi = sinusoidal(t, w).to(lin1.weight.dtype)  # (..., Wa)
        return F.linear(phi, lin1.weight[:, w:], lin1.bias)

    def embed_actions(self, x_t: Tensor, t: Tensor, time_bias: Tensor | None = None) -> Tensor:
        """Action tokens ``(B, H, Wa)``: ``MLP([W_a a_k, phi(t)]) + pos_k`` (pi0, sec. IV),
        with the first layer split as ``W_1 [a; phi] + b = W_1a a + (W_1phi phi + b)``."""
        lin1, _, lin2 = self.action_time_mlp
        tb = self.time_bias(t) if time_bias is None else time_bias  # (B, Wa)
        a = F.linear(x_t, self.action_in.weight, self.action_in.bias)  # (B, H, Wa)
        h = F.silu(F.linear(a, lin1.weight[:, : self.action_width]) + tb[:, None])
        return F.linear(h, lin2.weight, lin2.bias) + self.action_pos

    def _check(self, x_t: Tensor, t: Tensor) -> None:
        if x_t.ndim != 3 or x_t.shape[1:] != (self.horizon, self.action_dim):
            raise ValueError(f"x_t must be (B, {self.horizon}, {self.action_dim}), got "
                             f"{tuple(x_t.shape)}")
        if t.shape != (x_t.shape[0],):
            raise ValueError(f"t must be ({x_t.shape[0]},), got {tuple(t.shape)}")

    # ------------------------------------------------------------------ passes
    def forward(self, x_t: Tensor, t: Tensor, obs: Obs, return_prefix: bool = False
                ) -> Tensor | tuple[Tensor, Tensor]:
        """Uncached joint pass over ``[prefix, actions]`` with the block-causal mask.

        Returns the velocity ``(B, H, A)`` (and the prefix states ``(B, Lp, W)`` entering
        the last layer, whose prefix tokens only provide keys/values).
        """
        self._check(x_t, t)
        p, valid = self.embed_prefix(obs)  # (B, Lp, W), (B, Lp)
        a = self.embed_actions(x_t, t)  # (B, H, Wa)
        lp, h = p.shape[1], a.shape[1]
        is_prefix = torch.arange(lp + h, device=p.device) < lp  # (L,)
        key_ok = torch.cat([valid, torch.ones_like(valid[:, :1]).expand(-1, h)], 1)  # (B, L)
        # pi0 block-causal mask: prefix queries see prefix keys only; actions see everything
        allowed = key_ok[:, None, :] & (~is_prefix[None, :, None] | is_prefix[None, None, :])
        allowed = allowed | torch.eye(lp + h, dtype=torch.bool, device=p.device)  # no empty row
        mask = allowed[:, None]  # (B, 1, L, L)
        for layer in self.layers:
            qp, kp, vp = layer.prefix.qkv_heads(p, self.heads)
            qa, ka, va = layer.action.qkv_heads(a, self.heads)
            o = F.scaled_dot_product_attention(torch.cat([qp, qa], 2), torch.cat([kp, ka], 2),
                                               torch.cat([vp, va], 2), attn_mask=mask)
            a = layer.action.finish(a, o[:, :, lp:])
            if layer is not self.layers[-1]:
                p = layer.prefix.finish(p, o[:, :, :lp])
        v = self._out(a)  # (B, H, A)
        return (v, p) if return_prefix else v

    def encode_prefix(self, obs: Obs) -> PrefixCache:
        """Keys/values of the prefix in every layer (computed once per observation)."""
        p, valid = self.embed_prefix(obs)  # (B, Lp, W), (B, Lp)
        lp = p.shape[1]
        pmask = (valid[:, None, :] | torch.eye(lp, dtype=torch.bool, device=p.device))[:, None]
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            qp, kp, vp = layer.prefix.qkv_heads(p, self.heads)
            keys.append(kp)
            values.append(vp)
            if i + 1 < len(self.layers):  # the last layer's prefix outputs are never used
                p = layer.prefix.finish(p, F.scaled_dot_product_attention(
                    qp, kp, vp, attn_mask=None if bool(valid.all()) else pmask))
        amask = None
        if not bool(valid.all()):
            ones = torch.ones(valid.shape[0], self.horizon, dtype=torch.bool, device=p.device)
            amask = torch.cat([valid, ones], 1)[:, None, None]  # (B, 1, 1, Lp + H)
        return PrefixCache(keys, values, amask, self.action_weights())

    def action_weights(self) -> tuple:
        """The action path's tensors as plain tuples, fetched once per chunk: the denoising
        loop then does no ``nn.Module`` attribute lookups (about 10 % of a chunk on CPU)."""
        lin1, _, lin2 = self.action_time_mlp
        w1a = lin1.weight[:, :self.action_width]  # (Wa, Wa): W_1a of embed_actions
        # W_1a (W_in a + b_in) = (W_1a W_in) a + W_1a b_in: one matmul per step instead of two
        return (w1a @ self.action_in.weight, w1a @ self.action_in.bias,
                lin2.weight, lin2.bias, self.action_pos,
                tuple(layer.action.weights() for layer in self.layers),
                self.norm_out.weight, self.norm_out.bias, self.norm_out.eps,
                self.head.weight, self.head.bias)

    def velocity(self, x_t: Tensor, t: Tensor, cache: PrefixCache,
                 time_bias: Tensor | None = None) -> Tensor:
        """Velocity ``(B, H, A)`` of the action tokens against the cached prefix
        (``time_bias``: :meth:`time_bias` of ``t``, if precomputed). Same ops as
        :meth:`embed_actions` + the action expert + :meth:`_out`, on ``cache.weights``."""
        in_w, in_b, l2_w, l2_b, pos, layer_ws, no_w, no_b, no_eps, hw, hb = (
            cache.weights if cache.weights is not None else self.action_weights())
        tb = self.time_bias(t) if time_bias is None else time_bias  # (B, Wa)
        # MLP([W_a a_k, phi(t)]) + pos_k (pi0, sec. IV), first layer split as in embed_actions
        h = F.silu(F.linear(x_t, in_w, in_b) + tb[:, None])  # (B, H, Wa)
        a = F.linear(h, l2_w, l2_b) + pos
        for w, kp, vp in zip(layer_ws, cache.keys, cache.values):
            a = _action_layer(a, kp, vp, w, self.heads, cache.attn_mask)
        a = F.layer_norm(a, a.shape[-1:], no_w, no_b, no_eps)
        return F.linear(a, hw, hb)  # (B, H, A)

    def _out(self, a: Tensor) -> Tensor:
        n = self.norm_out
        a = F.layer_norm(a, a.shape[-1:], n.weight, n.bias, n.eps)
        return F.linear(a, self.head.weight, self.head.bias)  # (B, H, A)


# ============================================================================ Diffusion Policy
class _CondRes1d(nn.Module):
    """Conv-GN-Mish x2 with FiLM ``h <- (1 + gamma(c)) h + beta(c)`` between (DP's conditional
    residual block, Chi et al. 2023; FiLM: Perez et al. 2018) and a 1x1 residual projection."""

    def __init__(self, cin: int, cout: int, cond: int, k: int = 5) -> None:
        super().__init__()
        g = math.gcd(8, cout)
        self.b1 = nn.Sequential(nn.Conv1d(cin, cout, k, padding=k // 2), nn.GroupNorm(g, cout),
                                nn.Mish())
        self.b2 = nn.Sequential(nn.Conv1d(cout, cout, k, padding=k // 2), nn.GroupNorm(g, cout),
                                nn.Mish())
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond, 2 * cout))
        self.res = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        gamma, beta = self.film(c)[..., None].chunk(2, 1)  # (B, C, 1) each
        return self.b2(self.b1(x) * (1 + gamma) + beta) + self.res(x)


class TemporalUNet1d(nn.Module):
    """Diffusion Policy's conditional 1-D U-Net (see the module docstring).

    Args:
        state_dim / action_dim / horizon: S, A, H. down_dims: channels per level.
        obs_dim: width of the observation embedding. step_dim: diffusion-step embedding.
        cameras: camera names (a global-pooled CNN each, like DP's ResNet features).
        text_dim: width of text token states (masked mean, projected); None = no text.
        kernel: conv kernel size.
    """

    def __init__(self, state_dim: int, action_dim: int, horizon: int,
                 down_dims: Sequence[int] = (64, 128, 256), obs_dim: int = 128,
                 step_dim: int = 64, cameras: Sequence[str] = (), text_dim: int | None = None,
                 kernel: int = 5) -> None:
        super().__init__()
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self.horizon = int(horizon)
        self.cameras, self.text_dim, self.step_dim = tuple(cameras), text_dim, int(step_dim)
        self.state_mlp = nn.Sequential(nn.Linear(state_dim, obs_dim), nn.Mish(),
                                       nn.Linear(obs_dim, obs_dim))
        self.cams = nn.ModuleDict({c: ImageEncoder(3, obs_dim, 16, 3) for c in self.cameras})
        self.text_proj = nn.Linear(int(text_dim), obs_dim) if text_dim else None
        self.step_mlp = nn.Sequential(nn.Linear(step_dim, 4 * step_dim), nn.Mish(),
                                      nn.Linear(4 * step_dim, step_dim))
        cond = step_dim + obs_dim * (1 + len(self.cameras) + bool(text_dim))
        dims = [action_dim, *down_dims]
        pairs = list(zip(dims[:-1], dims[1:]))
        self.down = nn.ModuleList(nn.ModuleList([
            _CondRes1d(ci, co, cond, kernel), _CondRes1d(co, co, cond, kernel),
            nn.Conv1d(co, co, 3, 2, 1) if i + 1 < len(pairs) else nn.Identity()])
            for i, (ci, co) in enumerate(pairs))
        d = down_dims[-1]
        self.mid = nn.ModuleList([_CondRes1d(d, d, cond, kernel), _CondRes1d(d, d, cond, kernel)])
        self.up = nn.ModuleList(nn.ModuleList([
            _CondRes1d(2 * co, ci, cond, kernel), _CondRes1d(ci, ci, cond, kernel),
            nn.ConvTranspose1d(ci, ci, 4, 2, 1)]) for ci, co in reversed(pairs[1:]))
        c0 = down_dims[0]
        self.final = nn.Sequential(nn.Conv1d(c0, c0, kernel, padding=kernel // 2),
                                   nn.GroupNorm(math.gcd(8, c0), c0), nn.Mish(),
                                   nn.Conv1d(c0, action_dim, 1))
        self.multiple = 2 ** (len(pairs) - 1)

    def encode_obs(self, obs: Obs) -> Tensor:
        """Observation embedding ``(B, obs_dim * n_modalities)`` (computed once per chunk)."""
        parts = [self.state_mlp(obs["state"])]
        parts += [self.cams[c](obs["images"][c] * 2.0 - 1.0) for c in self.cameras]
        if self.text_proj is not None:
            txt = obs["text"]  # (B, L, D_text)
            m = obs.get("text_mask", torch.ones(txt.shape[:2], dtype=torch.bool,
                                                device=txt.device))[..., None].to(txt.dtype)
            parts.append(self.text_proj((txt * m).sum(1) / m.sum(1).clamp_min(1.0)))
        return torch.cat(parts, -1)

    def denoise(self, x_t: Tensor, t: Tensor, obs_emb: Tensor) -> Tensor:
        """Prediction ``(B, H, A)`` from a precomputed observation embedding."""
        if x_t.ndim != 3 or x_t.shape[1:] != (self.horizon, self.action_dim):
            raise ValueError(f"x_t must be (B, {self.horizon}, {self.action_dim}), got "
                             f"{tuple(x_t.shape)}")
        # diffusion step k = 100 (1 - t) (DDPM's 100 train steps), transformer-style encoding
        k = 100.0 * (1.0 - t.float())
        c = torch.cat([self.step_mlp(sinusoidal(k, self.step_dim, 2 * math.pi,
                                                2 * math.pi * 1e4).to(x_t.dtype)), obs_emb], -1)
        pad = -self.horizon % self.multiple
        x = F.pad(x_t.transpose(1, 2), (0, pad), mode="replicate")  # (B, A, H')
        skips = []
        for r1, r2, down in self.down:
            x = r2(r1(x, c), c)
            skips.append(x)
            x = down(x)
        for r in self.mid:
            x = r(x, c)
        for r1, r2, up in self.up:
            x = up(r2(r1(torch.cat([x, skips.pop()], 1), c), c))
        return self.final(x)[..., : self.horizon].transpose(1, 2)  # (B, H, A)

    def forward(self, x_t: Tensor, t: Tensor, obs: Obs) -> Tensor:
        """Noise prediction ``(B, H, A)`` for noisy chunks ``x_t`` at times ``t``."""
        return self.denoise(x_t, t, self.encode_obs(obs))
