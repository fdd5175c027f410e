"""Local image metrics: exact Fréchet distance, k-NN precision/recall, the cached feature
net, and their sanity on sklearn's 8x8 digits (real << blurred << noise, mode collapse)."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

from modalities.image import features as features_mod
from modalities.image.features import (
    FeatureNet,
    as_images,
    cache_key,
    cached_feature_net,
    extract_features,
)
from modalities.image.metrics import (
    class_accuracy,
    format_report,
    frechet_distance,
    frechet_distance_gaussians,
    image_metrics,
    pixel_bits_per_dim,
    precision_recall,
)
from toolkit.likelihood import bits_per_dim

KEY = "sklearn-digits-8x8-perm0-train1000"
STEPS = 300  # ~5 s on one core; held-out accuracy ~ 0.98


def _digits():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # (1797, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:1000]], y[perm[:1000]], x[perm[1000:]], y[perm[1000:]]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Train split (1000) -> cached feature net; held-out split (797) for the metrics."""
    xtr, ytr, xte, yte = _digits()
    cache = tmp_path_factory.mktemp("features")
    info: dict = {}
    threads = torch.get_num_threads()  # module fixtures run before the 1-thread autouse one
    torch.set_num_threads(1)
    try:
        net = cached_feature_net(KEY, lambda: (xtr, ytr), cache, image_shape=(1, 8, 8),
                                 steps=STEPS, info=info)
    finally:
        torch.set_num_threads(threads)
    return dict(net=net, cache=cache, info=info, xtr=xtr, ytr=ytr, xte=xte, yte=yte)


def _blur(x: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    k1 = torch.exp(-torch.arange(-1.0, 2.0) ** 2 / (2 * sigma**2))
    k1 = k1 / k1.sum()
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), (k1[:, None] * k1)[None, None])


# ---------------------------------------------------------------- Fréchet distance


def _closed_form(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    for d in (1, 3, 16):
        mu1, mu2, s1, s2 = rng.normal(size=d), rng.normal(size=d), _spd(rng, d), _spd(rng, d)
        assert frechet_distance_gaussians(mu1, s1, mu2, s2) == pytest.approx(
            _closed_form(mu1, s1, mu2, s2), rel=1e-9, abs=1e-10)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2; commuting (diagonal) covariances likewise per axis
    assert frechet_distance_gaussians([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(10.0)
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.0])  # singular S_b included
    want = 1.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance_gaussians(np.zeros(3), np.diag(a), np.eye(3)[0], np.diag(b))
    assert got == pytest.approx(want, rel=1e-12)


def test_frechet_distance_from_large_samples():
    rng = np.random.default_rng(1)
    d, n = 4, 200_000
    mu1, mu2, s1, s2 = rng.normal(size=d), rng.normal(size=d), _spd(rng, d), _spd(rng, d)
    a = rng.multivariate_normal(mu1, s1, size=n)
    b = rng.multivariate_normal(mu2, s2, size=n)
    exact = _closed_form(mu1, s1, mu2, s2)
    assert exact > 0.5
    assert frechet_distance(a, b) == pytest.approx(exact, rel=0.02)
    assert frechet_distance(torch.from_numpy(a).float(), b) == pytest.approx(exact, rel=0.02)


def test_frechet_distance_zero_for_identical_sets():
    rng = np.random.default_rng(2)
    for n, d in ((500, 32), (40, 128)):  # full-rank and singular covariances
        f = np.maximum(rng.normal(size=(n, d)) @ rng.normal(size=(d, d)), 0.0)  # ReLU-like
        scale = np.trace(np.cov(f, rowvar=False))
        assert abs(frechet_distance(f, f.copy())) <= 1e-9 * scale
        assert frechet_distance(f, f + 1.0) == pytest.approx(d, rel=1e-6)  # pure mean shift


def test_frechet_matches_torchmetrics_with_custom_features(digits):
    fid_mod = pytest.importorskip("torchmetrics.image.fid")
    net = digits["net"]

    class Feats(nn.Module):
        num_features = net.feature_dim

        def forward(self, x):
            return net(x)[1]

    try:
        metric = fid_mod.FrechetInceptionDistance(feature=Feats())
    except Exception as e:  # noqa: BLE001 - optional backend
        pytest.skip(f"torchmetrics FID unavailable with a custom feature module: {e}")
    real, fake = digits["xtr"][:400], _blur(digits["xte"][:400], 0.4)
    with torch.no_grad():
        for xb in real.split(100):
            metric.update(xb, real=True)
        for xb in fake.split(100):
            metric.update(xb, real=False)
    ref = float(metric.compute())
    ours = frechet_distance(extract_features(net, real), extract_features(net, fake))
    assert ours > 1.0 and ours == pytest.approx(ref, rel=1e-3)


# ---------------------------------------------------------------- precision / recall


def test_precision_recall_exact_small_example():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # k=1 radii: all 1
    fake = torch.tensor([[0.5], [10.0]])  # radii 9.5: covers every real point
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    assert precision_recall(real, fake, k=1, batch_size=1) == (0.5, 1.0)
    # k = 2 on real: radius of 0 and 3 is 2, of 1 and 2 is 1 -> only 4.9 is inside
    assert precision_recall(real, torch.tensor([[5.5], [4.9], [-2.5]]), k=2)[0] == 1 / 3
    with pytest.raises(ValueError):
        precision_recall(real, fake, k=2)  # only 2 fake points


def test_precision_recall_gaussian_clouds():
    g = torch.Generator().manual_seed(0)
    real, real2 = torch.randn(2, 1000, 8, generator=g)
    p, r = precision_recall(real, real2, k=3, batch_size=128)
    assert p > 0.85 and r > 0.85
    narrow = 0.3 * torch.randn(1000, 8, generator=g)  # inside the real support, no coverage
    p, r = precision_recall(real, narrow)
    assert p > 0.95 and r < 0.3
    far = real2 + 10.0
    assert precision_recall(real, far) == (0.0, 0.0)


# ---------------------------------------------------------------- feature net


def test_feature_net_shapes_and_input_checks():
    net = FeatureNet(3, 5, width=8, feature_dim=16).eval()
    for hw in ((8, 8), (13, 29), (28, 28), (64, 48)):
        logits, f = net(torch.zeros(2, 3, *hw))
        assert logits.shape == (2, 5) and f.shape == (2, 16) and (f >= 0).all()
    with pytest.raises(ValueError):
        net(torch.zeros(2, 3, 7, 16))
    with pytest.raises(ValueError):
        net(torch.zeros(2, 1, 8, 8))
    assert torch.equal(as_images(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)),
                       torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError):
        as_images(torch.full((1, 1, 8, 8), 200.0))  # [0, 255] floats


def test_feature_net_accuracy_and_cache_record(digits):
    info = digits["info"]
    assert not info["loaded"] and info["metrics"]["heldout_accuracy"] > 0.95
    acc = class_accuracy(digits["net"], digits["xte"], digits["yte"])
    assert acc > 0.9, acc
    meta = json.loads((digits["cache"] / info["key"] / "meta.json").read_text())
    assert meta["image_shape"] == [1, 8, 8] and meta["config"]["steps"] == STEPS
    assert meta["metrics"]["heldout_accuracy"] == info["metrics"]["heldout_accuracy"]
    assert "digits" in info["key"] and "1x8x8" in info["key"] and "seed0" in info["key"]
    assert not list((digits["cache"] / info["key"]).glob("*.tmp"))


def test_cache_round_trip_loads_without_training(digits, monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("cached_feature_net retrained")

    def no_data():
        raise AssertionError("dataset built although image_shape was given")

    monkeypatch.setattr(features_mod, "train_feature_net", no_training)
    info: dict = {}
    net2 = cached_feature_net(KEY, no_data, digits["cache"], image_shape=(1, 8, 8),
                              steps=STEPS, info=info)
    assert info["loaded"] and info["key"] == digits["info"]["key"]
    x = digits["xte"][:64]
    assert torch.equal(extract_features(net2, x), extract_features(digits["net"], x))
    # without image_shape the data is built (to learn the shape) but nothing is trained
    net3 = cached_feature_net(KEY, lambda: (digits["xtr"], digits["ytr"]), digits["cache"],
                              steps=STEPS)
    assert torch.equal(extract_features(net3, x), extract_features(digits["net"], x))
    # the key separates seeds, shapes, datasets and settings
    cfg = features_mod.FeatureTrainConfig(steps=STEPS)
    keys = {cache_key(KEY, (1, 8, 8), cfg), cache_key(KEY, (1, 8, 8), cfg.__class__(seed=1)),
            cache_key(KEY, (1, 16, 16), cfg), cache_key("other", (1, 8, 8), cfg)}
    assert len(keys) == 4
    with pytest.raises(TypeError):
        cached_feature_net(KEY, no_data, digits["cache"], image_shape=(1, 8, 8), stepz=3)


# ---------------------------------------------------------------- metrics on digits


def test_fd_orders_real_blurred_noise(digits):
    net, real = digits["net"], digits["xtr"][:400]
    fa = extract_features(net, real)
    noise = torch.rand(400, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    fd = {name: frechet_distance(fa, extract_features(net, x)) for name, x in
          (("real", digits["xte"][:400]), ("blur", _blur(digits["xte"][:400])),
           ("noise", noise))}
    assert 5 * fd["real"] < fd["blur"] and 2 * fd["blur"] < fd["noise"], fd


def test_image_metrics_real_reference_and_mode_collapse(digits):
    net, xtr, xte, yte = digits["net"], digits["xtr"], digits["xte"], digits["yte"]
    good = image_metrics(net, xtr, xte, yte, real_reference=xte, reference_labels=yte, n=300)
    assert good["n"] == 300 and good["k"] == 3
    assert good["precision_real"] > 0.8 and good["recall_real"] > 0.8, good
    assert good["precision"] > 0.8 and good["recall"] > 0.8, good
    assert good["class_accuracy"] > 0.9 and good["class_accuracy_real"] > 0.9
    assert good["fd_local"] < 3 * good["fd_local_real"] + 1.0
    copies = xte[:30].repeat(10, 1, 1, 1)  # 30 distinct real digits, 300 samples
    one_class = xte[yte == 2].repeat(6, 1, 1, 1)[:300]
    for fake in (copies, one_class):
        m = image_metrics(net, xtr, fake, real_reference=xte, n=300)
        assert m["precision"] > 0.75 and m["recall"] < 0.2, m
        assert m["fd_local"] > 10 * m["fd_local_real"], m
        assert (m["fd_local_real"], m["recall_real"]) == (good["fd_local_real"],
                                                          good["recall_real"])
    # no reference: real_images split into disjoint halves, n capped by the halves
    solo = image_metrics(net, xte, copies)
    assert solo["n"] == 300 and {"fd_local_real", "precision_real", "recall_real"} <= set(solo)
    text = format_report(good)
    assert "FD-local" in text and "not FID" in text and "class accuracy" in text
    assert f"{good['fd_local_real']:.4f}" in text
    # repeated independent draws: means and spreads
    rep = image_metrics(net, xtr, xte, yte, real_reference=xte, n=200, repeats=3)
    assert rep["repeats"] == 3 and rep["fd_local_real_std"] > 0 and "recall_std" in rep
    assert "+-" in format_report(rep) and "mean of 3 draws" in format_report(rep)
    with pytest.raises(ValueError):
        image_metrics(net, xtr, xte, real_reference=xte, n=798)  # more than the sets hold
    with pytest.raises(ValueError):
        image_metrics(net, xtr, xte, yte[:5], real_reference=xte)  # label count


# ---------------------------------------------------------------- bits per dim


def test_pixel_bits_per_dim_matches_uint8_path():
    def zero_velocity(x, t):  # linear path with v = 0: p_1 = N(0, I) exactly
        return 0.0 * x

    v = torch.randint(0, 256, (3, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    x = v.to(torch.uint8)
    kw = dict(path="linear", prediction="velocity", method="euler", steps=2)
    want = bits_per_dim(zero_velocity, x, generator=torch.Generator().manual_seed(1), **kw)
    got = pixel_bits_per_dim(zero_velocity, x.float() / 127.5 - 1.0,
                             generator=torch.Generator().manual_seed(1), **kw)
    assert torch.allclose(got, want, rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        pixel_bits_per_dim(zero_velocity, x.float() / 127.5 - 1.0 + 0.002, **kw)
