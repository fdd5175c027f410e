"""A small CNN classifier whose penultimate layer is the feature space of the local image
metrics (:mod:`modalities.image.metrics`).

Inception-v3 features (FID; Heusel et al. 2017) are meaningless for 8x8 digits or 32x32
synthetic shapes and need downloaded weights, so the toolkit trains its own feature network
once per dataset, on a real training split, and caches it. Distances in that space are
*local* to the dataset and the network: they rank models on the same data and feature net,
but are not comparable with published FID numbers (hence the name "FD-local").

:class:`FeatureNet` reads ``(B, C, H, W)`` images in ``[-1, 1]`` of any size ``H, W >= 8``
(max-pooling while the side is >= 8, then adaptive average pooling to 4x4) and returns class
logits and a ``feature_dim``-d penultimate (post-ReLU) feature vector, the analogue of
Inception's pool3 features. :func:`train_feature_net` fits it with AdamW + one-cycle on
``(images, labels)``, with light Gaussian-noise augmentation so that slightly noisy generated
samples are read like clean ones, and reports accuracy on a held-out fraction of the data.
:func:`cached_feature_net` trains once and caches the weights (safetensors) and a JSON record
(configuration, held-out accuracy) under ``$TOOLKIT_CACHE/features/<key>/``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn import functional as F

from toolkit.files import atomic_write, cache_root
from toolkit.train.steps import supervised_step

__all__ = ["FeatureNet", "FeatureTrainConfig", "as_images", "cache_key", "cached_feature_net",
           "default_cache_dir", "embed", "extract_features", "predict", "train_feature_net"]

_VERSION = 1
ImageDataset = tuple[Any, Any] | torch.utils.data.Dataset


@dataclass(frozen=True)
class FeatureTrainConfig:
    """Architecture and training settings of a feature network (all enter the cache key).

    Attributes:
        width: channels of the first conv block (later blocks use ``2 * width``).
        feature_dim: size of the penultimate feature vector.
        steps: optimiser steps; batch_size: images per step; lr: peak AdamW learning rate
            (one-cycle schedule); weight_decay: AdamW weight decay.
        noise_std: each training image gets Gaussian noise of std ``U(0, noise_std)``.
        val_fraction: fraction of the data held out to measure accuracy (not trained on).
        seed: initialisation, split and batching seed.
    """

    width: int = 32
    feature_dim: int = 128
    steps: int = 500
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    noise_std: float = 0.1
    val_fraction: float = 0.1
    seed: int = 0


class FeatureNet(nn.Module):
    """Conv classifier with a penultimate feature layer, for any input size ``>= 8``.

    Trunk: ``conv(C -> w)``, pool, ``conv(w -> 2w)``, pool, ``conv(2w -> 2w)``, pool (each
    conv 3x3 + BatchNorm + ReLU; each pool a 2x2 max-pool applied only while both sides are
    ``>= 8``, so 8x8 inputs are pooled once and 28x28 ones twice), then adaptive average
    pooling to 4x4. Head: ``Linear(32 w -> feature_dim)`` + ReLU (the features), then
    ``Linear(feature_dim -> num_classes)`` (the logits).

    Args:
        in_channels: image channels ``C``.
        num_classes: number of classes.
        width: channels of the first block. feature_dim: feature size.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32,
                 feature_dim: int = 128):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        self.width, self.feature_dim = int(width), int(feature_dim)
        self.num_features = self.feature_dim  # the attribute torchmetrics' FID looks for
        self.blocks = nn.ModuleList([block(in_channels, width), block(width, 2 * width),
                                     block(2 * width, 2 * width)])
        self.project = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, feature_dim),
                                     nn.ReLU(inplace=True))
        self.classify = nn.Linear(feature_dim, num_classes)
        self.to(memory_format=torch.channels_last)  # ~2x faster convolutions on CPU (oneDNN)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits (B, num_classes), features (B, feature_dim))`` of images ``(B, C, H, W)``
        in ``[-1, 1]``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels or min(x.shape[-2:]) < 8:
            raise ValueError(f"expected images (B, {self.in_channels}, H, W) with H, W >= 8, "
                             f"got {tuple(x.shape)}")
        h = x.contiguous(memory_format=torch.channels_last)
        for blk in self.blocks:
            h = blk(h)
            if min(h.shape[-2:]) >= 8:
                h = F.max_pool2d(h, 2)
        h = F.adaptive_avg_pool2d(h, 4)  # (B, 2w, 4, 4)
        feats = self.project(h)  # (B, feature_dim)
        return self.classify(feats), feats


def as_images(images: Tensor | np.ndarray, channels: int | None = None) -> Tensor:
    """Float ``(N, C, H, W)`` images in ``[-1, 1]`` from uint8 (``v / 127.5 - 1``, as
    :func:`modalities.image.data.to_tensor`) or float input already in ``[-1, 1]``.

    Raises:
        ValueError: wrong rank or channel count, or float values beyond ``[-1.5, 1.5]``
            (images in ``[0, 255]`` stored as floats).
    """
    x = images if isinstance(images, Tensor) else torch.from_numpy(np.asarray(images))
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        c = "C" if channels is None else channels
        raise ValueError(f"expected images (N, {c}, H, W), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1.0
    if not torch.is_floating_point(x):
        raise TypeError(f"images must be uint8 or float, got {x.dtype}")
    if x.numel() and x.abs().max() > 1.5:
        raise ValueError("float images must be in [-1, 1]; got values up to "
                         f"{x.abs().max().item():.3g} (pass uint8 for [0, 255] pixels)")
    return x.float()


def _as_dataset(dataset: ImageDataset) -> tuple[Tensor, Tensor]:
    """``(images (N, C, H, W) in [-1, 1], labels (N,) int64)`` from a pair or a Dataset."""
    if isinstance(dataset, tuple | list) and len(dataset) == 2:
        images, labels = dataset
    else:
        items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
        images = torch.stack([torch.as_tensor(it[0]) for it in items])
        labels = [int(it[1]) for it in items]
    x = as_images(images)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if y.shape != (len(x),) or (y < 0).any():
        raise ValueError(f"labels must be (N,) = ({len(x)},) non-negative ints, got "
                         f"{tuple(y.shape)}")
    return x, y


@torch.no_grad()
def embed(net: FeatureNet, images: Tensor | np.ndarray,
          batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """``(features (N, feature_dim) float64, predicted classes (N,) int64)`` of images
    ``(N, C, H, W)`` (uint8 or ``[-1, 1]`` floats), in eval mode, ``batch_size`` at a time on
    the net's device; results on CPU."""
    x = as_images(torch.as_tensor(images), net.in_channels)
    was = net.training
    net.eval()
    device = next(net.parameters()).device
    outs = [net(xb.to(device)) for xb in x.split(batch_size)]
    net.train(was)
    if not outs:
        return torch.zeros(0, net.feature_dim, dtype=torch.float64), torch.zeros(
            0, dtype=torch.int64)
    logits = torch.cat([o[0] for o in outs]).cpu()
    return torch.cat([o[1] for o in outs]).cpu().double(), logits.argmax(-1)


def extract_features(net: FeatureNet, images: Tensor | np.ndarray,
                     batch_size: int = 500) -> Tensor:
    """Penultimate features ``(N, feature_dim)`` float64 of images ``(N, C, H, W)`` (uint8 or
    ``[-1, 1]`` floats), computed in eval mode without gradients."""
    return embed(net, images, batch_size)[0]


def predict(net: FeatureNet, images: Tensor | np.ndarray, batch_size: int = 500) -> Tensor:
    """Predicted classes ``(N,)`` int64 of images ``(N, C, H, W)``."""
    return embed(net, images, batch_size)[1]


def train_feature_net(dataset: ImageDataset, *, config: FeatureTrainConfig | None = None,
                      info: dict[str, Any] | None = None,
                      log: Callable[[str], None] | None = None, **overrides: Any) -> FeatureNet:
    """Train a :class:`FeatureNet` classifier on labelled real images (CPU-friendly).

    A random ``val_fraction`` of the data is held out (never trained on) to measure accuracy.
    Cross-entropy, AdamW, one-cycle learning rate; each training image gets Gaussian noise of
    std ``U(0, noise_std)``.

    Args:
        dataset: ``(images, labels)`` with images ``(N, C, H, W)`` (uint8, or floats in
            ``[-1, 1]``) and labels ``(N,)`` in ``{0, ..., K - 1}``; or a torch Dataset whose
            items are ``(image (C, H, W), label, ...)``.
        config: settings; ``overrides`` (e.g. ``steps=300, seed=1``) replace its fields.
        info: if a dict, receives ``heldout_accuracy``, ``n_train``, ``n_heldout``,
            ``train_seconds``, ``final_loss``, ``image_shape`` and ``num_classes``.
        log: optional progress callback.

    Returns:
        The network in eval mode, on CPU.
    """
    cfg = _config(config, overrides)
    t0 = time.perf_counter()
    x, y = _as_dataset(dataset)
    num_classes = int(y.max()) + 1
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(x), generator=gen)
    n_val = int(round(cfg.val_fraction * len(x)))
    val, tr = perm[:n_val], perm[n_val:]
    if len(tr) < 2:
        raise ValueError(f"need at least 2 training images, got {len(tr)}")
    torch.manual_seed(cfg.seed)
    net = FeatureNet(x.shape[1], num_classes, cfg.width, cfg.feature_dim)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps,
                                                pct_start=0.15)
    net.train()
    loss = torch.zeros(())
    for step in range(cfg.steps):
        idx = tr[torch.randint(0, len(tr), (cfg.batch_size,), generator=gen)]
        xb = x[idx]
        std = cfg.noise_std * torch.rand(len(idx), 1, 1, 1, generator=gen)
        xb = xb + std * torch.randn(xb.shape, generator=gen)
        loss = F.cross_entropy(net(xb)[0], y[idx])
        supervised_step(loss, opt, sched, step=step, total=cfg.steps, what="feature net",
                        log=log, log_every=100)
    net.eval()
    acc = float((predict(net, x[val]) == y[val]).double().mean()) if n_val else None
    if info is not None:
        info.update(heldout_accuracy=acc, n_train=len(tr), n_heldout=n_val,
                    train_seconds=time.perf_counter() - t0, final_loss=float(loss.detach()),
                    image_shape=list(x.shape[1:]), num_classes=num_classes)
    return net


def _config(config: FeatureTrainConfig | None, overrides: dict[str, Any]) -> FeatureTrainConfig:
    names = {f.name for f in fields(FeatureTrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown feature-net settings {unknown}; valid: {sorted(names)}")
    return FeatureTrainConfig(**(asdict(config or FeatureTrainConfig()) | overrides))


def default_cache_dir() -> Path:
    """``$TOOLKIT_CACHE/features`` if set, else ``~/.cache/toolkit/features``."""
    return cache_root("features")


def cache_key(dataset_key: str, image_shape: Sequence[int], config: FeatureTrainConfig) -> str:
    """Folder name ``<dataset>-<C>x<H>x<W>-seed<seed>-<digest>``; the digest covers the
    dataset key, the image shape, every training setting and the format version."""
    shape = [int(s) for s in image_shape]
    blob = json.dumps({"d": dataset_key, "s": shape, "c": asdict(config), "v": _VERSION},
                      sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset_key).strip("._")[:64] or "data"
    return (f"{slug}-{'x'.join(map(str, shape))}-seed{config.seed}-"
            f"{hashlib.sha256(blob.encode()).hexdigest()[:12]}")


def cached_feature_net(dataset_key: str, build_dataset: Callable[[], ImageDataset],
                       cache_dir: str | Path | None = None, *,
                       image_shape: Sequence[int] | None = None,
                       config: FeatureTrainConfig | None = None,
                       info: dict[str, Any] | None = None,
                       log: Callable[[str], None] | None = None,
                       **train_kw: Any) -> FeatureNet:
    """The feature net for a dataset, trained on first use and loaded from disk afterwards.

    Files ``model.safetensors`` (weights, BatchNorm statistics included) and ``meta.json``
    (dataset key, image shape, number of classes, settings, held-out accuracy) live in
    ``cache_dir/<key>/`` (default :func:`default_cache_dir`), ``key`` from :func:`cache_key`.
    Each file is written atomically (temp file + ``os.replace``), the JSON last: a folder
    without it is incomplete and is retrained.

    Args:
        dataset_key: identity of the training data (name, split, resolution, ...). It must
            change whenever ``build_dataset`` would return different data.
        build_dataset: returns the training data in any form :func:`train_feature_net`
            takes; called only to train, or to learn the image shape if ``image_shape`` is
            not given.
        cache_dir: root of the cache.
        image_shape: ``(C, H, W)`` of the data; with it a cache hit never builds the dataset.
        config / train_kw: training settings (see :class:`FeatureTrainConfig`).
        info: if a dict, receives ``loaded`` (bool), ``key``, ``path`` and the JSON record.
        log: progress callback for training.

    Returns:
        The network in eval mode.
    """
    cfg = _config(config, train_kw)
    data = None
    if image_shape is None:
        data = _as_dataset(build_dataset())
        image_shape = tuple(data[0].shape[1:])
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(dataset_key, image_shape, cfg)
    folder = root / key
    weights, meta_path = folder / "model.safetensors", folder / "meta.json"
    if weights.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        net = FeatureNet(meta["image_shape"][0], meta["num_classes"], cfg.width,
                         cfg.feature_dim)
        net.load_state_dict(load_file(weights))
        if info is not None:
            info.update(meta, loaded=True, key=key, path=str(folder))
        return net.eval()
    data = _as_dataset(build_dataset()) if data is None else data
    if list(data[0].shape[1:]) != [int(s) for s in image_shape]:
        raise ValueError(f"image_shape {tuple(image_shape)} does not match the data's "
                         f"{tuple(data[0].shape[1:])}")
    train_info: dict[str, Any] = {}
    net = train_feature_net(data, config=cfg, info=train_info, log=log)
    meta = {"dataset_key": dataset_key, "image_shape": train_info.pop("image_shape"),
            "num_classes": train_info.pop("num_classes"), "config": asdict(cfg),
            "metrics": train_info, "version": _VERSION}
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    atomic_write(weights, lambda p: save_file(state, p))
    atomic_write(meta_path, lambda p: Path(p).write_text(json.dumps(meta, indent=1)))
    if info is not None:
        info.update(meta, loaded=False, key=key, path=str(folder))
    return net
