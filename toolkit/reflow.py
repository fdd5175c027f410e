"""Reflow / k-rectified flow (Liu et al. 2023, "Flow straight and fast", sec. 2.2, Alg. 1).

Given a trained flow ``Z = RectFlow(X0, X1)``, draw fixed noise ``x0``, integrate the model's
ODE to get ``x1 = Z_1(x0)``, and train a new flow on the deterministic pairs ``(x0, x1)``
with the independent-pair CFM objective. The new coupling has no more transport cost and
its flow is straighter (their Thm. 3.6 / 3.7); the straightness metric is
:func:`toolkit.metrics.straightness`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from toolkit import paths as paths_mod
from toolkit.field import Model
from toolkit.losses import cfm_loss
from toolkit.sampling import sample


@torch.no_grad()
def make_reflow_pairs(
    model: Model,
    n: int,
    *,
    shape: Sequence[int],
    path: Any = "linear",
    prediction: str = "velocity",
    solver: str = "rk4",
    steps: int = 32,
    generator: torch.Generator | None = None,
    batch_size: int = 1024,
    cond: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    **options: Any,
) -> tuple[Tensor, Tensor]:
    """Generate ``n`` coupled pairs ``(x0, x1 = ODE(x0))`` from a trained model.

    Args:
        model: ``model(x_t, t, **cond)``. n: number of pairs. shape: one sample's shape.
        path / prediction / solver / steps / options: passed to :func:`toolkit.sample`.
        generator: RNG for the noise. batch_size: samples per ODE solve.
        cond: per-sample conditions with leading dim ``n`` (sliced per batch).
        dtype / device: of the generated tensors.

    Returns:
        ``(x0, x1)``, each ``(n, *shape)``; ``x0`` is the standard-normal noise (before the
        sampler's ``prior_std`` scaling, which ``toolkit.sample`` re-applies).
    """
    if n <= 0 or batch_size <= 0:
        raise ValueError(f"n and batch_size must be positive, got {n}, {batch_size}")
    path = paths_mod.get(path)
    x0 = torch.randn((n, *shape), generator=generator, dtype=dtype).to(device)
    outs = []
    for lo in range(0, n, batch_size):
        sl = slice(lo, min(n, lo + batch_size))
        c = {k: (v[sl] if isinstance(v, Tensor) and v.ndim > 0 else v)
             for k, v in (cond or {}).items()}
        outs.append(sample(model, x0[sl], path=path, prediction=prediction, solver=solver,
                           steps=steps, cond=c, **options))
    return x0, torch.cat(outs)


class ReflowDataset(Dataset):
    """Fixed ``(x0, x1)`` couplings for training a rectified flow.

    Args:
        x0 / x1: paired tensors ``(n, ...)``. cond: optional per-pair tensors (dict).
    """

    def __init__(self, x0: Tensor, x1: Tensor, cond: dict[str, Tensor] | None = None) -> None:
        if x0.shape != x1.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must match")
        self.x0, self.x1, self.cond = x0, x1, dict(cond or {})

    def __len__(self) -> int:
        return self.x0.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x0[i], self.x1[i]

    def batch(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """A random minibatch ``(x0, x1, cond)`` (pairs stay together)."""
        idx = torch.randint(0, len(self), (batch_size,), generator=generator)
        return self.x0[idx], self.x1[idx], {k: v[idx] for k, v in self.cond.items()}


def fit(
    model: nn.Module,
    loss_fn: Callable[[int], Tensor],
    steps: int,
    lr: float = 1e-3,
    optimizer: torch.optim.Optimizer | None = None,
    grad_clip: float | None = None,
    lr_decay: bool = True,
) -> list[float]:
    """Minimal training loop: ``loss_fn(step)`` returns a scalar loss to minimise.

    Adam (Kingma & Ba 2015) with optional cosine decay of the learning rate to 0 and
    gradient-norm clipping. Returns the loss history.
    """
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if lr_decay else None
    history = []
    model.train()
    for step in range(steps):
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        history.append(float(loss.detach()))
    model.eval()
    return history


def train_reflow(
    model: nn.Module,
    data: ReflowDataset,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    path: Any = "linear",
    generator: torch.Generator | None = None,
    **fit_kw: Any,
) -> list[float]:
    """Train ``model`` (a velocity model) on reflow pairs with the CFM loss, pairs fixed."""

    def loss_fn(_: int) -> Tensor:
        x0, x1, cond = data.batch(batch_size, generator)
        return cfm_loss(model, x1, x0, path=path, cond=cond or None, generator=generator).loss

    return fit(model, loss_fn, steps, lr=lr, **fit_kw)


__all__ = ["make_reflow_pairs", "ReflowDataset", "fit", "train_reflow"]
