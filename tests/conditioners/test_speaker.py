"""Speaker conditioner: id embedding, reference-mel interface, exact drop, errors."""

import pytest
import torch

from conditioners import MelReferenceEncoder, SpeakerConditioner


def test_ids_and_drop():
    sc = SpeakerConditioner(5, 16, tokens=True)
    c = sc(torch.tensor([0, 4, 2]), drop=torch.tensor([False, True, False]))
    assert c.pooled.shape == (3, 16) and c.tokens.shape == (3, 1, 16)
    assert torch.equal(c.pooled[1], sc.null_pooled)
    assert torch.equal(c.tokens[1, 0], sc.null_tokens[0])
    assert torch.equal(c.pooled[[0, 2]], sc.embedding.weight[[0, 2]])
    with pytest.raises(ValueError, match="out of range"):
        sc(torch.tensor([5]))
    with pytest.raises(ValueError, match="no ref_encoder"):
        sc(torch.randn(2, 80, 10))


def test_reference_mel_respects_lengths():
    torch.manual_seed(0)
    sc = SpeakerConditioner(None, 8, ref_encoder=MelReferenceEncoder(n_mels=10, out_dim=12,
                                                                      hidden=16))
    mel = torch.randn(2, 10, 20)
    c = sc({"mel": mel, "lengths": torch.tensor([12, 20])})
    assert c.pooled.shape == (2, 8) and c.tokens is None
    garbage = mel.clone()
    garbage[0, :, 12:] = 100.0  # frames past the length must not matter
    c2 = sc({"mel": garbage, "lengths": torch.tensor([12, 20])})
    # conv receptive field: the last valid frames see zeros (masked input) in both cases
    torch.testing.assert_close(c.pooled, c2.pooled)
    assert not torch.allclose(sc(mel).pooled[0], c.pooled[0])
    with pytest.raises(ValueError, match="speaker ids"):
        sc(torch.tensor([1]))
    with pytest.raises(ValueError, match=r"mel must be \(B, 10, T\)"):
        sc(torch.randn(2, 9, 20))
