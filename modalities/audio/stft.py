"""Short-time Fourier transform with explicit framing, and its exact inverse.

Two framings are supported, both with ``T`` frames spaced ``hop`` samples apart:

* ``center=True``: the signal is padded by ``n_fft // 2`` on each side (``pad_mode``), so frame
  ``t`` is centred on sample ``t * hop`` (librosa / torchaudio default). ``T = 1 + L // hop``.
  Inversion uses :func:`torch.istft`.
* ``center=False`` with ``pad`` samples of explicit padding on each side (HiFi-GAN uses
  ``pad = (n_fft - hop) // 2`` with reflect padding, which gives ``T = L // hop`` frames when
  ``L`` is a multiple of ``hop``; Vocos calls this "same" padding). :func:`torch.istft` refuses
  this framing (the window envelope vanishes at the padded edge, a NOLA violation), so the
  inverse is a weighted overlap-add computed here and cropped to the unpadded signal.

Both inverses are the least-squares ISTFT of Griffin & Lim (1984): overlap-add of the windowed
frames divided by the summed squared window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def padded_window(n_fft: int, win_length: int | None = None, dtype: torch.dtype = torch.float32
                  ) -> Tensor:
    """Periodic Hann window of ``win_length`` zero-padded (centred) to ``n_fft`` samples, as
    :func:`torch.stft` and librosa do internally. Returns ``(n_fft,)``."""
    win_length = n_fft if win_length is None else int(win_length)
    if not 0 < win_length <= n_fft:
        raise ValueError(f"win_length must be in [1, n_fft={n_fft}], got {win_length}")
    w = torch.hann_window(win_length, periodic=True, dtype=dtype)
    left = (n_fft - win_length) // 2
    return F.pad(w, (left, n_fft - win_length - left))


class Stft(nn.Module):
    """STFT / inverse STFT pair with a fixed framing (see module docstring).

    Args:
        n_fft: FFT size; ``n_fft // 2 + 1`` frequency bins.
        hop_length: frame shift in samples.
        win_length: Hann window length (zero-padded to ``n_fft``); default ``n_fft``.
        center: pad ``n_fft // 2`` per side (``True``) or ``pad`` per side (``False``).
        pad: explicit padding per side when ``center=False``.
        pad_mode: padding mode for :func:`torch.nn.functional.pad` (``"reflect"``,
            ``"constant"``, ``"replicate"``, ``"circular"``).
    """

    def __init__(self, n_fft: int, hop_length: int, win_length: int | None = None,
                 center: bool = True, pad: int = 0, pad_mode: str = "reflect"):
        super().__init__()
        if n_fft < 2 or hop_length < 1:
            raise ValueError(f"need n_fft >= 2 and hop_length >= 1, got n_fft={n_fft}, "
                             f"hop_length={hop_length}")
        if pad_mode not in ("reflect", "constant", "replicate", "circular"):
            raise ValueError(f"pad_mode must be reflect/constant/replicate/circular, got "
                             f"{pad_mode!r}")
        if center and pad:
            raise ValueError(f"pad={pad} is only used with center=False (center=True pads "
                             "n_fft // 2 per side)")
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.n_fft, self.hop_length, self.center = int(n_fft), int(hop_length), bool(center)
        self.win_length = self.n_fft if win_length is None else int(win_length)
        self.pad, self.pad_mode = int(pad), pad_mode
        # kept in float64 and cast on use, so float64 transforms are exact to float64 precision
        self.register_buffer("window", padded_window(self.n_fft, self.win_length, torch.float64),
                             persistent=False)
        self._env_key: tuple | None = None  # cache of 1 / (summed squared window)
        self._env_inv: Tensor | None = None

    @property
    def n_freq(self) -> int:
        """Number of one-sided frequency bins, ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    def side_pad(self) -> int:
        """Samples added on each side of the signal before framing."""
        return self.n_fft // 2 if self.center else self.pad

    def num_frames(self, length: int) -> int:
        """Frames produced for a signal of ``length`` samples."""
        return 1 + (length + 2 * self.side_pad() - self.n_fft) // self.hop_length

    def forward(self, x: Tensor) -> Tensor:
        """Complex STFT of ``x`` ``(..., L)`` -> ``(..., n_fft // 2 + 1, T)``."""
        if x.dim() < 1:
            raise ValueError(f"expected a waveform (..., L), got shape {tuple(x.shape)}")
        lead, length = x.shape[:-1], x.shape[-1]
        p = self.side_pad()
        if self.pad_mode == "reflect" and length <= p:
            raise ValueError(f"reflect padding of {p} samples needs a signal longer than {p} "
                             f"samples, got length {length}")
        if length + 2 * p < self.n_fft:
            raise ValueError(f"signal of {length} samples is too short for n_fft={self.n_fft} "
                             f"with {p} samples of padding per side")
        y = x.reshape(-1, length)  # (N, L)
        if p:
            y = F.pad(y.unsqueeze(1), (p, p), mode=self.pad_mode).squeeze(1)  # (N, L + 2p)
        spec = torch.stft(y, self.n_fft, self.hop_length, self.n_fft,
                          window=self.window.to(y.dtype), center=False, return_complex=True)
        return spec.reshape(*lead, *spec.shape[-2:])  # (..., F, T)

    def inverse(self, spec: Tensor, length: int | None = None) -> Tensor:
        """Inverse STFT of ``spec`` ``(..., n_fft // 2 + 1, T)`` -> ``(..., L)``.

        ``length`` defaults to the longest signal that the frames fully cover:
        ``(T - 1) * hop`` for ``center=True`` and ``(T - 1) * hop + n_fft - 2 * pad``
        otherwise. For a spectrogram computed by :meth:`forward` this is an exact inverse.
        """
        if not spec.is_complex():
            raise TypeError(f"inverse expects a complex spectrogram, got dtype {spec.dtype}")
        if spec.dim() < 2 or spec.shape[-2] != self.n_freq:
            raise ValueError(f"expected (..., {self.n_freq}, T) for n_fft={self.n_fft}, got "
                             f"shape {tuple(spec.shape)}")
        lead, n_frames = spec.shape[:-2], spec.shape[-1]
        s = spec.reshape(-1, self.n_freq, n_frames)  # (N, F, T)
        real = s.real.dtype
        if self.center:
            out = torch.istft(s, self.n_fft, self.hop_length, self.n_fft,
                              window=self.window.to(real), center=True,
                              length=length)  # (N, L)
            return out.reshape(*lead, out.shape[-1])
        out = self._overlap_add(s, real)  # (N, (T - 1) * hop + n_fft)
        full = out.shape[-1] - 2 * self.pad
        length = full if length is None else int(length)
        if not 0 < length <= full:
            raise ValueError(f"length must be in [1, {full}] for {n_frames} frames, got {length}")
        out = out[:, self.pad:self.pad + length]
        return out.reshape(*lead, length)

    def _overlap_add(self, s: Tensor, real: torch.dtype) -> Tensor:
        # Griffin & Lim (1984), least-squares ISTFT: x = sum_t w frame_t / sum_t w^2
        n, _, n_frames = s.shape
        w = self.window.to(real)
        frames = torch.fft.irfft(s, n=self.n_fft, dim=1).mul_(w[None, :, None])  # (N, n_fft, T)
        total = (n_frames - 1) * self.hop_length + self.n_fft
        fold = dict(output_size=(1, total), kernel_size=(1, self.n_fft),
                    stride=(1, self.hop_length))
        y = F.fold(frames, **fold).reshape(n, total)  # (N, total)
        # an envelope made under inference_mode could not be saved for a later backward
        key = (n_frames, real, w.device, torch.is_inference_mode_enabled())
        if self._env_key != key:  # summed squared window: depends on the frame count only
            env = F.fold((w * w)[None, :, None].expand(1, -1, n_frames), **fold).reshape(total)
            tiny = torch.finfo(real).tiny ** 0.5
            self._env_key, self._env_inv = key, 1.0 / env.clamp_min(tiny)  # (total,)
        return y.mul_(self._env_inv)


__all__ = ["Stft", "padded_window"]
