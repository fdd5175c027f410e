"""ODE/SDE samplers as plain stateless functions over a :class:`~toolkit.field.Denoiser`.

Use :func:`toolkit.sample` as the entry point; :func:`available` lists solver names.
"""

from __future__ import annotations

from collections.abc import Callable

# importing the solver modules registers their solvers
from toolkit.samplers import adaptive, extra, multistep, ode, stochastic  # noqa: F401
from toolkit.samplers.registry import SOLVERS, register, solver_options


def available() -> list[str]:
    """Solver names accepted by :func:`toolkit.sample`."""
    return SOLVERS.names()


def get(name: str) -> Callable:
    """The solver function registered as ``name`` (``ValueError`` lists valid names)."""
    return SOLVERS[name]


__all__ = ["available", "get", "register", "solver_options"]
