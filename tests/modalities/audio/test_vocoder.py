"""Vocoders: mel pseudo-inverse + fast Griffin-Lim, the iSTFT-head vocoder (exact inversion
of a true STFT through its synthesis path, a few training steps) and the spectral losses."""

import math

import pytest
import torch

from modalities.audio.features import MelConfig, MelSpec, mel_filterbank
from modalities.audio.losses import (
    MultiResolutionSTFTLoss,
    VocoderLoss,
    log_magnitude_l1,
    spectral_convergence,
)
from modalities.audio.vocoder import (
    GriffinLim,
    IStftVocoder,
    VocoderConfig,
    _with_magnitude,
    mel_pseudo_inverse,
)

PRESETS = ("hifigan", "vocos")


def _voiced(sr: int, n: int) -> torch.Tensor:
    """A vibrato harmonic tone with a slow amplitude envelope (speech-like spectrum)."""
    t = torch.arange(n, dtype=torch.float64) / sr
    f0 = 140 + 20 * torch.sin(2 * math.pi * 3 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / sr
    env = (0.5 + 0.5 * torch.sin(2 * math.pi * 2 * t)) ** 2
    return (sum(0.3 / k * torch.sin(k * phase) for k in range(1, 12)) * env).float()


def _tiny(preset: str) -> IStftVocoder:
    return IStftVocoder(VocoderConfig(mel=MelConfig.preset(preset), dim=32, intermediate=64,
                                      n_blocks=2))


def test_pseudo_inverse_is_a_right_inverse():
    c = MelConfig.preset("hifigan")
    fb = mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.fmax, c.mel_scale, c.norm)
    pinv = mel_pseudo_inverse(fb)  # (513, 80)
    assert pinv.shape == (513, 80)
    assert torch.allclose(fb @ pinv, torch.eye(80, dtype=torch.float64), atol=1e-8)


def test_magnitude_projection_matches_polar_form_including_zeros():
    g = torch.Generator().manual_seed(0)
    c = torch.complex(torch.randn(7, 9, generator=g), torch.randn(7, 9, generator=g))
    c[0, :3] = 0  # angle(0) = 0: the projection must give +mag there
    mag = torch.rand(7, 9, generator=g)
    ref = mag * torch.exp(1j * torch.angle(c))
    out = _with_magnitude(c, mag)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(out[0, :3].real, mag[0, :3]) and (out[0, :3].imag == 0).all()


@pytest.mark.parametrize("preset", PRESETS)
def test_griffin_lim_beats_random_phase(preset):
    c = MelConfig.preset(preset)
    x = _voiced(c.sample_rate, 256 * 48)
    log_mel = MelSpec(c)(x)  # (n_mels, T)
    gl = GriffinLim(c, n_iter=32)
    y = gl(log_mel, length=x.numel())
    assert y.shape == x.shape and torch.isfinite(y).all()
    target = gl.magnitude(log_mel)  # (F, T), >= 0
    assert target.min() >= 0
    phase = torch.rand(target.shape, generator=torch.Generator().manual_seed(1)) * 2 * math.pi
    y_rand = gl.stft.inverse(torch.polar(target, phase), x.numel())
    sc_gl = float(spectral_convergence(gl.stft(y).abs(), target))
    sc_rand = float(spectral_convergence(gl.stft(y_rand).abs(), target))
    assert sc_gl < 0.5 * sc_rand, (sc_gl, sc_rand)
    mel = MelSpec(c)
    assert spectral_convergence(mel.linear(y), mel.linear(x)) < 0.3


@pytest.mark.parametrize("preset", PRESETS)
def test_istft_head_path_inverts_a_true_stft_exactly(preset):
    voc = _tiny(preset).double()
    x = torch.randn(2, 256 * 24, dtype=torch.float64) * 0.1
    spec = voc.stft(x)  # (2, 513, T)
    err_spec = (voc.spec_to_wave(spec, x.shape[-1]) - x).abs().max()
    err_head = (voc.synthesize(spec.abs().log(), spec.angle(), x.shape[-1]) - x).abs().max()
    assert err_spec < 1e-6 and err_head < 1e-6, (float(err_spec), float(err_head))


@pytest.mark.parametrize("preset", PRESETS)
def test_output_length_matches_mel_frames(preset):
    c = MelConfig.preset(preset)
    voc = _tiny(preset)
    x = torch.randn(1, 256 * 16) * 0.1
    log_mel = MelSpec(c)(x)
    assert voc(log_mel).shape == (1, voc.output_length(log_mel.shape[-1])) == x.shape
    with pytest.raises(ValueError, match=rf"\(B, {c.n_mels}, T\)"):
        voc(log_mel[:, :10])


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    c = MelConfig.preset("hifigan")
    mel = MelSpec(c)
    x = _voiced(c.sample_rate, 256 * 32)[None]  # (1, L)
    voc = _tiny("hifigan")
    loss_fn = VocoderLoss(mel, resolutions=((256, 64, 256), (512, 128, 512), (1024, 256, 1024)))
    opt = torch.optim.AdamW(voc.parameters(), lr=2e-3)
    log_mel = mel(x)
    losses = []
    for _ in range(8):
        loss, parts = loss_fn(voc(log_mel, length=x.shape[-1]), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["total"])
        assert set(parts) == {"sc", "log_mag", "mel_l1", "total"}
    assert losses[-1] < 0.95 * losses[0], losses


def test_losses_vanish_on_identical_inputs_and_check_shapes():
    x = torch.randn(2, 4096)
    sc, mag = MultiResolutionSTFTLoss()(x, x)
    assert float(sc) == 0.0 and float(mag) == 0.0
    a = torch.rand(3, 5)
    assert float(log_magnitude_l1(a, a)) == 0.0
    with pytest.raises(ValueError, match="shape mismatch"):
        spectral_convergence(a, a[:2])
    with pytest.raises(ValueError, match="waveform shapes differ"):
        MultiResolutionSTFTLoss()(x, x[:, :4000])
    with pytest.raises(ValueError, match="n_iter"):
        GriffinLim(MelConfig(), n_iter=0)
