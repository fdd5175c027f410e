"""Reader and writer for the IDX array format (the file format of MNIST and Fashion-MNIST).

Layout (LeCun, Cortes & Burges, "THE MNIST DATABASE of handwritten digits",
http://yann.lecun.com/exdb/mnist/, section "FILE FORMATS FOR THE MNIST DATABASE"):

* a 4-byte magic number: two zero bytes, one dtype code byte (:data:`IDX_DTYPES`: ``0x08``
  uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64)
  and one byte with the number of dimensions ``ndim``;
* ``ndim`` big-endian uint32 sizes;
* the data, big-endian, in C (row-major) order.

Files are transparently gunzipped when they start with the gzip magic ``1f 8b`` (whatever their
name); :func:`write_idx` gzips when the path ends in ``.gz``. Every error names the file.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES: dict[tuple[str, int], int] = {(dt.kind, dt.itemsize): code
                                      for code, dt in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"IDX file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"IDX path {path} is not a file")
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:  # truncated or corrupt gzip stream
        raise ValueError(f"IDX file {path} is a corrupt or truncated gzip file: {err}") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a native-endian numpy array.

    Args:
        path: the ``.idx*-ubyte`` file, plain or gzip-compressed.

    Returns:
        Array of the file's shape and dtype (uint8, int8, int16, int32, float32 or float64,
        native byte order), e.g. uint8 ``(N, 28, 28)`` for MNIST images, ``(N,)`` for labels.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: bad magic number (not IDX), unknown dtype code, truncated header, or a data
            size that does not match the header (expected vs got bytes); the message names the
            file.
    """
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise ValueError(f"IDX file {path} is too short ({len(buf)} bytes) to hold the 4-byte "
                         "magic number")
    if buf[0] != 0 or buf[1] != 0:
        raise ValueError(f"IDX file {path} has a bad magic number {buf[:4].hex(' ')}: an IDX file "
                         "starts with two zero bytes, a dtype code and the number of dimensions")
    code, ndim = buf[2], buf[3]
    if code not in IDX_DTYPES:
        valid = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"IDX file {path} has a bad magic number {buf[:4].hex(' ')}: unknown "
                         f"dtype code 0x{code:02X} (valid: {valid})")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(f"IDX file {path} is truncated: its header declares {ndim} dimensions "
                         f"({header} header bytes) but the file has {len(buf)} bytes")
    shape = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow for huge sizes
    got = len(buf) - header
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise ValueError(f"IDX file {path} is {what}: shape {shape} of {dtype.name} needs "
                         f"{expected} data bytes, got {got} bytes")
    try:
        data = np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape)
    except ValueError as err:  # e.g. (0, 2**31, 2**31): no data, but too big for numpy
        raise ValueError(f"IDX file {path} declares shape {shape}, which numpy cannot "
                         f"represent ({err})") from None
    return data.astype(dtype.newbyteorder("="))  # native order; also a writable copy


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``).

    Args:
        path: output file; parent folders are created.
        array: numpy array of dtype uint8, int8, int16, int32, float32 or float64 with
            1 to 255 dimensions (each < 2**32).

    Returns:
        The path written.

    Raises:
        ValueError: unsupported dtype or shape.
    """
    path = Path(path)
    arr = np.asarray(array)
    code = _CODES.get((arr.dtype.kind, arr.dtype.itemsize))
    if code is None:
        raise ValueError(f"cannot write {path}: IDX has no dtype for {arr.dtype} (supported: "
                         "uint8, int8, int16, int32, float32, float64)")
    if not 1 <= arr.ndim <= 255:
        raise ValueError(f"cannot write {path}: IDX needs 1 to 255 dimensions, got {arr.ndim}")
    if any(d >= 2**32 for d in arr.shape):
        raise ValueError(f"cannot write {path}: dimension sizes must be < 2**32, got {arr.shape}")
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(arr, dtype=IDX_DTYPES[code]).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)  # mtime=0: byte-identical reruns
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


__all__ = ["IDX_DTYPES", "read_idx", "write_idx"]
