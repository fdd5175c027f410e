"""Shared file helpers: the toolkit's cache root, atomic writes and safe weight loading.

Every cache (datasets, caption embeddings, codec latents, metric networks, speech corpora)
lives under :func:`cache_root` and every cache or run file is written by
:func:`atomic_write`: into a temp file in the destination folder, then ``os.replace``, so a
reader never sees a partial file and a failed write leaves the previous file intact.

Weights are read from safetensors only by default: a pickle-based file (``.pt``, ``.bin``,
``.ckpt``, ...) can run arbitrary code when unpickled, so :func:`load_tensors` refuses it
unless the caller passes ``allow_pickle=True`` (and even then uses torch's restricted
``weights_only`` unpickler). :func:`safetensors_only` gives the matching keyword for
transformers / diffusers ``from_pretrained``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".tar")

UMASK = os.umask(0o022)  # read once (os.umask is process-wide): mkstemp/mkdtemp make 0600/0700
os.umask(UMASK)


def cache_root(sub: str = "") -> Path:
    """``$TOOLKIT_CACHE/<sub>`` if the variable is set, else ``~/.cache/toolkit/<sub>``."""
    root = Path(os.environ.get("TOOLKIT_CACHE") or Path.home() / ".cache" / "toolkit")
    return root / sub if sub else root


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp)`` on a temp file next to ``path`` (parents created), give it the
    usual permissions (``mkstemp`` makes 0600), then ``os.replace`` it onto ``path``.

    Returns ``path``. On any error the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def refuse_pickle(path: str | os.PathLike, what: str = "weights file") -> None:
    """Raise ValueError for a pickle-based weights file (by suffix or magic bytes)."""
    p = Path(path)
    magic = b""
    if p.is_file():
        with open(p, "rb") as f:
            magic = f.read(2)
    pickled = p.suffix.lower() in PICKLE_SUFFIXES or magic[:1] == b"\x80" or magic == b"PK"
    if pickled:
        raise ValueError(
            f"{what} {str(p)!r} is a pickle-based file; unpickling can run arbitrary code, so "
            f"it is refused. Convert it to .safetensors (safetensors.torch.save_file), or "
            f"pass allow_pickle=True only if you trust where it came from")


def load_tensors(path: str | os.PathLike, *, allow_pickle: bool = False,
                 map_location: str = "cpu", what: str = "weights file") -> dict[str, Any]:
    """A state dict from ``.safetensors``; a pickle-based file only with ``allow_pickle``
    (then through ``torch.load(weights_only=True)``, which still refuses arbitrary objects).

    Raises:
        FileNotFoundError: no such file. ValueError: a pickle-based file without
            ``allow_pickle``, or a file that is neither safetensors nor a torch checkpoint.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist")
    if p.suffix.lower() == ".safetensors":
        try:
            return load_file(str(p), device=map_location)
        except SafetensorError as e:
            raise ValueError(f"{what} {str(p)!r} is not a valid safetensors file ({e}); it "
                             "may be truncated") from e
    if not allow_pickle:
        refuse_pickle(p, what)
        raise ValueError(f"{what} {str(p)!r} is not a .safetensors file")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - name the file whatever the unpickler says
        raise ValueError(f"{what} {str(p)!r} could not be read as a torch checkpoint with "
                         f"weights_only=True ({type(e).__name__}: {e})") from e


def content_digest(obj: Any) -> str:
    """SHA-256 (hex) of nested dicts (keys sorted) / lists / tuples of tensors, numpy arrays,
    strings and numbers: stored inside a cache file, it catches corruption the container
    format does not (``torch.save`` files carry no checksum of the tensor bytes).
    """
    import hashlib

    import numpy as np
    import torch

    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=str):
                feed(str(k))
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, list | tuple):
            h.update(b"[")
            for v in x:
                feed(v)
            h.update(b"]")
        elif isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(x.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(x, np.ndarray):
            h.update(f"A{x.dtype.str}{x.shape}".encode())
            h.update(np.ascontiguousarray(x).tobytes())
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    feed(obj)
    return h.hexdigest()


def safetensors_only(allow_pickle: bool = False) -> dict[str, bool]:
    """``{"use_safetensors": True}`` unless ``allow_pickle``: for ``from_pretrained``."""
    return {} if allow_pickle else {"use_safetensors": True}


__all__ = ["UMASK", "atomic_write", "cache_root", "content_digest", "load_tensors",
           "refuse_pickle", "safetensors_only", "PICKLE_SUFFIXES"]
