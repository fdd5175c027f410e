"""Per-feature standardisation of frozen condition embeddings, fitted on the training set.

Sentence encoders put most of a caption's embedding into directions every caption shares:
with the bundled MiniLM, "a large red circle at the top left" and "... at the bottom right"
have pooled cosine similarity 0.97, while changing colour and shape gives 0.58. A network
reading raw embeddings sees the words that matter for layout as a tiny perturbation of a
large constant, and (with Adam's per-weight step sizes) learns them slowly. Standardising
each feature with its mean and standard deviation over the training captions,
``c' = (c - mu) / (s + eps)``, is the usual input preconditioning (LeCun et al. 1998,
"Efficient BackProp", sec. 4.3): equal variance per feature, shared offset removed.

The statistics are buffers, so they are saved with the model and a run samples exactly
as it trained; an unfitted :class:`ConditionNorm` is the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from conditioners.base import Condition

__all__ = ["ConditionNorm", "feature_stats"]


def feature_stats(rows: Tensor, min_std: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation per feature of ``rows (N, D)`` (float64 accumulation).

    The deviation is floored at ``min_std`` times its median over features, so a feature
    that is constant on the training set is not blown up.
    """
    if rows.ndim != 2 or rows.shape[0] < 2:
        raise ValueError(f"feature_stats needs (N >= 2, D) rows, got {tuple(rows.shape)}")
    r = rows.double()
    mean, std = r.mean(0), r.std(0)
    std = std.clamp_min(min_std * float(std.median()) + 1e-12)
    return mean.float(), std.float()


class ConditionNorm(nn.Module):
    """``Condition -> Condition`` with pooled and token features standardised.

    Args:
        pooled_dim: width of ``cond.pooled`` (None: not standardised).
        token_dim: width of ``cond.tokens`` (None: not standardised).

    Padded token positions (mask False) are left as they are; they are never attended to.
    """

    def __init__(self, pooled_dim: int | None, token_dim: int | None) -> None:
        super().__init__()
        self.pooled_dim, self.token_dim = pooled_dim, token_dim
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        for name, dim in (("pooled", pooled_dim), ("token", token_dim)):
            if dim is not None:
                self.register_buffer(f"{name}_mean", torch.zeros(dim))
                self.register_buffer(f"{name}_std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, pooled: Tensor | None = None, tokens: Tensor | None = None) -> ConditionNorm:
        """Set the statistics from training rows: ``pooled (N, Dp)``, valid ``tokens (M, Dt)``."""
        for name, dim, rows in (("pooled", self.pooled_dim, pooled),
                                ("token", self.token_dim, tokens)):
            if dim is None or rows is None:
                continue
            if rows.ndim != 2 or rows.shape[1] != dim:
                raise ValueError(f"ConditionNorm.fit: {name} rows must be (N, {dim}), got "
                                 f"{tuple(rows.shape)}")
            mean, std = feature_stats(rows)
            getattr(self, f"{name}_mean").copy_(mean)
            getattr(self, f"{name}_std").copy_(std)
        self.fitted.fill_(True)
        return self

    def forward(self, cond: Condition) -> Condition:
        """Standardised copy of ``cond`` (the identity until :meth:`fit`)."""
        if not bool(self.fitted):
            return cond
        pooled, tokens = cond.pooled, cond.tokens
        if pooled is not None and self.pooled_dim is not None:
            pooled = (pooled - self.pooled_mean.to(pooled)) / self.pooled_std.to(pooled)
        if tokens is not None and self.token_dim is not None:
            z = (tokens - self.token_mean.to(tokens)) / self.token_std.to(tokens)  # (B, L, Dt)
            tokens = z if cond.mask is None else torch.where(cond.mask[..., None], z, tokens)
        return Condition(pooled, tokens, cond.mask)

    def extra_repr(self) -> str:
        return (f"pooled_dim={self.pooled_dim}, token_dim={self.token_dim}, "
                f"fitted={bool(self.fitted)}")
