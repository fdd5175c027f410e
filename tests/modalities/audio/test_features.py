"""Log-mel front-end: filterbank and spectrogram parity with librosa and torchaudio for the
HiFi-GAN and Vocos presets, config checks, and the mel normaliser."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modalities.audio.features import (
    MelConfig,
    MelNormalizer,
    MelSpec,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
)

librosa = pytest.importorskip("librosa", reason="librosa (extra 'ref') is the parity reference")

PRESETS = ("hifigan", "vocos")


def _signal(sr: int, seconds: float = 0.75, seed: int = 0) -> np.ndarray:
    """A chirp, a few harmonics and noise: energy in every mel band."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    y = 0.3 * np.sin(2 * np.pi * (150 + 600 * t) * t)
    y += sum(0.05 / k * np.sin(2 * np.pi * 220 * k * t) for k in range(1, 8))
    return y + 0.02 * rng.standard_normal(t.size)


def _librosa_mel(y: np.ndarray, c: MelConfig) -> np.ndarray:
    """librosa's mel spectrogram with the same settings (HiFi-GAN's explicit padding first)."""
    if not c.center:
        y = np.pad(y, c.pad, mode=c.pad_mode)
    return librosa.feature.melspectrogram(
        y=y, sr=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length, win_length=c.win_length,
        window="hann", center=c.center, pad_mode=c.pad_mode, power=c.power, n_mels=c.n_mels,
        fmin=c.f_min, fmax=c.fmax, htk=c.mel_scale == "htk", norm=c.norm, dtype=np.float64)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Max element-wise relative error, denominators floored at 1e-6 of the peak."""
    return float(np.max(np.abs(a - b) / (np.abs(b) + 1e-6 * np.abs(b).max())))


def test_presets_hold_the_published_settings():
    h, v = MelConfig.preset("hifigan"), MelConfig.preset("vocos")
    assert (h.sample_rate, h.n_fft, h.win_length, h.hop_length, h.n_mels) == (
        22050, 1024, 1024, 256, 80)
    assert (h.f_min, h.fmax, h.mel_scale, h.norm, h.center, h.pad, h.power) == (
        0.0, 8000.0, "slaney", "slaney", False, 384, 1.0)
    assert (v.sample_rate, v.n_fft, v.hop_length, v.n_mels, v.mel_scale, v.norm, v.center,
            v.power) == (24000, 1024, 256, 100, "htk", None, True, 1.0)
    assert v.fmax == 12000.0
    assert MelConfig.preset("vocos", n_mels=64).n_mels == 64


@pytest.mark.parametrize("scale", ["slaney", "htk"])
def test_mel_scale_round_trip(scale):
    f = torch.tensor([0.0, 100.0, 999.0, 1000.0, 4000.0, 11025.0], dtype=torch.float64)
    assert torch.allclose(mel_to_hz(hz_to_mel(f, scale), scale), f, atol=1e-9)


@pytest.mark.parametrize("preset", PRESETS)
def test_filterbank_matches_librosa(preset):
    c = MelConfig.preset(preset)
    fb = mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.fmax, c.mel_scale, c.norm)
    ref = librosa.filters.mel(sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.f_min,
                              fmax=c.fmax, htk=c.mel_scale == "htk", norm=c.norm,
                              dtype=np.float64)
    assert fb.shape == (c.n_mels, c.n_fft // 2 + 1)
    assert np.abs(fb.numpy() - ref).max() <= 1e-10 * np.abs(ref).max()


@pytest.mark.parametrize("scale,norm", [("slaney", None), ("htk", "slaney")])
def test_filterbank_other_combinations_match_librosa(scale, norm):
    fb = mel_filterbank(16000, 512, 40, 50.0, 7000.0, scale, norm)
    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, fmin=50.0, fmax=7000.0,
                              htk=scale == "htk", norm=norm, dtype=np.float64)
    assert np.abs(fb.numpy() - ref).max() <= 1e-10 * np.abs(ref).max()


@pytest.mark.parametrize("preset", PRESETS)
def test_mel_spectrogram_matches_librosa(preset):
    c = MelConfig.preset(preset)
    y = _signal(c.sample_rate)
    ref = _librosa_mel(y, c)  # (n_mels, T)
    mel = MelSpec(c)
    out64 = mel.linear(torch.from_numpy(y)).numpy()
    out32 = mel.linear(torch.from_numpy(y).float()).numpy()
    assert out64.shape == ref.shape == (c.n_mels, mel.num_frames(y.size))
    assert _rel_err(out64, ref) < 1e-10
    assert _rel_err(out32, ref) < 1e-4
    log_ref = np.log(np.maximum(ref, c.log_floor))
    assert np.abs(mel(torch.from_numpy(y).float()).numpy() - log_ref).max() < 1e-4


@pytest.mark.parametrize("preset", PRESETS)
def test_mel_spectrogram_matches_torchaudio(preset):
    ta = pytest.importorskip("torchaudio.transforms")
    c = MelConfig.preset(preset)
    y = torch.from_numpy(np.stack([_signal(c.sample_rate, 0.4, s) for s in range(2)]))
    ref_t = ta.MelSpectrogram(sample_rate=c.sample_rate, n_fft=c.n_fft,
                              win_length=c.win_length, hop_length=c.hop_length, f_min=c.f_min,
                              f_max=c.fmax, n_mels=c.n_mels, power=c.power, center=c.center,
                              pad_mode=c.pad_mode, norm=c.norm, mel_scale=c.mel_scale).double()
    yp = y if c.center else F.pad(y.unsqueeze(1), (c.pad, c.pad), mode=c.pad_mode).squeeze(1)
    ref = ref_t(yp).numpy()  # (2, n_mels, T); torchaudio builds its filterbank in float32
    out = MelSpec(c).linear(y).numpy()
    assert out.shape == ref.shape
    assert _rel_err(out, ref) < 1e-4


def test_hifigan_frames_and_power_option():
    c = MelConfig.preset("hifigan")
    mel = MelSpec(c)
    x = torch.randn(3, 256 * 20) * 0.1
    assert mel(x).shape == (3, 80, 20)  # T = L / hop with HiFi-GAN padding
    assert MelSpec(MelConfig.preset("vocos"))(x).shape == (3, 100, 21)  # 1 + L // hop
    p2 = MelSpec(MelConfig.preset("hifigan", power=2.0)).spectrogram(x)
    assert torch.allclose(p2, mel.spectrogram(x) ** 2, rtol=1e-5)


def test_log_floor_clamps_silence():
    c = MelConfig.preset("hifigan")
    out = MelSpec(c)(torch.zeros(4096))
    assert torch.allclose(out, torch.full_like(out, math.log(c.log_floor)))


@pytest.mark.parametrize("bad,match", [
    (dict(mel_scale="bark"), "mel_scale"), (dict(norm="l2"), "norm"),
    (dict(power=3.0), "power"), (dict(f_max=20000.0), "f_max"), (dict(log_floor=0.0), "floor"),
])
def test_config_errors_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        MelConfig.preset("hifigan", **bad)


def test_unknown_preset_and_bad_input():
    with pytest.raises(KeyError, match="unknown mel preset 'bigvgan'"):
        MelConfig.preset("bigvgan")
    mel = MelSpec()
    with pytest.raises(ValueError, match="expected a waveform"):
        mel(torch.zeros(2, 2, 4096))
    with pytest.raises(TypeError, match="floating-point"):
        mel(torch.zeros(4096, dtype=torch.int16))
    with pytest.raises(ValueError, match="reflect padding of 384 samples"):
        mel(torch.zeros(100))


@pytest.mark.parametrize("mode", ["per_bin", "global"])
def test_normalizer_fits_and_round_trips_through_state_dict(tmp_path, mode):
    torch.manual_seed(0)
    scale = torch.linspace(0.5, 3.0, 80)[:, None]
    mels = [torch.randn(80, t) * scale - 4.0 for t in (30, 55, 17)]  # variable lengths
    norm = MelNormalizer(80, mode=mode).fit(mels)
    z = norm(torch.cat(mels, dim=1))  # (80, 102)
    if mode == "per_bin":
        assert torch.allclose(z.mean(dim=1), torch.zeros(80), atol=1e-4)
        assert torch.allclose(z.std(dim=1, unbiased=False), torch.ones(80), atol=1e-3)
    else:
        assert abs(float(z.mean())) < 1e-4 and abs(float(z.std(unbiased=False)) - 1) < 1e-3
    torch.save(norm.state_dict(), tmp_path / "norm.pt")
    fresh = MelNormalizer(80, mode=mode)
    assert not fresh.fitted
    fresh.load_state_dict(torch.load(tmp_path / "norm.pt"))
    assert fresh.fitted
    x = torch.randn(2, 80, 9)
    assert torch.allclose(fresh(x), norm(x))
    assert torch.allclose(fresh.denormalize(fresh(x)), x, atol=1e-5)


def test_normalizer_errors():
    norm = MelNormalizer(80)
    with pytest.raises(RuntimeError, match="not fitted"):
        norm(torch.zeros(80, 4))
    with pytest.raises(ValueError, match=r"n_mels=80.*got shape \(64, 4\)"):
        norm.fit(torch.zeros(64, 4))
    with pytest.raises(ValueError, match="no frames"):
        norm.fit([])
    with pytest.raises(ValueError, match="mode"):
        MelNormalizer(80, mode="per_frame")
    with pytest.raises(RuntimeError, match="size mismatch for mean"):
        MelNormalizer(80, mode="global").load_state_dict(norm.state_dict())
