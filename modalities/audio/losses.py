"""Spectral losses for waveform generators (vocoders).

* Spectral convergence ``||S - S_hat||_F / ||S||_F`` and log-magnitude L1
  ``mean |log S - log S_hat|`` (Yamamoto et al., 2020, Parallel WaveGAN), averaged over
  several STFT resolutions: :class:`MultiResolutionSTFTLoss`.
* Mel-spectrogram L1 between log-mels (Kong et al., 2020, HiFi-GAN), weighted 45 there.

:class:`VocoderLoss` combines both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from modalities.audio.features import MelSpec
from modalities.audio.stft import Stft

DEFAULT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = (
    (512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))


def spectral_convergence(est: Tensor, ref: Tensor) -> Tensor:
    """``||ref - est||_F / ||ref||_F``, one scalar over the whole batch, for magnitudes
    ``(..., F, T)`` (Yamamoto et al., 2020)."""
    if est.shape != ref.shape:
        raise ValueError(f"shape mismatch: est {tuple(est.shape)} vs ref {tuple(ref.shape)}")
    return torch.linalg.vector_norm(ref - est) / torch.linalg.vector_norm(ref).clamp_min(1e-12)


def log_magnitude_l1(est: Tensor, ref: Tensor, floor: float = 1e-7) -> Tensor:
    """``mean |log ref - log est|`` of magnitudes clamped at ``floor`` (Yamamoto et al.,
    2020)."""
    if est.shape != ref.shape:
        raise ValueError(f"shape mismatch: est {tuple(est.shape)} vs ref {tuple(ref.shape)}")
    return (torch.log(ref.clamp_min(floor)) - torch.log(est.clamp_min(floor))).abs().mean()


class MultiResolutionSTFTLoss(nn.Module):
    """Average over resolutions of spectral convergence + log-magnitude L1.

    Args:
        resolutions: ``(n_fft, hop, win_length)`` triples.
    """

    def __init__(self, resolutions: Sequence[tuple[int, int, int]] = DEFAULT_RESOLUTIONS):
        super().__init__()
        if not resolutions:
            raise ValueError("MultiResolutionSTFTLoss needs at least one resolution")
        self.stfts = nn.ModuleList(Stft(n, h, w, center=True) for n, h, w in resolutions)

    def forward(self, est: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
        """``(spectral_convergence, log_magnitude)`` for waves ``(B, L)``, each averaged over
        resolutions (Yamamoto et al., 2020)."""
        if est.shape != ref.shape:
            raise ValueError(f"waveform shapes differ: est {tuple(est.shape)} vs ref "
                             f"{tuple(ref.shape)}")
        sc = est.new_zeros(())
        mag = est.new_zeros(())
        for stft in self.stfts:
            e, r = stft(est).abs(), stft(ref).abs()  # (B, F, T)
            sc = sc + spectral_convergence(e, r)
            mag = mag + log_magnitude_l1(e, r)
        return sc / len(self.stfts), mag / len(self.stfts)


class VocoderLoss(nn.Module):
    """``stft_weight * (sc + log_mag) + mel_weight * L1(log_mel(est), log_mel(ref))``.

    Args:
        mel: the :class:`~modalities.audio.features.MelSpec` of the vocoder's input features.
        resolutions: STFT resolutions of the multi-resolution loss.
        mel_weight: weight of the mel L1 term (HiFi-GAN uses 45 next to adversarial terms;
            without them 1 to 45 both train).
        stft_weight: weight of the multi-resolution STFT term.
    """

    def __init__(self, mel: MelSpec, resolutions: Sequence[tuple[int, int, int]] =
                 DEFAULT_RESOLUTIONS, mel_weight: float = 1.0, stft_weight: float = 1.0):
        super().__init__()
        self.mel = mel
        self.mrstft = MultiResolutionSTFTLoss(resolutions)
        self.mel_weight, self.stft_weight = float(mel_weight), float(stft_weight)

    def forward(self, est: Tensor, ref: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Total loss and its parts (floats) for waves ``(B, L)`` of equal shape."""
        sc, mag = self.mrstft(est, ref)
        mel_l1 = (self.mel(est) - self.mel(ref)).abs().mean()  # log-mel L1
        total = self.stft_weight * (sc + mag) + self.mel_weight * mel_l1
        parts = {"sc": sc, "log_mag": mag, "mel_l1": mel_l1, "total": total}
        return total, {k: float(v.detach()) for k, v in parts.items()}


__all__ = ["DEFAULT_RESOLUTIONS", "MultiResolutionSTFTLoss", "VocoderLoss", "log_magnitude_l1",
           "spectral_convergence"]
