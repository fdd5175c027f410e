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


def test_edm_objective_is_preconditioned_f_space_mse():
    """objective=edm: model = EDMPrecond(backbone); the weighted data loss
    lambda(sigma) ||D - x1||^2 equals the network-space MSE ||F - F_target||^2."""
    from toolkit.precond import EDMPrecond

    task = Class2ImgTask(image_size=8, channels=1, objective="edm", path="edm",
                         t_sampler="lognormal_sigma", t_sampler_kwargs={"path": "edm"},
                         sampler=SamplerSpec(solver="edm", steps=3, guidance_scale=1.5))
    assert task.prediction == "data"
    model = _model(task, zero_init=False)
    assert isinstance(model, EDMPrecond) and isinstance(model.net, ClassImageModel)
    x1 = torch.rand(16, 1, 8, 8) * 2 - 1
    y = torch.arange(16) % 10
    gen = torch.Generator().manual_seed(3)
    out = task.loss(model, [x1, y], StepContext(0, 0, gen))
    # replay the same draws: dropout, noise, times
    ctx = StepContext(0, 0, torch.Generator().manual_seed(3))
    drop = ctx.bernoulli(task.p_drop, 16)
    yy = torch.where(drop, torch.full_like(y, 10), y)
    x0 = ctx.randn(x1.shape)
    t = ctx.sample_t(task.t_sampler, 16)
    x_t = task.path.sample_xt(x1, x0, t)
    p = model.parts(x_t, t)
    f = model.net(p["x_in"], p["c_noise"], y=yy)
    want = ((f - model.f_target(x1, x_t, t)) ** 2).mean()
    assert float(out["loss"].detach()) == pytest.approx(float(want.detach()), rel=1e-4)
    x = task.generate(model, 4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="objective must be 'cfm' or 'edm'"):
        Class2ImgTask(objective="ddpm")
