"""A small conditional U-Net for images (ADM-style, Dhariwal & Nichol 2021).

Residual blocks (GroupNorm, SiLU, 3x3 conv) take the time + pooled-condition embedding as
FiLM scale/shift on their second normalisation ("scale-shift norm", Dhariwal & Nichol 2021,
sec. 3); attention blocks at the chosen (low) resolutions apply self-attention over pixels
and cross-attention to the condition tokens with their padding mask (as in Stable
Diffusion's U-Net, Rombach et al. 2022). Skip connections are concatenated on the way up.
Residual branches' last convolutions, the attention output projections and the output
convolution start at zero, so a fresh network outputs exactly 0.

Convolutions are (nearly) translation equivariant and FiLM is global, so a caption's
*where* ("at the top left") is hard for a plain conditional U-Net to follow. With
``layout_attn`` a position-query cross-attention reads the caption once per forward:
every pixel ``p`` queries the tokens with ``q_p = W_q P_p`` (``P``: fixed 2-D sin-cos
position, nothing else, so the position cannot be drowned out), and the result ``S_p`` is
added to the time + pooled embedding, which becomes a map ``(B, E, H/2, W/2)``; every
residual block below full resolution then takes its FiLM scale and shift per pixel from it
(spatially-adaptive normalisation, SPADE, Park et al. 2019). Its output projection starts
at zero, so it begins as the plain U-Net. Measured on the shapes captions (650 steps, 2
CPU cores): single-object position accuracy 32% without it, 100% with it.

Why our own rather than diffusers' ``UNet2DConditionModel``: it needs nothing outside torch
(diffusers is only a reference dependency here), takes the toolkit's
``(x, t, cond=Condition)`` contract directly, and trains faster on CPU for 32x32 images: at
matched widths (32-64-128 and 64-128-128, 2 blocks per level, cross-attention at 8x8 only,
384-d tokens) one AdamW step on a batch of 16, one thread, took 1.9 s vs 2.7 s and 3.9 s vs
4.6 s; diffusers' attention level adds a full transformer block (projections, GEGLU
feed-forward) where ours has self- and cross-attention only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.nn.layers import (
    Attention,
    TimestepEmbedding,
    TokenProjection,
    as_int_tuple,
    check_time,
    param_count,
    sincos_2d,
    unpack_condition,
)


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(ch, groups), ch, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """``h = conv(SiLU(GN(x)))``; ``h = GN(h) (1 + s) + b`` with ``(s, b)`` from the
    embedding; ``out = skip(x) + conv(dropout(SiLU(h)))``."""

    def __init__(
        self, cin: int, cout: int, emb_dim: int, dropout: float, groups: int, zero_init: bool
    ) -> None:
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = _norm(cout, groups)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if zero_init:
            _zero(self.conv2)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``x (B, Cin, H, W)``, ``emb (B, E)`` or a map ``(B, E, H, W)`` -> ``(B, Cout, H, W)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        if emb.ndim == 4:  # spatial FiLM: (B, E, H, W) -> (B, 2C, H, W)
            mod = self.emb(F.silu(emb).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            mod = self.emb(F.silu(emb))[:, :, None, None]  # (B, 2C, 1, 1)
        scale, shift = mod.chunk(2, dim=1)
        h = self.norm2(h) * (1.0 + scale) + shift
        return self.skip(x) + self.conv2(self.drop(F.silu(h)))


class AttnBlock(nn.Module):
    """Self-attention over pixels, then (optionally) cross-attention to context tokens."""

    def __init__(
        self, ch: int, num_heads: int, context_dim: int | None, groups: int, zero_init: bool,
        pos_embed: bool = False,
    ) -> None:
        super().__init__()
        if pos_embed and ch % 4:
            raise ValueError(f"UNet: pos_embed needs channels divisible by 4, got {ch}")
        self.pos_embed = bool(pos_embed)
        self.norm = _norm(ch, groups)
        self.attn = Attention(ch, num_heads)
        self.norm_x = nn.LayerNorm(ch, eps=1e-6) if context_dim else None
        self.cross = Attention(ch, num_heads, context_dim=context_dim) if context_dim else None
        if zero_init:
            _zero(self.attn.proj)
            if self.cross is not None:
                _zero(self.cross.proj)

    def forward(self, x: Tensor, ctx: Tensor | None, ctx_mask: Tensor | None) -> Tensor:
        """``x (B, C, H, W)``, ``ctx (B, S, Dc)``, ``ctx_mask (B, S)`` -> ``(B, C, H, W)``."""
        b, c, hh, ww = x.shape
        # absolute 2-D position (MAE sin-cos) added to the attention inputs, so that
        # "top left" in a caption can address pixels: convolutions alone are (nearly)
        # translation equivariant
        pos = sincos_2d(hh, ww, c).to(x) if self.pos_embed else 0.0  # (HW, C)
        seq = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        seq = seq + self.attn(self.norm(x).flatten(2).transpose(1, 2) + pos)
        if self.cross is not None and ctx is not None:
            seq = seq + self.cross(self.norm_x(seq) + pos, ctx, key_mask=ctx_mask)
        return seq.transpose(1, 2).reshape(b, c, hh, ww)


class Downsample(nn.Conv2d):
    """Strided 3x3 convolution halving H and W."""

    def __init__(self, ch: int) -> None:
        super().__init__(ch, ch, 3, stride=2, padding=1)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 convolution."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C, 2H, 2W)``."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _run(layers: nn.ModuleList, h: Tensor, emb: Tensor, ctx: Tensor | None,
         ctx_mask: Tensor | None, emb_map: Tensor | None = None) -> Tensor:
    """Apply one stage; residual blocks take ``emb_map (B, E, h, w)`` average-pooled to their
    resolution where the map is at least as fine, else the vector ``emb (B, E)``."""
    for layer in layers:
        if isinstance(layer, ResBlock):
            e = emb
            if emb_map is not None and emb_map.shape[-1] >= h.shape[-1]:
                e = emb_map if emb_map.shape[-2:] == h.shape[-2:] else F.adaptive_avg_pool2d(
                    emb_map, h.shape[-2:])
            h = layer(h, e)
        elif isinstance(layer, AttnBlock):
            h = layer(h, ctx, ctx_mask)
        else:
            h = layer(h)
    return h


class UNet(nn.Module):
    """Conditional U-Net: ``forward(x (B,C,H,W), t (B,), cond=Condition|None)``.

    Args:
        in_channels / out_channels: image channels (output default = input).
        base_channels: width of the first level. channel_mults: width multiplier per
            level (each level after the first halves the resolution).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_levels: level indices (0 = full resolution) with attention blocks; default:
            the lowest-resolution level only. The middle block always has attention.
        num_heads: attention heads. pooled_dim: width of ``cond.pooled`` (FiLM; None: not
            accepted). token_dim: width of ``cond.tokens`` (cross-attention; None: none).
        dropout: in residual blocks. groups: max GroupNorm groups.
        time_scale: t multiplier in the sinusoids. zero_init: output exactly 0 at init.
        pos_embed: add 2-D sin-cos positions to the attention blocks' inputs.
        layout_attn: position-query cross-attention to the tokens feeding per-pixel FiLM
            (see the module docstring; needs ``token_dim``).
        patch_size: fold ``p x p`` pixel blocks into channels before the first convolution
            and unfold after the last (space-to-depth, lossless): the network runs at
            ``H/p x W/p`` with ``p^2`` times the input channels, about 3x cheaper per step
            for ``p=2`` on 32x32 images.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_levels: Sequence[int] | None = None,
        num_heads: int = 4,
        pooled_dim: int | None = None,
        token_dim: int | None = None,
        dropout: float = 0.0,
        groups: int = 32,
        time_scale: float = 1000.0,
        zero_init: bool = True,
        pos_embed: bool = False,
        layout_attn: bool = False,
        patch_size: int = 1,
    ) -> None:
        super().__init__()
        mults = as_int_tuple(channel_mults, None, "channel_mults")
        if not mults or min(mults) < 1 or min(in_channels, base_channels, num_res_blocks) < 1:
            raise ValueError(
                "UNet: channel_mults, in_channels, base_channels, num_res_blocks must be >= 1"
            )
        n_lv = len(mults)
        levels = (
            (n_lv - 1,) if attn_levels is None else as_int_tuple(attn_levels, None, "attn_levels")
        )
        if any(lv < 0 or lv >= n_lv for lv in levels):
            raise ValueError(f"UNet: attn_levels {list(levels)} outside 0..{n_lv - 1}")
        chans = [base_channels * m for m in mults]
        if any(c % num_heads for c in chans):
            raise ValueError(
                f"UNet: channel widths {chans} must be divisible by num_heads {num_heads}"
            )
        if int(patch_size) < 1:
            raise ValueError(f"UNet: patch_size must be >= 1, got {patch_size}")
        self.patch = int(patch_size)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels or in_channels)
        self.pooled_dim, self.token_dim, self.n_levels = pooled_dim, token_dim, n_lv
        emb = 4 * base_channels
        self.t_embed = TimestepEmbedding(emb, 256, time_scale)
        self.pooled_embed = (
            nn.Sequential(nn.Linear(pooled_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
            if pooled_dim else None
        )
        ctx_dim = emb if token_dim else None
        self.token_proj = TokenProjection(token_dim, emb) if token_dim else None
        if layout_attn and not token_dim:
            raise ValueError("UNet: layout_attn needs condition tokens (token_dim)")
        self.layout = Attention(emb, num_heads, context_dim=emb) if layout_attn else None
        if self.layout is not None and zero_init:
            _zero(self.layout.proj)

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb, dropout, groups, zero_init)

        def attn(ch: int) -> AttnBlock:
            return AttnBlock(ch, num_heads, ctx_dim, groups, zero_init, pos_embed)

        p2 = self.patch**2
        self.conv_in = nn.Conv2d(self.in_channels * p2, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch = [base_channels], base_channels
        for lv, cout in enumerate(chans):
            for _ in range(num_res_blocks):
                stage = [res(ch, cout)] + ([attn(cout)] if lv in levels else [])
                self.down.append(nn.ModuleList(stage))
                ch = cout
                skips.append(ch)
            if lv < n_lv - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
        self.mid = nn.ModuleList([res(ch, ch), attn(ch), res(ch, ch)])
        self.up = nn.ModuleList()
        for lv in reversed(range(n_lv)):
            cout = chans[lv]
            for i in range(num_res_blocks + 1):
                stage = [res(ch + skips.pop(), cout)] + ([attn(cout)] if lv in levels else [])
                ch = cout
                if lv > 0 and i == num_res_blocks:
                    stage.append(Upsample(ch))
                self.up.append(nn.ModuleList(stage))
        self.out = nn.Sequential(
            _norm(ch, groups), nn.SiLU(), nn.Conv2d(ch, self.out_channels * p2, 3, padding=1)
        )
        if zero_init:
            _zero(self.out[-1])

    def param_count(self, trainable_only: bool = False) -> int:
        """Number of parameters."""
        return param_count(self, trainable_only)

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """Predict ``(B, C_out, H, W)``; ``H, W`` must be divisible by ``p 2^(levels-1)``.

        Args:
            x: noisy images ``(B, C, H, W)``. t: times ``(B,)`` in [0, 1].
            cond: a ``Condition`` (pooled / tokens / mask) or None.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        f = self.patch * 2 ** (self.n_levels - 1)
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"UNet: image size {tuple(x.shape[2:])} is not divisible by {f}")
        b = x.shape[0]
        t = check_time(t, b, None, "UNet").to(x.device)
        pooled, tokens, mask = unpack_condition(cond, b, self.pooled_dim, self.token_dim, "UNet")
        dt = self.conv_in.weight.dtype
        emb = self.t_embed(t)  # (B, E)
        if pooled is not None:
            emb = emb + self.pooled_embed(pooled.to(dt))
        ctx = self.token_proj(tokens.to(dt)) if tokens is not None else None  # (B, S, E)
        x_in = F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x  # (B, C p^2, H/p, W/p)
        emb_map = None
        if self.layout is not None and ctx is not None:
            # the layout map lives at the second level's resolution (half size) and
            # modulates that level and the coarser ones; full resolution keeps global FiLM
            hh, ww = x_in.shape[2:]
            lh, lw = (hh // 2, ww // 2) if self.n_levels > 1 else (hh, ww)
            pos = sincos_2d(lh, lw, emb.shape[-1]).to(emb)  # (hw, E)
            lay = self.layout(pos.expand(b, -1, -1), ctx, key_mask=mask)  # (B, hw, E)
            emb_map = emb[:, :, None, None] + lay.transpose(1, 2).reshape(b, -1, lh, lw)
        h = self.conv_in(x_in.to(dt))
        hs = [h]
        for stage in self.down:
            h = _run(stage, h, emb, ctx, mask, emb_map)
            hs.append(h)
        h = _run(self.mid, h, emb, ctx, mask, emb_map)
        for stage in self.up:
            h = _run(stage, torch.cat([h, hs.pop()], dim=1), emb, ctx, mask, emb_map)
        h = self.out(h)  # (B, C_out p^2, H/p, W/p)
        return (F.pixel_shuffle(h, self.patch) if self.patch > 1 else h).to(x.dtype)

