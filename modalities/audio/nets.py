"""Networks of the Matcha-TTS-style acoustic model (Mehta et al. 2024, sec. 3).

* :class:`TextEncoder`: symbol embedding, a residual convolutional prenet, transformer
  blocks (:class:`toolkit.nn.layers.TransformerBlock`, AdaLN on the speaker embedding) with
  sine-cosine positions and a linear projection to the per-token mel mean ``mu``
  (Matcha-TTS sec. 3.2, the Glow-TTS encoder; the speaker embedding is also added to the
  prenet output).
* :class:`DurationPredictor`: two convolution layers on the *detached* encoder output
  predicting ``log(1 + d)`` per token (Glow-TTS, Kim et al. 2020, sec. 3.3).
* :class:`MelDecoder`: a 1-D U-Net over frames (residual convolution blocks with FiLM from
  the flow time and the speaker, transformer blocks at the bottom), input
  ``[x_t, mu_aligned]`` stacked on channels, output the velocity (Matcha-TTS sec. 3.3).

Every module is padding-exact: padded tokens / frames are masked after each layer and
normalisation is per position (LayerNorm over channels), so a sample's output does not
depend on what it is batched with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.nn.layers import TimestepEmbedding, TransformerBlock, sincos_1d


class ChannelNorm(nn.Module):
    """LayerNorm over channels of ``(B, C, T)`` (per frame, no statistics across time)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, T) -> (B, C, T)``."""
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class TextEncoder(nn.Module):
    """Phoneme ids -> hidden states ``h (B, N, D)`` and mel means ``mu (B, n_mels, N)``.

    Args:
        n_symbols: embedding table size. n_mels: output mel bins. dim: width.
        spk_dim: speaker embedding width. prenet_layers / kernel_size: conv prenet.
        depth / heads: transformer blocks. dropout: prenet dropout.
    """

    def __init__(self, n_symbols: int, n_mels: int = 80, dim: int = 192, spk_dim: int = 64,
                 prenet_layers: int = 3, kernel_size: int = 5, depth: int = 4, heads: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        self.dim = dim
        self.embed = nn.Embedding(n_symbols, dim, padding_idx=0)
        nn.init.normal_(self.embed.weight, std=dim ** -0.5)
        self.prenet = nn.ModuleList(nn.Sequential(
            nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2), ChannelNorm(dim),
            nn.ReLU(), nn.Dropout(dropout)) for _ in range(prenet_layers))
        self.spk_add = nn.Linear(spk_dim, dim)
        self.spk_cond = nn.Linear(spk_dim, dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio=2.0)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.proj_mu = nn.Linear(dim, n_mels)

    def forward(self, tokens: Tensor, mask: Tensor, spk: Tensor) -> tuple[Tensor, Tensor]:
        """``tokens (B, N)``, ``mask (B, N)``, ``spk (B, S)`` -> ``h (B, N, D)``,
        ``mu (B, n_mels, N)`` (zero at padded tokens)."""
        m = mask[:, None].to(self.embed.weight.dtype)  # (B, 1, N)
        x = self.embed(tokens).transpose(1, 2) * m  # (B, D, N)
        for layer in self.prenet:
            x = (x + layer(x)) * m  # residual conv prenet
        h = x.transpose(1, 2) + self.spk_add(spk)[:, None]  # (B, N, D)
        h = h + sincos_1d(h.shape[1], self.dim).to(h)[None]
        c = self.spk_cond(spk)  # (B, D): AdaLN condition
        for block in self.blocks:
            h = block(h, c, key_mask=mask) * mask[..., None]
        h = self.norm(h) * mask[..., None]  # (B, N, D)
        mu = self.proj_mu(h).transpose(1, 2) * m  # (B, n_mels, N)
        return h, mu


class DurationPredictor(nn.Module):
    """``log(1 + d)`` per token from encoder states (Glow-TTS sec. 3.3): two blocks of
    Conv1d - ReLU - LayerNorm - Dropout and a linear output.

    Args: dim: input width. channels: conv width. kernel_size: conv kernel. dropout.
    """

    def __init__(self, dim: int, channels: int = 128, kernel_size: int = 3,
                 dropout: float = 0.1):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(dim, channels, kernel_size, padding=pad)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=pad)
        self.norm1, self.norm2 = ChannelNorm(channels), ChannelNorm(channels)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Conv1d(channels, 1, 1)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        """``h (B, N, D)`` (detach it first), ``mask (B, N)`` -> ``log(1 + d)`` ``(B, N)``."""
        m = mask[:, None].to(h.dtype)  # (B, 1, N)
        x = h.transpose(1, 2) * m  # (B, D, N)
        x = self.drop(self.norm1(F.relu(self.conv1(x)))) * m
        x = self.drop(self.norm2(F.relu(self.conv2(x)))) * m
        return (self.out(x) * m)[:, 0]  # (B, N)


class ResBlock1d(nn.Module):
    """``x + conv(SiLU(norm(FiLM(conv(SiLU(norm(x))), c))))`` with masking (a 1-D version of
    the DDPM residual block, Ho et al. 2020, app. B; FiLM, Perez et al. 2018)."""

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.norm1, self.norm2 = ChannelNorm(cin), ChannelNorm(cout)
        self.conv1 = nn.Conv1d(cin, cout, kernel_size, padding=pad)
        self.conv2 = nn.Conv1d(cout, cout, kernel_size, padding=pad)
        self.film = nn.Linear(cond_dim, 2 * cout)
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, c: Tensor, m: Tensor) -> Tensor:
        """``x (B, Cin, T)``, ``c (B, cond_dim)``, ``m (B, 1, T)`` -> ``(B, Cout, T)``."""
        h = self.conv1(F.silu(self.norm1(x)) * m)
        scale, shift = self.film(F.silu(c))[..., None].chunk(2, dim=1)  # (B, Cout, 1) each
        h = h * (1 + scale) + shift  # FiLM: Perez et al. 2018, eq. 1
        h = self.conv2(F.silu(self.norm2(h)) * m)
        return (self.skip(x) + h) * m


class MelDecoder(nn.Module):
    """Velocity field ``v(x_t, t | mu, spk)`` over mel frames: a 1-D U-Net.

    Args:
        n_mels: mel bins. channels: widths per level (each level halves the frames).
        spk_dim: speaker embedding width. transformer_depth / heads: transformer blocks at
            the lowest level. time_scale: multiplier of t in the sinusoidal features.
    """

    def __init__(self, n_mels: int = 80, channels: tuple[int, ...] = (128, 256),
                 spk_dim: int = 64, transformer_depth: int = 2, heads: int = 4,
                 time_scale: float = 1000.0):
        super().__init__()
        ch = [int(c) for c in channels]
        if not ch:
            raise ValueError("MelDecoder: channels must list at least one width")
        self.n_mels, self.levels = n_mels, len(ch)
        cd = ch[0]
        self.t_embed = TimestepEmbedding(cd, scale=time_scale)
        self.spk_proj = nn.Sequential(nn.Linear(spk_dim, cd), nn.SiLU(), nn.Linear(cd, cd))
        self.inp = nn.Conv1d(2 * n_mels, ch[0], 3, padding=1)
        self.down = nn.ModuleList(ResBlock1d(ch[max(i - 1, 0)], c, cd) for i, c in enumerate(ch))
        self.pool = nn.ModuleList(nn.Conv1d(c, c, 3, stride=2, padding=1) for c in ch[:-1])
        self.mid = ResBlock1d(ch[-1], ch[-1], cd)
        self.mid_c = nn.Linear(cd, ch[-1])
        self.attn = nn.ModuleList(TransformerBlock(ch[-1], heads, mlp_ratio=2.0)
                                  for _ in range(transformer_depth))
        self.up = nn.ModuleList(nn.Conv1d(ch[i + 1], ch[i], 3, padding=1)
                                for i in range(len(ch) - 1))
        self.dec = nn.ModuleList(ResBlock1d(2 * c, c, cd) for c in ch[:-1])
        self.out_norm = ChannelNorm(ch[0])
        self.out = nn.Conv1d(ch[0], n_mels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor, mu: Tensor, spk: Tensor, mask: Tensor) -> Tensor:
        """``x, mu (B, n_mels, T)``, ``t (B,)``, ``spk (B, S)``, ``mask (B, T)`` ->
        velocity ``(B, n_mels, T)`` (zero at padded frames)."""
        b, _, n = x.shape
        f = 2 ** (self.levels - 1)
        pad = (-n) % f  # frames to a multiple of the total downsampling
        m = F.pad(mask.to(x.dtype), (0, pad))[:, None]  # (B, 1, T')
        h = F.pad(torch.cat([x, mu], 1), (0, pad)) * m  # (B, 2 n_mels, T')
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(b)
        c = self.t_embed(t) + self.spk_proj(spk)  # (B, C0)
        h = self.inp(h) * m
        skips, masks = [], []
        for i, block in enumerate(self.down):
            h = block(h, c, m)
            if i < self.levels - 1:
                skips.append(h)
                masks.append(m)
                h = self.pool[i](h)
                m = m[..., ::2]
                h = h * m
        h = self.mid(h, c, m)
        if self.attn:
            key = m[:, 0] > 0  # (B, T_low)
            s = h.transpose(1, 2)  # (B, T_low, C)
            s = s + sincos_1d(s.shape[1], s.shape[2]).to(s)[None]
            cc = self.mid_c(c)
            for block in self.attn:
                s = block(s, cc, key_mask=key) * key[..., None]
            h = s.transpose(1, 2)
        for i in reversed(range(self.levels - 1)):
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            m = masks[i]
            h = self.up[i](h) * m
            h = self.dec[i](torch.cat([h, skips[i]], 1), c, m)
        v = self.out(F.silu(self.out_norm(h))) * m  # (B, n_mels, T')
        return v[..., :n]


__all__ = ["ChannelNorm", "DurationPredictor", "MelDecoder", "ResBlock1d", "TextEncoder"]
