"""Fully sharded data parallel (FSDP2, ``torch.distributed.fsdp.fully_shard``) for the trainer.

``trainer.strategy=fsdp`` with several processes shards every parameter (and its gradient
and optimizer state) over the processes instead of replicating them as DDP does. The
sharding policy (:func:`shard_model`): every direct child of an ``nn.ModuleList`` that is
not itself a container (a transformer / U-Net "block") becomes one FSDP unit, innermost
first, then the root module takes the remaining parameters (embeddings, heads, norms).
A unit's parameters are all-gathered just before its ``forward`` and freed after it.

Checkpoints stay full (unsharded) state dicts with the same keys and the same optimizer
format as a 1-process run (:func:`full_model_state`, :func:`full_optimizer_state`,
:func:`load_full_model_state`, :func:`load_full_optimizer_state`), so a checkpoint written
under FSDP loads in one process (``toolkit sample`` / ``toolkit eval``) and an FSDP run
resumes from a 1-process checkpoint. With one process nothing is sharded.

Limitation: a unit's parameters are only gathered by its ``forward``; a task that calls
another method of a sharded block (or reads a block's weight tensor directly) would see the
local shard. The recipes' models call their blocks through ``forward``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def _dtensor_cls() -> type:
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(model: nn.Module) -> bool:
    """True if ``model`` (or a submodule) was passed to ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The FSDP units below the root, innermost first: direct children of any
    ``nn.ModuleList`` that are not containers themselves and own parameters."""
    units: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        for child in m.children():
            visit(child)
        if isinstance(m, nn.ModuleList):
            for child in m.children():
                if (not isinstance(child, nn.ModuleList | nn.ModuleDict)
                        and any(True for _ in child.parameters())):
                    units.append(child)

    visit(model)
    return units


def shard_model(model: nn.Module, device: torch.device, world_size: int,
                mixed_precision: str = "no") -> nn.Module:
    """Apply FSDP2 in place: ``fully_shard`` each unit of :func:`shard_units`, then the root.

    Args:
        model: the unwrapped module (same initial weights on every process).
        device: this process's compute device. world_size: processes (the mesh size).
        mixed_precision: the resolved precision. Parameters and gradient reductions stay
            fp32 (bf16 compute comes from the trainer's autocast, as with DDP); ``fp16`` is
            refused (it would need a sharded gradient scaler).

    Returns:
        ``model`` itself (its class now also derives from ``FSDPModule``).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if mixed_precision == "fp16":
        raise ValueError("trainer.strategy=fsdp does not support trainer.mixed_precision=fp16 "
                         "(no sharded gradient scaler here); use bf16 or no")
    model.to(device)
    mesh = init_device_mesh(device.type, (int(world_size),))
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _full(t: Any) -> Any:
    return t.full_tensor() if isinstance(t, _dtensor_cls()) else t


def full_model_state(model: nn.Module, rank: int) -> dict[str, Tensor]:
    """The full (unsharded) state dict on CPU for ``rank`` 0 and ``{}`` elsewhere (a
    collective: every process must call it). Keys equal those of the unwrapped module."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                              cpu_offload=True))
    return sd if rank == 0 else {}


def full_optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """``opt.state_dict()`` with every sharded state tensor gathered: the same format
    (integer parameter ids) as a 1-process optimizer. A collective (all processes call it)."""
    sd = opt.state_dict()
    state = {i: {k: (_full(v).detach().cpu() if isinstance(v, Tensor) else v)
                 for k, v in s.items()} for i, s in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def _shard_like(full: Tensor, like: Tensor) -> Tensor:
    """This process's shard of ``full`` laid out as the DTensor ``like`` (no communication:
    every process holds ``full``)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(device=like.device, dtype=like.dtype), like.device_mesh,
                             like.placements, src_data_rank=None)


@torch.no_grad()
def load_full_model_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy a full state dict (held by every process) into a sharded ``model``; keys absent
    from ``state`` are left as they are (check them first with ``load_weights``' rules)."""
    own = model.state_dict()
    dt = _dtensor_cls()
    for k, v in state.items():
        cur = own[k]
        if isinstance(cur, dt):
            cur.copy_(_shard_like(v, cur))
        else:
            cur.copy_(v.to(device=cur.device, dtype=cur.dtype))


def load_full_optimizer_state(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full (1-process format) optimizer state dict into an optimizer over sharded
    parameters: each parameter-shaped state tensor is cut to this process's shard."""
    dt = _dtensor_cls()
    params = [p for g in opt.param_groups for p in g["params"]]
    out = {}
    for i, s in state["state"].items():
        p = params[int(i)]
        out[i] = {k: (_shard_like(v, p) if isinstance(p, dt) and isinstance(v, Tensor)
                      and tuple(v.shape) == tuple(p.shape) else v) for k, v in s.items()}
    opt.load_state_dict({"state": out, "param_groups": state["param_groups"]})


def global_norm(value: Any) -> float:
    """A gradient norm returned by ``clip_grad_norm_`` as a float (DTensors are reduced)."""
    return float(_full(value))


__all__ = ["is_sharded", "shard_units", "shard_model", "full_model_state",
           "full_optimizer_state", "load_full_model_state", "load_full_optimizer_state",
           "global_norm"]
