"""Hostile image items (issue 9, category 1): truncated / corrupted image files in an image
folder, odd modes and sizes, broken caption files, and truncated or lying MNIST IDX files.

Every case must end in a clear error naming the file (``ValueError`` / ``FileNotFoundError``),
a warning naming the file while the image is skipped, or an image of the promised shape
``(3, S, S)`` in ``[-1, 1]`` (see :mod:`tests.modalities.hostile`).
"""

from __future__ import annotations

import gzip
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from modalities.image.data import ShapesConfig, load_split
from modalities.image.folder import IMAGE_EXTENSIONS, ImageFolderDataset, load_image
from modalities.image.idx import read_idx, write_idx
from modalities.image.mnist import load_mnist_idx
from tests.modalities.hostile import outcome, report

#: distinct hostile case kinds of this file (the issue's table counts them)
HOSTILE_CASES: dict[str, str] = {
    "truncated_png": "a valid PNG cut at a random byte",
    "truncated_jpeg": "a valid JPEG cut at a random byte",
    "zero_byte": "an empty file with an image suffix",
    "random_bytes": "random bytes with a random image suffix",
    "magic_then_garbage": "a PNG / JPEG / GIF / BMP signature followed by random bytes",
    "flipped_bytes": "a valid PNG or JPEG with random bytes overwritten",
    "odd_modes_sizes": "1-bit, L, LA, P, RGBA, CMYK, I;16, I, F images of 1 .. 300 px sides",
    "lying_header_size": "a PNG whose IHDR claims a huge size",
    "bad_caption_file": "metadata.jsonl / captions.csv: bad JSON, bad UTF-8, wrong types",
    "idx_truncated": "an IDX file (plain or gzip) cut at a random byte",
    "idx_random_header": "random magic / dtype / ndim / sizes, incl. sizes that overflow",
    "idx_wrong_mnist_shape": "MNIST IDX pair with empty images, wrong dims, count mismatch",
    "shapes_cache_corrupt": "the shapes .npz cache truncated, garbage, or with wrong arrays",
}
N_HOSTILE_CASES = len(HOSTILE_CASES)
EXAMPLES = 25  # hypothesis examples per test (fixed budget: the file runs in seconds)

SIZE = 8
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _print_tally():
    yield
    print(f"\n{report('image.')}")


def _encoded(fmt: str, size: tuple[int, int] = (24, 20), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


PNG, JPEG = _encoded("PNG"), _encoded("JPEG")


def _check_image(out: np.ndarray) -> None:
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8


def _load_one(data: bytes, suffix: str, case: str) -> None:
    """``load_image`` and the folder dataset (skip and error modes) on one hostile file."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        path = root / f"bad{suffix}"
        path.write_bytes(data)
        kind, out = outcome(lambda: load_image(path, SIZE), str(path), case=case)
        if kind != "error":  # accepted, or decoded with a PIL warning naming the file
            _check_image(out)
        Image.new("RGB", (10, 12), (1, 2, 3)).save(root / "good.png")
        (root / "metadata.jsonl").write_text(
            json.dumps({"file_name": path.name, "text": "bad"}) + "\n"
            + json.dumps({"file_name": "good.png", "text": "good"}) + "\n")
        kind_ds, ds = outcome(lambda: ImageFolderDataset(root, SIZE), str(path))
        assert kind_ds != "error"  # skip mode never refuses a folder with a good image
        if kind == "error":
            assert kind_ds == "warned" and ds.files == ["good.png"]
        else:
            assert len(ds) == 2
            x, _, _ = ds[0]
            assert x.shape == (3, SIZE, SIZE) and bool(torch.isfinite(x).all())
        strict = outcome(lambda: ImageFolderDataset(root, SIZE, on_bad_image="error"),
                         str(path))[0]
        assert strict == kind


@SETTINGS
@given(fmt=st.sampled_from(["png", "jpeg"]), frac=st.floats(0.0, 0.999))
def test_truncated_png_and_jpeg(fmt, frac):
    data = PNG if fmt == "png" else JPEG
    _load_one(data[: int(len(data) * frac)], "." + ("jpg" if fmt == "jpeg" else "png"),
              f"image.truncated_{fmt}")


@SETTINGS
@given(data=st.binary(max_size=400), suffix=st.sampled_from(IMAGE_EXTENSIONS))
def test_zero_byte_and_random_bytes_with_image_suffix(data, suffix):
    _load_one(data, suffix, "image.zero_byte" if not data else "image.random_bytes")


MAGICS = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff\xe0", ".gif": b"GIF89a",
          ".bmp": b"BM", ".tif": b"II*\x00", ".webp": b"RIFF\x10\x00\x00\x00WEBPVP8 "}


@SETTINGS
@given(suffix=st.sampled_from(sorted(MAGICS)), tail=st.binary(min_size=0, max_size=300))
def test_image_signature_followed_by_garbage(suffix, tail):
    _load_one(MAGICS[suffix] + tail, suffix, "image.magic_then_garbage")


@SETTINGS
@given(fmt=st.sampled_from(["png", "jpeg"]), data=st.data())
def test_valid_image_with_overwritten_bytes(fmt, data):
    raw = bytearray(PNG if fmt == "png" else JPEG)
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _load_one(bytes(raw), ".png" if fmt == "png" else ".jpg", "image.flipped_bytes")


@SETTINGS
@given(mode=st.sampled_from(["1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "RGB"]),
       w=st.integers(1, 300), h=st.integers(1, 300), fmt=st.sampled_from(["png", "tiff"]))
def test_any_mode_and_size_gives_the_promised_shape(mode, w, h, fmt):
    if fmt == "png" and mode in ("CMYK", "F", "I"):
        fmt = "tiff"  # PNG cannot hold these modes
    rng = np.random.default_rng(w * 1000 + h)
    im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt.upper())
    _load_one(buf.getvalue(), f".{fmt}", "image.odd_modes_sizes")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"x.{fmt}"
        p.write_bytes(buf.getvalue())
        out = load_image(p, SIZE)
        _check_image(out)


@SETTINGS
@given(w=st.integers(1, 2**31 - 1), h=st.integers(1, 2**31 - 1))
def test_png_header_claiming_a_huge_size(w, h):
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = (struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
             + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
    idat = zlib.compress(b"\x00" * 64)
    chunk += (struct.pack(">I", len(idat)) + b"IDAT" + idat
              + struct.pack(">I", zlib.crc32(b"IDAT" + idat)))
    _load_one(MAGICS[".png"] + chunk, ".png", "image.lying_header_size")


CAPTION_LINES = st.one_of(
    st.text(max_size=40), st.binary(max_size=40),
    st.sampled_from(['{"file_name": 3, "text": "x"}', '{"file_name": "a.png", "text": null}',
                     '[1, 2]', '"just a string"', '{"file_name": "", "text": "x"}',
                     '{"file_name": "a.png"}', '{"text": "x"}', "{oops", "\udcff"]))


@SETTINGS
@given(kind=st.sampled_from(["metadata.jsonl", "captions.csv"]),
       lines=st.lists(CAPTION_LINES, min_size=1, max_size=4))
def test_malformed_caption_files(kind, lines):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        Image.new("RGB", (10, 12)).save(root / "a.png")
        head = b"file_name,text\n" if kind == "captions.csv" else b""
        body = b"\n".join(x if isinstance(x, bytes)
                          else x.encode("utf-8", "surrogateescape") for x in lines)
        (root / kind).write_bytes(head + body)
        res, ds = outcome(lambda: ImageFolderDataset(root, SIZE), kind, "a.png",
                          case="image.bad_caption_file")
        if res != "error":
            assert ds.files == ["a.png"]


# ---------------------------------------------------------------- IDX / MNIST
with tempfile.TemporaryDirectory() as _d:
    IDX = write_idx(Path(_d) / "x-idx3-ubyte",
                    np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)).read_bytes()


@SETTINGS
@given(frac=st.floats(0.0, 0.999), zipped=st.booleans())
def test_truncated_idx_file(frac, zipped):
    cut = IDX[: int(len(IDX) * frac)]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t-idx3-ubyte"
        p.write_bytes(gzip.compress(cut) if zipped else cut)
        assert outcome(lambda: read_idx(p), str(p), case="image.idx_truncated")[0] == "error"
        if zipped:  # the gzip stream itself cut short
            z = gzip.compress(IDX)
            p.write_bytes(z[: max(2, int(len(z) * frac))])
            assert outcome(lambda: read_idx(p), str(p), case="image.idx_truncated")[0] == "error"


@SETTINGS
@given(code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x07, 0xFF]),
       dims=st.lists(st.one_of(st.integers(0, 4), st.integers(2**31, 2**32 - 1)), max_size=6),
       ndim_lie=st.integers(-2, 2), payload=st.binary(max_size=64))
def test_idx_header_with_random_sizes(code, dims, ndim_lie, payload):
    ndim = max(0, min(255, len(dims) + ndim_lie))
    raw = bytes([0, 0, code, ndim]) + np.asarray(dims, dtype=">u4").tobytes() + payload
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "r.idx"
        p.write_bytes(raw)
        kind, arr = outcome(lambda: read_idx(p), str(p), case="image.idx_random_header")
        if kind == "accepted":  # consistent header and payload
            assert arr.size * arr.itemsize == len(payload) and arr.ndim == ndim


@SETTINGS
@example(n_img=0, n_lab=0, h=28, img_ndim=3, label_max=9, dtype="uint8")  # header: 0 items
@example(n_img=2, n_lab=2, h=0, img_ndim=3, label_max=9, dtype="uint8")  # 0 x 0 images
@example(n_img=3, n_lab=2, h=2, img_ndim=3, label_max=9, dtype="uint8")  # count mismatch
@given(n_img=st.integers(0, 3), n_lab=st.integers(0, 3), h=st.integers(0, 3),
       img_ndim=st.sampled_from([2, 3, 4]), label_max=st.sampled_from([9, 10, 255]),
       dtype=st.sampled_from(["uint8", "int32", "float32"]))
def test_mnist_idx_pair_with_wrong_shapes(n_img, n_lab, h, img_ndim, label_max, dtype):
    shape = {2: (n_img, h), 3: (n_img, h, h), 4: (n_img, h, h, 1)}[img_ndim]
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        images = write_idx(root / "t10k-images-idx3-ubyte", np.ones(shape, dtype))
        labels = write_idx(root / "t10k-labels-idx1-ubyte",
                           np.full(n_lab, label_max, np.uint8))
        kind, out = outcome(lambda: load_mnist_idx(root), str(images), str(labels),
                            case="image.idx_wrong_mnist_shape")
        if kind == "accepted":
            x, y = out
            assert x.ndim == 3 and len(x) == len(y) > 0 and min(x.shape[1:]) > 0
            assert x.dtype == np.uint8 and int(y.max()) <= 9


# ---------------------------------------------------------------- shapes cache
CFG = ShapesConfig(image_size=16, supersample=1)


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shapes")
    load_split("train", 3, CFG, folder)
    return next(folder.glob("*.npz"))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(how=st.sampled_from(["truncate", "garbage", "wrong_arrays", "bad_values", "bit_flip"]),
       frac=st.floats(0.0, 0.999), junk=st.binary(max_size=200))
def test_corrupt_shapes_cache_is_regenerated(shapes_cache, how, frac, junk):
    good = shapes_cache.read_bytes()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / shapes_cache.name
        if how == "truncate":
            path.write_bytes(good[: int(len(good) * frac)])
        elif how == "garbage":
            path.write_bytes(junk)
        elif how == "bit_flip":  # zip CRCs catch a changed byte inside the arrays
            raw = bytearray(good)
            raw[int(len(raw) * frac)] ^= 0x10
            path.write_bytes(bytes(raw))
        else:
            with np.load(shapes_cache) as z:
                arrays = dict(z)
            if how == "wrong_arrays":
                arrays["images"] = arrays["images"][:, :5]
            else:
                arrays["attributes"] = np.full_like(arrays["attributes"], 99)
            np.savez(path, **arrays)
        kind, (images, attrs, caps) = outcome(lambda: load_split("train", 3, CFG, d),
                                              str(path), case="image.shapes_cache_corrupt")
        assert kind == "warned" or how == "bit_flip"  # unusable cache: named, regenerated
        want = load_split("train", 3, CFG, d)
        assert images.shape == (3, 16, 16, 3) and np.array_equal(images, want[0])
        assert np.array_equal(attrs, want[1]) and caps == want[2]

