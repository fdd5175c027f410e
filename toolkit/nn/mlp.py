"""A small time-conditioned MLP for toy problems: ``(x, t[, y]) -> out``.

Time enters through sinusoidal features (Vaswani et al. 2017; Ho et al. 2020, appendix B)
passed through a 2-layer SiLU MLP; an optional class label adds a learned embedding, with
an extra "null" class (index ``num_classes``) for classifier-free guidance (Ho & Salimans
2022). Time may be any real number (t in [0, 1], or EDM's ``c_noise = ln(sigma)/4``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, scale: float = 1000.0,
                         max_period: float = 10000.0) -> Tensor:
    """``[cos(s t w_k), sin(s t w_k)]`` with ``w_k = max_period^(-k / (dim/2))``, ``(B, dim)``."""
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float64)
    freqs = torch.exp(-math.log(max_period) * k / half)  # (half,)
    arg = (scale * t.to(torch.float64))[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(arg), torch.sin(arg)], -1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], -1)
    return emb


class TimeMLP(nn.Module):
    """MLP ``(x, t) -> out`` with sinusoidal time embedding and optional class conditioning.

    Args:
        dim: input (and default output) dimension D. hidden: width. depth: hidden layers.
        out_dim: output dimension (default ``dim``). time_dim: time embedding size.
        num_classes: number of classes K; enables ``y`` with null class index K.
        time_scale: multiplier of t inside the sinusoids (1000 suits t in [0, 1]).
    """

    def __init__(
        self, dim: int = 2, hidden: int = 128, depth: int = 3, out_dim: int | None = None,
        time_dim: int = 64, num_classes: int | None = None, time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        if depth < 1 or hidden < 1 or dim < 1:
            raise ValueError(f"TimeMLP: need dim, hidden, depth >= 1, got {dim}, {hidden}, {depth}")
        self.dim, self.time_dim, self.time_scale = dim, time_dim, float(time_scale)
        self.num_classes = num_classes
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.class_emb = (
            nn.Embedding(num_classes + 1, hidden) if num_classes is not None else None
        )
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, out_dim or dim)

    @property
    def null_class(self) -> int:
        """Index of the unconditional (null) class."""
        if self.num_classes is None:
            raise ValueError("TimeMLP was built without num_classes")
        return self.num_classes

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """``x`` (B, D), ``t`` (B,) or scalar, ``y`` (B,) class indices (None = null class)."""
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"TimeMLP expects t of shape ({x.shape[0]},), got {tuple(t.shape)}")
        wdt = self.inp.weight.dtype
        emb = sinusoidal_embedding(t, self.time_dim, self.time_scale).to(wdt)
        c = self.time_mlp(emb)  # (B, H)
        if self.class_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.null_class, device=x.device)
            c = c + self.class_emb(y.long())
        elif y is not None:
            raise ValueError("TimeMLP got labels y but was built without num_classes")
        h = self.inp(x.to(wdt))
        for lin in self.blocks:
            h = lin(nn.functional.silu(h + c))  # (B, H)
        return self.out(nn.functional.silu(h)).to(x.dtype)
