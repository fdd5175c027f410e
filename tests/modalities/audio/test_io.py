"""Audio I/O: WAV round trips, mono mixing, resampling, atomic writes, errors, collation."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from modalities.audio.io import collate_speech, load_audio, resample_wave, save_wav


def _sine(freq: float, sr: int, seconds: float = 0.5, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(sr * seconds), dtype=torch.float32) / sr
    return amp * torch.sin(2 * math.pi * freq * t)


def test_pcm16_round_trip_within_quantisation(tmp_path):
    x = _sine(440.0, 16000)
    path = save_wav(tmp_path / "a.wav", x, 16000)
    y, sr = load_audio(path)
    assert sr == 16000 and y.shape == x.shape and y.dtype == torch.float32
    assert (y - x).abs().max() <= 1.0 / 32768 + 1e-7
    assert sf.info(str(path)).subtype == "PCM_16"


def test_float_round_trip_is_exact_and_stereo_is_mixed(tmp_path):
    left, right = _sine(300.0, 8000), _sine(500.0, 8000, amp=0.25)
    path = save_wav(tmp_path / "st.wav", torch.stack([left, right]), 8000, subtype="FLOAT")
    both, _ = load_audio(path, mono=False)
    assert both.shape == (2, left.numel())
    assert torch.equal(both, torch.stack([left, right]))
    mono, _ = load_audio(path)
    assert torch.allclose(mono, (left + right) / 2)


def test_resample_keeps_duration_and_frequency(tmp_path):
    path = save_wav(tmp_path / "s.wav", _sine(440.0, 16000, seconds=1.0), 16000)
    y, sr = load_audio(path, sample_rate=22050)
    assert sr == 22050 and y.numel() == 22050
    spec = np.abs(np.fft.rfft(y.numpy()))
    assert abs(np.argmax(spec) * sr / y.numel() - 440.0) <= 1.0
    assert torch.equal(resample_wave(y, 22050, 22050), y)


def test_rate_mismatch_without_resampling_names_both_rates(tmp_path):
    path = save_wav(tmp_path / "s.wav", _sine(440.0, 16000), 16000)
    with pytest.raises(ValueError, match=r"s\.wav has sample rate 16000 Hz but 22050 Hz"):
        load_audio(path, sample_rate=22050, resample=False)
    y, sr = load_audio(path, sample_rate=16000, resample=False)
    assert sr == 16000


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        load_audio(tmp_path / "nope.wav")
    bad = tmp_path / "garbage.wav"
    bad.write_bytes(b"RIFF not really a wave file" * 10)
    with pytest.raises(ValueError, match=r"cannot read audio file .*garbage\.wav"):
        load_audio(bad)


def test_save_is_atomic_and_validates(tmp_path):
    path = tmp_path / "sub" / "x.wav"
    save_wav(path, _sine(200.0, 8000), 8000)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="NaN or inf"):
        save_wav(path, torch.tensor([0.0, float("nan"), 0.1]), 8000)
    with pytest.raises(ValueError, match=r"\(T,\) or \(C, T\).*got shape \(1, 2, 3\)"):
        save_wav(path, torch.zeros(1, 2, 3), 8000)
    with pytest.raises(TypeError, match="floating-point"):
        save_wav(path, np.zeros(10, dtype=np.int16), 8000)
    assert path.read_bytes() == before  # failed writes leave the old file intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.wav"]  # no temp files left


def test_collate_pads_and_stacks():
    batch = [{"wave": torch.ones(5), "speaker_id": 0, "text": "a", "sample_rate": 8000},
             {"wave": torch.ones(3), "speaker_id": 2, "text": "bc", "sample_rate": 8000}]
    out = collate_speech(batch)
    assert out["wave"].shape == (2, 5) and out["lengths"].tolist() == [5, 3]
    assert out["wave"][1, 3:].abs().sum() == 0
    assert out["speaker_id"].tolist() == [0, 2] and out["text"] == ["a", "bc"]
    with pytest.raises(ValueError, match="empty batch"):
        collate_speech([])
