"""Flow-matching paths: linear (rectified flow / OT-CFM) and trigonometric.

t = 0 is noise, t = 1 is data; ``x_t = alpha_t x_1 + sigma_t x_0``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from toolkit.paths.base import GaussianPath


class LinearPath(GaussianPath):
    """Linear interpolation, the conditional OT path.

    ``alpha_t = t``, ``sigma_t = 1 - (1 - sigma_min) t`` (Lipman et al. 2023, eq. 20).
    ``sigma_min = 0`` is rectified flow (Liu et al. 2023); ``sigma_min > 0`` keeps a
    Gaussian of std ``sigma_min`` around each data point as in OT-CFM (Tong et al. 2024).

    Args:
        sigma_min: noise std left at t = 1.
    """

    name = "linear"

    def __init__(self, sigma_min: float = 0.0) -> None:
        if not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"linear path: sigma_min must be in [0, 1), got {sigma_min}")
        self.sigma_min = float(sigma_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.as_tensor(t) * 1.0

    def sigma(self, t: Tensor) -> Tensor:
        return 1.0 - (1.0 - self.sigma_min) * torch.as_tensor(t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(torch.as_tensor(t))

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.full_like(torch.as_tensor(t), -(1.0 - self.sigma_min))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # alpha/sigma = r = exp(lambda/2)  =>  t = r / (1 + r (1 - sigma_min))
        r = torch.exp(0.5 * torch.as_tensor(lam, dtype=torch.float64))
        t = r / (1.0 + r * (1.0 - self.sigma_min))
        return torch.where(torch.isinf(r), torch.ones_like(t) / (1.0 - self.sigma_min), t).clamp(
            0.0, 1.0
        )


class TrigPath(GaussianPath):
    """Trigonometric (cosine) path ``alpha_t = sin(pi t / 2)``, ``sigma_t = cos(pi t / 2)``.

    Variance preserving; the flow counterpart of the cosine schedule (Albergo &
    Vanden-Eijnden 2023, "Building normalizing flows with stochastic interpolants").
    """

    name = "trig"

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * torch.as_tensor(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * torch.as_tensor(t))

    def d_alpha(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * torch.as_tensor(t))

    def d_sigma(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * torch.as_tensor(t))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # tan(pi t / 2) = exp(lambda / 2)
        lam = torch.as_tensor(lam, dtype=torch.float64)
        return (2.0 / math.pi) * torch.atan(torch.exp(0.5 * lam))
