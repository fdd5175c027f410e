"""Prompt-following metric for the shapes dataset: an attribute classifier and its evaluation.

A small CNN reads a ``(3, 32, 32)`` image in ``[-1, 1]`` and predicts, per object *slot*,
colour, shape, size and position (and so the number of objects, 1 or 2). Slots follow the
dataset's canonical order (objects sorted by position index, row-major; see
:mod:`modalities.image.data`), so slot 0 is the object nearer the top left. Internally it
classifies each cell of the 3x3 grid (see :class:`AttributeClassifier`). It is trained on
the generator's ground truth (split ``"all"``: every composition, including those held out
from text-to-image training), with light Gaussian-noise augmentation so that slightly noisy
generated samples are read fairly, and cached to disk as safetensors + json.

:func:`evaluate` scores images against ground-truth attributes, per attribute, separately for
single- and two-object captions; :func:`real_ceiling` does it for real held-out images, the
ceiling against which generated samples for the same captions are compared.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn import functional as F

from modalities.image.data import (
    ATTRIBUTES,
    NUM_CLASSES,
    ShapesConfig,
    default_cache_dir,
    load_split,
    to_tensor,
)
from toolkit.train.steps import supervised_step

_VERSION = 1


@dataclass(frozen=True)
class ClassifierConfig:
    """Classifier architecture and training settings (all enter the cache key).

    Attributes:
        width: channels of the first conv block (later blocks use 2x).
        hidden: hidden width of the per-cell head.
        n_train: training images drawn from split ``"all"``.
        n_val: validation images from split ``"heldout"`` (real unseen compositions).
        steps: optimiser steps; batch_size: images per step; lr: peak Adam learning rate.
        noise_std: max std of the Gaussian noise added to training images.
        seed: initialisation and batching seed.
    """

    width: int = 32
    hidden: int = 64
    n_train: int = 20000
    n_val: int = 1000
    steps: int = 300
    batch_size: int = 128
    lr: float = 3e-3
    noise_std: float = 0.1
    seed: int = 0


_CELL = ("colour", "shape", "size")  # attributes read per grid cell (position = the cell)


class AttributeClassifier(nn.Module):
    """Fully convolutional reader of the 3x3 grid, output in per-slot layout.

    A shared conv trunk (stride 8, receptive field ~ one cell) is pooled (average and max) to
    the 3x3 grid; a head shared by all cells predicts occupancy, colour, shape and size of
    each cell. Weight sharing across cells makes it far more sample-efficient than one head
    per slot. :meth:`predict` takes the most likely occupied cell (plus a second one if its
    occupancy probability exceeds 1/2), orders them by cell index — the dataset's canonical
    slot order — and reports the cell as the object's position.

    Args:
        width: channels of the first conv block (later blocks use 2x).
        hidden: hidden width of the per-cell head.
        image_size: input side (>= 16).
    """

    def __init__(self, width: int = 32, hidden: int = 64, image_size: int = 32):
        super().__init__()
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        w = width

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            block(3, w, 2), block(w, 2 * w, 2), block(2 * w, 2 * w, 1),  # (B, 2w, S/4, S/4)
        )
        self.sizes = {"occupied": 2} | {a: NUM_CLASSES[a] for a in _CELL}
        self.head = nn.Sequential(nn.Linear(4 * w, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, sum(self.sizes.values())))
        self.image_size = image_size

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Per-cell logits, each ``(B, 9, K)`` (cells row-major): ``occupied`` (K = 2),
        ``colour``, ``shape``, ``size``."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.image_size,) * 2:
            raise ValueError(f"expected images (B, 3, {self.image_size}, {self.image_size}), "
                             f"got {tuple(x.shape)}")
        h = self.features(x)  # (B, 2w, S/4, S/4)
        h = torch.cat([F.adaptive_avg_pool2d(h, 3), F.adaptive_max_pool2d(h, 3)], 1)
        h = h.flatten(2).transpose(1, 2)  # (B, 9, 4w)
        return dict(zip(self.sizes, self.head(h).split(list(self.sizes.values()), -1)))

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 500) -> Tensor:
        """Predicted attributes ``(B, 2, 4)`` int64 in the dataset's layout (slot 1 = ``-1``
        when one object is predicted)."""
        was = self.training
        self.eval()
        preds = []
        for xb in images.split(batch_size):
            lg = self(xb.float())
            p_occ = lg["occupied"].softmax(-1)[..., 1]  # (b, 9)
            top = p_occ.topk(2, dim=-1)
            cells = top.indices.sort(-1).values  # (b, 2) in canonical (position) order
            attrs = torch.stack([lg[a].argmax(-1) for a in _CELL], -1)  # (b, 9, 3)
            p = torch.cat([attrs.gather(1, cells[..., None].expand(-1, -1, 3)),
                           cells[..., None]], -1)  # (b, 2, 4)
            single = top.values[:, 1] <= 0.5  # drop the weaker cell, keep the stronger
            p[single, 0] = torch.cat([attrs[single, top.indices[single, 0]],
                                      top.indices[single, 0, None]], -1)
            p[single, 1] = -1
            preds.append(p)
        self.train(was)
        return torch.cat(preds)


def _cell_targets(gt: Tensor) -> Tensor:
    """``(B, 2, 4)`` slot ground truth -> ``(B, 9, 4)`` per-cell targets ``[occupied,
    colour, shape, size]`` with ``-1`` attributes for empty cells."""
    tgt = torch.full((gt.shape[0], 9, 4), -1, dtype=torch.int64)
    tgt[..., 0] = 0
    for k in range(2):
        rows = (gt[:, k, 0] >= 0).nonzero().squeeze(1)
        pos = gt[rows, k, 3]
        tgt[rows, pos, 0] = 1
        tgt[rows, pos, 1:] = gt[rows, k, :3]
    return tgt


def _loss(logits: dict[str, Tensor], gt: Tensor) -> Tensor:
    """Sum of per-cell cross-entropies (attributes only on occupied cells)."""
    tgt = _cell_targets(gt)  # (B, 9, 4)
    loss = F.cross_entropy(logits["occupied"].flatten(0, 1), tgt[..., 0].flatten())
    for j, a in enumerate(_CELL, 1):
        loss = loss + F.cross_entropy(logits[a].flatten(0, 1), tgt[..., j].flatten(),
                                      ignore_index=-1)
    return loss


def train_classifier(config: ClassifierConfig | None = None,
                     data_config: ShapesConfig | None = None,
                     cache_dir: str | Path | None = None,
                     log: Callable[[str], None] | None = None
                     ) -> tuple[AttributeClassifier, dict]:
    """Train a classifier on generated ground truth (no caching of the model itself).

    Returns:
        ``(model in eval mode, metrics)`` where ``metrics`` holds :func:`evaluate` on real
        held-out images and the training time.
    """
    cfg, dcfg = config or ClassifierConfig(), data_config or ShapesConfig()
    t0 = time.perf_counter()
    images, attrs, _ = load_split("all", cfg.n_train, dcfg, cache_dir)
    x_all = to_tensor(images)  # (N, 3, S, S)
    y_all = torch.as_tensor(attrs, dtype=torch.int64)  # (N, 2, 4)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = AttributeClassifier(cfg.width, cfg.hidden, dcfg.image_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps,
                                                pct_start=0.15)
    model.train()
    for step in range(cfg.steps):
        idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=gen)
        xb = x_all[idx]
        std = cfg.noise_std * torch.rand(len(idx), 1, 1, 1, generator=gen)
        xb = xb + std * torch.randn(xb.shape, generator=gen)
        supervised_step(_loss(model(xb), y_all[idx]), opt, sched, step=step, total=cfg.steps,
                        what="attribute classifier", log=log, log_every=200)
    model.eval()
    metrics = real_ceiling(model, cfg.n_val, dcfg, cache_dir)
    metrics["train_seconds"] = time.perf_counter() - t0
    return model, metrics


def _key(cfg: ClassifierConfig, dcfg: ShapesConfig) -> str:
    blob = json.dumps({"c": asdict(cfg), "d": asdict(dcfg), "v": _VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_train_classifier(config: ClassifierConfig | None = None,
                             data_config: ShapesConfig | None = None,
                             cache_dir: str | Path | None = None,
                             log: Callable[[str], None] | None = None) -> AttributeClassifier:
    """The cached classifier for these configs, training and caching it on first use.

    Files: ``classifier-KEY.safetensors`` (weights) and ``classifier-KEY.json`` (configs and
    real-image metrics), written atomically under ``cache_dir`` (default: the shapes cache).
    """
    cfg, dcfg = config or ClassifierConfig(), data_config or ShapesConfig()
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = folder / f"classifier-{_key(cfg, dcfg)}"
    weights, meta = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    model = AttributeClassifier(cfg.width, cfg.hidden, dcfg.image_size)
    if weights.exists() and meta.exists():
        model.load_state_dict(load_file(weights))
        return model.eval()
    from toolkit.files import atomic_write

    model, metrics = train_classifier(cfg, dcfg, cache_dir, log)
    folder.mkdir(parents=True, exist_ok=True)
    for path, write in (
        (weights, lambda p: save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                      p)),
        (meta, lambda p: Path(p).write_text(json.dumps(
            {"config": asdict(cfg), "data_config": asdict(dcfg), "metrics": metrics}, indent=1))),
    ):
        atomic_write(path, write)
    return model


def evaluate(images: Tensor, gt_attributes: Tensor | np.ndarray,
             classifier: AttributeClassifier | None = None,
             cache_dir: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Per-attribute accuracy of images against their captions' ground truth.

    Args:
        images: ``(N, 3, H, W)`` in ``[-1, 1]`` (generated samples or real images).
        gt_attributes: ``(N, 2, 4)`` ground truth (e.g. :func:`~modalities.image.data.
            parse_caption` of each prompt); ``-1`` entries (absent slot, unspecified size) are
            not scored.
        classifier: defaults to :func:`load_or_train_classifier` with default configs.
        cache_dir: where the default classifier is cached.

    Returns:
        ``{"single": {...}, "two": {...}}`` for one- and two-object captions, each with the
        accuracy of ``colour``, ``shape``, ``size``, ``position`` (over objects, slot-wise),
        ``count`` (number of objects), ``all`` (images with everything right) and ``n``
        (images); a group with no images has only ``n = 0``.
    """
    gt = torch.as_tensor(gt_attributes, dtype=torch.int64)
    if gt.ndim != 3 or gt.shape[1:] != (2, 4) or len(gt) != len(images):
        raise ValueError(f"gt_attributes must be (N, 2, 4) with N = {len(images)} images, "
                         f"got {tuple(gt.shape)}")
    if (gt[:, 0, 0] < 0).any():
        raise ValueError("every image needs an object in slot 0 (gt_attributes[:, 0, 0] >= 0)")
    if torch.is_floating_point(images) and images.numel() and (images.abs().max() > 1.5):
        raise ValueError("images must be in [-1, 1]; got values up to "
                         f"{images.abs().max().item():.3g} (uint8 images: use data.to_tensor)")
    model = classifier if classifier is not None else load_or_train_classifier(
        cache_dir=cache_dir)
    pred = model.predict(images)  # (N, 2, 4)
    two = gt[:, 1, 0] >= 0
    out: dict[str, dict[str, float]] = {}
    for name, sel in (("single", ~two), ("two", two)):
        g, p = gt[sel], pred[sel]
        res: dict[str, float] = {"n": int(sel.sum())}
        if res["n"] == 0:
            out[name] = res
            continue
        scored = g >= 0  # (n, 2, 4)
        right = (p == g) | ~scored
        for j, a in enumerate(ATTRIBUTES):
            res[a] = float(right[..., j][scored[..., j]].float().mean())
        count_ok = (p[:, 1, 0] >= 0) == (g[:, 1, 0] >= 0)
        res["count"] = float(count_ok.float().mean())
        res["all"] = float((right.flatten(1).all(1) & count_ok).float().mean())
        out[name] = res
    return out


def real_ceiling(classifier: AttributeClassifier | None = None, n: int | None = None,
                 data_config: ShapesConfig | None = None,
                 cache_dir: str | Path | None = None) -> dict[str, dict[str, float]]:
    """:func:`evaluate` on real held-out images (unseen compositions): the accuracy a perfect
    generator would score on the same captions."""
    images, attrs, _ = load_split("heldout", n, data_config, cache_dir)
    return evaluate(to_tensor(images), attrs, classifier, cache_dir)


__all__ = ["AttributeClassifier", "ClassifierConfig", "evaluate", "load_or_train_classifier",
           "real_ceiling", "train_classifier"]
