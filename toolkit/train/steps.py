"""One optimiser step with a finite-loss check and periodic logging, shared by the small
supervised trainers (the shapes attribute classifier, the FD-local feature net)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["supervised_step"]


def supervised_step(loss: torch.Tensor, opt: torch.optim.Optimizer, sched: Any, *, step: int,
                    total: int, what: str, log: Callable[[str], None] | None = None,
                    log_every: int = 100) -> None:
    """``zero_grad -> backward -> opt.step -> sched.step``; a non-finite loss raises
    ``FloatingPointError`` naming ``what`` and the step; logs every ``log_every`` steps."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{what} loss is {loss.item()} at step {step}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()
    if log is not None and (step % log_every == 0 or step == total - 1):
        log(f"{what} step {step}/{total} loss {loss.item():.4f}")
