"""Diffusion Transformer for images (Peebles & Xie 2023) with PixArt-alpha cross-attention.

``x (B, C, H, W)`` is cut into ``p x p`` patches (a strided convolution), plus a 2-D
sine-cosine or learned position embedding; each block applies self-attention,
cross-attention to the condition tokens (with their padding mask; Chen et al. 2024) and an
MLP, the self-attention and MLP branches modulated by AdaLN-Zero on
``c = emb(t) + MLP(pooled)``. A final AdaLN + linear layer predicts ``p*p*C_out`` values
per patch, which are put back in place ("unpatchify"). All modulation and the output layer
start at zero, so a fresh network outputs exactly 0.

Usage::

    net = DiT(in_channels=3, image_size=32, patch_size=2, hidden_dim=256, depth=6,
              num_heads=4, token_dim=384, pooled_dim=384)
    v = net(x_t, t, cond=Condition(pooled=p, tokens=tok, mask=m))   # (B, 3, 32, 32)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from toolkit.nn.layers import (
    FinalLayer,
    TimestepEmbedding,
    TokenProjection,
    TransformerBlock,
    as_int_tuple,
    check_time,
    init_transformer_weights,
    param_count,
    sincos_2d,
    unpack_condition,
)

POS_EMBEDS = ("sincos", "learned")


class DiT(nn.Module):
    """Image DiT: ``forward(x (B,C,H,W), t (B,), cond=Condition|None) -> (B,C_out,H,W)``.

    Args:
        in_channels: input channels C. out_channels: output channels (default C).
        image_size: ``H`` or ``(H, W)``; inputs of other sizes (divisible by ``patch_size``)
            are accepted with ``pos_embed="sincos"``.
        patch_size: patch side p. hidden_dim: token width D. depth: number of blocks.
        num_heads: attention heads. mlp_ratio: MLP expansion factor.
        pooled_dim: width of ``cond.pooled`` (None: not accepted).
        token_dim: width of ``cond.tokens`` (None: no cross-attention).
        pos_embed: ``"sincos"`` (fixed) or ``"learned"`` (initialised to sincos).
        qk_norm: RMS-normalise queries and keys per head.
        time_freq_dim: sinusoidal features of t. time_scale: t multiplier in the sinusoids.
        zero_init: AdaLN-Zero + zero output layer (output exactly 0 at initialisation).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        image_size: int | Sequence[int] = 32,
        patch_size: int = 2,
        hidden_dim: int = 256,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        pooled_dim: int | None = None,
        token_dim: int | None = None,
        pos_embed: str = "sincos",
        qk_norm: bool = False,
        time_freq_dim: int = 256,
        time_scale: float = 1000.0,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"DiT: pos_embed must be one of {POS_EMBEDS}, got {pos_embed!r}")
        if min(in_channels, patch_size, hidden_dim, depth, num_heads) < 1:
            raise ValueError(
                "DiT: in_channels, patch_size, hidden_dim, depth, num_heads must be >= 1"
            )
        if hidden_dim % 4:
            raise ValueError(f"DiT: hidden_dim must be divisible by 4, got {hidden_dim}")
        self.image_size = as_int_tuple(image_size, 2, "image_size")
        if any(s % patch_size for s in self.image_size):
            raise ValueError(
                f"DiT: image_size {self.image_size} not divisible by patch_size {patch_size}"
            )
        self.in_channels, self.patch_size = int(in_channels), int(patch_size)
        self.out_channels = int(out_channels or in_channels)
        self.hidden_dim, self.pooled_dim, self.token_dim = hidden_dim, pooled_dim, token_dim
        self.pos_embed_kind = pos_embed
        p, d = self.patch_size, hidden_dim
        self.patch_embed = nn.Conv2d(self.in_channels, d, kernel_size=p, stride=p)
        grid = (self.image_size[0] // p, self.image_size[1] // p)
        pos = sincos_2d(grid[0], grid[1], d)[None]  # (1, N, D)
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(pos)
        else:
            self.register_buffer("pos_embed", pos, persistent=False)
        self.t_embed = TimestepEmbedding(d, time_freq_dim, time_scale)
        self.pooled_embed = (
            nn.Sequential(nn.Linear(pooled_dim, d), nn.SiLU(), nn.Linear(d, d))
            if pooled_dim else None
        )
        self.token_proj = TokenProjection(token_dim, d) if token_dim else None
        self.blocks = nn.ModuleList(
            TransformerBlock(d, num_heads, mlp_ratio, cross_attention=bool(token_dim),
                             qk_norm=qk_norm, zero_init=zero_init)
            for _ in range(depth)
        )
        self.final = FinalLayer(d, p * p * self.out_channels, zero_init)
        init_transformer_weights(self, zero_init)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear layer (DiT)
        nn.init.zeros_(self.patch_embed.bias)

    def param_count(self, trainable_only: bool = False) -> int:
        """Number of parameters."""
        return param_count(self, trainable_only)

    def _positions(self, h: int, w: int, ref: Tensor) -> Tensor:
        if (h, w) == (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size):
            return self.pos_embed.to(ref.dtype)
        if self.pos_embed_kind == "learned":
            raise ValueError(
                f"DiT with learned pos_embed needs images of size {self.image_size}, "
                f"got {(h * self.patch_size, w * self.patch_size)}"
            )
        return sincos_2d(h, w, self.hidden_dim)[None].to(ref.device, ref.dtype)

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """Predict ``(B, C_out, H, W)`` from ``x_t`` ``(B, C, H, W)`` and ``t`` ``(B,)``.

        Args:
            x: noisy images. t: times in [0, 1] (a scalar is broadcast).
            cond: a ``Condition`` (``pooled (B, Dp)``, ``tokens (B, L, Dt)``,
                ``mask (B, L)`` True = valid) or None for unconditional.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"DiT expects x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        b, _, hh, ww = x.shape
        p = self.patch_size
        if hh % p or ww % p:
            raise ValueError(f"DiT: image size {(hh, ww)} is not divisible by patch_size {p}")
        t = check_time(t, b, None, "DiT").to(x.device)
        pooled, tokens, mask = unpack_condition(cond, b, self.pooled_dim, self.token_dim, "DiT")
        dt = self.patch_embed.weight.dtype
        h = self.patch_embed(x.to(dt))  # (B, D, H/p, W/p)
        gh, gw = h.shape[2:]
        h = h.flatten(2).transpose(1, 2)  # (B, N, D)
        h = h + self._positions(gh, gw, h)
        c = self.t_embed(t)  # (B, D)
        if pooled is not None:
            c = c + self.pooled_embed(pooled.to(dt))
        ctx = self.token_proj(tokens.to(dt)) if tokens is not None else None  # (B, L, D)
        for block in self.blocks:
            h = block(h, c, context=ctx, context_mask=mask)
        out = self.final(h, c)  # (B, N, p*p*C_out)
        out = out.view(b, gh, gw, p, p, self.out_channels)
        out = torch.einsum("bhwpqc->bchpwq", out).reshape(b, self.out_channels, gh * p, gw * p)
        return out.to(x.dtype)
