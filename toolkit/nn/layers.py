"""Shared transformer / U-Net building blocks for the backbones in :mod:`toolkit.nn`.

- :class:`TimestepEmbedding`: sinusoidal features of t (Vaswani et al. 2017) through a
  2-layer SiLU MLP; accepts any time shape, e.g. ``(B,)`` or per-token ``(B, L)``.
- :class:`AdaLNModulation` / :func:`modulate`: adaptive LayerNorm with zero-initialised
  shift/scale/gate ("AdaLN-Zero", Peebles & Xie 2023, sec. 3.2), per sample or per token.
- :class:`Attention`: multi-head self- or cross-attention through
  :func:`torch.nn.functional.scaled_dot_product_attention`, with a key padding mask and an
  optional boolean attention mask (causal / block masks).
- :func:`sincos_1d` / :func:`sincos_2d`: fixed sine-cosine position embeddings (MAE, He et
  al. 2022, appendix).
- :class:`ConditionLike` and :func:`unpack_condition`: the structural contract of
  ``conditioners.base.Condition`` (``pooled (B, Dp)``, ``tokens (B, L, Dt)``, ``mask (B, L)``).
- :func:`param_count`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.nn.mlp import sinusoidal_embedding


@runtime_checkable
class ConditionLike(Protocol):
    """Anything with ``pooled``, ``tokens`` and ``mask`` attributes (``Condition``)."""

    pooled: Tensor | None  # (B, Dp)
    tokens: Tensor | None  # (B, L, Dt)
    mask: Tensor | None  # (B, L) bool, True = valid


def param_count(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def as_int_tuple(value: int | Sequence[int], n: int | None, name: str) -> tuple[int, ...]:
    """Config-friendly ``int | list`` (or Hydra ``ListConfig``) to a tuple of ints."""
    vals = (int(value),) * (n or 1) if isinstance(value, int) else tuple(int(v) for v in value)
    if n is not None and len(vals) != n:
        raise ValueError(f"{name} must have {n} entries, got {list(vals)}")
    return vals


def unpack_condition(
    cond: Any, batch: int, pooled_dim: int | None, token_dim: int | None, owner: str
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Validate a condition against a backbone's configuration.

    Args:
        cond: None, a ``Condition``-like object or a mapping with the same keys.
        batch: expected batch size B. pooled_dim / token_dim: what the backbone was built
            for (None = that input is not accepted). owner: class name for error messages.

    Returns:
        ``(pooled (B, Dp) | None, tokens (B, L, Dt) | None, mask (B, L) bool | None)``.

    Raises:
        TypeError / ValueError naming the offending field and the expected shape.
    """
    if cond is None:
        return None, None, None
    if isinstance(cond, Mapping):
        extra = set(cond) - {"pooled", "tokens", "mask"}
        if extra:
            raise ValueError(f"{owner}: unknown condition field(s) {sorted(extra)}")
        pooled, tokens, mask = cond.get("pooled"), cond.get("tokens"), cond.get("mask")
    elif isinstance(cond, ConditionLike):
        pooled, tokens, mask = cond.pooled, cond.tokens, cond.mask
    else:
        raise TypeError(
            f"{owner}: cond must be a Condition (pooled/tokens/mask) or None, "
            f"got {type(cond).__name__}"
        )
    if pooled is not None:
        if pooled_dim is None:
            raise ValueError(f"{owner} got cond.pooled but was built without pooled_dim")
        if pooled.shape != (batch, pooled_dim):
            raise ValueError(
                f"{owner}: cond.pooled must have shape ({batch}, {pooled_dim}), "
                f"got {tuple(pooled.shape)}"
            )
    if tokens is not None:
        if token_dim is None:
            raise ValueError(f"{owner} got cond.tokens but was built without token_dim")
        if tokens.ndim != 3 or tokens.shape[0] != batch or tokens.shape[2] != token_dim:
            raise ValueError(
                f"{owner}: cond.tokens must have shape ({batch}, L, {token_dim}), "
                f"got {tuple(tokens.shape)}"
            )
    if mask is not None:
        if tokens is None:
            raise ValueError(f"{owner}: cond.mask given without cond.tokens")
        if mask.shape != tokens.shape[:2]:
            raise ValueError(
                f"{owner}: cond.mask must have shape {tuple(tokens.shape[:2])}, "
                f"got {tuple(mask.shape)}"
            )
        mask = mask.to(device=tokens.device, dtype=torch.bool)
    return pooled, tokens, mask


def check_time(t: Tensor | float, batch: int, length: int | None, owner: str) -> Tensor:
    """Times as ``(B,)`` (scalar broadcast) or, when ``length`` is given, also ``(B, L)``."""
    t = torch.as_tensor(t)
    if t.ndim == 0:
        t = t.expand(batch)
    ok = t.shape == (batch,) or (length is not None and t.shape == (batch, length))
    if not ok:
        want = f"({batch},)" + (f" or ({batch}, {length})" if length is not None else "")
        raise ValueError(f"{owner}: t must have shape {want}, got {tuple(t.shape)}")
    return t


class TimestepEmbedding(nn.Module):
    """``t (...) -> (..., dim)``: sinusoidal features then ``Linear-SiLU-Linear``.

    Args:
        dim: output width. freq_dim: number of sinusoidal features.
        scale: multiplier of t inside the sinusoids (1000 suits t in [0, 1]).
    """

    def __init__(self, dim: int, freq_dim: int = 256, scale: float = 1000.0) -> None:
        super().__init__()
        self.freq_dim, self.scale = int(freq_dim), float(scale)
        self.mlp = nn.Sequential(nn.Linear(self.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        """Embed times of any shape ``S`` to ``S + (dim,)``."""
        emb = sinusoidal_embedding(t.reshape(-1), self.freq_dim, self.scale)  # (N, F)
        emb = self.mlp(emb.to(self.mlp[0].weight.dtype))  # (N, dim)
        return emb.reshape(*t.shape, emb.shape[-1])


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x (1 + scale) + shift`` (Perez et al. 2018 FiLM; DiT adaLN), broadcasting over L."""
    return x * (1.0 + scale) + shift


class AdaLNModulation(nn.Module):
    """``c (B, C) | (B, L, C) -> n chunks (B, 1|L, dim)`` via ``SiLU -> Linear``.

    With ``zero_init`` the linear layer starts at zero, so shifts, scales and gates are 0
    and every gated residual branch is the identity at initialisation (AdaLN-Zero).
    """

    def __init__(self, cond_dim: int, dim: int, n: int, zero_init: bool = True) -> None:
        super().__init__()
        self.n = n
        self.lin = nn.Linear(cond_dim, n * dim)
        if zero_init:
            nn.init.zeros_(self.lin.weight)
            nn.init.zeros_(self.lin.bias)

    def forward(self, c: Tensor) -> tuple[Tensor, ...]:
        """Chunks of shape ``(B, 1, dim)`` for ``c`` ``(B, C)``, or ``(B, L, dim)``."""
        if c.ndim == 2:
            c = c[:, None]  # (B, 1, C)
        return self.lin(F.silu(c)).chunk(self.n, dim=-1)


def build_attn_mask(
    batch: int, q_len: int, k_len: int, key_mask: Tensor | None, attn_mask: Tensor | None
) -> Tensor | None:
    """Combine a key padding mask ``(B, S)`` and an attention mask ``(L, S)``/``(B, L, S)``
    (both boolean, True = may attend) into ``(B, 1, L, S)`` or None."""
    mask = None
    if key_mask is not None:
        if key_mask.shape != (batch, k_len):
            raise ValueError(f"key mask must be ({batch}, {k_len}), got {tuple(key_mask.shape)}")
        mask = key_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, S)
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            raise TypeError(
                f"attention mask must be boolean (True = attend), got {attn_mask.dtype}"
            )
        if attn_mask.shape not in ((q_len, k_len), (batch, q_len, k_len)):
            raise ValueError(
                f"attention mask must be ({q_len}, {k_len}) or ({batch}, {q_len}, {k_len}), "
                f"got {tuple(attn_mask.shape)}"
            )
        am = attn_mask if attn_mask.ndim == 3 else attn_mask[None]
        am = am[:, None]  # (B|1, 1, L, S)
        mask = am if mask is None else mask & am
    if mask is not None:
        mask = mask.expand(batch, 1, q_len, k_len)
    return mask


class Attention(nn.Module):
    """Multi-head attention with SDPA; self-attention when ``context`` is None.

    Queries that may attend to no key (all keys masked) return exactly 0 instead of NaN,
    so an all-masked condition acts like no condition.

    Args:
        dim: query width (= output width). num_heads: heads (``dim % num_heads == 0``).
        context_dim: key/value input width (default ``dim``). qk_norm: RMS-normalise q and
        k per head (stabilises bf16 training, Dehghani et al. 2023).
    """

    def __init__(
        self, dim: int, num_heads: int, context_dim: int | None = None, qk_norm: bool = False
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(
        self, x: Tensor, context: Tensor | None = None, key_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """``x (B, L, D)``, ``context (B, S, Dc)``, ``key_mask (B, S)``,
        ``attn_mask (L, S) | (B, L, S)`` (bool, True = attend) -> ``(B, L, D)``."""
        b, n, d = x.shape
        ctx = x if context is None else context
        s = ctx.shape[1]
        q = self.to_q(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B,H,L,Dh)
        kv = self.to_kv(ctx).view(b, s, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, S, Dh) each
        q, k = self.q_norm(q), self.k_norm(k)
        mask = build_attn_mask(b, n, s, key_mask, attn_mask)  # (B, 1, L, S) | None
        empty = None
        if mask is not None:
            empty = ~mask.any(-1, keepdim=True)  # (B, 1, L, 1) rows with no visible key
            mask = mask | empty
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)
        out = self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, L, D)
        if empty is not None:
            out = out.masked_fill(empty[:, 0], 0.0)
        return out


class FeedForward(nn.Sequential):
    """``Linear -> GELU(tanh) -> Linear`` with hidden width ``ratio * dim``."""

    def __init__(self, dim: int, ratio: float = 4.0) -> None:
        hidden = int(dim * ratio)
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )


def _sincos(pos: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """``[sin(p w_k), cos(p w_k)]``, ``w_k = max_period^(-k/(dim/2))``: ``(N,) -> (N, dim)``."""
    if dim % 2:
        raise ValueError(f"sin-cos position embedding needs an even dim, got {dim}")
    k = torch.arange(dim // 2, dtype=torch.float64)
    omega = torch.exp(-math.log(max_period) * k / (dim // 2))  # (dim/2,)
    arg = pos.to(torch.float64)[:, None] * omega[None]  # (N, dim/2)
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1).float()


def sincos_1d(length: int, dim: int) -> Tensor:
    """Fixed 1-D position embedding ``(length, dim)`` (Vaswani et al. 2017, sec. 3.5)."""
    return _sincos(torch.arange(length), dim)


def sincos_2d(height: int, width: int, dim: int) -> Tensor:
    """Fixed 2-D embedding ``(H*W, dim)``, row-major: half the channels encode the row,
    half the column (MAE, He et al. 2022)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs dim % 4 == 0, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    emb_r = _sincos(rows.reshape(-1), dim // 2)  # (H*W, dim/2)
    emb_c = _sincos(cols.reshape(-1), dim // 2)
    return torch.cat([emb_r, emb_c], dim=-1)


class TokenProjection(nn.Sequential):
    """Condition tokens ``(B, L, Dt) -> (B, L, D)``: ``LayerNorm -> Linear -> GELU -> Linear``
    (a caption projection as in PixArt-alpha, Chen et al. 2024, sec. 2.3)."""

    def __init__(self, token_dim: int, dim: int) -> None:
        super().__init__(
            nn.LayerNorm(token_dim), nn.Linear(token_dim, dim), nn.GELU(approximate="tanh"),
            nn.Linear(dim, dim),
        )


class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention, MLP; AdaLN-Zero on ``c`` (PixArt-alpha).

    ``x <- x + g1 * Attn(mod(LN(x), s1, b1))``; ``x <- x + CrossAttn(LN(x), ctx)``;
    ``x <- x + g2 * MLP(mod(LN(x), s2, b2))`` with ``(s, b, g)`` from ``c`` (Peebles & Xie
    2023, fig. 3; Chen et al. 2024, fig. 4). ``c`` may be per sample or per token.

    Args:
        dim: width. num_heads: heads. mlp_ratio: MLP expansion. cross_attention: add a
        cross-attention layer over width-``dim`` context tokens. qk_norm: per-head RMSNorm of
        q, k. zero_init: zero the modulation (gates start at 0).
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, cross_attention: bool = False,
        qk_norm: bool = False, zero_init: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.norm_x = nn.LayerNorm(dim, eps=1e-6) if cross_attention else None
        self.cross = Attention(dim, num_heads, qk_norm=qk_norm) if cross_attention else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = FeedForward(dim, mlp_ratio)
        self.ada = AdaLNModulation(dim, dim, 6, zero_init)

    def forward(
        self, x: Tensor, c: Tensor, context: Tensor | None = None,
        context_mask: Tensor | None = None, key_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """``x (B, L, D)``, ``c (B, D) | (B, L, D)``, ``context (B, S, D)``,
        ``context_mask (B, S)``, ``key_mask (B, L)``, ``attn_mask (L, L) | (B, L, L)``."""
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c)  # (B, 1|L, D) each
        h = modulate(self.norm1(x), sh1, sc1)
        x = x + g1 * self.attn(h, key_mask=key_mask, attn_mask=attn_mask)
        if self.cross is not None and context is not None:
            x = x + self.cross(self.norm_x(x), context, key_mask=context_mask)
        return x + g2 * self.mlp(modulate(self.norm2(x), sh2, sc2))


class FinalLayer(nn.Module):
    """``LN -> modulate(shift, scale from c) -> Linear(dim, out)``; zero-initialised
    output layer, so the network's initial output is exactly 0 (DiT's final layer)."""

    def __init__(self, dim: int, out_dim: int, zero_init: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = AdaLNModulation(dim, dim, 2, zero_init)
        self.linear = nn.Linear(dim, out_dim)
        if zero_init:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``x (B, L, D)``, ``c (B, D) | (B, L, D)`` -> ``(B, L, out_dim)``."""
        shift, scale = self.ada(c)
        return self.linear(modulate(self.norm(x), shift, scale))


def init_transformer_weights(module: nn.Module, zero_init: bool = True) -> None:
    """Xavier-uniform linear weights and zero biases (DiT's ``initialize_weights``), then,
    with ``zero_init``, zero every :class:`AdaLNModulation` and :class:`FinalLayer` output."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if not zero_init:
        return
    for m in module.modules():
        lin = m.lin if isinstance(m, AdaLNModulation) else None
        lin = m.linear if isinstance(m, FinalLayer) else lin
        if lin is not None:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
