"""1-D sequence transformer for mel frames, action chunks and trajectories.

``x (B, L, D_in)`` is embedded per token, plus a 1-D sine-cosine or learned position
embedding, and processed by AdaLN-Zero transformer blocks (Peebles & Xie 2023). Time may be
one value per sample ``t (B,)`` or one per token ``t (B, L)`` (diffusion forcing, Chen et
al. 2024; per-token noise levels): the time embedding, and hence every shift/scale/gate, is
then per token. Conditions enter as

- ``cond.pooled (B, Dp)``: added to the time embedding (AdaLN);
- ``cond.tokens (B, S, Dt)`` with ``cond.mask (B, S)``: cross-attention in every block
  (``cond_mode="cross"``), or prefix tokens prepended to the sequence
  (``cond_mode="prefix"``, as in pi0's prefix/suffix split, Black et al. 2024). Prefix
  tokens are modulated as clean data (t = 1) and attend only to each other, so a causal
  mask over ``x`` stays causal.

Self-attention over ``x`` accepts a key padding ``mask (B, L)``, ``causal=True`` and any
boolean ``attn_mask (L, L) | (B, L, L)`` (True = may attend; e.g. block-causal chunks).
Outputs at padded positions are 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from toolkit.nn.layers import (
    FinalLayer,
    TimestepEmbedding,
    TokenProjection,
    TransformerBlock,
    check_time,
    init_transformer_weights,
    param_count,
    sincos_1d,
    unpack_condition,
)

POS_EMBEDS = ("sincos", "learned", "none")
COND_MODES = ("cross", "prefix")


def causal_mask(length: int, device: torch.device | None = None) -> Tensor:
    """``(L, L)`` boolean mask, True where key ``j <= i`` (query ``i``)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def block_causal_mask(length: int, block: int, device: torch.device | None = None) -> Tensor:
    """``(L, L)`` mask where tokens attend within their block of ``block`` tokens and to
    all earlier blocks (chunk-wise causal attention)."""
    idx = torch.arange(length, device=device) // block
    return idx[None, :] <= idx[:, None]


class SeqTransformer(nn.Module):
    """``forward(x (B,L,D_in), t (B,)|(B,L), cond=None, mask=None, attn_mask=None)``.

    Args:
        in_dim: per-token input width. out_dim: output width (default ``in_dim``).
        hidden_dim: model width. depth: blocks. num_heads: heads. mlp_ratio: MLP factor.
        pooled_dim: width of ``cond.pooled`` (None: not accepted).
        token_dim: width of ``cond.tokens`` (None: not accepted).
        cond_mode: ``"cross"`` (cross-attention) or ``"prefix"`` (prepended tokens).
        pos_embed: ``"sincos"``, ``"learned"`` (needs ``max_len``) or ``"none"``
            (permutation-equivariant without masks).
        max_len: longest sequence for learned position embeddings.
        causal: always apply a causal mask over ``x``.
        qk_norm: RMS-normalise queries and keys. time_freq_dim / time_scale: time features.
        zero_init: AdaLN-Zero + zero output layer (output exactly 0 at initialisation).
    """

    def __init__(
        self,
        in_dim: int = 80,
        out_dim: int | None = None,
        hidden_dim: int = 256,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        pooled_dim: int | None = None,
        token_dim: int | None = None,
        cond_mode: str = "cross",
        pos_embed: str = "sincos",
        max_len: int = 1024,
        causal: bool = False,
        qk_norm: bool = False,
        time_freq_dim: int = 256,
        time_scale: float = 1000.0,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise ValueError(
                f"SeqTransformer: pos_embed must be one of {POS_EMBEDS}, got {pos_embed!r}"
            )
        if cond_mode not in COND_MODES:
            raise ValueError(
                f"SeqTransformer: cond_mode must be one of {COND_MODES}, got {cond_mode!r}"
            )
        if min(in_dim, hidden_dim, depth, num_heads, max_len) < 1:
            raise ValueError(
                "SeqTransformer: in_dim, hidden_dim, depth, num_heads, max_len must be >= 1"
            )
        self.in_dim, self.out_dim = int(in_dim), int(out_dim or in_dim)
        self.hidden_dim, self.pooled_dim, self.token_dim = hidden_dim, pooled_dim, token_dim
        self.cond_mode, self.pos_embed_kind = cond_mode, pos_embed
        self.max_len, self.causal = int(max_len), bool(causal)
        d = hidden_dim
        self.inp = nn.Linear(self.in_dim, d)
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(sincos_1d(self.max_len, d)[None])  # (1, max_len, D)
        self.t_embed = TimestepEmbedding(d, time_freq_dim, time_scale)
        self.pooled_embed = (
            nn.Sequential(nn.Linear(pooled_dim, d), nn.SiLU(), nn.Linear(d, d))
            if pooled_dim else None
        )
        self.token_proj = TokenProjection(token_dim, d) if token_dim else None
        self.prefix_type = nn.Parameter(torch.zeros(1, 1, d)) if token_dim else None
        cross = bool(token_dim) and cond_mode == "cross"
        self.blocks = nn.ModuleList(
            TransformerBlock(d, num_heads, mlp_ratio, cross_attention=cross, qk_norm=qk_norm,
                             zero_init=zero_init)
            for _ in range(depth)
        )
        self.final = FinalLayer(d, self.out_dim, zero_init)
        init_transformer_weights(self, zero_init)
        if self.prefix_type is not None:
            nn.init.normal_(self.prefix_type, std=0.02)

    def param_count(self, trainable_only: bool = False) -> int:
        """Number of parameters."""
        return param_count(self, trainable_only)

    def _self_mask(
        self, b: int, n: int, attn_mask: Tensor | None, device: torch.device
    ) -> Tensor | None:
        """Combined ``(L, L) | (B, L, L)`` self-attention mask over ``x`` (or None)."""
        if attn_mask is not None:
            if attn_mask.dtype != torch.bool:
                raise TypeError(f"SeqTransformer: attn_mask must be boolean, got {attn_mask.dtype}")
            if attn_mask.shape not in ((n, n), (b, n, n)):
                raise ValueError(
                    f"SeqTransformer: attn_mask must be ({n}, {n}) or ({b}, {n}, {n}), "
                    f"got {tuple(attn_mask.shape)}"
                )
            attn_mask = attn_mask.to(device)
        if self.causal:
            cm = causal_mask(n, device)
            attn_mask = cm if attn_mask is None else attn_mask & cm
        return attn_mask

    def forward(
        self, x: Tensor, t: Tensor, cond: Any = None, mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Predict ``(B, L, out_dim)``.

        Args:
            x: ``(B, L, in_dim)``. t: ``(B,)`` or per-token ``(B, L)`` times in [0, 1].
            cond: a ``Condition`` (pooled / tokens / mask) or None.
            mask: ``(B, L)`` bool, True = valid token of ``x``.
            attn_mask: ``(L, L)`` or ``(B, L, L)`` bool over ``x``, True = may attend.
        """
        if x.ndim != 3 or x.shape[2] != self.in_dim:
            raise ValueError(
                f"SeqTransformer expects x of shape (B, L, {self.in_dim}), got {tuple(x.shape)}"
            )
        b, n, _ = x.shape
        if self.pos_embed_kind == "learned" and n > self.max_len:
            raise ValueError(f"SeqTransformer: length {n} exceeds max_len {self.max_len}")
        if mask is not None:
            if mask.shape != (b, n):
                raise ValueError(
                    f"SeqTransformer: mask must be ({b}, {n}), got {tuple(mask.shape)}"
                )
            mask = mask.to(device=x.device, dtype=torch.bool)
        t = check_time(t, b, n, "SeqTransformer").to(x.device)
        pooled, tokens, tmask = unpack_condition(
            cond, b, self.pooled_dim, self.token_dim, "SeqTransformer"
        )
        dt = self.inp.weight.dtype
        h = self.inp(x.to(dt))  # (B, L, D)
        if self.pos_embed_kind == "learned":
            h = h + self.pos_embed[:, :n].to(h.dtype)
        elif self.pos_embed_kind == "sincos":
            h = h + sincos_1d(n, self.hidden_dim).to(h.device, h.dtype)[None]
        c = self.t_embed(t)  # (B, D) or (B, L, D)
        if c.ndim == 2:
            c = c[:, None]  # (B, 1, D)
        if pooled is not None:
            c = c + self.pooled_embed(pooled.to(dt))[:, None]
        amask = self._self_mask(b, n, attn_mask, x.device)
        ctx = self.token_proj(tokens.to(dt)) if tokens is not None else None  # (B, S, D)
        p = 0
        if ctx is not None and self.cond_mode == "prefix":
            h, c, mask, amask, p = self._prepend(h, c, ctx, tmask, mask, amask, pooled)
            ctx = None
        for block in self.blocks:
            h = block(h, c, context=ctx, context_mask=tmask, key_mask=mask, attn_mask=amask)
        out = self.final(h, c)[:, p:]  # (B, L, out_dim)
        if mask is not None:
            out = out * mask[:, p:, None].to(out.dtype)
        return out.to(x.dtype)

    def _prepend(
        self, h: Tensor, c: Tensor, ctx: Tensor, tmask: Tensor | None, mask: Tensor | None,
        amask: Tensor | None, pooled: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        """Prepend ``S`` prefix tokens: sequence, per-token ``c``, key mask and attention
        mask over ``S + L`` tokens (prefix attends to prefix only; ``x`` to all)."""
        b, n, _ = h.shape
        s = ctx.shape[1]
        dev = h.device
        ones_t = torch.ones(b, s, device=dev, dtype=torch.float32)
        c_pre = self.t_embed(ones_t)  # (B, S, D): prefix is clean data, t = 1
        if pooled is not None:
            c_pre = c_pre + self.pooled_embed(pooled.to(c_pre.dtype))[:, None]
        c = torch.cat([c_pre.to(c.dtype), c.expand(b, n, c.shape[-1])], dim=1)  # (B, S+L, D)
        h = torch.cat([ctx + self.prefix_type.to(ctx.dtype), h], dim=1)  # (B, S+L, D)
        tm = tmask if tmask is not None else torch.ones(b, s, dtype=torch.bool, device=dev)
        xm = mask if mask is not None else torch.ones(b, n, dtype=torch.bool, device=dev)
        key_mask = torch.cat([tm, xm], dim=1)  # (B, S+L)
        full = torch.zeros(b, s + n, s + n, dtype=torch.bool, device=dev)
        full[:, :, :s] = True  # everyone sees the prefix (subject to key_mask)
        full[:, s:, s:] = True if amask is None else amask  # x over x: the given mask
        return h, c, key_mask, full, s
