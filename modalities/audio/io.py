"""Audio file I/O: decoding with soundfile, resampling, mono mixing, atomic WAV writes, and a
padding collate function for speech batches.

Waveforms are float32 tensors in ``[-1, 1]``: ``(T,)`` mono or ``(C, T)`` multi-channel.
Resampling uses :func:`torchaudio.functional.resample` (windowed-sinc band-limited
interpolation, Smith & Gossett 1984), computed in float64 so results do not depend on the
thread count up to float32 rounding.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor

from toolkit.files import atomic_write

MIN_RATE, MAX_RATE = 1000, 768_000  # plausible audio sample rates (Hz); others are refused
MAX_PEAK = 1000.0  # decoded |sample| above this (60 dB over full scale) is garbage, not audio
MAX_RESAMPLE_KERNEL = 2**22  # taps of torchaudio's polyphase sinc kernel (new/g x orig/g)
_SIZE_PLACEHOLDER = 0x7FFF0000  # streamed WAVs write a data size >= this (or 0): unknown


class UnreadableAudioError(ValueError):
    """An audio file that cannot be used (unreadable, truncated, empty, implausible rate,
    non-finite or out-of-range samples).

    Attributes:
        path: the file. reason: what is wrong (one line).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = Path(path), " ".join(str(reason).split())
        super().__init__(f"cannot read audio file {self.path}: {self.reason}")


def wav_truncation(path: str | Path) -> str | None:
    """Why a RIFF/WAVE file's ``data`` chunk is cut short, or ``None`` (complete, not a WAV,
    or a streamed WAV whose header holds a placeholder size).

    libsndfile silently decodes the samples that are there, so a truncated file would
    otherwise pass as a shorter recording.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            cid, n = f.read(4), int.from_bytes(f.read(4), "little")
            if cid == b"data":
                have = size - pos - 8
                if 0 < n < _SIZE_PLACEHOLDER and n > have:
                    return (f"truncated: its header declares {n} data bytes but the file "
                            f"holds {have}")
                return None
            pos += 8 + n + (n & 1)  # chunks are word-aligned
    return None


def probe_audio(path: str | Path):
    """Check an audio file without decoding it: readable header, at least one sample and one
    channel, a sample rate in ``[MIN_RATE, MAX_RATE]``, and (WAV) a complete data chunk.

    Returns:
        soundfile's info (``frames``, ``samplerate``, ``channels``, ``format``, ...).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UnreadableAudioError: (a ``ValueError``) naming the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    if path.stat().st_size == 0:
        raise UnreadableAudioError(path, "the file is empty (0 bytes)")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise UnreadableAudioError(path, str(err).replace(f"'{path}'", "file")) from None
    if info.frames <= 0 or info.channels <= 0:
        raise UnreadableAudioError(path, f"holds no samples ({info.frames} frames, "
                                   f"{info.channels} channels)")
    if not MIN_RATE <= info.samplerate <= MAX_RATE:
        raise UnreadableAudioError(path, f"implausible sample rate {info.samplerate} Hz in its "
                                   f"header (expected {MIN_RATE} .. {MAX_RATE} Hz)")
    cut = wav_truncation(path)
    if cut is not None:
        raise UnreadableAudioError(path, cut)
    return info


def resample_wave(wave: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """Resample ``wave`` ``(..., T)`` from ``orig_rate`` to ``new_rate`` Hz (no-op if equal)."""
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be > 0, got {orig_rate} -> {new_rate}")
    if orig_rate == new_rate:
        return wave
    g = math.gcd(int(orig_rate), int(new_rate))
    if (orig_rate // g) * (new_rate // g) > MAX_RESAMPLE_KERNEL:
        raise ValueError(f"cannot resample {orig_rate} Hz -> {new_rate} Hz: the rates share "
                         f"only the factor {g}, so the sinc kernel would need "
                         f"{new_rate // g} x {orig_rate // g} taps; convert the audio to a "
                         "standard rate (e.g. 16000, 22050, 44100 or 48000 Hz) first")
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
        ValueError: the file cannot be used (:class:`UnreadableAudioError`: unreadable,
            truncated, empty, implausible rate, NaN / inf samples or ``|x| > MAX_PEAK``;
            the message names the path), or the rate differs and ``resample`` is false or
            cannot be resampled.
    """
    path = Path(path)
    probe_audio(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise UnreadableAudioError(path, str(err).replace(f"'{path}'", "file")) from None
    if data.shape[0] == 0:
        raise UnreadableAudioError(path, "holds no samples")
    finite = np.isfinite(data)  # float WAVs can hold NaN / inf
    if not finite.all():
        t, c = map(int, np.argwhere(~finite)[0])
        raise UnreadableAudioError(path, f"sample {t} of channel {c} is {data[t, c]} (NaN or "
                                   "inf samples)")
    peak = float(np.abs(data).max())
    if peak > MAX_PEAK:
        raise UnreadableAudioError(path, f"peak amplitude {peak:.3g} exceeds {MAX_PEAK:g}: "
                                   "not audio (float samples should lie in [-1, 1])")
    wave = torch.from_numpy(np.ascontiguousarray(data.T))  # (C, T)
    if mono:
        wave = wave.mean(dim=0)  # (T,)
    if sample_rate is not None and int(sample_rate) != rate:
        if not resample:
            raise ValueError(f"{path} has sample rate {rate} Hz but {int(sample_rate)} Hz was "
                             "requested (pass resample=True to resample)")
        try:
            wave = resample_wave(wave, rate, int(sample_rate))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        rate = int(sample_rate)
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


__all__ = ["MAX_PEAK", "MAX_RATE", "MIN_RATE", "UnreadableAudioError", "collate_speech",
           "load_audio", "probe_audio", "resample_wave", "save_wav", "wav_truncation"]
