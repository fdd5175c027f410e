"""ODE/SDE samplers as plain stateless functions over a :class:`~toolkit.field.Denoiser`.

Use :func:`toolkit.sample` as the entry point; :func:`available` lists solver names.
"""

from __future__ import annotations

from collections.abc import Callable

from toolkit.samplers import ode  # noqa: F401  (registers solvers)
from toolkit.samplers.registry import SOLVERS, register, solver_options

try:  # solvers added by later modules register themselves on import
    from toolkit.samplers import multistep  # noqa: F401
except ImportError:  # pragma: no cover
    pass
try:
    from toolkit.samplers import stochastic  # noqa: F401
except ImportError:  # pragma: no cover
    pass
try:
    from toolkit.samplers import adaptive  # noqa: F401
except ImportError:  # pragma: no cover
    pass
try:
    from toolkit.samplers import extra  # noqa: F401
except ImportError:  # pragma: no cover
    pass


def available() -> list[str]:
    """Solver names accepted by :func:`toolkit.sample`."""
    return SOLVERS.names()


def get(name: str) -> Callable:
    """The solver function registered as ``name`` (``ValueError`` lists valid names)."""
    return SOLVERS[name]


__all__ = ["available", "get", "register", "solver_options"]
