"""Caches of frozen text-encoder outputs, keyed by the caption string.

Captions in a dataset repeat a lot, and a frozen encoder maps a caption to the same
embedding every time, so each unique caption is encoded once. Two layers:

- an in-memory LRU of bounded size for captions seen at run time;
- a persistent store filled from (and saved to) one safetensors file per unique caption set
  (:meth:`EmbeddingCache.save` / :meth:`EmbeddingCache.load`), checked against the encoder
  fingerprint so a cache made with other weights or settings is never used.

Entries hold only valid tokens ``(n, D)`` and the pooled vector ``(Dp,)``, on the CPU, in
``storage_dtype`` (float16 by default: half the memory and disk of float32; a 20k-caption
MiniLM set is ~140 MB instead of ~280 MB). Every embedding goes through the same rounding
whether it was just encoded or read back from disk, so runs that hit or miss the cache see
bit-identical conditions (resume stays exact).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["EmbeddingCache", "caption_set_key"]

_FORMAT = "toolkit-text-cache-v1"


def caption_set_key(captions: Iterable[str], fingerprint: str) -> str:
    """A short hash of the encoder fingerprint and the sorted set of unique captions."""
    h = hashlib.sha256(fingerprint.encode())
    for c in sorted(set(captions)):
        h.update(b"\x00" + c.encode())
    return h.hexdigest()[:20]


class EmbeddingCache:
    """LRU + persistent store of ``caption -> (tokens (n, D), pooled (Dp,))``.

    Args:
        max_items: LRU capacity (0 disables the LRU; the persistent store is unbounded).
        storage_dtype: dtype entries are kept and saved in (float16, bfloat16 or float32).

    Attributes: ``hits`` and ``misses`` count lookups.
    """

    def __init__(self, max_items: int = 4096, storage_dtype: torch.dtype = torch.float16) -> None:
        if max_items < 0:
            raise ValueError(f"cache size must be >= 0, got {max_items}")
        if storage_dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"storage_dtype must be float16, bfloat16 or float32, got "
                             f"{storage_dtype}")
        self.max_items = int(max_items)
        self.storage_dtype = storage_dtype
        self._lru: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()
        self._store: dict[str, tuple[Tensor, Tensor]] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store) + len(self._lru)

    def __contains__(self, caption: str) -> bool:
        return caption in self._store or caption in self._lru

    def get(self, caption: str) -> tuple[Tensor, Tensor] | None:
        """Cached ``(tokens, pooled)`` or None; counts a hit or a miss."""
        if caption in self._store:
            self.hits += 1
            return self._store[caption]
        if caption in self._lru:
            self._lru.move_to_end(caption)
            self.hits += 1
            return self._lru[caption]
        self.misses += 1
        return None

    def put(self, caption: str, tokens: Tensor, pooled: Tensor, persistent: bool = False
            ) -> tuple[Tensor, Tensor]:
        """Store one caption's valid tokens ``(n, D)`` and pooled vector ``(Dp,)``.

        Returns the stored entry (on the CPU, in ``storage_dtype``) even when the LRU is off,
        so callers use exactly what a later cache hit would return.
        """
        sd = self.storage_dtype
        entry = (tokens.detach().to("cpu", sd), pooled.detach().to("cpu", sd))
        if persistent:
            self._store[caption] = entry
            self._lru.pop(caption, None)
        elif caption not in self._store and self.max_items > 0:
            self._lru[caption] = entry
            self._lru.move_to_end(caption)
            while len(self._lru) > self.max_items:
                self._lru.popitem(last=False)
        return entry

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        self._lru.clear()
        self._store.clear()
        self.hits = self.misses = 0

    def save(self, path: str | Path, captions: Iterable[str], fingerprint: str) -> Path:
        """Write the entries of ``captions`` (all must be cached) to one safetensors file.

        The write is atomic (temporary file + rename).
        """
        from safetensors.torch import save_file

        caps = sorted(set(captions))
        entries = []
        for c in caps:
            e = self._store.get(c) or self._lru.get(c)
            if e is None:
                raise KeyError(f"EmbeddingCache.save: caption {c!r} is not cached")
            entries.append(e)
        if not entries:
            raise ValueError("EmbeddingCache.save: no captions to save")
        tensors = {
            "tokens": torch.cat([e[0] for e in entries], 0).contiguous(),  # (sum n, D)
            "lengths": torch.tensor([e[0].shape[0] for e in entries], dtype=torch.long),
            "pooled": torch.stack([e[1] for e in entries], 0).contiguous(),  # (N, Dp)
        }
        meta = {"format": _FORMAT, "fingerprint": fingerprint, "captions": json.dumps(caps)}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path

    def load(self, path: str | Path, fingerprint: str) -> int:
        """Fill the persistent store from a file written by :meth:`save`; returns the count.

        Raises:
            ValueError: the file was made by another encoder/settings or is not a cache file.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"text embedding cache {str(path)!r} does not exist")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != _FORMAT:
                raise ValueError(f"{str(path)!r} is not a text embedding cache ({_FORMAT})")
            if meta.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"text embedding cache {str(path)!r} was made with encoder "
                    f"{meta.get('fingerprint')!r}, not {fingerprint!r}; delete it to rebuild")
            tokens, lengths, pooled = (f.get_tensor(k) for k in ("tokens", "lengths", "pooled"))
        caps = json.loads(meta["captions"])
        if len(caps) != lengths.shape[0] or int(lengths.sum()) != tokens.shape[0]:
            raise ValueError(f"text embedding cache {str(path)!r} is corrupt (sizes differ)")
        sd = self.storage_dtype
        tokens, pooled = tokens.to(sd), pooled.to(sd)
        for c, tok, p in zip(caps, torch.split(tokens, lengths.tolist(), 0), pooled, strict=True):
            self._store[c] = (tok, p)
        return len(caps)
