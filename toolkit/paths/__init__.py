"""Probability paths. **t = 0 is the prior (noise), t = 1 is data**:
``x_t = alpha_t * x_1 + sigma_t * x_0`` with ``x_0 ~ N(0, I)``.

Use :func:`get` to build a path by name and :func:`available` to list names. Paths from
other libraries with noise at t = 1 convert as ``t_ours = 1 - t_theirs``; noise-level
parameterised ones (EDM, k-diffusion) via :meth:`GaussianPath.t_from_sigma_ratio`.
"""

from __future__ import annotations

from typing import Any

from toolkit.paths.base import CallablePath, GaussianPath, expand_like
from toolkit.paths.diffusion import DiscreteVPPath, EDMPath, SubVPPath, VEPath, VPPath, ddpm_betas
from toolkit.paths.flow import LinearPath, TrigPath
from toolkit.registry import Registry

__all__ = [
    "GaussianPath",
    "CallablePath",
    "LinearPath",
    "TrigPath",
    "VPPath",
    "SubVPPath",
    "DiscreteVPPath",
    "VEPath",
    "EDMPath",
    "ddpm_betas",
    "expand_like",
    "get",
    "available",
]

_REGISTRY = Registry("path")
_REGISTRY.register("linear", LinearPath, aliases=("rectified_flow", "rf", "ot", "cfm", "ot_cfm"))
_REGISTRY.register("trig", TrigPath, aliases=("cosine_flow", "trigonometric"))
_REGISTRY.register("vp", VPPath, aliases=("vp_sde", "vp_continuous"))
_REGISTRY.register("subvp", SubVPPath, aliases=("sub_vp",))
_REGISTRY.register("vp_discrete", DiscreteVPPath, aliases=("ddpm",))
_REGISTRY.register("ve", VEPath, aliases=("smld", "ncsn", "ve_sde"))
_REGISTRY.register("edm", EDMPath, aliases=("karras",))
_REGISTRY.register("affine", CallablePath, aliases=("custom",))


def get(name: str | GaussianPath, **kwargs: Any) -> GaussianPath:
    """Build a path by name, e.g. ``get("vp_discrete", schedule="cosine")``.

    Args:
        name: a name from :func:`available` (or an existing path, returned unchanged).
        **kwargs: the path's constructor arguments.

    Raises:
        ValueError: for an unknown name (the message lists valid names).
    """
    if isinstance(name, GaussianPath):
        if kwargs:
            raise ValueError("paths.get: kwargs given together with a path object")
        return name
    cls = _REGISTRY[name]
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise TypeError(f"path {name!r}: {e}") from None


def available() -> list[str]:
    """Names accepted by :func:`get` (canonical names; aliases also work)."""
    return _REGISTRY.names()
