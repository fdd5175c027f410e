"""Exponential moving average (EMA) of model weights, with decay warm-up.

After every optimizer step ``k`` (counted from 1) the shadow weights move towards the live
ones:

    ema <- d_k * ema + (1 - d_k) * theta                       (Polyak & Juditsky 1992)

with a warm-up of the decay so that early, poor weights are forgotten quickly:

    d_k = min(decay, 1 - (1 + k / inv_gamma)^(-power))          (Tanaka 2018 / diffusers' EMAModel)

``power = 2/3`` suits runs of ~1e5 steps, ``3/4`` longer ones; ``warmup=False`` uses the
constant ``decay``. Before ``start_step`` the shadow copies the weights exactly. Only
floating-point parameters with ``requires_grad`` are averaged; everything else (frozen
parameters, buffers such as BatchNorm statistics) is copied, so the EMA model is always
complete. The shadow is kept in float32 whatever the live dtype.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def ema_decay_at(
    step: int, decay: float, warmup: bool = True, power: float = 2 / 3, inv_gamma: float = 1.0,
    start_step: int = 0,
) -> float:
    """Decay used at optimizer step ``step`` (1-based); 0.0 means "copy the weights".

    Args:
        step: number of optimizer steps done, including the current one.
        decay: the maximal (final) decay in [0, 1).
        warmup: use ``1 - (1 + k / inv_gamma)^-power`` below ``decay``.
        power, inv_gamma: warm-up shape. start_step: steps before averaging starts.
    """
    k = step - start_step
    if k <= 0:
        return 0.0
    if not warmup:
        return float(decay)
    return float(min(decay, max(0.0, 1.0 - (1.0 + k / inv_gamma) ** (-power))))


class EMA:
    """EMA of a module's weights (see the module docstring for the equations).

    Args:
        model: the live module (an unwrapped ``nn.Module``, not a DDP wrapper).
        decay: final decay in [0, 1). warmup / power / inv_gamma / start_step: see
            :func:`ema_decay_at`.

    Example:
        >>> ema = EMA(net, decay=0.999)
        >>> ...; opt.step(); ema.update(net)
        >>> sampler_net = ema.model      # a full copy with averaged weights (eval mode)
    """

    def __init__(
        self, model: nn.Module, decay: float = 0.999, warmup: bool = True,
        power: float = 2 / 3, inv_gamma: float = 1.0, start_step: int = 0,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if power <= 0 or inv_gamma <= 0:
            raise ValueError(f"EMA power and inv_gamma must be > 0, got {power}, {inv_gamma}")
        self.decay, self.warmup, self.power = float(decay), bool(warmup), float(power)
        self.inv_gamma, self.start_step = float(inv_gamma), int(start_step)
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.model.float()
        self._averaged = {n for n, p in model.named_parameters()
                          if p.requires_grad and p.is_floating_point()}

    def current_decay(self) -> float:
        """Decay that the next :meth:`update` will use."""
        return ema_decay_at(self.num_updates + 1, self.decay, self.warmup, self.power,
                            self.inv_gamma, self.start_step)

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Fold the live ``model``'s weights into the shadow; returns the decay used.

        ``model`` may be sharded (FSDP2, DTensor parameters): each parameter is then
        gathered in full first, a collective that every process must join in the same order.
        """
        from torch.distributed.tensor import DTensor

        d = self.current_decay()
        self.num_updates += 1
        live = dict(model.named_parameters())
        for name, shadow in self.model.named_parameters():
            src = live[name].detach()
            if isinstance(src, DTensor):
                src = src.full_tensor()
            src = src.to(shadow.dtype)
            if name in self._averaged and d > 0.0:
                shadow.lerp_(src, 1.0 - d)  # ema + (1 - d)(theta - ema)
            else:
                shadow.copy_(src)
        live_buf = dict(model.named_buffers())
        for name, buf in self.model.named_buffers():
            buf.copy_(live_buf[name].detach().to(buf.dtype))
        return d

    def state_dict(self) -> dict[str, Tensor]:
        """The shadow weights (a plain tensor dict, safetensors-ready)."""
        return {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor], num_updates: int) -> None:
        """Restore shadow weights and the update counter (strict key check)."""
        self.model.load_state_dict(state, strict=True)
        self.num_updates = int(num_updates)

    def meta(self) -> dict[str, float | int | bool]:
        """JSON-able settings and counter (saved in ``state.json``)."""
        return {"decay": self.decay, "warmup": self.warmup, "power": self.power,
                "inv_gamma": self.inv_gamma, "start_step": self.start_step,
                "num_updates": self.num_updates}


__all__ = ["EMA", "ema_decay_at"]
