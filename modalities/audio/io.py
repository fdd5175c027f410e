"""Audio file I/O: decoding with soundfile, resampling, mono mixing, atomic WAV writes, and a
padding collate function for speech batches.

Waveforms are float32 tensors in ``[-1, 1]``: ``(T,)`` mono or ``(C, T)`` multi-channel.
Resampling uses :func:`torchaudio.functional.resample` (windowed-sinc band-limited
interpolation, Smith & Gossett 1984), computed in float64 so results do not depend on the
thread count up to float32 rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor

from toolkit.files import atomic_write


def resample_wave(wave: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """Resample ``wave`` ``(..., T)`` from ``orig_rate`` to ``new_rate`` Hz (no-op if equal)."""
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be > 0, got {orig_rate} -> {new_rate}")
    if orig_rate == new_rate:
        return wave
    out = AF.resample(wave.double(), int(orig_rate), int(new_rate))  # (..., T')
    return out.to(wave.dtype)


def load_audio(path: str | Path, sample_rate: int | None = None, resample: bool = True,
               mono: bool = True) -> tuple[Tensor, int]:
    """Decode an audio file (any format libsndfile reads: WAV, FLAC, OGG, ...).

    Args:
        path: file to read.
        sample_rate: wanted rate in Hz; ``None`` keeps the file's rate.
        resample: resample when the file's rate differs from ``sample_rate``; with
            ``False`` a mismatch raises ``ValueError`` naming both rates.
        mono: average the channels to ``(T,)``; else return ``(C, T)``.

    Returns:
        ``(wave, rate)``: float32 ``(T,)`` or ``(C, T)`` and its sample rate.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be decoded (message names the path) or the rate differs
            and ``resample`` is false.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise ValueError(f"cannot read audio file {path}: {err}") from None
    wave = torch.from_numpy(np.ascontiguousarray(data.T))  # (C, T)
    if wave.shape[-1] == 0:
        raise ValueError(f"audio file {path} holds no samples")
    if mono:
        wave = wave.mean(dim=0)  # (T,)
    if sample_rate is not None and int(sample_rate) != rate:
        if not resample:
            raise ValueError(f"{path} has sample rate {rate} Hz but {int(sample_rate)} Hz was "
                             "requested (pass resample=True to resample)")
        wave, rate = resample_wave(wave, rate, int(sample_rate)), int(sample_rate)
    return wave, int(rate)


def save_wav(path: str | Path, wave: Tensor | np.ndarray, sample_rate: int,
             subtype: str = "PCM_16") -> Path:
    """Write ``wave`` (``(T,)`` mono or ``(C, T)``, floats in ``[-1, 1]``) as a WAV file.

    The file is written to a temporary name in the same folder and moved into place with
    :func:`os.replace`, so readers never see a partial file. Samples outside ``[-1, 1]`` are
    clipped for integer subtypes; non-finite samples raise.
    """
    path = Path(path)
    x = wave.detach().cpu().numpy() if isinstance(wave, Tensor) else np.asarray(wave)
    if x.ndim not in (1, 2) or x.shape[-1] == 0:
        raise ValueError(f"save_wav expects a non-empty (T,) or (C, T) waveform, got shape "
                         f"{tuple(x.shape)} for {path}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"save_wav expects floating-point samples, got {x.dtype} for {path}")
    if not np.isfinite(x).all():
        raise ValueError(f"waveform for {path} contains NaN or inf samples")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate} for {path}")
    data = x.T if x.ndim == 2 else x  # (T, C) or (T,)
    if subtype.startswith("PCM"):
        data = np.clip(data, -1.0, 1.0)
    return atomic_write(path, lambda tmp: sf.write(tmp, data, int(sample_rate),
                                                    subtype=subtype, format="WAV"))


def collate_speech(batch: list[dict]) -> dict:
    """Collate speech items (dicts with a ``wave`` ``(T,)``) into a batch.

    Waves are right-padded with zeros to ``(B, T_max)`` and ``lengths`` ``(B,)`` is added;
    other tensor fields of equal shape are stacked, everything else is gathered in lists.
    """
    if not batch:
        raise ValueError("collate_speech got an empty batch")
    lengths = torch.tensor([b["wave"].shape[-1] for b in batch])
    waves = torch.zeros(len(batch), int(lengths.max()), dtype=batch[0]["wave"].dtype)
    for i, b in enumerate(batch):
        waves[i, :b["wave"].shape[-1]] = b["wave"]
    out: dict = {"wave": waves, "lengths": lengths}  # (B, T_max), (B,)
    for key in batch[0]:
        if key == "wave":
            continue
        vals = [b[key] for b in batch]
        if isinstance(vals[0], Tensor) and all(v.shape == vals[0].shape for v in vals):
            out[key] = torch.stack(vals)
        elif isinstance(vals[0], int) and all(isinstance(v, int) for v in vals):
            out[key] = torch.tensor(vals)
        else:
            out[key] = vals
    return out


__all__ = ["collate_speech", "load_audio", "resample_wave", "save_wav"]
