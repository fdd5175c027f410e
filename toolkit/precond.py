"""EDM preconditioning (Karras et al. 2022, "Elucidating the design space...", sec. 5 and
Table 1), written for any affine Gaussian path.

EDM works with ``x = x1 + sigma n`` at noise level sigma. Any of our paths gives that after
dividing by alpha: ``x_t / alpha_t = x1 + (sigma_t/alpha_t) x0``, so ``sigma = sigma_t/alpha_t``
and the denoiser is

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)),
    c_skip = sigma_d^2 / (sigma^2 + sigma_d^2),   c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2),
    c_in = 1 / sqrt(sigma^2 + sigma_d^2),         c_noise = ln(sigma) / 4.

These make the network input ``c_in x`` and its training target
``F_target = (x1 - c_skip x) / c_out`` unit-variance when the data has std sigma_d, and the
loss weight ``lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 = 1 / c_out^2`` turns
``lambda ||D - x1||^2`` into ``||F - F_target||^2`` (sec. 5, "Loss weighting").

To stay finite at alpha = 0 (the prior end of flow paths) the products are formed directly
from ``(alpha_t, sigma_t)``: with ``r = sqrt(sigma_t^2 + alpha_t^2 sigma_d^2)``,
``c_in x = x_t / r``, ``c_skip x = sigma_d^2 alpha_t x_t / r^2`` and
``c_out = sigma_t sigma_d / r``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from toolkit import paths as paths_mod
from toolkit.paths.base import GaussianPath, expand_like, tiny


def edm_coefficients(sigma: Tensor, sigma_data: float = 0.5) -> dict[str, Tensor]:
    """``c_skip, c_out, c_in, c_noise`` at EDM noise levels ``sigma`` (Karras et al. 2022,
    Table 1)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    sd2 = sigma_data**2
    den = sigma * sigma + sd2
    return {
        "c_skip": sd2 / den,
        "c_out": sigma * sigma_data / den.sqrt(),
        "c_in": 1.0 / den.sqrt(),
        "c_noise": 0.25 * torch.log(sigma),
    }


def edm_loss_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """``lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2`` (Table 1)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return (sigma * sigma + sigma_data**2) / (sigma * sigma_data) ** 2


class EDMPrecond(nn.Module):
    """Wrap a raw network ``F(x_in, c_noise, **cond)`` into a data-predicting model.

    ``model(x_t, t, **cond) = D = c_skip x + c_out F(c_in x, c_noise)`` with
    ``x = x_t / alpha_t``; use it with ``prediction="data"``.

    Args:
        net: network called as ``net(x_in, c_noise, **cond)`` with ``c_noise`` of t's shape.
        path: the path the model is trained / sampled on (name or object).
        sigma_data: data standard deviation sigma_d.
        max_c_noise: clamp of |c_noise| (ln sigma / 4 is infinite at the path's ends).
    """

    prediction = "data"

    def __init__(
        self, net: nn.Module | Any, path: str | GaussianPath = "edm", sigma_data: float = 0.5,
        max_c_noise: float = 25.0,
    ) -> None:
        super().__init__()
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.net = net
        self.path = paths_mod.get(path)
        self.sigma_data = float(sigma_data)
        self.max_c_noise = float(max_c_noise)

    def parts(self, x_t: Tensor, t: Tensor) -> dict[str, Tensor]:
        """Preconditioning pieces at ``(x_t, t)``: ``x_in, skip (= c_skip x), c_out, c_noise``.

        ``c_out`` is broadcast like ``x_t``; ``c_noise`` has t's shape.
        """
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        t64 = t.to(torch.float64)
        a, s = self.path.alpha(t64), self.path.sigma(t64)
        sd = self.sigma_data
        r = torch.sqrt(s * s + a * a * sd * sd).clamp_min(tiny(torch.float64))
        lam = self.path.log_snr(t64)  # ln sigma_edm = -lambda / 2
        c_noise = (-0.125 * lam).clamp(-self.max_c_noise, self.max_c_noise)
        return {
            "x_in": x_t * expand_like((1.0 / r).to(x_t.dtype), x_t),
            "skip": x_t * expand_like((sd * sd * a / (r * r)).to(x_t.dtype), x_t),
            "c_out": expand_like((s * sd / r).to(x_t.dtype), x_t),
            "c_noise": c_noise.to(x_t.dtype),
        }

    def forward(self, x_t: Tensor, t: Tensor, **cond: Any) -> Tensor:
        """Data prediction ``D(x_t, t)``, same shape as ``x_t``."""
        p = self.parts(x_t, t)
        f = self.net(p["x_in"], p["c_noise"], **cond)
        return p["skip"] + p["c_out"] * f

    def f_target(self, x1: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Effective network target ``F_target = (x1 - c_skip x) / c_out`` (sec. 5, eq. 8)."""
        p = self.parts(x_t, t)
        return (x1 - p["skip"]) / p["c_out"].clamp_min(tiny(x_t.dtype))

    def invert(self, data_pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The raw output ``F`` that makes the wrapper return ``data_pred`` at ``(x_t, t)``."""
        return self.f_target(data_pred, x_t, t)

    def loss_weight(self, t: Tensor) -> Tensor:
        """``lambda(sigma_t / alpha_t)`` for weighting ``||D - x1||^2`` (float64)."""
        t64 = torch.as_tensor(t, dtype=torch.float64)
        return edm_loss_weight(self.path.sigma_ratio(t64), self.sigma_data)

    def extra_repr(self) -> str:
        return f"path={self.path!r}, sigma_data={self.sigma_data}"


def edm_sigma_from_c_noise(c_noise: Tensor) -> Tensor:
    """Inverse of ``c_noise = ln(sigma)/4`` (for networks that need sigma itself)."""
    return torch.exp(4.0 * torch.as_tensor(c_noise))


__all__ = [
    "EDMPrecond", "edm_coefficients", "edm_loss_weight", "edm_sigma_from_c_noise",
]
