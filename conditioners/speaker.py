"""Speaker conditioning for TTS: a speaker-id embedding, or an embedding of a reference mel.

Two inputs share one output space: integer ids ``(B,)`` go through an embedding table
(multi-speaker VITS / Matcha-TTS style), reference mel-spectrograms ``(B, n_mels, T)``
through a :class:`ReferenceEncoder` (zero-shot speaker encoders, e.g. the reference encoder
of Skerry-Ryan et al. 2018). The interface is fixed here; the audio issue brings stronger
encoders. :class:`MelReferenceEncoder` is a minimal working one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from conditioners.base import Condition, Conditioner

__all__ = ["ReferenceEncoder", "MelReferenceEncoder", "SpeakerConditioner"]


class ReferenceEncoder(nn.Module):
    """Interface: ``forward(mel (B, n_mels, T), lengths (B,) | None) -> (B, out_dim)``.

    ``lengths`` counts valid frames per sample (frames past it are padding). Subclasses set
    ``n_mels`` and ``out_dim``.
    """

    n_mels: int
    out_dim: int

    def forward(self, mel: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Reference mel -> speaker embedding (implemented by subclasses)."""
        raise NotImplementedError


class MelReferenceEncoder(ReferenceEncoder):
    """A small 1-D CNN over mel frames with masked mean pooling over time.

    Args:
        n_mels: mel channels. out_dim: embedding size. hidden: conv width. layers: convs.
    """

    def __init__(self, n_mels: int = 80, out_dim: int = 256, hidden: int = 128,
                 layers: int = 3) -> None:
        super().__init__()
        self.n_mels, self.out_dim = int(n_mels), int(out_dim)
        convs: list[nn.Module] = []
        for i in range(layers):
            convs += [nn.Conv1d(n_mels if i == 0 else hidden, hidden, 5, padding=2),
                      nn.GroupNorm(1, hidden), nn.SiLU()]
        self.convs = nn.Sequential(*convs)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, mel: Tensor, lengths: Tensor | None = None) -> Tensor:
        """See :class:`ReferenceEncoder`."""
        if mel.ndim != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"MelReferenceEncoder: mel must be (B, {self.n_mels}, T), got "
                             f"{tuple(mel.shape)}")
        b, _, n = mel.shape
        valid = torch.ones(b, n, dtype=torch.bool, device=mel.device)  # (B, T)
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=mel.device)
            if lengths.shape != (b,) or bool((lengths < 1).any()) or bool((lengths > n).any()):
                raise ValueError(f"MelReferenceEncoder: lengths must be (B,) in [1, {n}], got "
                                 f"{lengths.tolist()}")
            valid = torch.arange(n, device=mel.device)[None] < lengths[:, None]
        h = self.convs(mel * valid[:, None])  # (B, H, T)
        m = valid[:, None].to(h.dtype)
        pooled = (h * m).sum(-1) / m.sum(-1)  # (B, H)
        return self.out(pooled)


class SpeakerConditioner(Conditioner):
    """Speaker ids or reference mels -> ``Condition(pooled=(B, D)[, tokens=(B, 1, D)])``.

    Args:
        num_speakers: size of the id table (None = no ids).
        dim: output size D.
        ref_encoder: a :class:`ReferenceEncoder` for mel input (None = no mels); its output
            is projected to ``dim``.
        tokens: also return the embedding as one token. p_drop / null: see Conditioner.

    Values: a ``(B,)`` integer tensor of ids, a ``(B, n_mels, T)`` float tensor of
    reference mels, or a dict ``{"mel": (B, n_mels, T), "lengths": (B,)}``.
    """

    def __init__(
        self, num_speakers: int | None = None, dim: int = 256, *,
        ref_encoder: ReferenceEncoder | None = None, tokens: bool = False,
        p_drop: float = 0.1, null: str = "learned",
    ) -> None:
        super().__init__(p_drop, null)
        if num_speakers is None and ref_encoder is None:
            raise ValueError("SpeakerConditioner: give num_speakers, ref_encoder or both")
        self.num_speakers = num_speakers
        self.embedding = nn.Embedding(num_speakers, dim) if num_speakers else None
        if self.embedding is not None:
            nn.init.normal_(self.embedding.weight, std=0.02)
        self.ref_encoder = ref_encoder
        self.ref_proj = nn.Linear(ref_encoder.out_dim, dim) if ref_encoder is not None else None
        self.with_tokens = bool(tokens)
        self._init_null(dim, dim if tokens else None, 1)

    def batch_size_of(self, values: Any) -> int:
        """Batch size of ids, mels or a ``{"mel": ...}`` dict."""
        return (values["mel"] if isinstance(values, Mapping) else torch.as_tensor(values)).shape[0]

    def _embed(self, values: Any) -> Tensor:
        if isinstance(values, Mapping) or (isinstance(values, Tensor) and values.ndim == 3):
            if self.ref_encoder is None:
                raise ValueError("SpeakerConditioner: got a reference mel but no ref_encoder "
                                 "was configured")
            mel, lengths = (values["mel"], values.get("lengths")) if isinstance(
                values, Mapping) else (values, None)
            return self.ref_proj(self.ref_encoder(mel.to(self.device), lengths))
        ids = torch.as_tensor(values, device=self.device)
        if self.embedding is None:
            raise ValueError("SpeakerConditioner: got speaker ids but num_speakers was not set")
        if ids.ndim != 1 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"SpeakerConditioner: ids must be a (B,) integer tensor, got "
                             f"{ids.dtype} {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_speakers):
            raise ValueError(f"SpeakerConditioner: speaker id out of range [0, "
                             f"{self.num_speakers}): {ids.tolist()}")
        return self.embedding(ids)

    def encode(self, values: Any) -> Condition:
        """Ids or reference mels -> Condition."""
        e = self._embed(values)  # (B, D)
        if not self.with_tokens:
            return Condition(pooled=e)
        mask = torch.ones(e.shape[0], 1, dtype=torch.bool, device=e.device)
        return Condition(e, e.unsqueeze(1), mask)
