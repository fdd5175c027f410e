"""Shared file helpers: the toolkit's cache root and atomic writes.

Every cache (datasets, caption embeddings, codec latents, metric networks, speech corpora)
lives under :func:`cache_root` and every cache or run file is written by
:func:`atomic_write`: into a temp file in the destination folder, then ``os.replace``, so a
reader never sees a partial file and a failed write leaves the previous file intact.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

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


__all__ = ["UMASK", "atomic_write", "cache_root"]
