"""TTS networks: shapes, padding exactness, initial zero velocity, gradient routing."""

import pytest
import torch

from modalities.audio.model import TTSModel
from modalities.audio.nets import DurationPredictor, MelDecoder, TextEncoder


def _model(**kw) -> TTSModel:
    torch.manual_seed(0)
    base = dict(n_mels=12, num_speakers=3, spk_dim=8, enc_dim=16, enc_depth=1, enc_heads=2,
                prenet_layers=1, dp_channels=8, dec_channels=[8, 16], dec_heads=2,
                ref_hidden=8)
    return TTSModel(**{**base, **kw}).eval()


def test_encoder_and_duration_shapes_and_padding_exactness():
    torch.manual_seed(0)
    enc, dp = TextEncoder(20, 12, 16, 8, 2, depth=1).eval(), DurationPredictor(16, 8).eval()
    tok = torch.randint(2, 20, (2, 7))
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    tok[1, 4:] = 0
    spk = torch.randn(2, 8)
    h, mu = enc(tok, mask, spk)
    assert h.shape == (2, 7, 16) and mu.shape == (2, 12, 7)
    assert mu[1, :, 4:].abs().sum() == 0 and h[1, 4:].abs().sum() == 0
    h1, mu1 = enc(tok[1:, :4], mask[1:, :4], spk[1:])  # alone, unpadded
    assert torch.allclose(mu1, mu[1:, :, :4], atol=1e-4)
    logd = dp(h, mask)
    assert logd.shape == (2, 7) and logd[1, 4:].abs().sum() == 0
    assert torch.allclose(dp(h1, mask[1:, :4]), logd[1:, :4], atol=1e-4)


@pytest.mark.parametrize("length", [9, 16, 1])
def test_decoder_shapes_zero_init_and_padding_exactness(length):
    torch.manual_seed(length)
    dec = MelDecoder(12, (8, 16, 16), spk_dim=8, transformer_depth=1, heads=2)
    x, mu = torch.randn(2, 12, 17), torch.randn(2, 12, 17)
    mask = torch.zeros(2, 17, dtype=torch.bool)
    mask[0], mask[1, :length] = True, True
    t, spk = torch.rand(2), torch.randn(2, 8)
    v = dec(x, t, mu, spk, mask)
    assert v.shape == (2, 12, 17) and v.abs().max() == 0  # zero-initialised output layer
    torch.nn.init.normal_(dec.out.weight, std=0.1)
    v = dec(x, t, mu, spk, mask)
    assert v[1, :, length:].abs().sum() == 0 and v[1, :, :length].abs().sum() > 0
    alone = dec(x[1:, :, :length], t[1:], mu[1:, :, :length], spk[1:], mask[1:, :length])
    assert torch.allclose(alone, v[1:, :, :length], atol=1e-4)


def test_duration_loss_does_not_reach_the_encoder():
    m = _model().train()
    tok = torch.randint(2, 20, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.bool)
    h, mu_x, logd = m.encode(tok, mask, m.speaker_embedding(torch.tensor([0, 2])))
    logd.sum().backward()
    assert all(p.grad is None for p in m.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.duration.parameters())


def test_model_speaker_inputs_and_nulls():
    m = _model()
    assert m.speaker_embedding(torch.tensor([0, 1, 2])).shape == (3, 8)
    with pytest.raises(ValueError, match="out of range"):
        m.speaker_embedding(torch.tensor([3]))
    null = m.null_speaker(2)
    drop = m.speaker_embedding(torch.tensor([0, 1]), drop=torch.tensor([True, False]))
    assert torch.equal(drop[0], null[0]) and not torch.equal(drop[1], null[1])
    mask = torch.tensor([[True, True, False]])
    assert m.null_text(mask).shape == (1, 12, 3) and m.null_text(mask)[..., 2].abs().sum() == 0
    r = _model(speaker_input="reference")
    m.normalizer.fit(torch.randn(4, 12, 20))
    r.normalizer.fit(torch.randn(4, 12, 20))
    e = r.speaker_embedding({"mel": torch.randn(2, 12, 30), "lengths": torch.tensor([30, 10])})
    assert e.shape == (2, 8) and r.speaker.embedding is None
    with pytest.raises(ValueError, match="speaker_input must be one of"):
        _model(speaker_input="name")
