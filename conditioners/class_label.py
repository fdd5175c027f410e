"""Class-label conditioning: an embedding table with an extra null class.

The null class for classifier-free guidance (Ho & Salimans 2022) is row ``num_classes`` of
the table (as in DiT, Peebles & Xie 2023, sec. 3.2) when ``null="learned"``, or a zero
vector when ``null="zero"``. The label embedding is the pooled vector and, optionally, a
single condition token for cross-attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from conditioners.base import Condition, Conditioner

__all__ = ["ClassConditioner"]


class ClassConditioner(Conditioner):
    """Class labels ``(B,)`` -> ``Condition(pooled=(B, D)[, tokens=(B, 1, D)])``.

    Args:
        num_classes: number of classes K; valid labels are ``0..K-1``, and the null index
            ``K`` may be passed explicitly to request the null condition.
        dim: embedding size D.
        tokens: also return the embedding as one token (for cross-attention backbones).
        p_drop: default CFG drop probability. null: "learned" (table row K) or "zero".

    Example:
        >>> cc = ClassConditioner(10, 64)
        >>> c = cc(torch.tensor([3, 7]), drop=torch.tensor([False, True]))
    """

    def __init__(
        self, num_classes: int, dim: int, *, tokens: bool = False, p_drop: float = 0.1,
        null: str = "learned",
    ) -> None:
        super().__init__(p_drop, null)
        if num_classes < 1 or dim < 1:
            raise ValueError(f"ClassConditioner: need num_classes >= 1 and dim >= 1, got "
                             f"{num_classes}, {dim}")
        self.num_classes, self.with_tokens = int(num_classes), bool(tokens)
        self.embedding = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.pooled_dim = dim
        self.token_dim = dim if tokens else None

    @property
    def null_index(self) -> int:
        """The label that selects the null condition (``num_classes``)."""
        return self.num_classes

    def null_labels(self, batch: int) -> Tensor:
        """``(B,)`` labels all equal to :attr:`null_index`."""
        return torch.full((batch,), self.null_index, dtype=torch.long, device=self.device)

    def _labels(self, values: Tensor | Sequence[int]) -> Tensor:
        y = torch.as_tensor(values, device=self.device)
        if y.ndim != 1:
            raise ValueError(f"ClassConditioner: labels must be a (B,) tensor, got shape "
                             f"{tuple(y.shape)}")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(f"ClassConditioner: labels must be integers, got {y.dtype}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > self.num_classes):
            bad = y[(y < 0) | (y > self.num_classes)][0].item()
            raise ValueError(f"ClassConditioner: label {bad} out of range [0, {self.num_classes})"
                             f" (null index {self.null_index} also allowed)")
        return y.long()

    def _from_embedding(self, e: Tensor) -> Condition:  # e: (B, D)
        if not self.with_tokens:
            return Condition(pooled=e)
        mask = torch.ones(e.shape[0], 1, dtype=torch.bool, device=e.device)
        return Condition(pooled=e, tokens=e.unsqueeze(1), mask=mask)

    def null(self, batch: int) -> Condition:
        """The null condition: table row ``num_classes`` ("learned") or zeros ("zero")."""
        e = self.embedding.weight[self.null_index].unsqueeze(0).expand(batch, -1)  # (B, D)
        if self.null_mode == "zero":
            e = torch.zeros_like(e)
        return self._from_embedding(e)

    def encode(self, values: Tensor | Sequence[int]) -> Condition:
        """Labels -> Condition; explicit null labels map to :meth:`null`."""
        y = self._labels(values)
        e = self.embedding(y)  # (B, D)
        if self.null_mode == "zero":
            e = torch.where((y == self.null_index)[:, None], torch.zeros_like(e), e)
        return self._from_embedding(e)

    def forward(self, values: Tensor | Sequence[int], *, drop: Tensor | None = None) -> Condition:
        """Encode labels; rows with ``drop[i]`` True get the null condition."""
        y = self._labels(values)
        if drop is not None:
            drop = torch.as_tensor(drop, device=self.device)
            if drop.shape != y.shape or drop.dtype != torch.bool:
                raise ValueError(f"drop mask must be a ({y.shape[0]},) bool tensor, got "
                                 f"{drop.dtype} {tuple(drop.shape)}")
            y = torch.where(drop, torch.full_like(y, self.null_index), y)
        return self.encode(y)
