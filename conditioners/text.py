"""Text conditioning: a frozen pretrained encoder with cached embeddings, or a small
trainable encoder for users without weights.

:class:`TextConditioner` returns token states + mask (cross-attention) and a pooled vector
(AdaLN). The frozen encoder is deliberately *not* a registered submodule: it never appears
in ``parameters()`` (optimisers, EMA, DDP) nor in ``state_dict()`` (checkpoints stay small),
it always runs under ``no_grad`` in eval mode, and ``.to(device)`` still moves it.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from conditioners.base import Condition, Conditioner
from conditioners.text_backends import TextBackend, load_text_backend, masked_mean
from conditioners.text_cache import EmbeddingCache, caption_set_key

__all__ = ["TextConditioner", "TrainableTextConditioner", "check_captions"]


def check_captions(values: Any, who: str) -> list[str]:
    """Validate a batch of captions (a list/tuple of str)."""
    if isinstance(values, str):
        raise TypeError(f"{who}: expected a list of captions, got a single str {values[:40]!r}; "
                        "wrap it in a list")
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{who}: expected a list of captions, got {type(values).__name__}")
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise TypeError(f"{who}: caption {i} is {type(v).__name__}, not str")
    return list(values)


def _pack(entries: list[tuple[Tensor, Tensor]], device: torch.device, dtype: torch.dtype
          ) -> Condition:
    """Per-caption ``(tokens (n_i, D), pooled (Dp,))`` -> right-padded Condition."""
    n = max(1, max(e[0].shape[0] for e in entries))
    b, d = len(entries), entries[0][0].shape[1]
    tokens = torch.zeros(b, n, d, dtype=dtype)  # (B, L, D)
    mask = torch.zeros(b, n, dtype=torch.bool)  # (B, L)
    for i, (tok, _) in enumerate(entries):
        tokens[i, : tok.shape[0]] = tok
        mask[i, : tok.shape[0]] = True
    pooled = torch.zeros(b, entries[0][1].shape[0], dtype=dtype)  # (B, Dp)
    for i, (_, pool) in enumerate(entries):  # (no torch.stack: it fails under CPU autocast)
        pooled[i] = pool
    return Condition(pooled.to(device), tokens.to(device), mask.to(device))


class TextConditioner(Conditioner):
    """Frozen pretrained text encoder -> ``Condition(pooled, tokens, mask)``, cached.

    Args:
        path: local folder of a transformers text model (MiniLM when None) or, with
            ``kind="open_clip"``, a checkpoint file. See :func:`load_text_backend`.
        kind: "auto", "minilm", "hf", "clip", "t5" or "open_clip".
        backend: an already built :class:`TextBackend` (then ``path``/``kind`` are unused).
        max_length / normalize / model_name / hidden_layer: passed to
            :func:`load_text_backend` (``hidden_layer``: token states of that layer).
        p_drop: default CFG drop probability.
        null: "learned" (parameters initialised from the encoding of the empty caption),
            "empty" (the fixed encoding of "") or "zero" (one zero token, zero pooled).
        cache_size: in-memory LRU capacity (captions). cache_dir: folder for on-disk caches
            written by :meth:`precompute`. batch_size: encoder batch for cache misses.
        cache_dtype: "float16" (default), "bfloat16" or "float32": precision embeddings
            are cached in (every caption goes through it, hit or miss).

    Example:
        >>> tc = TextConditioner()                       # offline MiniLM, 384-d
        >>> c = tc(["a red circle", "a blue square"])    # tokens (2, L, 384), pooled (2, 384)
    """

    def __init__(
        self, path: str | Path | None = None, *, kind: str = "auto",
        backend: TextBackend | None = None, max_length: int | None = None,
        normalize: bool | None = None, model_name: str | None = None, p_drop: float = 0.1,
        null: str = "learned", cache_size: int = 4096, cache_dir: str | Path | None = None,
        batch_size: int = 256, cache_dtype: str = "float16", hidden_layer: int | None = None,
    ) -> None:
        super().__init__(p_drop, null)
        dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
        if cache_dtype not in dtypes:
            raise ValueError(f"TextConditioner: cache_dtype must be one of {list(dtypes)}, got "
                             f"{cache_dtype!r}")
        if backend is None:
            backend = load_text_backend(path, kind=kind, max_length=max_length,
                                        normalize=normalize, model_name=model_name,
                                        hidden_layer=hidden_layer)
        object.__setattr__(self, "backend", backend)  # unregistered: frozen, not saved
        self.cache = EmbeddingCache(cache_size, dtypes[cache_dtype])
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch_size = int(batch_size)
        self.encoder_calls = 0
        if null == "zero":
            self._init_null(backend.pooled_dim, backend.token_dim, 1)
        else:
            with torch.no_grad():
                tok, mask, pooled = backend.encode([""])
            # through the cache's rounding, so the null starts exactly at encode([""])
            tok0, pooled0 = self.cache.put("", tok[0, mask[0]], pooled[0])
            self._init_null(backend.pooled_dim, backend.token_dim, int(mask.sum()),
                            init_pooled=pooled0.float(), init_tokens=tok0.float())

    @classmethod
    def null_modes(cls) -> tuple[str, ...]:
        """Valid ``null`` arguments: "learned", "zero" or "empty"."""
        return ("learned", "zero", "empty")

    @property
    def fingerprint(self) -> str:
        """Identifies the encoder weights and settings (keys the on-disk cache)."""
        return self.backend.fingerprint

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> TextConditioner:
        super()._apply(fn, recurse)
        self.backend._apply(fn)
        return self

    def _encode_missing(self, captions: list[str], persistent: bool
                        ) -> dict[str, tuple[Tensor, Tensor]]:
        out = {}
        for s in range(0, len(captions), self.batch_size):
            chunk = captions[s: s + self.batch_size]
            with torch.no_grad():
                tok, mask, pooled = self.backend.encode(chunk)  # (b, L, D), (b, L), (b, Dp)
            self.encoder_calls += 1
            for i, c in enumerate(chunk):
                out[c] = self.cache.put(c, tok[i, mask[i]], pooled[i], persistent=persistent)
        return out

    def encode(self, values: Sequence[str]) -> Condition:
        """Captions -> Condition; each unique uncached caption is encoded once."""
        caps = check_captions(values, type(self).__name__)
        if not caps:
            raise ValueError("TextConditioner: empty batch of captions")
        found = {c: self.cache.get(c) for c in dict.fromkeys(caps)}
        missing = [c for c, e in found.items() if e is None]
        if missing:
            found.update(self._encode_missing(missing, persistent=False))
        return _pack([found[c] for c in caps], self.device, self.null_pooled.dtype)

    def precompute(
        self, captions: Iterable[str], cache_dir: str | Path | None = None
    ) -> Path | None:
        """Encode every unique caption into the persistent cache, via a safetensors file.

        With a cache folder (argument or ``cache_dir`` of the constructor) the file
        ``text_<hash>.safetensors`` (hash of the encoder fingerprint and the caption set) is
        loaded when present, else written. Returns its path (None without a folder).
        """
        caps = check_captions(list(dict.fromkeys(captions)), "precompute")
        folder = Path(cache_dir) if cache_dir is not None else self.cache_dir
        path = None
        if folder is not None:
            path = folder / f"text_{caption_set_key(caps, self.fingerprint)}.safetensors"
            if path.is_file():
                self.cache.load(path, self.fingerprint)
                return path
        self._encode_missing(caps, persistent=True)
        if path is not None:
            self.cache.save(path, caps, self.fingerprint)
        return path

    def cached_rows(self, captions: Iterable[str], max_captions: int = 4096
                    ) -> tuple[Tensor, Tensor]:
        """Embeddings of up to ``max_captions`` unique captions (the first in sorted order),
        as rows: ``(pooled (N, Dp), valid tokens (M, Dt))`` in float32, for statistics
        (e.g. :class:`~conditioners.norm.ConditionNorm`). Uncached captions are encoded."""
        caps = sorted(set(check_captions(list(captions), "cached_rows")))[:max_captions]
        if not caps:
            raise ValueError("cached_rows: no captions")
        found = {c: self.cache.get(c) for c in caps}
        missing = [c for c, e in found.items() if e is None]
        if missing:
            found.update(self._encode_missing(missing, persistent=False))
        pooled = torch.stack([found[c][1] for c in caps]).float()  # (N, Dp)
        tokens = torch.cat([found[c][0] for c in caps]).float()  # (M, Dt)
        return pooled, tokens

    def extra_repr(self) -> str:
        return (f"{self.fingerprint}, token_dim={self.token_dim}, pooled_dim={self.pooled_dim}, "
                f"null={self.null_mode!r}, p_drop={self.p_drop}")


class TrainableTextConditioner(Conditioner):
    """A small text encoder trained with the model: embeddings + a Transformer encoder.

    Tokenisation needs no vocabulary file: ``"char"`` uses UTF-8 bytes, ``"word"`` hashes
    lower-cased words and punctuation (CRC32) into ``num_buckets`` ids. A BOS token is
    always first, so an empty caption still has one valid token. Pooled = LayerNorm of the
    masked mean of the output tokens.

    Args:
        dim: model width D (token and pooled size). layers / heads: Transformer size.
        tokenizer: "char" or "word". max_length: tokens kept (BOS included).
        num_buckets: word-hash vocabulary size. p_drop / null: see :class:`Conditioner`.
    """

    PAD, BOS = 0, 1
    _SPECIAL = 2
    _WORD = re.compile(r"\w+|[^\w\s]")

    def __init__(
        self, dim: int = 256, *, layers: int = 2, heads: int = 4, tokenizer: str = "word",
        max_length: int = 64, num_buckets: int = 4096, p_drop: float = 0.1,
        null: str = "learned", dropout: float = 0.0,
    ) -> None:
        super().__init__(p_drop, null)
        if tokenizer not in ("char", "word"):
            raise ValueError(f"TrainableTextConditioner: tokenizer must be 'char' or 'word', "
                             f"got {tokenizer!r}")
        if dim % heads:
            raise ValueError(f"TrainableTextConditioner: dim {dim} not divisible by heads {heads}")
        if max_length < 1:
            raise ValueError(f"TrainableTextConditioner: max_length must be >= 1, got {max_length}")
        self.tokenizer, self.max_length = tokenizer, int(max_length)
        self.vocab_size = self._SPECIAL + (256 if tokenizer == "char" else int(num_buckets))
        self.embed = nn.Embedding(self.vocab_size, dim, padding_idx=self.PAD)
        self.pos = nn.Parameter(torch.randn(self.max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm_tokens, self.norm_pooled = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self._init_null(dim, dim, 1)

    def token_ids(self, caption: str) -> list[int]:
        """Token ids of one caption (BOS first, truncated to ``max_length``)."""
        if self.tokenizer == "char":
            ids = [self._SPECIAL + b for b in caption.encode("utf-8")]
        else:
            ids = [self._SPECIAL + zlib.crc32(w.encode()) % (self.vocab_size - self._SPECIAL)
                   for w in self._WORD.findall(caption.lower())]
        return [self.BOS] + ids[: self.max_length - 1]

    def encode(self, values: Sequence[str]) -> Condition:
        """Captions -> Condition (trainable; gradients flow)."""
        caps = check_captions(values, type(self).__name__)
        if not caps:
            raise ValueError("TrainableTextConditioner: empty batch of captions")
        seqs = [self.token_ids(c) for c in caps]
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), self.PAD, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        ids = ids.to(self.device)  # (B, L)
        mask = ids != self.PAD  # (B, L)
        h = self.embed(ids) + self.pos[:n]  # (B, L, D)
        h = self.norm_tokens(self.encoder(h, src_key_padding_mask=~mask))
        h = h * mask.unsqueeze(-1)
        return Condition(self.norm_pooled(masked_mean(h, mask)), h, mask)
