"""IDX reader/writer: round trips, gzip, byte layout and error messages naming the file."""

import gzip

import numpy as np
import pytest

from modalities.image.idx import read_idx, write_idx


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (1, 2, 1, 3)])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip(tmp_path, dtype, shape, suffix):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        arr = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        arr = rng.standard_normal(shape).astype(dtype)
    path = write_idx(tmp_path / f"a.idx{suffix}", arr)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == shape
    np.testing.assert_array_equal(out, arr)
    out[...] = 0  # writable copy
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"


def test_byte_layout_matches_spec(tmp_path):
    arr = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int16)
    raw = write_idx(tmp_path / "x", arr).read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0B, 2])
    assert raw[4:12] == bytes([0, 0, 0, 2, 0, 0, 0, 3])
    assert raw[12:] == np.arange(1, 7, dtype=">i2").tobytes()
    assert len(raw) == 12 + 6 * 2


def test_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    plain = write_idx(tmp_path / "plain", arr).read_bytes()
    (tmp_path / "zipped-but-no-suffix").write_bytes(gzip.compress(plain))
    np.testing.assert_array_equal(read_idx(tmp_path / "zipped-but-no-suffix"), arr)


def test_missing_file_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope-idx3-ubyte"):
        read_idx(tmp_path / "nope-idx3-ubyte")


def test_bad_magic_named(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match=r"bad\.idx.*bad magic"):
        read_idx(path)
    path.write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]))  # unknown dtype code
    with pytest.raises(ValueError, match=r"bad\.idx.*0x07"):
        read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match=r"bad\.idx.*too short"):
        read_idx(path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_data_named_with_sizes(tmp_path, suffix):
    arr = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    raw = write_idx(tmp_path / "full", arr).read_bytes()
    cut = raw[:-5]
    path = tmp_path / f"short-idx3-ubyte{suffix}"
    path.write_bytes(gzip.compress(cut) if suffix else cut)
    with pytest.raises(ValueError, match=r"short-idx3-ubyte.*truncated.*96 data bytes, got 91"):
        read_idx(path)


def test_truncated_header_and_extra_bytes(tmp_path):
    raw = write_idx(tmp_path / "full", np.zeros((2, 2), np.uint8)).read_bytes()
    (tmp_path / "hdr").write_bytes(raw[:7])
    with pytest.raises(ValueError, match=r"hdr.*truncated.*2 dimensions"):
        read_idx(tmp_path / "hdr")
    (tmp_path / "long").write_bytes(raw + b"\x00")
    with pytest.raises(ValueError, match=r"long.*4 data bytes, got 5"):
        read_idx(tmp_path / "long")


def test_corrupt_gzip_named(tmp_path):
    z = gzip.compress(write_idx(tmp_path / "full", np.zeros(100, np.uint8)).read_bytes())
    (tmp_path / "broken.gz").write_bytes(z[:-10])
    with pytest.raises(ValueError, match=r"broken\.gz.*gzip"):
        read_idx(tmp_path / "broken.gz")


def test_write_rejects_unsupported(tmp_path):
    with pytest.raises(ValueError, match=r"x\.idx.*uint16"):
        write_idx(tmp_path / "x.idx", np.zeros(3, np.uint16))
    with pytest.raises(ValueError, match="dimensions"):
        write_idx(tmp_path / "x.idx", np.float32(1.0))
