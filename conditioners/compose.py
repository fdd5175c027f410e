"""Several conditioners as one: separate dropout, and the null variants for multi-CFG.

Pooled vectors are concatenated, or projected to a common width and summed; token
sequences are (projected if their widths differ and) concatenated along L with their
masks. Each part is dropped independently with its own probability (plus an optional
probability of dropping all parts at once, as InstructPix2Pix trains its two conditions,
Brooks et al. 2023, sec. 3.3), so at sampling time every combination of "part on / part
null" is in-distribution, which :func:`toolkit.guidance.multi_cfg` needs for separate
guidance scales per condition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from conditioners.base import Condition, Conditioner, sample_drop_mask
from toolkit.registry import unknown_name_error

__all__ = ["ComposedConditioner"]


class ComposedConditioner(Conditioner):
    """Named conditioners -> one Condition.

    Args:
        parts: ``{name: conditioner}``; ``values`` passed to :meth:`forward` is a dict with
            the same names.
        pooled: "concat" (``pooled_dim`` = sum of the parts') or "sum" (each part's pooled
            vector goes through its own Linear to ``dim``, then they are summed).
        dim: width for pooled="sum".
        token_dim: common token width; parts of another width get a Linear. Default: the
            parts' width when they all agree, else ``dim`` (required then).
        p_drop: per-part drop probabilities (default: each part's own ``p_drop``).
        p_drop_all: probability of dropping every part of a sample at once (on top).

    Example:
        >>> comp = ComposedConditioner({"text": text_cond, "cls": class_cond})
        >>> drop = comp.sample_drop(B, generator)            # {"text": (B,), "cls": (B,)}
        >>> c = comp({"text": captions, "cls": labels}, drop=drop)
    """

    def __init__(
        self, parts: Mapping[str, Conditioner], *, pooled: str = "concat",
        dim: int | None = None, token_dim: int | None = None,
        p_drop: Mapping[str, float] | None = None, p_drop_all: float = 0.0,
    ) -> None:
        super().__init__(p_drop_all, "learned")
        if not parts:
            raise ValueError("ComposedConditioner: give at least one part")
        if pooled not in ("concat", "sum"):
            raise unknown_name_error("pooled merge", pooled, ("concat", "sum"))
        self.parts = nn.ModuleDict(dict(parts))
        self.pooled_mode = pooled
        probs = dict(p_drop or {})
        for name in probs:
            if name not in self.parts:
                raise unknown_name_error("condition", name, self.parts.keys())
        self.part_p_drop = {n: float(probs.get(n, c.p_drop)) for n, c in self.parts.items()}
        for n, p in self.part_p_drop.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"ComposedConditioner: p_drop[{n!r}] must be in [0, 1], got {p}")
        pooled_parts = {n: c.pooled_dim for n, c in self.parts.items() if c.pooled_dim}
        if pooled == "sum":
            if dim is None:
                raise ValueError("ComposedConditioner: pooled='sum' needs dim")
            self.pooled_proj = nn.ModuleDict(
                {n: nn.Linear(d, dim) for n, d in pooled_parts.items()})
            self.pooled_dim = dim if pooled_parts else None
        else:
            self.pooled_proj = None
            self.pooled_dim = sum(pooled_parts.values()) or None
        token_parts = {n: c.token_dim for n, c in self.parts.items() if c.token_dim}
        widths = set(token_parts.values())
        if token_dim is None:
            token_dim = next(iter(widths)) if len(widths) == 1 else dim
            if token_parts and token_dim is None:
                raise ValueError(f"ComposedConditioner: parts have token widths {token_parts}; "
                                 "give token_dim (or dim) to project them to one width")
        self.token_dim = token_dim if token_parts else None
        self.token_proj = nn.ModuleDict(
            {n: nn.Linear(d, token_dim) for n, d in token_parts.items() if d != token_dim})

    @property
    def names(self) -> list[str]:
        """Part names, in merge order."""
        return list(self.parts.keys())

    def batch_size_of(self, values: Mapping[str, Any]) -> int:
        """Batch size (of the first part's values)."""
        name = self.names[0]
        return self.parts[name].batch_size_of(values[name])

    def _check_values(self, values: Mapping[str, Any]) -> None:
        if not isinstance(values, Mapping):
            raise TypeError(f"ComposedConditioner: values must be a dict with keys "
                            f"{self.names}, got {type(values).__name__}")
        missing = [n for n in self.names if n not in values]
        extra = [n for n in values if n not in self.parts]
        if missing or extra:
            raise KeyError(f"ComposedConditioner: values keys {sorted(values)} do not match the "
                           f"parts {self.names} (missing {missing}, unknown {extra})")

    def merge(self, conds: Mapping[str, Condition]) -> Condition:
        """Merge one Condition per part (pooled concat/sum, tokens concatenated)."""
        pooled: list[Tensor] = []
        tokens: list[Tensor] = []
        masks: list[Tensor] = []
        for n in self.names:
            c = conds[n]
            if c.pooled is not None and self.parts[n].pooled_dim:
                p = c.pooled
                pooled.append(self.pooled_proj[n](p) if self.pooled_proj is not None else p)
            if c.tokens is not None and self.parts[n].token_dim:
                t = c.tokens  # (B, L_n, D_n)
                tokens.append(self.token_proj[n](t) if n in self.token_proj else t)
                masks.append(c.full_mask())
        out_pooled = None
        if pooled:
            out_pooled = torch.cat(pooled, -1) if self.pooled_mode == "concat" \
                else torch.stack(pooled, 0).sum(0)
        if not tokens:
            return Condition(pooled=out_pooled)
        return Condition(out_pooled, torch.cat(tokens, 1), torch.cat(masks, 1))

    def _normalize_drop(self, drop: Tensor | Mapping[str, Tensor] | None
                        ) -> dict[str, Tensor | None]:
        if drop is None or isinstance(drop, Tensor):
            return {n: drop for n in self.names}
        for n in drop:
            if n not in self.parts:
                raise unknown_name_error("condition", n, self.names)
        return {n: drop.get(n) for n in self.names}

    def forward(self, values: Mapping[str, Any], *,
                drop: Tensor | Mapping[str, Tensor] | None = None) -> Condition:
        """Encode every part (each with its own drop mask) and merge.

        Args:
            values: ``{name: raw input of that part}``.
            drop: None, one ``(B,)`` bool mask for all parts, or ``{name: (B,) mask}``
                (names left out are not dropped).
        """
        self._check_values(values)
        drops = self._normalize_drop(drop)
        return self.merge({n: c(values[n], drop=drops[n]) for n, c in self.parts.items()})

    def encode(self, values: Mapping[str, Any]) -> Condition:
        """Encode without dropout."""
        return self.forward(values)

    def null(self, batch: int) -> Condition:
        """Every part at its null condition."""
        return self.merge({n: c.null(batch) for n, c in self.parts.items()})

    def sample_drop(self, batch: int, generator: torch.Generator | None = None
                    ) -> dict[str, Tensor]:
        """Independent per-part drop masks, plus joint drops with ``p_drop_all``."""
        both = sample_drop_mask(batch, self.p_drop, generator, self.device)
        return {n: sample_drop_mask(batch, self.part_p_drop[n], generator, self.device) | both
                for n in self.names}

    def variants(self, values: Mapping[str, Any], on_sets: Sequence[Sequence[str]]
                 ) -> list[Condition]:
        """One merged Condition per set of "on" parts (the others at their null).

        Each part's real and null conditions are padded to the same token length, so all
        variants share one layout (needed to batch them through guidance).
        """
        self._check_values(values)
        batch = self.batch_size_of(values)
        real, null = {}, {}
        for n, c in self.parts.items():
            r, z = c(values[n]), c.null(batch)
            if r.tokens is not None and z.tokens is not None:
                length = max(r.tokens.shape[1], z.tokens.shape[1])
                r, z = r.pad_tokens(length), z.pad_tokens(length)
            real[n], null[n] = r, z
        out = []
        for on in on_sets:
            for n in on:
                if n not in self.parts:
                    raise unknown_name_error("condition", n, self.names)
            out.append(self.merge({n: real[n] if n in on else null[n] for n in self.names}))
        return out

    def guidance_kwargs(
        self, values: Mapping[str, Any], order: Sequence[str] | None = None, *,
        mode: str = "nested", key: str = "cond", flat: bool = False,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """``(conds, uncond)`` for :func:`toolkit.guidance.multi_cfg` (scales in ``order``).

        Args:
            values: raw inputs of every part.
            order: the guided parts, in the order of the scales (default: all parts).
                Parts not listed stay conditional in every branch.
            mode: "nested" (branch k has parts ``order[:k+1]`` on) or "sum" (only
                ``order[k]`` on), matching ``multi_cfg(mode=...)``.
            key: the model's keyword for the Condition (``net(x, t, cond=...)``).
            flat: return tensor keywords (:meth:`Condition.to_kwargs`) instead, for batched
                guidance of a model wrapped by :func:`conditioners.condition_kwargs_model`.
        """
        order = list(order) if order is not None else self.names
        if mode not in ("nested", "sum"):
            raise unknown_name_error("multi-condition guidance mode", mode, ("nested", "sum"))
        always = [n for n in self.names if n not in order]
        sets = [always] + [always + (order[: k + 1] if mode == "nested" else [order[k]])
                           for k in range(len(order))]
        conds = self.variants(values, sets)
        wrap = (lambda c: c.to_kwargs(key)) if flat else (lambda c: {key: c})
        return [wrap(c) for c in conds[1:]], wrap(conds[0])
