"""Captioned "shapes" images: a seeded, procedurally generated text-to-image dataset.

Each image is ``image_size`` x ``image_size`` RGB on black with one or two coloured shapes in
distinct cells of a 3x3 grid, captioned e.g. ``"a large red circle at the top left and a small
blue square at the bottom right"``. Every object has four attributes (indices into
:data:`COLOURS`, :data:`SHAPES`, :data:`SIZES`, :data:`POSITIONS`); an image's ground truth is
an int array ``(2, 4)`` of ``[colour, shape, size, position]`` per *slot*, slot 1 being ``-1``
for single-object images. **Canonical slot order**: objects sorted by position index
(row-major: top left = 0 ... bottom right = 8); captions list the objects in that order.

Compositional split: :func:`heldout_pairs` picks ``(colour, shape)`` pairs (one per shape by
default, all colours distinct) that never occur in the ``"train"`` split. ``"heldout"`` images
contain at least one held-out pair; ``"all"`` draws every combination (for the classifier).

Shapes are drawn with PIL at ``supersample`` times the resolution and box-filtered down
(anti-aliasing). Splits are generated on first use and cached as one ``.npz`` under
``cache_dir`` (default ``$TOOLKIT_CACHE/shapes`` or ``~/.cache/toolkit/shapes``), keyed by the
generator config, the split and ``n``; files are written atomically (temp file + rename).
Image ``i`` depends only on ``(seed, split, i)``, so a smaller ``n`` is a prefix of a larger.

:class:`~modalities.image.folder.ImageFolderDataset` reads custom captioned images.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import Dataset

from toolkit.files import cache_root

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35), "green": (40, 185, 55), "blue": (45, 85, 235), "yellow": (240, 220, 40),
    "purple": (160, 55, 215), "cyan": (40, 210, 225), "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
    "bottom right",
)
ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "size", "position")
NUM_CLASSES: dict[str, int] = {"colour": len(COLOURS), "shape": len(SHAPES),
                               "size": len(SIZES), "position": len(POSITIONS)}
SPLITS: tuple[str, ...] = ("train", "heldout", "all")
DEFAULT_N: dict[str, int] = {"train": 20000, "heldout": 1000, "all": 20000}
_VERSION = 2  # bump when rendering or sampling changes (invalidates caches)
_COLOUR_NAMES = tuple(COLOURS)


@dataclass(frozen=True)
class ShapesConfig:
    """Generator settings (all of them enter the cache key).

    Attributes:
        image_size: output side in pixels (>= 16).
        supersample: render at this factor then box-downsample (anti-aliasing).
        p_two: probability that an image holds two objects.
        seed: base seed; image ``i`` of split ``s`` uses ``(seed, s, i)``.
        holdout_per_shape: held-out colours per shape (0 disables the split).
        holdout_seed: seed of the held-out pair choice.
    """

    image_size: int = 32
    supersample: int = 4
    p_two: float = 0.5
    seed: int = 0
    holdout_per_shape: int = 1
    holdout_seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"ShapesConfig.image_size must be >= 16, got {self.image_size}")
        if self.supersample < 1:
            raise ValueError(f"ShapesConfig.supersample must be >= 1, got {self.supersample}")
        if not 0.0 <= self.p_two <= 1.0:
            raise ValueError(f"ShapesConfig.p_two must be in [0, 1], got {self.p_two}")
        if not 0 <= self.holdout_per_shape < len(COLOURS):
            raise ValueError(f"ShapesConfig.holdout_per_shape must be in [0, {len(COLOURS) - 1}]"
                             f", got {self.holdout_per_shape}")


def heldout_pairs(config: ShapesConfig | None = None) -> list[tuple[str, str]]:
    """The ``(colour, shape)`` pairs never shown in training, deterministic in the config.

    Shape ``s`` holds out colours ``perm[(s*k + j) % C]`` for ``j < k`` (``k`` =
    ``holdout_per_shape``), so with ``k * len(SHAPES) <= C`` no colour is held out twice and
    every colour and shape still appears in training.
    """
    cfg = config or ShapesConfig()
    k, n_col = cfg.holdout_per_shape, len(COLOURS)
    perm = np.random.default_rng([cfg.holdout_seed, 7]).permutation(n_col)
    return [(_COLOUR_NAMES[perm[(s * k + j) % n_col]], shape)
            for s, shape in enumerate(SHAPES) for j in range(k)]


def caption(attrs: np.ndarray) -> str:
    """Caption of one image's ground truth ``(2, 4)`` (slot order, ``-1`` rows skipped)."""
    parts = [f"a {SIZES[z]} {_COLOUR_NAMES[c]} {SHAPES[s]} at the {POSITIONS[p]}"
             for c, s, z, p in np.asarray(attrs).tolist() if c >= 0]
    if not parts:
        raise ValueError("caption() needs at least one object (row with colour >= 0)")
    return " and ".join(parts)


_OBJ_RE = re.compile(
    rf"^an? (?:({'|'.join(SIZES)}) )?({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
    rf" (?:at|in|on) the ({'|'.join(sorted(POSITIONS, key=len, reverse=True))})$")


def parse_caption(text: str) -> np.ndarray:
    """Ground-truth ``(2, 4)`` int array of a caption in this dataset's grammar.

    Accepts one or two objects joined by ``" and "``, each ``"a [small|large] COLOUR SHAPE at
    the POSITION"``; an omitted size is ``-1`` (unspecified). Objects are put in canonical slot
    order (by position). Raises ``ValueError`` naming the part that does not parse.
    """
    parts = text.strip().lower().rstrip(".").split(" and ")
    if len(parts) > 2:
        raise ValueError(f"caption has {len(parts)} objects, at most 2 supported: {text!r}")
    rows = []
    for part in parts:
        m = _OBJ_RE.match(part.strip())
        if m is None:
            raise ValueError(f"cannot parse {part!r} in caption {text!r}; expected 'a "
                             f"[small|large] <colour> <shape> at the <position>' with colours "
                             f"{list(COLOURS)}, shapes {list(SHAPES)}, positions {list(POSITIONS)}")
        size, col, shape, pos = m.groups()
        rows.append([_COLOUR_NAMES.index(col), SHAPES.index(shape),
                     SIZES.index(size) if size else -1, POSITIONS.index(pos)])
    if len(rows) == 2 and rows[0][3] == rows[1][3]:
        raise ValueError(f"both objects are at the same position in caption {text!r}")
    rows.sort(key=lambda r: r[3])
    rows += [[-1] * 4] * (2 - len(rows))
    return np.asarray(rows, dtype=np.int64)


@functools.lru_cache(maxsize=16)
def _pair_tables(config: ShapesConfig) -> tuple[list, list, list]:
    """``(all pairs, train pairs, held-out pairs)`` as ``(colour, shape)`` index tuples."""
    pairs_all = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
    held = sorted((_COLOUR_NAMES.index(c), SHAPES.index(s)) for c, s in heldout_pairs(config))
    return pairs_all, [p for p in pairs_all if p not in held], held


def sample_scene(rng: np.random.Generator, split: str, config: ShapesConfig) -> np.ndarray:
    """Draw one image's ground truth ``(2, 4)`` for ``split`` (see module docstring)."""
    pairs_all, pairs_train, held = _pair_tables(config)
    allowed = pairs_train if split == "train" else pairs_all
    n_obj = 2 if rng.random() < config.p_two else 1
    if split == "heldout" and held:
        first = held[rng.integers(len(held))]
        chosen = [first] + [allowed[rng.integers(len(allowed))] for _ in range(n_obj - 1)]
    else:
        chosen = [allowed[rng.integers(len(allowed))] for _ in range(n_obj)]
    pos = rng.choice(len(POSITIONS), size=n_obj, replace=False)
    sizes = rng.integers(len(SIZES), size=n_obj)
    rows = sorted([[c, s, int(z), int(p)] for (c, s), z, p in zip(chosen, sizes, pos)],
                  key=lambda r: r[3])
    return np.asarray(rows + [[-1] * 4] * (2 - n_obj), dtype=np.int64)


def render(attrs: np.ndarray, config: ShapesConfig, rng: np.random.Generator) -> np.ndarray:
    """Draw one scene: ``(H, W, 3)`` uint8. ``rng`` jitters centre (±1 px), size (±10 %) and
    colour (±12 per channel)."""
    res, ss = config.image_size, config.supersample
    big = Image.new("RGB", (res * ss, res * ss), (0, 0, 0))
    draw = ImageDraw.Draw(big)
    cell = res / 3.0
    for c, s, z, p in np.asarray(attrs).tolist():
        if c < 0:
            continue
        cx, cy = ((p % 3 + 0.5) * cell + rng.uniform(-1, 1), (p // 3 + 0.5) * cell
                  + rng.uniform(-1, 1))
        r = cell * (0.43 if z == 1 else 0.26) * rng.uniform(0.9, 1.1)  # half extent, pixels
        cx, cy, r = cx * ss, cy * ss, r * ss
        rgb = tuple(min(255, max(0, v + int(d))) for v, d in
                    zip(COLOURS[_COLOUR_NAMES[c]], rng.integers(-12, 13, size=3)))
        name = SHAPES[s]
        if name == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
        elif name == "square":
            h = 0.85 * r
            draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=rgb)
        elif name == "triangle":  # equilateral, pointing up, centroid at the centre
            ang = np.deg2rad([-90.0, 30.0, 150.0])
            rr = 1.1 * r
            draw.polygon([(cx + rr * np.cos(a), cy + 0.1 * r + rr * np.sin(a)) for a in ang],
                         fill=rgb)
        else:  # cross: a plus sign of two bars
            w = 0.36 * r
            draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=rgb)
            draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=rgb)
    small = big.resize((res, res), Image.Resampling.BOX) if ss > 1 else big
    return np.asarray(small, dtype=np.uint8)


def generate(split: str, n: int, config: ShapesConfig | None = None
             ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Generate ``n`` images of ``split`` without caching.

    Returns:
        ``(images (n, H, W, 3) uint8, attributes (n, 2, 4) int64, captions)``.
    """
    cfg = config or ShapesConfig()
    _check_split(split)
    if n < 1:
        raise ValueError(f"number of images must be >= 1, got {n}")
    sid = SPLITS.index(split)
    images = np.empty((n, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    attrs = np.empty((n, 2, 4), dtype=np.int64)
    for i in range(n):
        rng = np.random.default_rng([cfg.seed, sid, i])
        attrs[i] = sample_scene(rng, split, cfg)
        images[i] = render(attrs[i], cfg, rng)
    return images, attrs, [caption(a) for a in attrs]


def default_cache_dir() -> Path:
    """``$TOOLKIT_CACHE/shapes`` if set, else ``~/.cache/toolkit/shapes``."""
    return cache_root("shapes")


def cache_key(split: str, n: int, config: ShapesConfig) -> str:
    """Hex digest identifying a generated split (config, split, n, generator version)."""
    blob = json.dumps({"config": asdict(config), "split": split, "n": n, "v": _VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_cache(path: Path, n: int, cfg: ShapesConfig) -> tuple[np.ndarray, np.ndarray,
                                                                  list[str]]:
    """A cached split, checked: shapes, dtypes, attribute ranges and captions that match the
    attributes (a truncated, corrupt or foreign file raises)."""
    with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
        images, attrs, caps = z["images"], z["attributes"].astype(np.int64), z["captions"]
    s = cfg.image_size
    if images.shape != (n, s, s, 3) or images.dtype != np.uint8:
        raise ValueError(f"images are {images.dtype} {images.shape}, expected uint8 "
                         f"{(n, s, s, 3)}")
    if attrs.shape != (n, 2, 4) or caps.shape != (n,):
        raise ValueError(f"attributes {attrs.shape} / captions {caps.shape} do not fit n={n}")
    high = np.array([NUM_CLASSES[a] for a in ATTRIBUTES])  # (4,)
    whole = (attrs >= 0).all(-1) | (attrs == -1).all(-1)  # (n, 2) rows all set or all -1
    if not ((attrs < high).all() and whole.all() and (attrs[:, 0, 0] >= 0).all()):
        raise ValueError("attribute indices out of range")
    caps = caps.tolist()
    bad = next((i for i in range(n) if caption(attrs[i]) != caps[i]), None)
    if bad is not None:
        raise ValueError(f"caption {bad} does not match its attributes")
    return images, attrs, caps


def load_split(split: str, n: int | None = None, config: ShapesConfig | None = None,
               cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Like :func:`generate` but read from / written to the on-disk cache.

    Args:
        split: ``"train"``, ``"heldout"`` or ``"all"``.
        n: number of images (default :data:`DEFAULT_N` of the split).
        config: generator settings.
        cache_dir: cache folder (default :func:`default_cache_dir`).
    """
    cfg = config or ShapesConfig()
    _check_split(split)
    n = DEFAULT_N[split] if n is None else int(n)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"shapes-{split}-{n}-{cache_key(split, n, cfg)}.npz"
    if path.exists():
        try:
            return _read_cache(path, n, cfg)
        except Exception as err:  # corrupt cache (zip, zlib, npy, shape errors): regenerate
            warnings.warn(f"unreadable shapes cache {path} ({type(err).__name__}: "
                          f"{' '.join(str(err).split())}); regenerating", stacklevel=2)
    images, attrs, caps = generate(split, n, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, images=images, attributes=attrs.astype(np.int8),
                     captions=np.asarray(caps, dtype=np.str_))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    meta = {"config": asdict(cfg), "split": split, "n": n, "version": _VERSION,
            "heldout_pairs": heldout_pairs(cfg)}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return images, attrs, caps


def to_tensor(images: np.ndarray | Tensor) -> Tensor:
    """uint8 ``(..., H, W, 3)`` -> float ``(..., 3, H, W)`` in ``[-1, 1]``."""
    x = images if isinstance(images, Tensor) else torch.from_numpy(np.array(images))
    return x.movedim(-1, -3).float() / 127.5 - 1.0


class ShapesDataset(Dataset):
    """Torch dataset over a cached split: items ``(image, caption, attributes)``.

    ``image``: float ``(3, H, W)`` in ``[-1, 1]``; ``caption``: str; ``attributes``: int64
    ``(2, 4)`` ground truth (``[colour, shape, size, position]`` per slot, ``-1`` = absent).
    The whole split is also exposed as ``images`` (uint8 ``(N, H, W, 3)``), ``attributes``
    and ``captions``.
    """

    def __init__(self, split: str = "train", n: int | None = None,
                 config: ShapesConfig | None = None, cache_dir: str | Path | None = None):
        self.split, self.config = split, config or ShapesConfig()
        self.images, self.attributes, self.captions = load_split(
            split, n, self.config, cache_dir)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> tuple[Tensor, str, Tensor]:
        return (to_tensor(self.images[i]), self.captions[i],
                torch.as_tensor(self.attributes[i], dtype=torch.int64))


def heldout_prompts(n: int | None = None, config: ShapesConfig | None = None,
                    cache_dir: str | Path | None = None) -> tuple[list[str], Tensor, Tensor]:
    """Held-out (unseen-composition) captions with ground truth and the real images.

    Returns:
        ``(captions, attributes (n, 2, 4) int64, real images (n, 3, H, W) in [-1, 1])``; the
        images give the classifier's real-image ceiling on exactly these prompts.
    """
    images, attrs, caps = load_split("heldout", n, config, cache_dir)
    return caps, torch.as_tensor(attrs, dtype=torch.int64), to_tensor(images)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; valid: {list(SPLITS)}")


__all__ = [
    "ATTRIBUTES", "COLOURS", "DEFAULT_N", "NUM_CLASSES", "POSITIONS",
    "SHAPES", "SIZES", "SPLITS", "ShapesConfig", "ShapesDataset", "cache_key", "caption",
    "default_cache_dir", "generate", "heldout_pairs", "heldout_prompts",
    "load_split", "parse_caption", "render", "sample_scene", "to_tensor",
]


def __getattr__(name: str):  # backwards-compatible access to the folder loader
    if name in ("ImageFolderDataset", "read_captions", "load_image", "IMAGE_EXTENSIONS"):
        from modalities.image import folder

        return getattr(folder, name)
    raise AttributeError(name)
