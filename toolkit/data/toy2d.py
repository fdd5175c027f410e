"""2-D toy distributions for quick training checks: two moons, 8 Gaussians, checkerboard.

Each sampler takes ``n`` and an optional ``torch.Generator`` and returns ``(n, 2)`` points of
order-one scale (so a standard normal prior is a sensible source). The geometries follow the
usual definitions (scikit-learn's ``make_moons``; the 8-Gaussians and checkerboard densities
of FFJORD, Grathwohl et al. 2019) but are written here from their descriptions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from toolkit.registry import Registry


def moons(
    n: int, noise: float = 0.05, generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32, center: bool = True,
) -> Tensor:
    """Two interleaved half circles with Gaussian jitter ``noise``.

    Upper moon ``(cos a, sin a)`` and lower moon ``(1 - cos a, 1/2 - sin a)`` with
    ``a ~ U[0, pi]``; an equal number from each (odd n: the extra one is upper). With
    ``center`` the set is shifted by ``(-1/2, -1/4)`` and scaled by 1.5.
    """
    n_up = (n + 1) // 2
    a = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    up = torch.stack([torch.cos(a), torch.sin(a)], -1)
    low = torch.stack([1.0 - torch.cos(a), 0.5 - torch.sin(a)], -1)
    which = torch.arange(n) < n_up
    x = torch.where(which[:, None], up, low)
    x = x + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    if center:
        x = 1.5 * (x - torch.tensor([0.5, 0.25], dtype=torch.float64))
    perm = torch.randperm(n, generator=generator)
    return x[perm].to(dtype)


def eight_gaussians(
    n: int, radius: float = 2.0, std: float = 0.2, generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Equal mixture of 8 isotropic Gaussians (std ``std``) on a circle of ``radius``."""
    k = torch.randint(0, 8, (n,), generator=generator)
    ang = k.to(torch.float64) * (math.pi / 4)
    mu = radius * torch.stack([torch.cos(ang), torch.sin(ang)], -1)
    return (mu + std * torch.randn(n, 2, generator=generator, dtype=torch.float64)).to(dtype)


def checkerboard(
    n: int, size: int = 4, scale: float = 1.0, generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Uniform on the "black" squares of a ``size x size`` board of unit squares centred at
    the origin (cell ``(i, j)`` black iff ``i + j`` is even), scaled by ``scale``."""
    if size < 2:
        raise ValueError(f"checkerboard size must be >= 2, got {size}")
    n_black = (size * size + 1) // 2
    black = [(i, j) for i in range(size) for j in range(size) if (i + j) % 2 == 0]
    cells = torch.tensor(black, dtype=torch.float64)  # (n_black, 2)
    k = torch.randint(0, n_black, (n,), generator=generator)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    x = cells[k] + u - size / 2.0
    return (scale * x).to(dtype)


_REGISTRY = Registry("toy dataset")
_REGISTRY.register("moons", moons, aliases=("two_moons",))
_REGISTRY.register("8gaussians", eight_gaussians, aliases=("eight_gaussians", "8gauss"))
_REGISTRY.register("checkerboard", checkerboard, aliases=("checker",))


def get(name: str) -> Callable[..., Tensor]:
    """The sampler function for a dataset name (``ValueError`` lists valid names)."""
    return _REGISTRY[name]


def sample(name: str, n: int, generator: torch.Generator | None = None, **kw) -> Tensor:
    """Draw ``n`` points ``(n, 2)`` from the named toy distribution."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    return get(name)(n, generator=generator, **kw)


def available() -> list[str]:
    """Names accepted by :func:`sample`."""
    return _REGISTRY.names()


__all__ = ["moons", "eight_gaussians", "checkerboard", "sample", "get", "available"]
