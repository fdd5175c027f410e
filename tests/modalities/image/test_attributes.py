"""Attribute classifier: learns the generator's ground truth, is at chance on noise, caches."""

import json

import pytest
import torch

from modalities.image import attributes
from modalities.image.attributes import (
    AttributeClassifier,
    ClassifierConfig,
    evaluate,
    load_or_train_classifier,
    real_ceiling,
)
from modalities.image.data import NUM_CLASSES, ShapesConfig, generate, to_tensor

# reduced setting (~20 s on one core); the default (20k images, 300 steps) reaches > 99.5 %
QUICK = ClassifierConfig(n_train=3000, n_val=400, steps=150, batch_size=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = tmp_path_factory.mktemp("shapes")
    model = load_or_train_classifier(QUICK, cache_dir=cache)
    return model, cache


def test_high_accuracy_on_real_heldout_images(trained):
    model, cache = trained
    res = real_ceiling(model, 400, cache_dir=cache)  # unseen (colour, shape) compositions
    assert res["single"]["n"] > 100 and res["two"]["n"] > 100
    for a in ("colour", "shape", "size", "position", "count"):
        assert res["single"][a] >= 0.95, (a, res)
        assert res["two"][a] >= 0.85, (a, res)
    meta = json.loads(next(cache.glob("classifier-*.json")).read_text())
    assert meta["config"]["steps"] == QUICK.steps and meta["metrics"]["single"]["colour"] >= 0.95


def test_near_chance_on_noise_images(trained):
    model, cache = trained
    _, gt, _ = generate("all", 400, ShapesConfig(seed=9))
    noise = torch.randn(400, 3, 32, 32, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    res = evaluate(noise, gt, model)
    for group in ("single", "two"):
        for a in ("colour", "shape", "size", "position"):
            chance = 1.0 / NUM_CLASSES[a]
            assert res[group][a] < chance + 0.12, (group, a, res)
        assert res[group]["all"] < 0.05


def test_mismatched_captions_score_low(trained):
    model, cache = trained
    imgs, gt, _ = generate("all", 200, ShapesConfig(seed=21))
    wrong = torch.as_tensor(gt).clone()
    wrong[:, 0, 0] = (wrong[:, 0, 0] + 1) % NUM_CLASSES["colour"]  # every slot-0 colour wrong
    res = evaluate(to_tensor(imgs), wrong, model)
    assert res["single"]["colour"] < 0.05 and res["single"]["shape"] >= 0.95


def test_cached_classifier_is_reused(trained, monkeypatch):
    model, cache = trained

    def boom(*args, **kwargs):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(attributes, "train_classifier", boom)
    again = load_or_train_classifier(QUICK, cache_dir=cache)
    x = to_tensor(generate("heldout", 32)[0])
    assert torch.equal(again.predict(x), model.predict(x))
    assert not list(cache.glob("*.tmp"))


def test_predict_layout_and_bad_inputs(trained):
    model, _ = trained
    imgs, gt, _ = generate("all", 50, ShapesConfig(seed=2))
    pred = model.predict(to_tensor(imgs))
    assert pred.shape == (50, 2, 4) and pred.dtype == torch.int64
    assert (pred[:, 0] >= 0).all()
    two = pred[:, 1, 0] >= 0
    assert (pred[two, 0, 3] < pred[two, 1, 3]).all()  # canonical slot order
    with pytest.raises(ValueError, match=r"\(N, 2, 4\)"):
        evaluate(to_tensor(imgs), gt[:, :1], model)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        evaluate(torch.as_tensor(imgs).permute(0, 3, 1, 2).float(), gt, model)
    with pytest.raises(ValueError, match="expected images"):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="image_size"):
        AttributeClassifier(image_size=8)
