"""STFT framings (centred and HiFi-GAN "same" padding) and their exact inverses."""

import pytest
import torch

from modalities.audio.stft import Stft, padded_window


@pytest.mark.parametrize("center,pad", [(True, 0), (False, 384)])
def test_inverse_is_exact(center, pad):
    stft = Stft(1024, 256, center=center, pad=pad)
    x = torch.randn(2, 256 * 24, dtype=torch.float64)
    spec = stft(x)  # (2, 513, T)
    assert spec.shape == (2, 513, stft.num_frames(x.shape[-1]))
    y = stft.inverse(spec, x.shape[-1])
    assert (y - x).abs().max() < 1e-10
    # default length: what the frames cover, equal to L when L is a multiple of hop
    assert stft.inverse(spec).shape[-1] == x.shape[-1]


def test_short_window_is_zero_padded_like_torch():
    w = padded_window(16, 8, torch.float64)
    assert w.shape == (16,) and w[:4].abs().sum() == 0 and w[-4:].abs().sum() == 0
    stft = Stft(16, 4, win_length=8)
    x = torch.randn(64, dtype=torch.float64)
    ref = torch.stft(x, 16, 4, 8, window=torch.hann_window(8, dtype=torch.float64),
                     center=True, pad_mode="reflect", return_complex=True)
    assert torch.allclose(stft(x), ref, atol=1e-12)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="only used with center=False"):
        Stft(64, 16, center=True, pad=8)
    with pytest.raises(ValueError, match="pad_mode"):
        Stft(64, 16, pad_mode="wrap")
    stft = Stft(64, 16)
    with pytest.raises(TypeError, match="complex"):
        stft.inverse(torch.zeros(33, 4))
    with pytest.raises(ValueError, match=r"\(\.\.\., 33, T\).*got shape \(20, 4\)"):
        stft.inverse(torch.zeros(20, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="too short|reflect padding"):
        stft(torch.zeros(10))


def test_cached_envelope_after_inference_mode_still_backpropagates():
    st = Stft(64, 16, center=False, pad=24)
    spec = st(torch.randn(2, 320))
    with torch.inference_mode():
        st.inverse(spec.clone())  # fills the envelope cache inside inference mode
    s = spec.clone().requires_grad_(True)
    st.inverse(s).square().sum().backward()  # an inference tensor here would raise
    assert s.grad is not None and torch.isfinite(torch.view_as_real(s.grad)).all()
