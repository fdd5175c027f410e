"""Solver registry: every solver is a plain function

    solver(den: Denoiser, x: Tensor, ts: Tensor, *, generator=None, callback=None, **opts) -> Tensor

integrating ``x`` (the state at ``ts[0]``) over the increasing time grid ``ts`` and returning
the state at ``ts[-1]``. Solvers hold no state between calls.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from toolkit.registry import Registry

SOLVERS = Registry("solver")


def register(name: str, aliases: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Decorator adding a solver function to the registry."""

    def deco(fn: Callable) -> Callable:
        SOLVERS.register(name, fn, aliases)
        fn.solver_name = name
        return fn

    return deco


def solver_options(fn: Callable) -> list[str]:
    """Keyword options a solver accepts (besides den, x, ts, generator, callback)."""
    skip = {"den", "x", "ts", "generator", "callback"}
    return [
        p.name for p in inspect.signature(fn).parameters.values()
        if p.kind == p.KEYWORD_ONLY and p.name not in skip
    ]
