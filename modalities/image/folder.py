"""Captioned image folders for fine-tuning on custom data.

A folder of images with captions in ``metadata.jsonl`` (Hugging Face imagefolder convention:
one ``{"file_name": ..., "text": ...}`` per line) or ``captions.csv`` (``file_name,text``).
Images are resized (shorter side, bicubic) and centre-cropped; missing or corrupt images
are reported with their paths and skipped or refused (``on_bad_image``), never silently.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from modalities.image.data import to_tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _listing(paths: list[str], k: int = 10) -> str:
    more = f" ... (+{len(paths) - k} more)" if len(paths) > k else ""
    return ", ".join(paths[:k]) + more


def _read_text(path: Path) -> str:
    """The UTF-8 text of a caption file; bad bytes raise ``ValueError`` naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise ValueError(f"{path} line {line} is not valid UTF-8 ({err.reason} at byte "
                         f"{err.start})") from None


def read_captions(root: str | Path) -> dict[str, str]:
    """``{file_name: caption}`` from ``root/metadata.jsonl`` (Hugging Face imagefolder: lines
    ``{"file_name": ..., "text": ...}``) or else ``root/captions.csv`` (header
    ``file_name,text``). Malformed lines, duplicates or a missing file raise naming them."""
    root = Path(root)
    meta, table = root / "metadata.jsonl", root / "captions.csv"
    rows: list[tuple[str, object, object]] = []  # (where, file_name, text)
    if meta.exists():
        if table.exists():
            warnings.warn(f"{root} has both metadata.jsonl and captions.csv; using "
                          "metadata.jsonl", stacklevel=3)
        for k, line in enumerate(_read_text(meta).splitlines(), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{meta} line {k} is not valid JSON: {err}") from None
                if not isinstance(rec, dict):
                    raise ValueError(f"{meta} line {k} is not a JSON object: {line!r}")
                rows.append((f"{meta} line {k}", rec.get("file_name"), rec.get("text")))
    elif table.exists():
        reader = csv.DictReader(io.StringIO(_read_text(table), newline=""))
        try:
            if not {"file_name", "text"} <= set(reader.fieldnames or []):
                raise ValueError(f"{table} must have a header with columns file_name,text; "
                                 f"found {reader.fieldnames}")
            rows = [(f"{table} line {reader.line_num}", r["file_name"], r["text"])
                    for r in reader]
        except csv.Error as err:
            raise ValueError(f"{table} line {reader.line_num} is not valid CSV: {err}") from None
    else:
        raise FileNotFoundError(f"no caption file in {root}: expected metadata.jsonl (lines "
                                '{"file_name": ..., "text": ...}) or captions.csv '
                                "(columns file_name,text)")
    out: dict[str, str] = {}
    for where, name, text in rows:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: missing or empty 'file_name'")
        if not isinstance(text, str):
            raise ValueError(f"{where}: missing or non-string 'text' for {name!r}")
        key = Path(name.strip()).as_posix().removeprefix("./")
        if key in out:
            raise ValueError(f"{where}: duplicate caption for {key!r}")
        out[key] = text
    return out


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded (truncated, corrupt, not an image).

    Attributes:
        path: the file. reason: what went wrong (the decoder's error, one line).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = Path(path), " ".join(str(reason).split())
        super().__init__(f"cannot read image {self.path}: {self.reason}")


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Decode an image file to uint8 ``(size, size, 3)``: RGB (alpha composited over white),
    shorter side resized to ``size`` (bicubic, antialiased), then centre-cropped.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UnreadableImageError: (a ``ValueError``) the file is truncated, corrupt or not an
            image; the message names the file and the decoder's error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.stat().st_size == 0:
        raise UnreadableImageError(path, "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings(record=True) as caught, Image.open(path) as im:
            warnings.simplefilter("always")
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = Image.alpha_composite(Image.new("RGBA", im.size, "white"),
                                           im.convert("RGBA"))
            im = im.convert("RGB")
        w, h = im.size
        if min(w, h) < 1:
            raise ValueError(f"image has size {w} x {h}")
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (nw - size) // 2, (nh - size) // 2
        out = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except Image.UnidentifiedImageError:
        raise UnreadableImageError(path, "not an image format PIL recognises (empty, "
                                   "random bytes or an unsupported format)") from None
    except Exception as err:  # PIL raises a zoo of types on corrupt data (OSError, SyntaxError,
        # struct.error, EOFError, IndexError, zlib.error, DecompressionBombError, ...)
        raise UnreadableImageError(path, f"{type(err).__name__}: {err}") from err
    for w in caught:  # PIL's warnings (corrupt EXIF, decompression bomb) do not name the file
        warnings.warn(f"{path}: {w.message}", w.category, stacklevel=2)
    if out.shape != (size, size, 3):
        raise UnreadableImageError(path, f"decoded to shape {out.shape}, expected "
                                   f"{(size, size, 3)}")
    return out


class ImageFolderDataset(Dataset):
    """Captioned images from a folder, for fine-tuning: items ``(image, caption, attributes)``
    like :class:`ShapesDataset` (``attributes`` is all ``-1``: unknown).

    Every captioned file must exist and every image file (any of :data:`IMAGE_EXTENSIONS`,
    searched recursively) must have a caption, else ``ValueError`` names the files. All images
    are decoded once at construction; unreadable ones are skipped with one warning naming them
    (``on_bad_image="skip"``) or refused with an error (``"error"``).

    Args:
        root: folder with the images and ``metadata.jsonl`` or ``captions.csv``.
        image_size: output side; resize shorter side + centre crop.
        on_bad_image: ``"skip"`` or ``"error"``.
        preload: keep the decoded uint8 images in memory (``N * size^2 * 3`` bytes); with
            ``False`` images are decoded again on access.
    """

    def __init__(self, root: str | Path, image_size: int = 32, on_bad_image: str = "skip",
                 preload: bool = True):
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.root, self.image_size = Path(root), int(image_size)
        if not self.root.is_dir():
            raise FileNotFoundError(f"imagefolder root {self.root} is not a directory")
        caps = read_captions(self.root)
        on_disk = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                         if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not caps and not on_disk:
            raise ValueError(f"empty dataset: no images and no captions in {self.root}")
        missing = sorted(set(caps) - set(on_disk))
        if missing:
            raise ValueError(f"caption file in {self.root} lists {len(missing)} file(s) that "
                             f"do not exist: {_listing(missing)}")
        uncaptioned = sorted(set(on_disk) - set(caps))
        if uncaptioned:
            raise ValueError(f"{len(uncaptioned)} image(s) in {self.root} have no caption in "
                             f"the caption file: {_listing(uncaptioned)}")
        self.files: list[str] = []
        self.captions: list[str] = []
        kept: list[np.ndarray] = []
        bad: list[str] = []
        for name in sorted(caps):
            try:
                img = load_image(self.root / name, self.image_size)
            except UnreadableImageError as err:
                bad.append(f"{err.path} ({err.reason})")
                continue
            self.files.append(name)
            self.captions.append(caps[name])
            if preload:
                kept.append(img)
        if bad and on_bad_image == "error":
            raise ValueError(f"{len(bad)} unreadable image(s) in {self.root}: {_listing(bad)}")
        if bad:
            warnings.warn(f"skipped {len(bad)} unreadable image(s) in {self.root}: "
                          f"{_listing(bad)}", stacklevel=2)
        if not self.files:
            raise ValueError(f"empty dataset: none of the {len(caps)} images in {self.root} "
                             "could be read")
        self.skipped = bad
        self.images = np.stack(kept) if preload else None  # (N, S, S, 3) uint8

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, str, Tensor]:
        img = (self.images[i] if self.images is not None
               else load_image(self.root / self.files[i], self.image_size))
        return to_tensor(img), self.captions[i], torch.full((2, 4), -1, dtype=torch.int64)


__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "UnreadableImageError", "load_image",
           "read_captions"]
