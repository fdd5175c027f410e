"""CodecTask: the trainer task of vae_train / vq_train (loss, validation, bad input)."""

from __future__ import annotations

import pytest
import torch

from modalities.image.codec import KLVAE
from modalities.image.codec_task import CodecTask
from modalities.image.mnist import DigitsDataset
from modalities.image.vq import VQVAE
from toolkit.nn.mlp import TimeMLP
from toolkit.train.tasks import StepContext

SMALL = dict(image_channels=1, base_channels=8, channel_mults=(1, 2), groups=4)


@pytest.mark.parametrize("codec", [KLVAE(latent_channels=2, **SMALL),
                                   VQVAE(codebook_size=16, codebook_dim=2, **SMALL)])
def test_loss_and_validation(codec, tmp_path):
    data = DigitsDataset(split="train", image_size=8, n=32)
    held = DigitsDataset(split="heldout", image_size=8, n=8)
    task = CodecTask(val_images=4, heldout=held)
    model = task.wrap_model(codec)
    task.setup(data, tmp_path, model=model)
    assert task.val_batch.shape == (4, 1, 8, 8)
    x = torch.stack([data[i][0] for i in range(8)])
    out = task.loss(model, [x, torch.zeros(8)], StepContext(0, 0, torch.Generator()))
    assert out["loss"].requires_grad and all(v.ndim == 0 for v in out.values())
    out["loss"].backward()
    res = task.validate(model.eval(), 5, tmp_path / "samples", torch.Generator())
    assert (tmp_path / "samples" / "step_00000005.png").is_file()
    assert res["val_psnr"] > 0
    if isinstance(codec, VQVAE):
        assert 0 < res["val_usage"] <= 1 and res["val_perplexity"] >= 1


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="adv_weight"):
        CodecTask(adv_weight=0.1)
    with pytest.raises(ValueError, match="trainable Codec"):
        CodecTask().wrap_model(TimeMLP(dim=2, hidden=8, depth=1))
    task = CodecTask()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        task.loss(KLVAE(**SMALL), [torch.zeros(4, 8)], StepContext(0, 0, torch.Generator()))
