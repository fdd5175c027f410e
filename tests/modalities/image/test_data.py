"""Shapes generator: determinism, caption/ground-truth agreement, held-out split, caching."""

import numpy as np
import pytest
import torch

from modalities.image import data
from modalities.image.data import (
    COLOURS,
    POSITIONS,
    SHAPES,
    ShapesConfig,
    ShapesDataset,
    caption,
    generate,
    heldout_pairs,
    heldout_prompts,
    load_split,
    parse_caption,
)


def test_same_seed_identical_bytes_different_seed_differs():
    a, attrs_a, caps_a = generate("train", 64, ShapesConfig(seed=3))
    b, attrs_b, caps_b = generate("train", 64, ShapesConfig(seed=3))
    c, _, _ = generate("train", 64, ShapesConfig(seed=4))
    assert a.tobytes() == b.tobytes() and caps_a == caps_b
    assert np.array_equal(attrs_a, attrs_b)
    assert a.tobytes() != c.tobytes()
    # image i depends only on (seed, split, i): a shorter run is a prefix
    d, _, _ = generate("train", 16, ShapesConfig(seed=3))
    assert d.tobytes() == a[:16].tobytes()


def test_images_are_antialiased_rgb_with_objects():
    imgs, attrs, _ = generate("all", 200)
    assert imgs.shape == (200, 32, 32, 3) and imgs.dtype == np.uint8
    assert (imgs.reshape(200, -1).max(1) > 150).all()  # every image has a bright object
    levels = np.unique(imgs[..., 0])
    assert len(levels) > 20  # edge pixels take intermediate values (supersampled)
    n_obj = (attrs[:, :, 0] >= 0).sum(1)
    assert set(n_obj.tolist()) == {1, 2} and 0.35 < (n_obj == 2).mean() < 0.65


def test_captions_parse_back_to_ground_truth():
    _, attrs, caps = generate("all", 300)
    for a, c in zip(attrs, caps):
        assert np.array_equal(parse_caption(c), a), c
        assert caption(a) == c
    two = attrs[:, 1, 0] >= 0
    assert (attrs[two, 0, 3] < attrs[two, 1, 3]).all()  # canonical slot order by position
    assert {c.split(" at the ")[0].split()[-1] for c in caps} == set(SHAPES)


def test_parse_caption_grammar_and_errors():
    gt = parse_caption("a red circle at the top left and a small blue square at the bottom")
    assert gt.tolist() == [[list(COLOURS).index("red"), 0, -1, 0],
                           [list(COLOURS).index("blue"), 1, 0, POSITIONS.index("bottom")]]
    swapped = parse_caption("a small blue square at the bottom and a red circle at the top left")
    assert np.array_equal(swapped, gt)  # slot order is canonical, not textual
    with pytest.raises(ValueError, match="pink"):
        parse_caption("a pink circle at the top")
    with pytest.raises(ValueError, match="same position"):
        parse_caption("a red circle at the top and a blue cross at the top")
    with pytest.raises(ValueError, match="at most 2"):
        parse_caption(" and ".join(["a red circle at the top"] * 3))


def test_heldout_pairs_never_in_train_and_always_in_heldout():
    cfg = ShapesConfig()
    held = heldout_pairs(cfg)
    assert len(held) == len(SHAPES) and len({c for c, _ in held}) == len(SHAPES)
    idx = {(list(COLOURS).index(c), SHAPES.index(s)) for c, s in held}
    _, tr, _ = generate("train", 1500, cfg)
    _, ho, caps = generate("heldout", 300, cfg)

    def pairs(attrs):
        return [{(int(c), int(s)) for c, s, _, _ in a if c >= 0} for a in attrs]

    assert all(not (p & idx) for p in pairs(tr))
    assert all(p & idx for p in pairs(ho))
    # every colour and every shape still occurs in training
    assert {c for p in pairs(tr) for c, _ in p} == set(range(len(COLOURS)))
    assert {s for p in pairs(tr) for _, s in p} == set(range(len(SHAPES)))
    assert any(f"{c} {s}" in caps[i] for i in range(len(caps)) for c, s in held)
    assert heldout_pairs(ShapesConfig(holdout_seed=1)) != held
    assert heldout_pairs(ShapesConfig(holdout_per_shape=0)) == []


def test_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    cfg = ShapesConfig(seed=11)
    imgs, attrs, caps = load_split("train", 50, cfg, tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npz")

    def boom(*args, **kwargs):
        raise AssertionError("generate called although cached")

    monkeypatch.setattr(data, "generate", boom)
    imgs2, attrs2, caps2 = load_split("train", 50, cfg, tmp_path)
    assert imgs2.tobytes() == imgs.tobytes() and np.array_equal(attrs2, attrs) and caps2 == caps
    with pytest.raises(AssertionError, match="cached"):  # another config is another key
        load_split("train", 50, ShapesConfig(seed=12), tmp_path)
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_cache_is_regenerated_with_warning(tmp_path):
    load_split("heldout", 20, ShapesConfig(), tmp_path)
    (npz,) = tmp_path.glob("*.npz")
    npz.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable shapes cache"):
        imgs, _, _ = load_split("heldout", 20, ShapesConfig(), tmp_path)
    assert imgs.shape == (20, 32, 32, 3)


def test_dataset_items_and_heldout_prompts(tmp_path):
    ds = ShapesDataset("train", n=40, cache_dir=tmp_path)
    x, cap, attrs = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1  # black background
    assert np.array_equal(parse_caption(cap), attrs.numpy())
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert batch[0].shape == (8, 3, 32, 32) and len(batch[1]) == 8 and batch[2].shape == (8, 2, 4)
    caps, gt, real = heldout_prompts(10, cache_dir=tmp_path)
    assert len(caps) == 10 and gt.shape == (10, 2, 4) and real.shape == (10, 3, 32, 32)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown shapes split 'test'"):
        generate("test", 3)
    with pytest.raises(ValueError, match="image_size"):
        ShapesConfig(image_size=8)
    with pytest.raises(ValueError, match="p_two"):
        ShapesConfig(p_two=1.5)
    with pytest.raises(ValueError, match=">= 1"):
        generate("train", 0)
