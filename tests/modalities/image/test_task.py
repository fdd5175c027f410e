"""Text2ImgTask: CFG dropout, the learned null, the loss and generation on a tiny DiT."""

from __future__ import annotations

import pytest
import torch

from conditioners.base import Condition
from modalities.image.task import Text2ImgTask, TextImageModel, imagefolder_dataset
from toolkit.nn.dit import DiT
from toolkit.train.tasks import SamplerSpec, StepContext


@pytest.fixture(scope="module")
def task_and_model():
    task = Text2ImgTask(val_prompts=2, sampler=SamplerSpec(steps=2, guidance_scale=2.0))
    net = DiT(image_size=16, patch_size=4, hidden_dim=32, depth=1, num_heads=2,
              pooled_dim=384, token_dim=384)
    task.image_size = 16
    return task, task.wrap_model(net)


def test_cfg_dropout_drops_about_p(task_and_model):
    task, model = task_and_model
    caps = ["a red circle at the top left", "a small blue square at the center"]
    ctx = StepContext(0, 0, torch.Generator().manual_seed(0))
    dropped, total = 0, 0
    null = model.null(1)
    for _ in range(20):
        drop = ctx.bernoulli(task.p_drop, 200)
        cond = task.condition(model, [caps[i % 2] for i in range(200)], drop)
        # a row is null iff its pooled vector equals the learned null pooled vector
        is_null = (cond.pooled == null.pooled).all(1)
        assert torch.equal(is_null, drop)
        dropped, total = dropped + int(is_null.sum()), total + 200
    assert abs(dropped / total - 0.1) < 0.02


def test_null_is_learned_and_gets_gradients(task_and_model):
    task, model = task_and_model
    assert isinstance(model, TextImageModel)
    names = {n for n, _ in model.named_parameters()}
    assert {"null_pooled", "null_tokens"} <= names
    x1 = torch.rand(4, 3, 16, 16) * 2 - 1
    batch = [x1, ["a red circle at the top"] * 4]
    ctx = StepContext(0, 0, torch.Generator().manual_seed(1))
    task.p_drop = 1.0
    try:
        out = task.loss(model, batch, ctx)
    finally:
        task.p_drop = 0.1
    assert out["cfg_drop"] == 1.0 and out["loss"].ndim == 0
    # zero-init DiT: loss at init is E||x1 - x0||^2 ~ var(x1) + 1
    assert 1.0 < float(out["loss"].detach()) < 1.8
    model.zero_grad()
    out["loss"].backward()
    grads = [p.grad for p in model.net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_encoder_is_not_in_the_model(task_and_model):
    task, model = task_and_model
    n_text = sum(p.numel() for p in task.text.backend.parameters()) \
        if hasattr(task.text.backend, "parameters") else 0
    keys = list(model.state_dict())
    assert all(k.startswith(("net.", "null_", "cond_norm.")) for k in keys)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000 or n_text == 0


def test_generate_shapes_and_guidance(task_and_model):
    task, model = task_and_model
    x = task.generate(model, 3, torch.Generator().manual_seed(0),
                      ["a red circle at the top left"])
    assert x.shape == (3, 3, 16, 16) and x.abs().max() <= 1.0
    cond = task.encode(["a red circle"])
    assert isinstance(cond, Condition) and cond.tokens.shape[-1] == 384


def test_bad_inputs_are_named(task_and_model):
    task, model = task_and_model
    ctx = StepContext(0, 0, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"images \(B, 3, H, W\)"):
        task.loss(model, [torch.zeros(2, 16, 16), ["a", "b"]], ctx)
    with pytest.raises(ValueError, match="token_dim"):
        task.wrap_model(DiT(image_size=16, patch_size=4, hidden_dim=32, depth=1, num_heads=2,
                            pooled_dim=384, token_dim=128))
    with pytest.raises(ValueError, match="data.root"):
        imagefolder_dataset(None)
    with pytest.raises(ValueError, match="p_drop"):
        Text2ImgTask(p_drop=1.5)


def test_coord_channels_feed_position(task_and_model):
    task, _ = task_and_model
    task.coord_channels = True
    try:
        with pytest.raises(ValueError, match="model.in_channels=5"):
            task.wrap_model(DiT(image_size=16, patch_size=4, hidden_dim=32, depth=1,
                                num_heads=2, pooled_dim=384, token_dim=384))
        seen = {}
        net = DiT(in_channels=5, out_channels=3, image_size=16, patch_size=4, hidden_dim=32,
                  depth=1, num_heads=2, pooled_dim=384, token_dim=384)
        net.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
        model = task.wrap_model(net)
        out = model(torch.zeros(2, 3, 16, 16), torch.rand(2))
    finally:
        task.coord_channels = False
    assert out.shape == (2, 3, 16, 16)
    x = seen["x"]  # (2, 5, 16, 16): channel 3 = x coordinate, 4 = y coordinate
    assert x.shape == (2, 5, 16, 16)
    assert torch.allclose(x[0, 3, 0], torch.linspace(-1, 1, 16))
    assert torch.allclose(x[0, 4, :, 0], torch.linspace(-1, 1, 16))


def test_setup_fits_condition_norm_once(tmp_path):
    from modalities.image.data import ShapesDataset

    task = Text2ImgTask(val_prompts=2, text_cache_dir=str(tmp_path / "text"))
    net = DiT(image_size=16, patch_size=4, hidden_dim=32, depth=1, num_heads=2,
              pooled_dim=384, token_dim=384)
    model = task.wrap_model(net)
    data = ShapesDataset(split="train", n=64, cache_dir=tmp_path / "shapes")
    assert not bool(model.cond_norm.fitted)
    task.setup(data, tmp_path, model=model)
    assert bool(model.cond_norm.fitted)
    c = model.cond_norm(task.encode(data.captions))
    valid = c.tokens[c.mask]  # (M, 384): standardised on these very captions
    assert valid.mean(0).abs().max() < 0.05 and (valid.std(0) - 1).abs().median() < 0.05
    # the offset shared by every caption is removed: a change of position words is no
    # longer a tiny perturbation of a large constant vector
    caps = ["a large red circle at the top left", "a large red circle at the bottom right"]
    a, b = task.encode(caps).pooled
    za, zb = model.cond_norm(task.encode(caps)).pooled
    assert (za - zb).norm() / za.norm() > 1.4 * (a - b).norm() / a.norm()
    # a second setup (e.g. on resume) keeps the fitted statistics
    mean = model.cond_norm.token_mean.clone()
    task.setup(ShapesDataset(split="heldout", n=32, cache_dir=tmp_path / "shapes"), tmp_path,
               model=model)
    assert torch.equal(model.cond_norm.token_mean, mean)
