"""Vector-quantised image codec: VQ-VAE with an EMA codebook or finite scalar quantisation.

- :class:`EMAQuantizer`: nearest-neighbour codebook ``e_1..e_K`` in ``R^D`` (van den Oord
  et al. 2017, "Neural Discrete Representation Learning"), ``q(z) = e_k``,
  ``k = argmin_j ||z - e_j||^2``, trained not by gradients but by exponential moving
  averages (van den Oord et al. 2017, app. A.1; Razavi et al. 2019, "VQ-VAE-2"): with
  ``n_i`` assignments and ``s_i = sum_{z -> i} z`` in a batch,
  ``N_i <- g N_i + (1 - g) n_i``, ``m_i <- g m_i + (1 - g) s_i``, ``e_i = m_i / N~_i`` with
  Laplace-smoothed counts ``N~_i = (N_i + eps) / (sum N + K eps) * sum N``. The encoder
  gets ``beta ||z - sg(q(z))||^2`` (commitment, beta = 0.25) and the decoder's gradient
  through the straight-through estimator ``z + sg(q(z) - z)``. The codebook is initialised
  from random encoder outputs on the first training batch, and codes whose EMA count drops
  below ``dead_threshold`` are restarted from random encoder outputs of the current batch
  (as in Jukebox, Dhariwal et al. 2020). Single-process: EMA statistics are not reduced
  across data-parallel ranks.
- :class:`FSQ`: finite scalar quantisation (Mentzer et al. 2023): per channel ``i`` with
  ``L_i`` levels, ``f(z) = tanh(z + a_i) h_i - o_i`` (``h_i = (L_i - 1)(1 - 1e-3) / 2``,
  ``o_i = 0.5`` for even ``L_i`` else 0, ``a_i = atanh(o_i / h_i)`` so ``f(0) = 0``), then
  ``round`` with a straight-through gradient, divided by ``floor(L_i / 2)`` into [-1, 1].
  The implicit codebook has ``prod L_i`` codes; no codebook loss.
- :class:`VQVAE`: the LDM convolutional encoder/decoder of :mod:`modalities.image.codec`
  around either quantiser; ``encode`` returns the quantised continuous latents (scaled).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from modalities.image.codec import (
    Codec,
    ConvDecoder,
    ConvEncoder,
    _reconstruction,
    laplacian_pyramid_loss,
)
from toolkit.nn.layers import as_int_tuple


def _flat(z: Tensor) -> Tensor:
    """``(B, D, h, w) -> (B h w, D)``."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def _unflat(v: Tensor, like_shape: Sequence[int]) -> Tensor:
    """``(B h w, D) -> (B, D, h, w)`` for ``like_shape = (B, *, h, w)``."""
    b, _, h, w = like_shape
    return v.reshape(b, h, w, -1).permute(0, 3, 1, 2)


class EMAQuantizer(nn.Module):
    """Codebook ``(K, D)`` updated by EMA (see the module docstring).

    Args:
        num_codes: K. dim: D. decay: EMA decay g. eps: Laplace smoothing.
        beta: commitment weight. dead_threshold: restart codes with EMA count below this
            (about "used fewer than once per batch"; 0 disables restarts).
    """

    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, eps: float = 1e-5,
                 beta: float = 0.25, dead_threshold: float = 1.0) -> None:
        super().__init__()
        self.num_codes, self.dim = int(num_codes), int(dim)
        self.decay, self.eps, self.beta = float(decay), float(eps), float(beta)
        self.dead_threshold = float(dead_threshold)
        self.register_buffer("codebook", torch.randn(self.num_codes, self.dim))
        self.register_buffer("ema_count", torch.ones(self.num_codes))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def nearest(self, z: Tensor) -> Tensor:
        """Indices ``(N,)`` of the nearest codes to ``z (N, D)``:
        ``argmin_k ||z||^2 - 2 z . e_k + ||e_k||^2``."""
        e = self.codebook.to(z.dtype)
        d = z.square().sum(1, keepdim=True) - 2.0 * z @ e.t() + e.square().sum(1)[None]
        return d.argmin(1)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes ``(B, h, w) -> (B, D, h, w)``."""
        return self.codebook[indices].permute(0, 3, 1, 2)

    def snap(self, z: Tensor) -> Tensor:
        """Replace every vector of ``z (B, D, h, w)`` by its nearest code."""
        return _unflat(self.codebook[self.nearest(_flat(z))].to(z.dtype), z.shape)

    def _random_rows(self, z: Tensor, n: int) -> Tensor:
        return z[torch.randint(0, z.shape[0], (n,), device=z.device)].to(self.codebook.dtype)

    @torch.no_grad()
    def _update(self, z: Tensor, idx: Tensor) -> None:
        """One EMA step from flat encoder outputs ``z (N, D)`` and their codes ``(N,)``."""
        z = z.detach().to(self.codebook.dtype)
        n = torch.bincount(idx, minlength=self.num_codes).to(z.dtype)  # (K,)
        s = torch.zeros_like(self.ema_sum).index_add_(0, idx, z)  # (K, D)
        if torch.distributed.is_available() and torch.distributed.is_initialized() and \
                torch.distributed.get_world_size() > 1:  # statistics of the global batch
            torch.distributed.all_reduce(n)
            torch.distributed.all_reduce(s)
        g = self.decay
        self.ema_count.mul_(g).add_(n, alpha=1 - g)
        self.ema_sum.mul_(g).add_(s, alpha=1 - g)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.num_codes * self.eps) * total
        self.codebook.copy_(self.ema_sum / smoothed[:, None])
        dead = self.ema_count < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead:
            new = self._random_rows(z, n_dead)
            self.codebook[dead] = new
            self.ema_count[dead] = self.dead_threshold
            self.ema_sum[dead] = new * self.dead_threshold

    def forward(self, z: Tensor, update: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Quantise ``z (B, D, h, w)``.

        Returns:
            ``(z_q (B, D, h, w)`` with straight-through gradient, ``indices (B, h, w)``,
            ``commitment = mean ||z - sg(q(z))||^2`` (unweighted)). With ``update`` (training)
            the codebook is initialised / EMA-updated / restarted from this batch *after*
            quantising with the current codebook.
        """
        flat = _flat(z)  # (N, D)
        if update and not bool(self.initialised):
            with torch.no_grad():
                self.codebook.copy_(self._random_rows(flat.detach(), self.num_codes))
                self.ema_sum.copy_(self.codebook)
                self.ema_count.fill_(1.0)
                self.initialised.fill_(True)
        idx = self.nearest(flat.detach())  # (N,)
        q = _unflat(self.codebook[idx].to(z.dtype), z.shape)  # (B, D, h, w)
        commitment = (z - q.detach()).square().mean()
        if update:
            self._update(flat, idx)
        b, _, h, w = z.shape
        return z + (q - z).detach(), idx.reshape(b, h, w), commitment


class FSQ(nn.Module):
    """Finite scalar quantisation with ``levels`` per channel (see the module docstring)."""

    def __init__(self, levels: Sequence[int] = (8, 5, 5, 5), eps: float = 1e-3) -> None:
        super().__init__()
        self.levels = as_int_tuple(levels, None, "levels")
        if not self.levels or min(self.levels) < 2:
            raise ValueError(f"FSQ: levels must be >= 2, got {list(self.levels)}")
        lv = torch.tensor(self.levels, dtype=torch.float64)
        half_l = (lv - 1) * (1 - eps) / 2
        offset = torch.where(lv % 2 == 1, 0.0, 0.5)
        self.register_buffer("_half_l", half_l.float(), persistent=False)
        self.register_buffer("_offset", offset.float(), persistent=False)
        self.register_buffer("_shift", torch.atanh(offset / half_l).float(), persistent=False)
        self.register_buffer("_half_w", (lv // 2).float(), persistent=False)
        self.register_buffer("_lo", (-(lv // 2)).float(), persistent=False)
        self.register_buffer("_hi", (lv - 1 - lv // 2).float(), persistent=False)
        basis = torch.cumprod(torch.tensor((1,) + self.levels[:-1]), 0)
        self.register_buffer("_basis", basis, persistent=False)
        self.num_codes, self.dim = math.prod(self.levels), len(self.levels)

    def _b(self, t: Tensor, like: Tensor) -> Tensor:
        return t.to(like.dtype)[:, None, None]  # (D, 1, 1)

    def forward(self, z: Tensor, update: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """``z (B, D, h, w)`` -> ``(z_q in [-1, 1] (straight-through), indices (B, h, w),
        0)``; ``update`` is accepted for interface parity and ignored."""
        bounded = torch.tanh(z + self._b(self._shift, z)) * self._b(self._half_l, z)
        bounded = bounded - self._b(self._offset, z)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        q = rounded / self._b(self._half_w, z)
        return q, self.latents_to_indices(q.detach()), z.new_zeros(())

    def snap(self, z: Tensor) -> Tensor:
        """Nearest grid point of ``z (B, D, h, w)`` (already in the normalised scale)."""
        hw = self._b(self._half_w, z)
        return torch.round(z * hw).clamp(self._b(self._lo, z), self._b(self._hi, z)) / hw

    def latents_to_indices(self, q: Tensor) -> Tensor:
        """Grid latents ``(B, D, h, w) -> (B, h, w)``: ``sum_i (q_i h_i + h_i) prod_{j<i} L_j``
        with ``h_i = floor(L_i / 2)``."""
        digits = torch.round(q * self._b(self._half_w, q) + self._b(self._half_w, q)).long()
        return (digits * self._basis[:, None, None]).sum(1)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes ``(B, h, w) -> (B, D, h, w)`` in [-1, 1]."""
        lv = torch.tensor(self.levels, device=indices.device)
        digits = (indices[:, None] // self._basis[:, None, None]) % lv[:, None, None]
        hw = self._half_w[:, None, None]
        return (digits.float() - hw) / hw


class VQVAE(Codec):
    """VQ-VAE (van den Oord et al. 2017) with an EMA codebook or FSQ.

    Args:
        image_channels: C. quantizer: "ema" or "fsq". codebook_size / codebook_dim: K and D
            for "ema". levels: FSQ levels (K = prod, D = len). base_channels, channel_mults,
            num_res_blocks, mid_attention, groups, dropout: the conv nets (as
            :class:`~modalities.image.codec.KLVAE`). beta: commitment weight. decay, eps,
            dead_threshold: EMA codebook. rec_loss: "l1" or "l2".
        requantize: ``decode`` snaps latents to the nearest code first (generated latents
            are continuous); the identity on latents from ``encode``.

    ``encode`` returns the exact (scaled) code vectors and passes no gradient to the
    encoder; train with :meth:`loss` (straight-through estimator).
    """

    codec_name = "vq"

    def __init__(
        self, image_channels: int = 3, quantizer: str = "ema", codebook_size: int = 512,
        codebook_dim: int = 4, levels: Sequence[int] = (8, 5, 5, 5), base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1,
        mid_attention: bool = True, groups: int = 8, dropout: float = 0.0, beta: float = 0.25,
        decay: float = 0.99, eps: float = 1e-5, dead_threshold: float = 1.0,
        rec_loss: str = "l2", requantize: bool = True,
    ) -> None:
        mults = as_int_tuple(channel_mults, None, "channel_mults")
        if not mults or min(mults) < 1:
            raise ValueError(f"VQVAE: channel_mults must be non-empty and >= 1, got {mults}")
        if quantizer == "ema":
            quant: EMAQuantizer | FSQ = EMAQuantizer(codebook_size, codebook_dim, decay, eps,
                                                     beta, dead_threshold)
        elif quantizer == "fsq":
            quant = FSQ(levels)
        else:
            raise ValueError(f"VQVAE: quantizer must be 'ema' or 'fsq', got {quantizer!r}")
        super().__init__(image_channels, quant.dim, 2 ** (len(mults) - 1))
        _reconstruction(torch.zeros(1), torch.zeros(1), rec_loss)  # validates rec_loss
        self._config: dict[str, Any] = dict(
            image_channels=int(image_channels), quantizer=quantizer,
            codebook_size=int(codebook_size), codebook_dim=int(codebook_dim),
            levels=list(as_int_tuple(levels, None, "levels")), base_channels=int(base_channels),
            channel_mults=list(mults), num_res_blocks=int(num_res_blocks),
            mid_attention=bool(mid_attention), groups=int(groups), dropout=float(dropout),
            beta=float(beta), decay=float(decay), eps=float(eps),
            dead_threshold=float(dead_threshold), rec_loss=rec_loss, requantize=bool(requantize),
        )
        self.quantizer_kind, self.beta, self.rec_loss = quantizer, float(beta), rec_loss
        self.requantize, self.num_codes = bool(requantize), quant.num_codes
        net = (base_channels, mults, num_res_blocks, mid_attention, groups, dropout)
        d = self.latent_channels
        self.encoder = ConvEncoder(self.image_channels, d, *net)
        self.quant_conv = nn.Conv2d(d, d, 1)
        self.quantizer = quant
        self.post_quant_conv = nn.Conv2d(d, d, 1)
        self.decoder = ConvDecoder(d, self.image_channels, *net)

    def get_config(self) -> dict[str, Any]:
        return dict(self._config)

    def _pre(self, images: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(images))  # (B, D, h, w)

    def _encode(self, images: Tensor) -> Tensor:
        # the exact codes (the straight-through sum z + (q - z) can be off by an ulp)
        return self.quantizer.lookup(self.quantizer(self._pre(images))[1]).to(images.dtype)

    def _decode(self, z: Tensor) -> Tensor:
        if self.requantize:
            z = self.quantizer.snap(z)
        return self.decoder(self.post_quant_conv(z))

    def encode_indices(self, images: Tensor) -> Tensor:
        """``images (B, C, H, W) -> codes (B, h, w)`` (int64 in ``[0, num_codes)``)."""
        self._check_image_dims(tuple(images.shape), "(B, C, H, W)", 1)
        return self.quantizer(self._pre(images))[1]

    def decode_indices(self, indices: Tensor) -> Tensor:
        """``codes (B, h, w) -> images (B, C, h f, w f)``."""
        if indices.ndim != 3:
            raise ValueError(f"VQVAE: expected codes of shape (B, h, w), got "
                             f"{tuple(indices.shape)}")
        return self.decoder(self.post_quant_conv(self.quantizer.lookup(indices)))

    def codebook_stats(self, indices: Tensor) -> dict[str, float]:
        """``usage`` = fraction of the K codes that occur in ``indices``; ``perplexity`` =
        ``exp(-sum_k p_k log p_k)`` of their empirical distribution (K at uniform use)."""
        counts = torch.bincount(indices.reshape(-1).cpu(), minlength=self.num_codes).double()
        p = counts / counts.sum().clamp_min(1)
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        return {"usage": float((counts > 0).double().mean()), "perplexity": float(entropy.exp())}

    def loss(self, images: Tensor, *, perceptual_weight: float = 0.0) -> dict[str, Any]:
        """``loss = rec + beta ||z - sg(q(z))||^2 + perceptual_weight * lap``; in training
        mode the EMA codebook is updated from this batch.

        Returns:
            dict with ``loss``, ``rec``, ``commitment`` (unweighted), ``perceptual`` (scalar
            tensors), ``usage``, ``perplexity`` (floats, this batch) and ``recon``.
        """
        self._check_image_dims(tuple(images.shape), "(B, C, H, W)", 1)
        z_q, idx, commitment = self.quantizer(self._pre(images), update=self.training)
        recon = self.decoder(self.post_quant_conv(z_q))  # (B, C, H, W)
        rec = _reconstruction(recon, images, self.rec_loss)
        perc = (laplacian_pyramid_loss(recon, images) if perceptual_weight > 0
                else rec.new_zeros(()))
        loss = rec + self.beta * commitment + perceptual_weight * perc
        return dict(loss=loss, rec=rec.detach(), commitment=commitment.detach(),
                    perceptual=perc.detach(), recon=recon, **self.codebook_stats(idx))


__all__ = ["EMAQuantizer", "FSQ", "VQVAE"]
