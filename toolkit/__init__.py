"""toolkit: conditional generative modelling across modalities on one exact core.

Time convention: **t = 0 is the prior (noise), t = 1 is data**,
``x_t = alpha_t * x_1 + sigma_t * x_0``.
"""

from toolkit import grids, param, paths, samplers
from toolkit.sampling import sample

__version__ = "0.1.0"

__all__ = ["paths", "param", "grids", "samplers", "sample", "__version__"]
