"""toolkit: conditional generative modelling across modalities on one exact core.

Time convention: **t = 0 is the prior (noise), t = 1 is data**,
``x_t = alpha_t * x_1 + sigma_t * x_0``.

Entry points: :func:`sample` (noise -> data with any solver), :func:`log_likelihood` and
:func:`bits_per_dim` (probability-flow ODE), :mod:`guidance` (model -> model wrappers),
:mod:`paths`, :mod:`param`, :mod:`grids`, :mod:`samplers`, :mod:`losses`, :mod:`timesteps`,
:mod:`coupling`.
"""

from toolkit import grids, guidance, param, paths, samplers
from toolkit.likelihood import bits_per_dim, log_likelihood
from toolkit.odeint import odeint
from toolkit.sampling import sample

__version__ = "0.1.0"

__all__ = [
    "paths", "param", "grids", "samplers", "guidance", "sample", "log_likelihood",
    "bits_per_dim", "odeint", "__version__",
]
