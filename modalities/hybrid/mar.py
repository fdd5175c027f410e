"""MAR: masked autoregressive image generation over continuous tokens (the network).

Li et al. 2024, "Autoregressive Image Generation without Vector Quantization" (MAR).
Images ``(B, C, H, W)`` are cut into ``L = (H/p)(W/p)`` patches, each a continuous token of
width ``d = C p^2`` (:meth:`MAR.patchify`; MNIST 32x32x1 with ``p = 4``: 64 tokens of 16).
A bidirectional transformer maps the *known* tokens to one condition vector ``z_i`` per
position (their sec. 3.3 / fig. 3, the MAE-style encoder-decoder of their code):

- **encoder** over ``buffer_size`` class tokens (the class embedding in every buffer slot;
  row ``num_classes`` of the table is the learned null class of classifier-free guidance)
  followed by the *visible* tokens only (``z_proj`` + learned position embedding, LayerNorm);
  masked tokens never enter, so nothing downstream can depend on their values;
- **decoder** over all ``buffer + L`` positions: the encoder's outputs at the visible
  positions, a learned ``mask_token`` at the masked ones, plus a second position embedding;
  its outputs at the ``L`` token positions plus a third ("diffusion") position embedding
  are ``z (B, L, D)``;
- a :class:`~toolkit.nn.head.DiffusionHead` owned by the model models ``p(x_i | z_i)``
  (MAR's per-token diffusion loss; here rectified flow by default).

The blocks are :class:`toolkit.nn.layers.TransformerBlock` (AdaLN-Zero). Their modulation
vector is ``c = c_0 + W e_y`` (a learned constant plus a projection of the class
embedding): MAR itself passes the class only through the buffer tokens, so this is a small
addition (the class also modulates every block) that speeds up learning the class at the
few-minute CPU budget. With ``e_y`` the null row, CFG's unconditional branch is the same
network with no class information in either place.

``order="raster"``: the causal variant (MAR's "AR" rows of their Table 1): a causal mask
over ``[buffer, x_0, ..., x_{L-2}]`` in the encoder and the decoder and ``z_i`` read at
position ``buffer - 1 + i``, so ``z_i`` depends on the class and on tokens ``< i`` only
(teacher forcing: one pass trains all ``L`` tokens; sampling takes one token per step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from toolkit.nn.head import DiffusionHead
from toolkit.nn.layers import TransformerBlock, init_transformer_weights, param_count, sincos_2d
from toolkit.nn.seq import causal_mask

__all__ = ["MAR", "ORDERS"]

ORDERS = ("random", "raster")


class MAR(nn.Module):
    """MAE-style masked-autoregressive backbone + per-token diffusion head (module docstring).

    Args:
        image_size / channels: the images ``(C, H, W)`` with ``H = W = image_size``.
        patch_size: p; ``image_size % p == 0``. Tokens have width ``channels * p^2``.
        num_classes: K real classes; label K is the learned null class (CFG).
        dim / num_heads / mlp_ratio: transformer width, heads and MLP expansion.
        encoder_depth / decoder_depth: blocks in the encoder and the decoder.
        buffer_size: class-condition tokens prepended to the sequence (MAR: 64 for 256
            tokens). order: ``random`` (bidirectional, masked) or ``raster`` (causal).
        qk_norm: RMS-normalise queries and keys.
        head_width / head_depth / head_batch_mul: the diffusion head's MLP width, residual
            blocks and noise draws per token in its loss. head_path / head_prediction /
            head_t_sampler / head_t_sampler_kwargs: its path, output kind and training times.
        head_solver / head_steps: its default sampler (the task's ``sampler`` overrides).
    """

    def __init__(self, image_size: int = 32, channels: int = 1, patch_size: int = 4,
                 num_classes: int = 10, dim: int = 128, encoder_depth: int = 3,
                 decoder_depth: int = 3, num_heads: int = 4, mlp_ratio: float = 4.0,
                 buffer_size: int = 4, order: str = "random", qk_norm: bool = False,
                 head_width: int = 256, head_depth: int = 3, head_batch_mul: int = 4,
                 head_path: str = "linear", head_prediction: str = "velocity",
                 head_t_sampler: str = "logit_normal",
                 head_t_sampler_kwargs: dict[str, Any] | None = None,
                 head_solver: str = "heun", head_steps: int = 16) -> None:
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"MAR: order must be one of {ORDERS}, got {order!r}")
        if min(image_size, channels, patch_size, num_classes, dim, num_heads, buffer_size) < 1:
            raise ValueError("MAR: image_size, channels, patch_size, num_classes, dim, num_heads "
                             f"and buffer_size must be >= 1, got {image_size}, {channels}, "
                             f"{patch_size}, {num_classes}, {dim}, {num_heads}, {buffer_size}")
        if min(encoder_depth, decoder_depth) < 0:
            raise ValueError(f"MAR: encoder_depth and decoder_depth must be >= 0, got "
                             f"{encoder_depth}, {decoder_depth}")
        if image_size % patch_size:
            raise ValueError(f"MAR: image_size {image_size} is not divisible by patch_size "
                             f"{patch_size}")
        if dim % num_heads:
            raise ValueError(f"MAR: dim {dim} is not divisible by num_heads {num_heads}")
        self.image_size, self.channels, self.patch_size = int(image_size), int(channels), \
            int(patch_size)
        self.grid = self.image_size // self.patch_size
        self.seq_len = self.grid * self.grid  # L
        self.token_dim = self.channels * self.patch_size ** 2  # d
        self.num_classes, self.dim, self.buffer_size = int(num_classes), int(dim), int(buffer_size)
        self.order = order
        nb, n, d = self.buffer_size, self.seq_len, self.dim

        self.class_emb = nn.Embedding(self.num_classes + 1, d)  # row K: the null class
        self.c0 = nn.Parameter(torch.randn(d))  # constant part of the AdaLN condition
        self.cond_proj = nn.Linear(d, d)
        # encoder
        self.z_proj = nn.Linear(self.token_dim, d)
        self.z_proj_ln = nn.LayerNorm(d, eps=1e-6)
        self.enc_blocks = nn.ModuleList(
            TransformerBlock(d, num_heads, mlp_ratio, qk_norm=qk_norm)
            for _ in range(encoder_depth))
        self.enc_norm = nn.LayerNorm(d, eps=1e-6)
        # decoder
        self.decoder_embed = nn.Linear(d, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.dec_blocks = nn.ModuleList(
            TransformerBlock(d, num_heads, mlp_ratio, qk_norm=qk_norm)
            for _ in range(decoder_depth))
        self.dec_norm = nn.LayerNorm(d, eps=1e-6)
        # learned position embeddings over [buffer, tokens]; tokens start at 2-D sin-cos
        pos = torch.cat([0.02 * torch.randn(nb, d), sincos_2d(self.grid, self.grid, d)])
        self.enc_pos = nn.Parameter(pos[None].clone())  # (1, nb + L, D)
        self.dec_pos = nn.Parameter(pos[None].clone())
        self.diff_pos = nn.Parameter(0.02 * torch.randn(1, n, d))  # (1, L, D)
        init_transformer_weights(self)  # xavier linears, zero AdaLN (identity blocks)
        nn.init.normal_(self.class_emb.weight, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        # the head keeps its own initialisation (zero output layer)
        self.head = DiffusionHead(
            self.token_dim, d, width=head_width, depth=head_depth, path=head_path,
            prediction=head_prediction, t_sampler=head_t_sampler,
            t_sampler_kwargs=head_t_sampler_kwargs, batch_mul=head_batch_mul,
            solver=head_solver, steps=head_steps)

    def param_count(self, trainable_only: bool = False) -> int:
        """Number of parameters (backbone + head)."""
        return param_count(self, trainable_only)

    # ----------------------------------------------------------------- tokens <-> images
    def patchify(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` -> tokens ``(B, L, C p^2)``, row-major over patches; each
        token is its patch's ``(c, i, j)`` values."""
        c, s, p, g = self.channels, self.image_size, self.patch_size, self.grid
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"MAR.patchify: images must be (B, {c}, {s}, {s}) (image_size "
                             f"{s}, patch_size {p}), got {tuple(x.shape)}")
        b = x.shape[0]
        x = x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5)  # (B, g, g, C, p, p)
        return x.reshape(b, g * g, c * p * p)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """Tokens ``(B, L, C p^2)`` -> images ``(B, C, H, W)`` (inverse of :meth:`patchify`)."""
        self._check_tokens(tokens, "unpatchify")
        c, p, g = self.channels, self.patch_size, self.grid
        b = tokens.shape[0]
        x = tokens.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, g, p, g, p)
        return x.reshape(b, c, g * p, g * p)

    def _check_tokens(self, tokens: Tensor, what: str) -> None:
        if tokens.ndim != 3 or tuple(tokens.shape[1:]) != (self.seq_len, self.token_dim):
            raise ValueError(f"MAR.{what}: tokens must be (B, {self.seq_len}, {self.token_dim}),"
                             f" got {tuple(tokens.shape)}")

    # ------------------------------------------------------------------------ conditions
    def check_labels(self, y: Tensor, batch: int, allow_null: bool = True) -> Tensor:
        """``(B,)`` integer labels in ``[0, K)`` (``K``, the null class, if ``allow_null``)."""
        y = torch.as_tensor(y)
        top = self.num_classes + (1 if allow_null else 0)
        if y.shape != (batch,) or y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"MAR: labels must be a ({batch},) integer tensor, got "
                             f"{y.dtype} {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= top):
            null = f" (null class {self.num_classes} also allowed)" if allow_null else ""
            raise ValueError(f"MAR: labels must be in [0, {self.num_classes}){null}, got range "
                             f"[{int(y.min())}, {int(y.max())}]")
        return y.long()

    def null_labels(self, batch: int) -> Tensor:
        """``(B,)`` labels of the null class (CFG's unconditional branch)."""
        return torch.full((batch,), self.num_classes, dtype=torch.long,
                          device=self.class_emb.weight.device)

    def _condition(self, y: Tensor, b: int) -> tuple[Tensor, Tensor]:
        """Buffer tokens ``(B, nb, D)`` and the AdaLN condition ``(B, D)``."""
        e = self.class_emb(self.check_labels(y, b).to(self.class_emb.weight.device))  # (B, D)
        return e[:, None].expand(b, self.buffer_size, self.dim), self.c0 + self.cond_proj(e)

    # ---------------------------------------------------------------------------- forward
    def forward(self, tokens: Tensor, mask: Tensor | None, y: Tensor) -> Tensor:
        """Per-position conditions ``z (B, L, D)`` for the diffusion head.

        Args:
            tokens: ``(B, L, d)``; values at masked positions are never read.
            mask: ``(B, L)`` bool, True = unknown (to be predicted). ``order="raster"``
                ignores it (``z_i`` sees tokens ``< i``; pass None).
            y: ``(B,)`` labels in ``[0, K]`` (``K``: the null class).
        """
        self._check_tokens(tokens, "forward")
        b, n, _ = tokens.shape
        if self.order == "raster":
            return self.forward_causal(tokens, y, n)
        if mask is None or tuple(mask.shape) != (b, n) or mask.dtype != torch.bool:
            got = None if mask is None else f"{mask.dtype} {tuple(mask.shape)}"
            raise ValueError(f"MAR.forward: mask must be a ({b}, {n}) bool tensor (True = "
                             f"masked), got {got}")
        nb, dev = self.buffer_size, tokens.device
        buf, c = self._condition(y, b)
        dt = self.z_proj.weight.dtype
        vis = ~mask.to(dev)  # (B, L)
        nv = vis.sum(1)  # (B,) visible tokens per sample
        v = int(nv.max()) if b else 0
        # indices of the visible positions first (stable: ascending position), padded to V
        idx = torch.argsort((~vis).to(torch.int8), dim=1, stable=True)[:, :v]  # (B, V)
        valid = torch.arange(v, device=dev)[None] < nv[:, None]  # (B, V)
        h = self.z_proj(tokens.to(dt)) + self.enc_pos[:, nb:]  # (B, L, D)
        h = torch.gather(h, 1, idx[..., None].expand(b, v, self.dim))  # (B, V, D) visible only
        h = torch.cat([buf.to(dt) + self.enc_pos[:, :nb], h], 1)  # (B, nb + V, D)
        key_mask = torch.cat([torch.ones(b, nb, dtype=torch.bool, device=dev), valid], 1)
        h = self.z_proj_ln(h)
        for blk in self.enc_blocks:
            h = blk(h, c, key_mask=key_mask)
        h = self.decoder_embed(self.enc_norm(h))  # (B, nb + V, D)
        # decoder input: encoder output at visible positions, mask token elsewhere
        placed = torch.zeros(b, n, self.dim, dtype=h.dtype, device=dev)
        placed = placed.scatter(1, idx[..., None].expand(b, v, self.dim), h[:, nb:])
        x = torch.where(vis[..., None], placed, self.mask_token.to(h.dtype).expand(b, n, -1))
        x = torch.cat([h[:, :nb], x], 1) + self.dec_pos  # (B, nb + L, D)
        for blk in self.dec_blocks:
            x = blk(x, c)
        return self.dec_norm(x)[:, nb:] + self.diff_pos  # (B, L, D)

    def forward_causal(self, tokens: Tensor, y: Tensor, n: int | None = None) -> Tensor:
        """Raster-order causal pass: ``z (B, n, D)`` for positions ``0..n-1``; ``z_i`` depends
        on the class and ``tokens[:, :i]`` only (``tokens[:, n-1:]`` are never read)."""
        self._check_tokens(tokens, "forward_causal")
        b, big_l = tokens.shape[:2]
        n = big_l if n is None else int(n)
        if not 1 <= n <= big_l:
            raise ValueError(f"MAR.forward_causal: n must be in [1, {big_l}], got {n}")
        nb, dev = self.buffer_size, tokens.device
        buf, c = self._condition(y, b)
        dt = self.z_proj.weight.dtype
        s = nb + n - 1  # [buffer, x_0 .. x_{n-2}]
        h = self.z_proj(tokens[:, :n - 1].to(dt))  # (B, n-1, D)
        h = torch.cat([buf.to(dt), h], 1) + self.enc_pos[:, :s]
        am = causal_mask(s, dev)
        h = self.z_proj_ln(h)
        for blk in self.enc_blocks:
            h = blk(h, c, attn_mask=am)
        x = self.decoder_embed(self.enc_norm(h)) + self.dec_pos[:, :s]
        for blk in self.dec_blocks:
            x = blk(x, c, attn_mask=am)
        return self.dec_norm(x)[:, nb - 1:nb - 1 + n] + self.diff_pos[:, :n]  # (B, n, D)
