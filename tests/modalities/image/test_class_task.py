"""Class2ImgTask: label dropout to the null class, loss, generation, bad input."""

from __future__ import annotations

import pytest
import torch

from modalities.image.class_task import Class2ImgTask, ClassImageModel
from toolkit.nn.unet import UNet
from toolkit.train.tasks import SamplerSpec, StepContext


def _model(task: Class2ImgTask, zero_init: bool = True) -> ClassImageModel:
    net = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), num_heads=2, groups=4,
               pooled_dim=16, zero_init=zero_init)
    return task.wrap_model(net)


def test_dropout_goes_to_the_null_class_and_loss_trains():
    task = Class2ImgTask(image_size=8, channels=1, p_drop=0.5,
                         sampler=SamplerSpec(steps=2, guidance_scale=2.0))
    model = _model(task, zero_init=False)  # gradients reach the embeddings at once
    seen = []
    model.classes.encode = (lambda f: (lambda y: (seen.append(y.clone()), f(y))[1]))(
        model.classes.encode)
    x1 = torch.rand(64, 1, 8, 8) * 2 - 1
    y = torch.arange(64) % 10
    out = task.loss(model, [x1, y], StepContext(0, 0, torch.Generator().manual_seed(0)))
    dropped = seen[0] == 10
    assert torch.equal(seen[0][~dropped], y[~dropped])
    assert abs(float(out["cfg_drop"]) - float(dropped.float().mean())) < 1e-6
    assert 0.3 < float(dropped.float().mean()) < 0.7
    out["loss"].backward()
    assert model.classes.embedding.weight.grad[10].abs().sum() > 0  # the null is learned
    x = task.generate(model, torch.tensor([0, 3, 9]), torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()


def test_bad_input_is_named():
    task = Class2ImgTask(image_size=8, channels=1)
    model = _model(task)
    ctx = StepContext(0, 0, torch.Generator())
    with pytest.raises(ValueError, match=r"labels must be \(B,\) in \[0, 10\)"):
        task.loss(model, [torch.zeros(2, 1, 8, 8), torch.tensor([0, 10])], ctx)
    with pytest.raises(ValueError, match=r"images \(B, 1, H, W\)"):
        task.loss(model, [torch.zeros(2, 3, 8, 8), torch.tensor([0, 1])], ctx)
    with pytest.raises(ValueError, match="pooled_dim"):
        task.wrap_model(UNet(in_channels=1, base_channels=8, channel_mults=(1,), groups=4))
    with pytest.raises(ValueError, match="in_channels=3"):
        task.wrap_model(UNet(in_channels=3, base_channels=8, channel_mults=(1,), groups=4,
                             pooled_dim=16))
