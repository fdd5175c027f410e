"""Native torch log-mel front-end and a mel-spectrogram normaliser.

:class:`MelSpec` computes ``log(clamp(mel_fb @ |STFT(x)|^power, floor))`` with a triangular mel
filterbank built here (:func:`mel_filterbank`): Slaney's (Auditory Toolbox, 1998) or HTK's mel
scale, optional Slaney area normalisation. Two presets reproduce common vocoder front-ends:

* ``MelConfig.preset("hifigan")``: HiFi-GAN (Kong et al., 2020) at 22.05 kHz: n_fft 1024,
  hop 256, 80 mels in 0-8 kHz, Slaney scale and norm, reflect padding of ``(n_fft - hop) / 2``
  per side with ``center=False`` (``T = L / hop`` frames), magnitude, ``log(clamp(., 1e-5))``.
  (HiFi-GAN also adds ``1e-9`` inside the square root of the magnitude; omitted here, it only
  moves bins far below the log floor.)
* ``MelConfig.preset("vocos")``: Vocos (Siuzdak, 2023) at 24 kHz: n_fft 1024, hop 256,
  100 mels in 0-12 kHz, HTK scale, no norm, ``center=True`` reflect padding, magnitude,
  ``log(clamp(., 1e-7))``.

Both match ``librosa.feature.melspectrogram`` with the same settings (tests check 1e-4
relative). :class:`MelNormalizer` standardises log-mels with statistics fitted on a dataset.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn

from modalities.audio.stft import Stft

MEL_SCALES = ("slaney", "htk")

_PRESETS: dict[str, dict] = {
    "hifigan": dict(sample_rate=22050, n_fft=1024, win_length=1024, hop_length=256, n_mels=80,
                    f_min=0.0, f_max=8000.0, mel_scale="slaney", norm="slaney", center=False,
                    pad=(1024 - 256) // 2, pad_mode="reflect", power=1.0, log_floor=1e-5),
    "vocos": dict(sample_rate=24000, n_fft=1024, win_length=1024, hop_length=256, n_mels=100,
                  f_min=0.0, f_max=None, mel_scale="htk", norm=None, center=True, pad=0,
                  pad_mode="reflect", power=1.0, log_floor=1e-7),
}


@dataclass(frozen=True)
class MelConfig:
    """Settings of a log-mel front-end (the defaults are the ``"hifigan"`` preset).

    Attributes:
        sample_rate: waveform rate in Hz.
        n_fft: FFT size (``n_fft // 2 + 1`` linear bins).
        win_length: Hann window length (zero-padded to ``n_fft``).
        hop_length: frame shift in samples.
        n_mels: number of mel bands.
        f_min: lowest filter edge in Hz.
        f_max: highest filter edge in Hz (``None``: ``sample_rate / 2``).
        mel_scale: ``"slaney"`` (linear below 1 kHz, log above) or ``"htk"``.
        norm: ``"slaney"`` (each filter divided by its bandwidth: constant energy per
            channel) or ``None`` (peak 1).
        center: frames centred on ``t * hop`` (padding ``n_fft // 2``) or not.
        pad: explicit padding per side when ``center=False`` (HiFi-GAN: ``(n_fft - hop) // 2``).
        pad_mode: padding mode (``"reflect"``, ``"constant"``, ...).
        power: exponent of the STFT magnitude: 1 (magnitude) or 2 (power).
        log_floor: clamp floor before the natural log.
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float | None = 8000.0
    mel_scale: str = "slaney"
    norm: str | None = "slaney"
    center: bool = False
    pad: int = 384
    pad_mode: str = "reflect"
    power: float = 1.0
    log_floor: float = 1e-5

    def __post_init__(self):
        if self.mel_scale not in MEL_SCALES:
            raise ValueError(f"mel_scale must be one of {MEL_SCALES}, got {self.mel_scale!r}")
        if self.norm not in ("slaney", None):
            raise ValueError(f"norm must be 'slaney' or None, got {self.norm!r}")
        if self.power not in (1.0, 2.0):
            raise ValueError(f"power must be 1 (magnitude) or 2 (power), got {self.power}")
        if self.log_floor <= 0:
            raise ValueError(f"log_floor must be > 0, got {self.log_floor}")
        if not 0 <= self.f_min < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2 = "
                             f"{self.sample_rate / 2}, got f_min={self.f_min}, f_max={self.fmax}")

    @property
    def fmax(self) -> float:
        """Upper filter edge in Hz, ``f_max`` or the Nyquist frequency."""
        return float(self.sample_rate / 2 if self.f_max is None else self.f_max)

    @classmethod
    def preset(cls, name: str, **overrides) -> MelConfig:
        """A named preset (``"hifigan"`` or ``"vocos"``), optionally with fields overridden."""
        if name not in _PRESETS:
            raise KeyError(f"unknown mel preset {name!r}; expected one of {sorted(_PRESETS)}")
        return replace(cls(**_PRESETS[name]), **overrides)

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)

    def stft(self) -> Stft:
        """The :class:`~modalities.audio.stft.Stft` with this config's framing."""
        return Stft(self.n_fft, self.hop_length, self.win_length, center=self.center,
                    pad=0 if self.center else self.pad, pad_mode=self.pad_mode)


def hz_to_mel(f: Tensor, scale: str = "slaney") -> Tensor:
    """Frequency in Hz to mels. HTK: ``2595 log10(1 + f / 700)`` (Young et al., HTK Book);
    Slaney: ``3 f / 200`` below 1 kHz, ``15 + 27 ln(f / 1000) / ln 6.4`` above (Slaney 1998)."""
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    if scale != "slaney":
        raise ValueError(f"mel scale must be one of {MEL_SCALES}, got {scale!r}")
    logstep = math.log(6.4) / 27.0
    lin = 3.0 * f / 200.0
    log = 15.0 + torch.log(torch.clamp(f, min=1e-10) / 1000.0) / logstep
    return torch.where(f >= 1000.0, log, lin)


def mel_to_hz(m: Tensor, scale: str = "slaney") -> Tensor:
    """Inverse of :func:`hz_to_mel` (same citations)."""
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    if scale != "slaney":
        raise ValueError(f"mel scale must be one of {MEL_SCALES}, got {scale!r}")
    logstep = math.log(6.4) / 27.0
    return torch.where(m >= 15.0, 1000.0 * torch.exp(logstep * (m - 15.0)), 200.0 * m / 3.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None, mel_scale: str = "slaney",
                   norm: str | None = "slaney", dtype: torch.dtype = torch.float64) -> Tensor:
    """Triangular mel filterbank ``(n_mels, n_fft // 2 + 1)``.

    Filter ``m`` rises linearly from edge ``f[m]`` to peak ``f[m+1]`` and falls to ``f[m+2]``,
    the ``n_mels + 2`` edges being equally spaced on the mel scale between ``f_min`` and
    ``f_max`` (Davis & Mermelstein, 1980). With ``norm="slaney"`` filter ``m`` is scaled by
    ``2 / (f[m+2] - f[m])`` (Slaney, Auditory Toolbox, 1998), so each has unit area.
    """
    f_max = sample_rate / 2 if f_max is None else float(f_max)
    if norm not in ("slaney", None):
        raise ValueError(f"norm must be 'slaney' or None, got {norm!r}")
    if n_mels < 1 or n_fft < 2:
        raise ValueError(f"need n_mels >= 1 and n_fft >= 2, got n_mels={n_mels}, n_fft={n_fft}")
    fft_freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (F,)
    lo, hi = hz_to_mel(torch.tensor([float(f_min), f_max], dtype=torch.float64), mel_scale)
    edges = mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64),
                      mel_scale)  # (n_mels + 2,)
    width = edges[1:] - edges[:-1]  # (n_mels + 1,)
    rel = edges[:, None] - fft_freqs[None, :]  # (n_mels + 2, F)
    rising = -rel[:-2] / width[:-1, None]  # (n_mels, F)
    falling = rel[2:] / width[1:, None]  # (n_mels, F)
    fb = torch.clamp(torch.minimum(rising, falling), min=0.0)  # (n_mels, F)
    if norm == "slaney":
        fb = fb * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return fb.to(dtype)


class MelSpec(nn.Module):
    """Log-mel spectrogram: ``log(clamp(fb @ |STFT(x)|^p, floor))`` (natural log).

    Args:
        config: a :class:`MelConfig` (e.g. ``MelConfig.preset("hifigan")``).

    Input ``(L,)`` or ``(B, L)`` waveform; output ``(n_mels, T)`` or ``(B, n_mels, T)`` in the
    input's floating dtype (float64 input is computed in float64).
    """

    def __init__(self, config: MelConfig | None = None):
        super().__init__()
        self.config = config or MelConfig()
        c = self.config
        self.stft = c.stft()
        fb = mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.fmax, c.mel_scale,
                            c.norm)
        self.register_buffer("fb", fb.float(), persistent=False)  # (n_mels, F)
        self.register_buffer("fb64", fb, persistent=False)  # (n_mels, F) float64

    def num_frames(self, length: int) -> int:
        """Frames for a waveform of ``length`` samples."""
        return self.stft.num_frames(length)

    def spectrogram(self, wave: Tensor) -> Tensor:
        """Linear ``|STFT|^power`` ``(..., n_fft // 2 + 1, T)``."""
        if not torch.is_floating_point(wave):
            raise TypeError(f"expected a floating-point waveform, got dtype {wave.dtype}")
        spec = self.stft(wave).abs()  # (..., F, T)
        return spec if self.config.power == 1.0 else spec.pow(self.config.power)

    def linear(self, wave: Tensor) -> Tensor:
        """Mel spectrogram before the log, ``(..., n_mels, T)``."""
        spec = self.spectrogram(wave)  # (..., F, T)
        fb = self.fb64 if spec.dtype == torch.float64 else self.fb.to(spec.dtype)
        return torch.matmul(fb, spec)  # (..., n_mels, T)

    def log(self, mel: Tensor) -> Tensor:
        """Natural log with this config's clamp floor."""
        return torch.log(torch.clamp(mel, min=self.config.log_floor))

    def forward(self, wave: Tensor) -> Tensor:
        """Log-mel spectrogram ``(..., n_mels, T)`` of ``wave`` ``(..., L)``."""
        if wave.dim() not in (1, 2):
            raise ValueError(f"expected a waveform (L,) or (B, L), got shape {tuple(wave.shape)}")
        return self.log(self.linear(wave))


class MelNormalizer(nn.Module):
    """Standardise log-mels ``(x - mean) / std`` with statistics fitted on a dataset.

    Args:
        n_mels: number of mel bins.
        mode: ``"per_bin"`` (one mean/std per mel bin, over all frames) or ``"global"``
            (one scalar mean/std over all bins and frames).
        eps: floor added to the std.

    Statistics are buffers (``mean``, ``std``, ``count``), so ``state_dict`` /
    ``load_state_dict`` save and restore a fitted normaliser.
    """

    def __init__(self, n_mels: int, mode: str = "per_bin", eps: float = 1e-5):
        super().__init__()
        if mode not in ("per_bin", "global"):
            raise ValueError(f"mode must be 'per_bin' or 'global', got {mode!r}")
        self.n_mels, self.mode, self.eps = int(n_mels), mode, float(eps)
        size = self.n_mels if mode == "per_bin" else 1
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("std", torch.ones(size))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has seen data (or fitted statistics were loaded)."""
        return bool(self.count > 0)

    def _check(self, mel: Tensor) -> Tensor:
        if mel.dim() not in (2, 3) or mel.shape[-2] != self.n_mels:
            raise ValueError(f"expected log-mels (n_mels={self.n_mels}, T) or "
                             f"(B, {self.n_mels}, T), got shape {tuple(mel.shape)}")
        return mel if mel.dim() == 3 else mel.unsqueeze(0)  # (B, n_mels, T)

    @torch.no_grad()
    def fit(self, mels: Tensor | Iterable[Tensor]) -> MelNormalizer:
        """Fit mean/std on a tensor ``(B, n_mels, T)`` or an iterable of ``(n_mels, T)`` /
        ``(B, n_mels, T)`` tensors (variable ``T`` allowed). Accumulates in float64."""
        items = [mels] if isinstance(mels, Tensor) else mels
        s = torch.zeros(self.n_mels, dtype=torch.float64)
        ss = torch.zeros(self.n_mels, dtype=torch.float64)
        n = 0
        for m in items:
            m = self._check(m).double()  # (B, n_mels, T)
            s += m.sum(dim=(0, 2))
            ss += (m * m).sum(dim=(0, 2))
            n += m.shape[0] * m.shape[2]
        if n == 0:
            raise ValueError("MelNormalizer.fit got no frames (empty input)")
        if self.mode == "global":
            s, ss, n_tot = s.sum(0, keepdim=True), ss.sum(0, keepdim=True), n * self.n_mels
        else:
            n_tot = n
        mean = s / n_tot
        var = torch.clamp(ss / n_tot - mean * mean, min=0.0)
        self.mean.copy_(mean.float())
        self.std.copy_(var.sqrt().float() + self.eps)
        self.count.fill_(float(n))
        return self

    def forward(self, mel: Tensor) -> Tensor:
        """Normalise ``(..., n_mels, T)``."""
        return self.normalize(mel)

    def normalize(self, mel: Tensor) -> Tensor:
        """``(mel - mean) / std`` for ``(..., n_mels, T)``."""
        if not self.fitted:
            raise RuntimeError("MelNormalizer is not fitted: call fit() or load_state_dict()")
        if mel.shape[-2] != self.n_mels:
            raise ValueError(f"expected (..., {self.n_mels}, T), got shape {tuple(mel.shape)}")
        return (mel - self.mean[:, None].to(mel)) / self.std[:, None].to(mel)

    def denormalize(self, z: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`."""
        if not self.fitted:
            raise RuntimeError("MelNormalizer is not fitted: call fit() or load_state_dict()")
        return z * self.std[:, None].to(z) + self.mean[:, None].to(z)

    def extra_repr(self) -> str:
        return f"n_mels={self.n_mels}, mode={self.mode!r}, fitted={self.fitted}"


__all__ = ["MEL_SCALES", "MelConfig", "MelNormalizer", "MelSpec", "hz_to_mel", "mel_filterbank",
           "mel_to_hz"]
