"""Minibatch couplings of noise ``x0`` and data ``x1`` for conditional flow matching.

A coupling re-pairs a minibatch: independent (I-CFM, Lipman et al. 2023), exact optimal
transport (OT-CFM, Tong et al. 2024; Pooladian et al. 2023) or entropic OT (Sinkhorn,
Cuturi 2013), the latter being the static Schroedinger-bridge coupling of SB-CFM when
``reg = 2 sigma^2`` (Tong et al. 2024, "Simulation-free Schroedinger bridges", Prop. 3.4).

Cost: squared Euclidean ``C_ij = ||x0_i - x1_j||^2`` on flattened samples. Plans come from
POT (``ot.emd`` / ``ot.sinkhorn``). Our x0 is the source at t = 0 and x1 the data at t = 1,
exactly torchcfm's convention.

Every coupling returns a :class:`Paired` with index vectors ``i0, i1`` such that
``x0[i0]`` is paired with ``x1[i1]``; use :meth:`Paired.take` to re-index conditions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from toolkit.registry import Registry


@dataclass
class Paired:
    """A re-paired minibatch: ``x0[k]`` is coupled with ``x1[k]`` (``= x1_in[i1[k]]``)."""

    x0: Tensor
    x1: Tensor
    i0: Tensor  # (B,) indices into the input x0
    i1: Tensor  # (B,) indices into the input x1
    labels: Tensor | None = None  # labels of x1, re-indexed

    def take(self, cond: Any) -> Any:
        """Re-index per-sample conditions of ``x1`` (tensor, dict/list/tuple of tensors)."""
        if cond is None:
            return None
        if isinstance(cond, Tensor):
            return cond[self.i1.to(cond.device)] if cond.ndim > 0 else cond
        if isinstance(cond, dict):
            return {k: self.take(v) for k, v in cond.items()}
        if isinstance(cond, (list, tuple)):
            return type(cond)(self.take(v) for v in cond)
        return cond


def sq_cost(x0: Tensor, x1: Tensor) -> Tensor:
    """Squared Euclidean cost matrix ``(B0, B1)`` between flattened samples (float64)."""
    a = x0.reshape(x0.shape[0], -1).to(torch.float64)
    b = x1.reshape(x1.shape[0], -1).to(torch.float64)
    return torch.cdist(a, b).pow(2)


def ot_plan(
    x0: Tensor, x1: Tensor, method: str = "exact", reg: float = 0.05,
    normalize_cost: bool = False, num_iter: int = 5000,
) -> Tensor:
    """Minibatch OT plan with uniform marginals, ``(B0, B1)`` float64 summing to 1.

    ``exact``: the linear program ``min_P <P, C>`` (``ot.emd``). ``sinkhorn``: the entropic
    problem ``min_P <P, C> - reg H(P)`` (Cuturi 2013) with POT's log-domain-stabilised
    solver.

    Args:
        x0 / x1: ``(B0, ...)``, ``(B1, ...)``. method: ``exact | sinkhorn``.
        reg: entropic regularisation (in units of the cost). normalize_cost: divide C by
            its max first. num_iter: Sinkhorn iterations.
    """
    cost = sq_cost(x0, x1)
    if normalize_cost:
        cost = cost / cost.max().clamp_min(1e-300)
    c = cost.cpu().numpy()
    import ot  # POT; imported lazily (it pulls in scipy.sparse and friends)

    a, b = ot.unif(c.shape[0]), ot.unif(c.shape[1])
    if method == "exact":
        plan = ot.emd(a, b, c, numItermax=1_000_000)
    elif method == "sinkhorn":
        if reg <= 0:
            raise ValueError(f"sinkhorn: reg must be > 0, got {reg}")
        plan = ot.sinkhorn(a, b, c, reg, numItermax=num_iter, method="sinkhorn_log")
    else:
        raise ValueError(f"unknown OT method {method!r}; valid: 'exact', 'sinkhorn'")
    plan = torch.as_tensor(np.asarray(plan), dtype=torch.float64)
    if not torch.isfinite(plan).all() or plan.sum() < 1e-8:
        raise FloatingPointError(f"{method} OT plan is degenerate; try a larger reg")
    return plan


def sample_plan(
    plan: Tensor, n: int, generator: torch.Generator | None = None, replace: bool = True
) -> tuple[Tensor, Tensor]:
    """Draw ``n`` index pairs ``(i, j) ~ plan`` (torchcfm's sampling scheme)."""
    flat = (plan / plan.sum()).flatten()
    k = torch.multinomial(flat, n, replacement=replace, generator=generator)
    return k // plan.shape[1], k % plan.shape[1]


def _groups(labels: Tensor | None, n: int) -> list[Tensor]:
    if labels is None:
        return [torch.arange(n)]
    lab = labels.reshape(n, -1).cpu()
    _, inv = torch.unique(lab, dim=0, return_inverse=True)
    return [torch.nonzero(inv == g).flatten() for g in range(int(inv.max()) + 1)]


class Coupling:
    """Base coupling. Subclasses implement :meth:`indices` for one group.

    Args:
        within_labels: couple only samples sharing a label (class-conditional OT-CFM): for
            each label the x0 rows at that label's positions are matched with its x1 rows.
    """

    name = "base"

    def __init__(self, within_labels: bool = False) -> None:
        self.within_labels = within_labels

    def indices(
        self, x0: Tensor, x1: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """Index pairs ``(i0, i1)`` of length ``len(x1)`` for one group."""
        raise NotImplementedError

    def __call__(
        self, x0: Tensor, x1: Tensor, labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Paired:
        """Re-pair ``(x0, x1)``; ``labels`` (B, ...) are x1's conditions, re-indexed too."""
        if x0.shape[1:] != x1.shape[1:]:
            raise ValueError(f"x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} differ in shape")
        n = x1.shape[0]
        if self.within_labels:
            if labels is None:
                raise ValueError(f"{self.name}: within_labels=True needs labels")
            if x0.shape[0] != n:
                raise ValueError("within_labels needs equal batch sizes for x0 and x1")
        elif labels is not None and labels.shape[0] != n:
            raise ValueError(f"labels batch {labels.shape[0]} != x1 batch {n}")
        i0 = torch.empty(n, dtype=torch.long)
        i1 = torch.empty(n, dtype=torch.long)
        for idx in _groups(labels if self.within_labels else None, n):
            idx0 = idx if self.within_labels else torch.arange(x0.shape[0])
            a, b = self.indices(x0[idx0.to(x0.device)], x1[idx.to(x1.device)], generator)
            i0[idx], i1[idx] = idx0[a], idx[b]
        out = Paired(x0[i0.to(x0.device)], x1[i1.to(x1.device)], i0, i1)
        out.labels = out.take(labels)
        return out


class Independent(Coupling):
    """Independent coupling ``pi = q(x0) q(x1)`` (I-CFM): pairs kept as given."""

    name = "independent"

    def indices(self, x0, x1, generator):
        n = x1.shape[0]
        if x0.shape[0] < n:
            raise ValueError(f"independent: need at least {n} noise samples, got {x0.shape[0]}")
        return torch.arange(n), torch.arange(n)


class ExactOT(Coupling):
    """Exact minibatch OT (OT-CFM, Tong et al. 2024, eq. 17), squared Euclidean cost.

    With equal batch sizes the plan is a permutation matrix scaled by 1/B (a vertex of the
    Birkhoff polytope); x0 is then permuted so that ``x0[k]`` goes to ``x1[k]`` and every
    sample is used once. Otherwise (or with ``replace=True``) pairs are drawn from the plan.
    """

    name = "exact_ot"

    def __init__(self, within_labels: bool = False, replace: bool = False) -> None:
        super().__init__(within_labels)
        self.replace = replace

    def indices(self, x0, x1, generator):
        plan = ot_plan(x0, x1, "exact")
        n0, n1 = plan.shape
        if n0 == n1 and not self.replace:
            return plan.argmax(dim=0), torch.arange(n1)  # for each x1 column its x0 row
        return sample_plan(plan, n1, generator)


class SinkhornOT(Coupling):
    """Entropic OT coupling (Cuturi 2013); pairs are drawn from the plan with replacement.

    Args:
        reg: entropic regularisation epsilon (cost units). normalize_cost: scale C to max 1.
        within_labels: see :class:`Coupling`.
    """

    name = "sinkhorn"

    def __init__(
        self, reg: float = 0.05, normalize_cost: bool = False, within_labels: bool = False
    ) -> None:
        super().__init__(within_labels)
        self.reg, self.normalize_cost = float(reg), normalize_cost

    def indices(self, x0, x1, generator):
        plan = ot_plan(x0, x1, "sinkhorn", self.reg, self.normalize_cost)
        return sample_plan(plan, x1.shape[0], generator)


class SchrodingerBridge(SinkhornOT):
    """SB-CFM (Tong et al. 2024, "Simulation-free Schroedinger bridges", sec. 3.3).

    Static coupling: entropic OT with ``reg = 2 sigma^2``. Conditional path: the Brownian
    bridge of diffusion ``sigma`` between the pair, in our time (x0 noise at t = 0):

        x_t = t x1 + (1 - t) x0 + sigma sqrt(t (1 - t)) z,
        u_t = x1 - x0 + (1 - 2t) / (2 t (1 - t)) (x_t - (t x1 + (1 - t) x0)).

    Use it as ``cfm_loss(..., coupling=SchrodingerBridge(sigma))``: the loss picks up
    :attr:`bridge` and :attr:`bridge_sigma`.
    """

    name = "schrodinger_bridge"
    bridge = "brownian"

    def __init__(self, sigma: float = 1.0, within_labels: bool = False) -> None:
        if sigma <= 0:
            raise ValueError(f"schrodinger_bridge: sigma must be > 0, got {sigma}")
        super().__init__(reg=2.0 * sigma**2, within_labels=within_labels)
        self.bridge_sigma = float(sigma)


_REGISTRY = Registry("coupling")
_REGISTRY.register("independent", Independent, aliases=("icfm", "none"))
_REGISTRY.register("exact_ot", ExactOT, aliases=("ot", "ot_cfm", "exact"))
_REGISTRY.register("sinkhorn", SinkhornOT, aliases=("entropic_ot",))
_REGISTRY.register("schrodinger_bridge", SchrodingerBridge, aliases=("sb", "sb_cfm"))


def get(name: str | Coupling | None, **kwargs: Any) -> Coupling:
    """Build a coupling by name (``None`` gives the independent one)."""
    if name is None:
        return Independent(**kwargs)
    if isinstance(name, Coupling):
        if kwargs:
            raise ValueError("coupling.get: kwargs given together with a coupling object")
        return name
    return _REGISTRY[name](**kwargs)


def available() -> list[str]:
    """Canonical coupling names."""
    return _REGISTRY.names()


__all__ = [
    "Paired", "Coupling", "Independent", "ExactOT", "SinkhornOT", "SchrodingerBridge",
    "ot_plan", "sample_plan", "sq_cost", "get", "available",
]
