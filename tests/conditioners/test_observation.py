"""Observation conditioner: state + cameras + instruction tokens, masks, drop, errors."""

import pytest
import torch

from conditioners import ObservationConditioner, TrainableTextConditioner


def _obs(b=3):
    g = torch.Generator().manual_seed(0)
    return {"state": torch.randn(b, 7, generator=g),
            "images": {"wrist": torch.rand(b, 3, 32, 32, generator=g),
                       "top": torch.rand(b, 3, 32, 32, generator=g)},
            "instruction": ["pick up the cube", "open the drawer", ""][:b]}


def test_tokens_layout_and_drop():
    torch.manual_seed(0)
    text = TrainableTextConditioner(16, layers=1, heads=2)
    oc = ObservationConditioner(24, state_dim=7, cameras=["wrist", "top"], text=text)
    c = oc(_obs())
    n_text = text(_obs()["instruction"]).tokens.shape[1]
    assert c.tokens.shape == (3, 3 + n_text, 24) and c.pooled.shape == (3, 24)
    assert c.mask[:, :3].all() and c.mask[2, 3:].sum() == 1  # "" = BOS only
    d = oc(_obs(), drop=torch.tensor([False, False, True]))
    assert torch.equal(d.tokens[2, 0], oc.null_tokens[0]) and not d.mask[2, 1:].any()
    assert torch.equal(d.tokens[:2], c.tokens[:2])
    d.pooled.sum().backward()
    assert oc.image_encoders["top"].out.weight.grad is not None
    assert text.embed.weight.grad is not None


def test_state_normalisation_and_stacked_images():
    oc = ObservationConditioner(8, state_dim=2, cameras=["a", "b"])
    images = torch.rand(1, 2, 3, 16, 16)  # (B, N_cam, C, H, W) in cameras order
    zero_state = oc({"state": torch.zeros(1, 2), "images": images})
    obs = {"state": torch.tensor([[3.0, 5.0]]), "images": images}
    raw = oc(obs)
    oc.set_state_stats(torch.tensor([3.0, 5.0]), torch.tensor([2.0, 2.0]))
    normed = oc(obs)  # (s - mean) / std = 0
    torch.testing.assert_close(normed.tokens[:, 0], zero_state.tokens[:, 0])
    assert not torch.allclose(raw.tokens[:, 0], normed.tokens[:, 0])
    torch.testing.assert_close(normed.tokens[:, 1:], raw.tokens[:, 1:])  # cameras unchanged
    sep = oc({"state": obs["state"], "images": {"a": images[:, 0], "b": images[:, 1]}})
    torch.testing.assert_close(sep.tokens, normed.tokens)


def test_errors():
    with pytest.raises(ValueError, match="at least one"):
        ObservationConditioner(8)
    oc = ObservationConditioner(8, state_dim=3, cameras=["wrist"])
    with pytest.raises(KeyError, match="missing camera"):
        oc({"state": torch.zeros(1, 3), "images": {"top": torch.zeros(1, 3, 8, 8)}})
    with pytest.raises(ValueError, match=r"state must be \(B, 3\)"):
        oc({"state": torch.zeros(1, 4), "images": {"wrist": torch.zeros(1, 3, 8, 8)}})
