"""The common conditioning container and the conditioner base class.

Every conditioner maps a raw batch input (captions, class labels, speaker ids, robot
observations, ...) to a :class:`Condition`: a pooled vector ``(B, Dp)`` for AdaLN/FiLM, a
token sequence ``(B, L, Dt)`` with a validity mask ``(B, L)`` for cross-attention, or both.

Classifier-free guidance (Ho & Salimans 2022) trains one network on conditional and
unconditional inputs by replacing each sample's condition, with probability ``p``, by a
*null condition*; here that null is either learned (an ``nn.Parameter``) or zero, and
``forward(values, drop=mask)`` applies a given ``(B,)`` drop mask exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Condition", "Conditioner", "sample_drop_mask", "NULL_MODES", "condition_kwargs_model",
]

NULL_MODES = ("learned", "zero")


@dataclass
class Condition:
    """Conditioning passed to backbones as ``net(x_t, t, cond=Condition(...))``.

    Attributes:
        pooled: ``(B, Dp)`` vector for AdaLN / FiLM, or None.
        tokens: ``(B, L, Dt)`` sequence for cross-attention / prefix tokens, or None.
        mask: ``(B, L)`` bool, True = valid token (None = all valid when tokens are given).
    """

    pooled: Tensor | None = None
    tokens: Tensor | None = None
    mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.pooled is not None and self.pooled.ndim != 2:
            raise ValueError(f"Condition.pooled must be (B, D), got {tuple(self.pooled.shape)}")
        if self.tokens is not None and self.tokens.ndim != 3:
            raise ValueError(
                f"Condition.tokens must be (B, L, D), got {tuple(self.tokens.shape)}"
            )
        if self.mask is not None:
            if self.tokens is None:
                raise ValueError("Condition.mask is given but Condition.tokens is None")
            if self.mask.shape != self.tokens.shape[:2] or self.mask.dtype != torch.bool:
                raise ValueError(
                    f"Condition.mask must be a bool tensor of shape {tuple(self.tokens.shape[:2])}"
                    f" (B, L), got {self.mask.dtype} {tuple(self.mask.shape)}"
                )
        if self.pooled is not None and self.tokens is not None:
            if self.pooled.shape[0] != self.tokens.shape[0]:
                raise ValueError(
                    f"Condition: pooled batch {self.pooled.shape[0]} != tokens batch "
                    f"{self.tokens.shape[0]}"
                )

    @property
    def batch_size(self) -> int:
        """Batch size B (0 for an empty condition)."""
        for v in (self.pooled, self.tokens):
            if v is not None:
                return v.shape[0]
        return 0

    def full_mask(self) -> Tensor | None:
        """The token mask, all-True when ``mask`` is None; None without tokens."""
        if self.tokens is None:
            return None
        if self.mask is None:
            return torch.ones(self.tokens.shape[:2], dtype=torch.bool, device=self.tokens.device)
        return self.mask

    def map(self, fn: Callable[[Tensor], Tensor]) -> Condition:
        """Apply ``fn`` to every tensor field (e.g. ``lambda v: v[idx]``)."""
        return Condition(**{f.name: None if getattr(self, f.name) is None
                            else fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, *args: Any, **kwargs: Any) -> Condition:
        """Move to a device / cast floating fields; the bool mask keeps its dtype."""
        def move(v: Tensor) -> Tensor:
            if v.dtype == torch.bool:
                kw = {k: a for k, a in kwargs.items() if k != "dtype"}
                dev = [a for a in args if not isinstance(a, torch.dtype)]
                return v.to(*dev, **kw)
            return v.to(*args, **kwargs)
        return self.map(move)

    def pad_tokens(self, length: int) -> Condition:
        """Right-pad tokens with zeros (mask False) to ``length`` tokens."""
        if self.tokens is None:
            return self
        b, n, d = self.tokens.shape
        if length < n:
            raise ValueError(f"pad_tokens: cannot pad {n} tokens down to {length}")
        if length == n:
            return Condition(self.pooled, self.tokens, self.full_mask())
        pad = self.tokens.new_zeros(b, length - n, d)
        mpad = torch.zeros(b, length - n, dtype=torch.bool, device=self.tokens.device)
        return Condition(self.pooled, torch.cat([self.tokens, pad], 1),
                         torch.cat([self.full_mask(), mpad], 1))

    def where(self, replace: Tensor, other: Condition) -> Condition:
        """Rows where ``replace`` (``(B,)`` bool) is True come from ``other``, others from self.

        Token sequences of different lengths are right-padded to the longer one first.
        """
        b = self.batch_size
        if replace.shape != (b,) or replace.dtype != torch.bool:
            raise ValueError(f"drop mask must be a (B,) = ({b},) bool tensor, got "
                             f"{replace.dtype} {tuple(replace.shape)}")
        if other.batch_size != b:
            raise ValueError(f"Condition.where: batch {other.batch_size} != {b}")
        if (self.pooled is None) != (other.pooled is None) or (
                (self.tokens is None) != (other.tokens is None)):
            raise ValueError("Condition.where: both conditions need the same fields")
        a, o = self, other
        if a.tokens is not None:
            n = max(a.tokens.shape[1], o.tokens.shape[1])
            a, o = a.pad_tokens(n), o.pad_tokens(n)
        out = {}
        for name in ("pooled", "tokens", "mask"):
            va, vo = getattr(a, name), getattr(o, name)
            if va is None:
                out[name] = None
                continue
            r = replace.to(va.device).view(b, *([1] * (va.ndim - 1)))
            out[name] = torch.where(r, vo.to(va.dtype), va)
        return Condition(**out)

    @staticmethod
    def cat(conds: list[Condition]) -> Condition:
        """Concatenate along the batch; token sequences are padded to the longest."""
        if not conds:
            raise ValueError("Condition.cat: empty list")
        if conds[0].tokens is not None:
            n = max(c.tokens.shape[1] for c in conds)
            conds = [c.pad_tokens(n) for c in conds]
        out = {}
        for name in ("pooled", "tokens", "mask"):
            vals = [getattr(c, name) for c in conds]
            if any((v is None) != (vals[0] is None) for v in vals):
                raise ValueError(f"Condition.cat: field {name!r} is None in some conditions only")
            out[name] = None if vals[0] is None else torch.cat(vals, 0)
        return Condition(**out)

    def to_kwargs(self, prefix: str = "cond") -> dict[str, Tensor]:
        """Flat tensor keyword arguments ``{prefix}_pooled/_tokens/_mask`` (Nones left out).

        Batched guidance (:mod:`toolkit.guidance`) concatenates tensor keywords across
        branches; use it with :func:`condition_kwargs_model`.
        """
        c = self.pad_tokens(self.tokens.shape[1]) if self.tokens is not None else self
        return {f"{prefix}_{k}": v for k, v in
                (("pooled", c.pooled), ("tokens", c.tokens), ("mask", c.mask)) if v is not None}

    @staticmethod
    def from_kwargs(kwargs: dict[str, Any], prefix: str = "cond") -> Condition:
        """Inverse of :meth:`to_kwargs` (pops the keys from ``kwargs``)."""
        return Condition(*(kwargs.pop(f"{prefix}_{k}", None) for k in ("pooled", "tokens", "mask")))


def condition_kwargs_model(
    net: Callable[..., Tensor], prefix: str = "cond"
) -> Callable[..., Tensor]:
    """Wrap ``net(x, t, cond=Condition)`` into ``f(x, t, cond_pooled=, cond_tokens=, cond_mask=)``.

    This lets :func:`toolkit.guidance.cfg` / ``multi_cfg`` run all branches in one batch,
    with branch keywords from :meth:`Condition.to_kwargs`.
    """
    def model(x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        cond = Condition.from_kwargs(kwargs, prefix)
        return net(x, t, cond=cond if cond.batch_size else None, **kwargs)
    return model


def sample_drop_mask(
    batch: int, p: float, generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Per-sample CFG dropout mask: ``(B,)`` bool, each True with probability ``p``.

    Args:
        batch: batch size B. p: drop probability in [0, 1].
        generator: optional RNG (CPU generator). device: device of the returned mask.
    """
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"drop probability must be in [0, 1], got {p}")
    if batch < 0:
        raise ValueError(f"batch size must be >= 0, got {batch}")
    gen_dev = generator.device if generator is not None else "cpu"
    mask = torch.rand(batch, generator=generator, device=gen_dev) < float(p)
    return mask.to(device) if device is not None else mask


class Conditioner(nn.Module):
    """Base class: ``forward(values, *, drop=None) -> Condition``.

    Subclasses implement :meth:`encode` (values -> Condition) and call :meth:`_init_null`
    once dims are known. Attributes: ``pooled_dim`` / ``token_dim`` (None if not produced),
    ``null_mode`` ("learned" or "zero"), ``p_drop`` (default CFG drop probability).
    """

    pooled_dim: int | None = None
    token_dim: int | None = None

    def __init__(self, p_drop: float = 0.1, null: str = "learned") -> None:
        super().__init__()
        if not 0.0 <= float(p_drop) <= 1.0:
            raise ValueError(f"{type(self).__name__}: p_drop must be in [0, 1], got {p_drop}")
        if null not in self.null_modes():
            raise ValueError(f"{type(self).__name__}: unknown null mode {null!r}; valid: "
                             f"{', '.join(self.null_modes())}")
        self.p_drop, self.null_mode = float(p_drop), null
        self.register_buffer("_device_probe", torch.zeros(()), persistent=False)

    @classmethod
    def null_modes(cls) -> tuple[str, ...]:
        """Valid values of the ``null`` argument."""
        return NULL_MODES

    @property
    def device(self) -> torch.device:
        """Device of the module."""
        return self._device_probe.device

    def _init_null(
        self, pooled_dim: int | None, token_dim: int | None, null_len: int = 1,
        init_pooled: Tensor | None = None, init_tokens: Tensor | None = None,
    ) -> None:
        """Create the null condition: parameters ("learned") or zero buffers ("zero")."""
        self.pooled_dim, self.token_dim = pooled_dim, token_dim
        learned = self.null_mode == "learned"
        for name, shape, init in (("null_pooled", (pooled_dim,), init_pooled),
                                  ("null_tokens", (null_len, token_dim), init_tokens)):
            if shape[-1] is None:
                setattr(self, name, None)
                continue
            if init is None:
                init = torch.randn(shape) * 0.02 if learned else torch.zeros(shape)
            init = init.detach().clone().float().reshape(shape)
            if learned:
                setattr(self, name, nn.Parameter(init))
            else:
                self.register_buffer(name, init)

    def null(self, batch: int) -> Condition:
        """The null condition repeated for ``batch`` samples (gradients reach learned nulls)."""
        pooled = self.null_pooled.unsqueeze(0).expand(batch, -1) \
            if self.null_pooled is not None else None
        tokens = mask = None
        if self.null_tokens is not None:
            tokens = self.null_tokens.unsqueeze(0).expand(batch, -1, -1)  # (B, L0, Dt)
            mask = torch.ones(batch, tokens.shape[1], dtype=torch.bool, device=tokens.device)
        return Condition(pooled, tokens, mask)

    def sample_drop(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """A ``(B,)`` drop mask with this conditioner's ``p_drop``."""
        return sample_drop_mask(batch, self.p_drop, generator, self.device)

    def encode(self, values: Any) -> Condition:
        """Raw batch input -> Condition (implemented by subclasses)."""
        raise NotImplementedError

    def batch_size_of(self, values: Any) -> int:
        """Batch size of a raw input (``len(values)`` by default)."""
        return len(values)

    def forward(self, values: Any, *, drop: Tensor | None = None) -> Condition:
        """Encode ``values``; rows with ``drop[i]`` True are replaced by the null condition.

        Args:
            values: the raw batch input of this conditioner.
            drop: optional ``(B,)`` bool mask (True = use the null condition).
        """
        cond = self.encode(values)
        if drop is None:
            return cond
        drop = torch.as_tensor(drop, device=self.device)
        if drop.dtype != torch.bool:
            raise TypeError(f"drop mask must be a bool tensor, got {drop.dtype}")
        # always through torch.where, so a learned null is in the graph (DDP-safe)
        return cond.where(drop, self.null(cond.batch_size))
