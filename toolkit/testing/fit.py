"""A tiny training loop for tests: does a task's loss go down on a fixed batch?"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from toolkit.train.tasks import StepContext


def fixed_batch_loss(task: Any, net: nn.Module, batch: Any, seeds: int = 4) -> float:
    """Mean loss over ``seeds`` fixed noise draws (seeds 0..seeds-1), without gradients."""
    with torch.no_grad():
        return sum(float(task.loss(net, batch, StepContext(0, 0, torch.Generator()
                                                           .manual_seed(k)))["loss"])
                   for k in range(seeds)) / seeds


def fit_fixed_batch(task: Any, net: nn.Module, batch: Any, steps: int, lr: float = 2e-3
                    ) -> tuple[float, float]:
    """Adam on one batch for ``steps`` steps (fresh noise each step, every loss must be finite).

    Returns:
        ``(loss before, loss after)`` from :func:`fixed_batch_loss` (same noise draws).
    """
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    before = fixed_batch_loss(task, net, batch)
    for step in range(steps):
        out = task.loss(net, batch, StepContext(step, 0, torch.Generator().manual_seed(step)))
        loss = out["loss"] if isinstance(out, dict) else out
        if not torch.isfinite(loss):
            raise AssertionError(f"non-finite loss at step {step}: {float(loss)}")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, fixed_batch_loss(task, net, batch)
