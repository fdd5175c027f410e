"""Networks and losses of the image codecs (:mod:`modalities.image.codec`).

LDM-style convolutional encoder / decoder (Rombach et al. 2022, app. G: ResNet blocks with
GroupNorm + SiLU, optional mid self-attention), a Laplacian-pyramid L1 loss (a cheap
perceptual-like term; it is *not* LPIPS), and a PatchGAN discriminator (Isola et al. 2017)
with GroupNorm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.nn.layers import Attention
from toolkit.nn.unet import Downsample, Upsample, _norm


# ---------------------------------------------------------------------------------------
# LDM convolutional encoder / decoder
# ---------------------------------------------------------------------------------------
class VAEResBlock(nn.Module):
    """``out = skip(x) + conv(dropout(SiLU(GN(conv(SiLU(GN(x)))))))`` (no time input)."""

    def __init__(self, cin: int, cout: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _norm(cin, groups), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
            _norm(cout, groups), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``(B, Cin, H, W) -> (B, Cout, H, W)``."""
        return self.skip(x) + self.block(x)


class PixelAttention(nn.Module):
    """Single-head self-attention over pixels with a GroupNorm pre-norm and a residual."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.norm, self.attn = _norm(ch, groups), Attention(ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        b, c, h, w = x.shape
        seq = self.attn(self.norm(x).flatten(2).transpose(1, 2))  # (B, HW, C)
        return x + seq.transpose(1, 2).reshape(b, c, h, w)


def _mid(ch: int, groups: int, attention: bool, dropout: float) -> list[nn.Module]:
    attn = [PixelAttention(ch, groups)] if attention else []
    return [VAEResBlock(ch, ch, groups, dropout), *attn, VAEResBlock(ch, ch, groups, dropout)]


class ConvEncoder(nn.Sequential):
    """``(B, C, H, W) -> (B, out, H / f, W / f)``, ``f = 2^(len(channel_mults) - 1)``:
    conv, per level ``num_res_blocks`` ResNet blocks then a strided conv (not after the
    last), middle ResNet-(attention)-ResNet, GroupNorm-SiLU-conv (LDM's ``Encoder``)."""

    def __init__(self, in_ch: int, out_ch: int, base: int, mults: Sequence[int],
                 num_res_blocks: int, mid_attention: bool, groups: int, dropout: float) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_ch, base, 3, padding=1)]
        ch = base
        for lv, m in enumerate(mults):
            for _ in range(num_res_blocks):
                layers.append(VAEResBlock(ch, base * m, groups, dropout))
                ch = base * m
            if lv < len(mults) - 1:
                layers.append(Downsample(ch))
        layers += _mid(ch, groups, mid_attention, dropout)
        layers += [_norm(ch, groups), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1)]
        super().__init__(*layers)


class ConvDecoder(nn.Sequential):
    """Mirror of :class:`ConvEncoder`: ``(B, in, h, w) -> (B, C, h f, w f)`` with
    ``num_res_blocks + 1`` blocks per level and nearest-neighbour x2 + conv upsampling."""

    def __init__(self, in_ch: int, out_ch: int, base: int, mults: Sequence[int],
                 num_res_blocks: int, mid_attention: bool, groups: int, dropout: float) -> None:
        ch = base * mults[-1]
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ch, 3, padding=1)]
        layers += _mid(ch, groups, mid_attention, dropout)
        for lv in reversed(range(len(mults))):
            for _ in range(num_res_blocks + 1):
                layers.append(VAEResBlock(ch, base * mults[lv], groups, dropout))
                ch = base * mults[lv]
            if lv > 0:
                layers.append(Upsample(ch))
        layers += [_norm(ch, groups), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1)]
        super().__init__(*layers)

    @property
    def last_layer(self) -> Tensor:
        """Weight of the output convolution (for the adaptive adversarial weight)."""
        return self[-1].weight


def laplacian_pyramid_loss(x: Tensor, y: Tensor, levels: int = 3) -> Tensor:
    """Mean over levels of the mean absolute difference of Laplacian pyramids (Burt &
    Adelson 1983), a cheap structure-aware stand-in for a perceptual loss ("Lap1",
    Bojanowski et al. 2018) -- it is *not* LPIPS and uses no learned features.

    With a 5-tap binomial blur ``b`` and ``G_0 = x - y`` (the pyramid is linear),
    ``G_{j+1} = avgpool_2(b * G_j)``, band ``L_j = G_j - up_2(G_{j+1})``, last band
    ``L_J = G_J``; ``loss = mean_j mean |L_j|``. Levels stop early at odd or < 4 px sizes.
    """
    g = x - y  # (B, C, H, W)
    c = g.shape[1]
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=g.dtype, device=g.device) / 16.0
    kernel = (k1[:, None] * k1[None, :]).expand(c, 1, 5, 5)
    terms = []
    for _ in range(levels - 1):
        h, w = g.shape[-2:]
        if h % 2 or w % 2 or min(h, w) < 4:
            break
        low = F.avg_pool2d(F.conv2d(F.pad(g, (2, 2, 2, 2), mode="reflect"), kernel, groups=c), 2)
        terms.append((g - F.interpolate(low, scale_factor=2.0, mode="bilinear")).abs().mean())
        g = low
    terms.append(g.abs().mean())
    return torch.stack(terms).mean()


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): ``(B, C, H, W) -> logits (B, 1, h', w')`` per patch.

    4x4 convolutions: stride 2 + LeakyReLU(0.2), then ``n_layers - 1`` stride-2 and one
    stride-1 conv with GroupNorm (BatchNorm in the original; GroupNorm keeps train/eval
    identical on tiny batches), then a stride-1 conv to one channel.
    """

    def __init__(self, in_channels: int = 3, channels: int = 32, n_layers: int = 2,
                 groups: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, n_layers + 1):
            cout = channels * min(2**i, 8)
            layers += [nn.Conv2d(ch, cout, 4, 2 if i < n_layers else 1, 1), _norm(cout, groups),
                       nn.LeakyReLU(0.2)]
            ch = cout
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Patch logits ``(B, 1, h', w')``."""
        return self.net(x)
