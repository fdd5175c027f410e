"""Vocoders from log-mel spectrograms: training-free Griffin-Lim and a trainable iSTFT head.

* :class:`GriffinLim`: the linear magnitude is recovered from the mel spectrogram with the
  least-squares (minimum-norm) pseudo-inverse of the mel filterbank, clamped at 0, then the
  phase is estimated with the fast Griffin-Lim algorithm (Perraudin, Balazs & Sondergaard,
  2013), i.e. Griffin & Lim (1984) alternating projections with momentum.
* :class:`IStftVocoder`: a small Vocos-like network (Siuzdak, 2023): ConvNeXt 1-D blocks
  (Liu et al., 2022) over the mel frames and a linear head predicting, per STFT bin, the log
  magnitude and the phase angle; the waveform is their inverse STFT. The STFT framing is that
  of the mel front-end (``center=True`` uses :func:`torch.istft`; HiFi-GAN's "same" padding a
  weighted overlap-add, see :mod:`modalities.audio.stft`), so ``T`` mel frames give ``(T - 1)
  * hop`` or ``T * hop`` samples. :meth:`IStftVocoder.synthesize` is the head's iSTFT path:
  fed the log magnitude and angle of a true STFT it returns the waveform exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modalities.audio.features import MelConfig, mel_filterbank
from modalities.audio.stft import Stft


def mel_pseudo_inverse(fb: Tensor) -> Tensor:
    """Minimum-norm least-squares inverse ``P`` ``(F, n_mels)`` of a filterbank ``fb``
    ``(n_mels, F)``: ``P = argmin ||fb P - I||`` (Moore-Penrose, via ``torch.linalg.lstsq``
    with the SVD-based ``gelsd`` driver, in float64 on the CPU)."""
    fb64 = fb.detach().to("cpu", torch.float64)
    eye = torch.eye(fb64.shape[0], dtype=torch.float64)
    return torch.linalg.lstsq(fb64, eye, driver="gelsd").solution  # (F, n_mels)


def _with_magnitude(c: Tensor, mag: Tensor) -> Tensor:
    """``mag * exp(i angle(c))``, and phase 0 where ``c == 0`` (as ``angle(0) = 0``).

    Computed as ``c * mag / |c|`` on the real view of ``c``: complex element-wise kernels
    (exp, angle, where) are several times slower on the CPU and dominated Griffin-Lim."""
    r = torch.view_as_real(c)  # (..., F, T, 2)
    a = torch.linalg.vector_norm(r, dim=-1)  # (..., F, T) = |c|
    tiny = torch.finfo(a.dtype).tiny
    zero = a <= tiny
    scale = torch.div(mag, a.clamp_(min=tiny), out=a)  # in place: fewer large allocations
    out = r * scale.unsqueeze(-1)  # (..., F, T, 2)
    if bool(zero.any()):
        out[..., 0][zero] = mag[zero]
    return torch.view_as_complex(out)


class GriffinLim(nn.Module):
    """Waveform from a log-mel spectrogram: mel pseudo-inverse + fast Griffin-Lim.

    Args:
        config: the :class:`~modalities.audio.features.MelConfig` that made the log-mels.
        n_iter: Griffin-Lim iterations.
        momentum: FGLA momentum ``alpha`` (0 gives plain Griffin-Lim; the paper uses 0.99).
        seed: seed of the random initial phase.
    """

    def __init__(self, config: MelConfig, n_iter: int = 64, momentum: float = 0.99,
                 seed: int = 0):
        super().__init__()
        if n_iter < 1 or not 0.0 <= momentum < 1.0:
            raise ValueError(f"need n_iter >= 1 and 0 <= momentum < 1, got n_iter={n_iter}, "
                             f"momentum={momentum}")
        self.config, self.n_iter, self.momentum, self.seed = config, n_iter, momentum, seed
        self.stft = config.stft()
        fb = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.f_min,
                            config.fmax, config.mel_scale, config.norm)
        self.register_buffer("pinv", mel_pseudo_inverse(fb), persistent=False)  # (F, n_mels)

    def magnitude(self, log_mel: Tensor) -> Tensor:
        """Linear STFT magnitude ``(..., F, T)`` from log-mels ``(..., n_mels, T)``."""
        if log_mel.dim() < 2 or log_mel.shape[-2] != self.config.n_mels:
            raise ValueError(f"expected log-mels (..., {self.config.n_mels}, T), got shape "
                             f"{tuple(log_mel.shape)}")
        mel = torch.exp(log_mel)  # (..., n_mels, T): |S|^power on the mel scale
        spec = torch.clamp(torch.matmul(self.pinv.to(mel), mel), min=0.0)  # (..., F, T)
        return spec if self.config.power == 1.0 else spec.sqrt()

    def reconstruct(self, mag: Tensor, length: int | None = None) -> Tensor:
        """Fast Griffin-Lim (Perraudin et al., 2013) for magnitudes ``(..., F, T)``."""
        gen = torch.Generator().manual_seed(self.seed)
        phase = torch.rand(mag.shape, generator=gen, dtype=torch.float64) * (2 * math.pi)
        c = torch.polar(mag, phase.to(mag))  # (..., F, T) complex
        t_prev = None
        for _ in range(self.n_iter):
            # t_n = P_C1(P_C2(c_{n-1})): magnitude projection, then consistency projection
            t = self.stft(self.stft.inverse(_with_magnitude(c, mag), length))
            # c_n = t_n + alpha (t_n - t_{n-1})  (Perraudin et al., 2013, FGLA), on real views
            tr = torch.view_as_real(t)  # (..., F, T, 2)
            c = t if t_prev is None else torch.view_as_complex(
                (tr * (1.0 + self.momentum)).sub_(t_prev, alpha=self.momentum))
            t_prev = tr
        return self.stft.inverse(_with_magnitude(c, mag), length)

    @torch.no_grad()
    def forward(self, log_mel: Tensor, length: int | None = None) -> Tensor:
        """Waveform ``(..., L)`` from log-mels ``(..., n_mels, T)``."""
        return self.reconstruct(self.magnitude(log_mel), length)


@dataclass(frozen=True)
class VocoderConfig:
    """Settings of :class:`IStftVocoder`.

    Attributes:
        mel: the mel front-end (input features and STFT framing of the output).
        dim: channels of the ConvNeXt trunk.
        intermediate: hidden width of each block's pointwise MLP.
        n_blocks: number of ConvNeXt blocks.
        kernel_size: depthwise convolution kernel (odd).
        max_log_mag: log-magnitudes are clamped at this value before ``exp`` (Vocos clips the
            magnitude at 100, ``log 100 = 4.6``; a full-scale sine peaks near ``n_fft / 4``).
    """

    mel: MelConfig = field(default_factory=lambda: MelConfig.preset("hifigan"))
    dim: int = 128
    intermediate: int = 384
    n_blocks: int = 4
    kernel_size: int = 7
    max_log_mag: float = 7.0

    def __post_init__(self):
        if self.kernel_size % 2 == 0 or min(self.dim, self.intermediate, self.n_blocks) < 1:
            raise ValueError(f"need odd kernel_size and positive dim/intermediate/n_blocks, got "
                             f"{self.kernel_size}, {self.dim}, {self.intermediate}, "
                             f"{self.n_blocks}")


class ConvNeXtBlock(nn.Module):
    """1-D ConvNeXt block: depthwise conv, LayerNorm, pointwise MLP with GELU, layer scale,
    residual (Liu et al., 2022; 1-D as in Vocos)."""

    def __init__(self, dim: int, intermediate: int, kernel_size: int = 7,
                 layer_scale: float = 1e-2):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(dim, intermediate), nn.Linear(intermediate, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, dim, T)`` -> ``(B, dim, T)``."""
        h = self.dwconv(x).transpose(1, 2)  # (B, T, dim)
        h = self.pw2(F.gelu(self.pw1(self.norm(h)))) * self.gamma  # (B, T, dim)
        return x + h.transpose(1, 2)


class IStftVocoder(nn.Module):
    """Vocos-like vocoder: ConvNeXt trunk over log-mels, head predicting per-bin log
    magnitude and phase angle, inverse STFT.

    Args:
        config: a :class:`VocoderConfig`.

    ``forward(log_mel (B, n_mels, T)) -> wave (B, L)``.
    """

    def __init__(self, config: VocoderConfig | None = None):
        super().__init__()
        self.config = c = config or VocoderConfig()
        self.istft: Stft = c.mel.stft()
        self.n_freq = self.istft.n_freq
        self.embed = nn.Conv1d(c.mel.n_mels, c.dim, c.kernel_size, padding=c.kernel_size // 2)
        self.norm_in = nn.LayerNorm(c.dim, eps=1e-6)
        self.blocks = nn.ModuleList(ConvNeXtBlock(c.dim, c.intermediate, c.kernel_size)
                                    for _ in range(c.n_blocks))
        self.norm_out = nn.LayerNorm(c.dim, eps=1e-6)
        self.head = nn.Linear(c.dim, 2 * self.n_freq)

    def output_length(self, n_frames: int) -> int:
        """Waveform samples produced for ``n_frames`` mel frames."""
        s = self.istft
        return (n_frames - 1) * s.hop_length + (0 if s.center else s.n_fft - 2 * s.pad)

    def predict(self, log_mel: Tensor) -> tuple[Tensor, Tensor]:
        """Head outputs ``(log_mag, phase)``, each ``(B, n_fft // 2 + 1, T)``."""
        if log_mel.dim() != 3 or log_mel.shape[1] != self.config.mel.n_mels:
            raise ValueError(f"expected log-mels (B, {self.config.mel.n_mels}, T), got shape "
                             f"{tuple(log_mel.shape)}")
        h = self.embed(log_mel)  # (B, dim, T)
        h = self.norm_in(h.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            h = block(h)  # (B, dim, T)
        out = self.head(self.norm_out(h.transpose(1, 2))).transpose(1, 2)  # (B, 2F, T)
        log_mag, phase = out.split(self.n_freq, dim=1)  # (B, F, T) each
        return log_mag, phase

    def synthesize(self, log_mag: Tensor, phase: Tensor, length: int | None = None) -> Tensor:
        """The head's iSTFT path: ``istft(exp(min(log_mag, max)) * e^{i phase})`` -> ``(B, L)``.

        Fed ``log|S|`` and ``angle(S)`` of a true STFT ``S = self.stft(x)`` (magnitudes below
        ``exp(max_log_mag)``) it returns ``x`` up to floating-point rounding.
        """
        mag = torch.exp(torch.clamp(log_mag, max=self.config.max_log_mag))  # (B, F, T)
        return self.spec_to_wave(torch.polar(mag, phase), length)

    def spec_to_wave(self, spec: Tensor, length: int | None = None) -> Tensor:
        """Inverse STFT of a complex spectrogram ``(B, F, T)`` with this vocoder's framing."""
        return self.istft.inverse(spec, length)

    def stft(self, wave: Tensor) -> Tensor:
        """Complex STFT ``(B, F, T)`` with the framing of :meth:`spec_to_wave`."""
        return self.istft(wave)

    def forward(self, log_mel: Tensor, length: int | None = None) -> Tensor:
        """Waveform ``(B, L)`` from log-mels ``(B, n_mels, T)``."""
        log_mag, phase = self.predict(log_mel)
        return self.synthesize(log_mag, phase, length)


__all__ = ["ConvNeXtBlock", "GriffinLim", "IStftVocoder", "VocoderConfig",
           "mel_pseudo_inverse"]
