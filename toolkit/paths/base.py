"""Gaussian probability paths: the shared interface.

Convention (fixed across the toolkit): ``t`` lies in ``[0, 1]``; **t = 0 is the prior
(noise) and t = 1 is data**. A Gaussian (affine) path is

    x_t = alpha_t * x_1 + sigma_t * x_0,        x_0 ~ N(0, I),  x_1 ~ p_data,

with ``alpha_t`` increasing and ``sigma_t`` decreasing in ``t``, so the log signal-to-noise
ratio ``lambda_t = 2 log(alpha_t / sigma_t)`` increases with ``t``.

Libraries that put noise at t = 1 (diffusers, openpi, lerobot) or that index time by
the noise level (k-diffusion, EDM) are converted at the boundary: ``t_ours = 1 - t_theirs``
for the former, ``path.t_from_sigma_ratio(sigma_edm)`` for the latter.

SDE view. Read in the noising direction (t decreasing) every such path is the marginal of
a linear SDE (Song et al. 2021, "Score-based generative modeling through SDEs", eq. 5).
Writing it in our time, with ``dt < 0`` for noising,

    dx = f(t) x dt + g(t) dW,   f(t) = d/dt log alpha_t,
    g(t)^2 = sigma_t^2 * d/dt lambda_t = 2 sigma_t^2 (alpha'_t/alpha_t - sigma'_t/sigma_t),

and generation (t increasing) follows the reverse SDE
``dx = [v(x, t) + (g^2 / 2) * score(x, t)] dt + g dW`` whose deterministic part with the
score term dropped is the probability-flow ODE ``dx/dt = v(x, t)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["GaussianPath", "expand_like", "tiny"]


def tiny(dtype: torch.dtype) -> float:
    """Smallest magnitude we divide by for ``dtype`` (keeps both ends of [0, 1] finite)."""
    return 1e-30 if dtype == torch.float64 else 1e-12


def expand_like(coef: Tensor, x: Tensor) -> Tensor:
    """Append trailing singleton dims so a per-sample ``(B,)`` or per-token ``(B, L)``
    coefficient broadcasts against ``x`` of shape ``(B, ...)``."""
    coef = torch.as_tensor(coef, dtype=x.dtype, device=x.device)
    if coef.ndim > x.ndim:
        raise ValueError(f"time of shape {tuple(coef.shape)} has more dims than x {tuple(x.shape)}")
    return coef.reshape(tuple(coef.shape) + (1,) * (x.ndim - coef.ndim))  # 0-dim x: 0-dim


class GaussianPath:
    """Base class of affine Gaussian paths ``x_t = alpha_t x_1 + sigma_t x_0``.

    Subclasses implement :meth:`alpha`, :meth:`sigma`, :meth:`d_alpha`, :meth:`d_sigma`;
    closed forms of :meth:`t_from_log_snr` are optional (a bisection is the fallback).

    Attributes:
        name: registry name.
        t_min: smallest t at which the path is well defined for sampling (the prior end).
        t_max: largest t (the data end); ``sigma(t_max)`` may be exactly 0.
    """

    name: str = "gaussian"
    t_min: float = 0.0
    t_max: float = 1.0

    # -- schedule ---------------------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        """Signal coefficient ``alpha_t``."""
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        """Noise coefficient ``sigma_t``."""
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        """Time derivative ``d alpha_t / dt``."""
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        """Time derivative ``d sigma_t / dt``."""
        raise NotImplementedError

    # -- derived quantities -----------------------------------------------------------
    def log_snr(self, t: Tensor) -> Tensor:
        """``lambda_t = 2 log(alpha_t / sigma_t)`` (+inf where sigma_t = 0)."""
        t = torch.as_tensor(t)
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def sigma_ratio(self, t: Tensor) -> Tensor:
        """EDM noise level ``sigma_t / alpha_t = exp(-lambda_t / 2)`` (Karras et al. 2022)."""
        return torch.exp(-0.5 * self.log_snr(t))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of :meth:`log_snr` (bisection; subclasses override with closed forms)."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        lo = torch.full_like(lam, self.t_min)
        hi = torch.full_like(lam, self.t_max)
        for _ in range(100):  # 2^-100 of [0, 1]: exact to float64
            mid = 0.5 * (lo + hi)
            below = self.log_snr(mid) < lam
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def t_from_sigma_ratio(self, s: Tensor) -> Tensor:
        """t at which ``sigma_t / alpha_t`` equals ``s`` (EDM / k-diffusion noise level)."""
        s = torch.as_tensor(s, dtype=torch.float64)
        return self.t_from_log_snr(-2.0 * torch.log(s))

    def prior_std(self, t: Tensor) -> Tensor:
        """Std of ``x_t`` for unit-variance data: ``sqrt(alpha_t^2 + sigma_t^2)``.

        Samplers start from ``prior_std(t_0) * x_0``. This is exact at the prior end of the
        flow paths, equals 1 for variance-preserving paths and ``sqrt(1 + sigma_max^2)`` for
        variance-exploding ones (diffusers' ``init_noise_sigma``).
        """
        t = torch.as_tensor(t)
        return torch.sqrt(self.alpha(t) ** 2 + self.sigma(t) ** 2)

    # -- SDE view (Song et al. 2021, eq. 5, written in our time) ------------------------
    def drift_coef(self, t: Tensor) -> Tensor:
        """``f(t) = d/dt log alpha_t`` of the linear SDE ``dx = f x dt + g dW``."""
        return self.d_alpha(t) / self.alpha(t).clamp_min(tiny(torch.as_tensor(t).dtype))

    def diffusion_sq(self, t: Tensor) -> Tensor:
        """``g(t)^2 = 2 sigma_t^2 (alpha'_t/alpha_t - sigma'_t/sigma_t)`` (non-negative)."""
        t = torch.as_tensor(t)
        eps = tiny(t.dtype)
        a, s = self.alpha(t), self.sigma(t)
        g2 = 2.0 * (s * s * self.d_alpha(t) / a.clamp_min(eps) - s * self.d_sigma(t))
        return g2.clamp_min(0.0)

    def sample_xt(self, x1: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        """Draw ``x_t = alpha_t x_1 + sigma_t x_0`` for per-sample or per-token ``t``."""
        return expand_like(self.alpha(t), x1) * x1 + expand_like(self.sigma(t), x1) * x0

    def target_velocity(self, x1: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        """Conditional velocity ``u_t = alpha'_t x_1 + sigma'_t x_0`` (Lipman et al. 2023)."""
        return expand_like(self.d_alpha(t), x1) * x1 + expand_like(self.d_sigma(t), x1) * x0

    def __repr__(self) -> str:
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        inner = ", ".join(f"{k}={v!r}" for k, v in fields.items() if not isinstance(v, Tensor))
        return f"{type(self).__name__}({inner})"


class CallablePath(GaussianPath):
    """Generic affine path from user functions ``alpha(t)`` and ``sigma(t)``.

    Derivatives come from the given ``d_alpha``/``d_sigma`` or, if omitted, from autograd.

    Args:
        alpha: callable ``t -> alpha_t`` (torch ops, elementwise).
        sigma: callable ``t -> sigma_t``.
        d_alpha: optional derivative of ``alpha``.
        d_sigma: optional derivative of ``sigma``.
        t_min: smallest usable t. t_max: largest usable t.
    """

    name = "affine"

    def __init__(
        self,
        alpha: Callable[[Tensor], Tensor],
        sigma: Callable[[Tensor], Tensor],
        d_alpha: Callable[[Tensor], Tensor] | None = None,
        d_sigma: Callable[[Tensor], Tensor] | None = None,
        t_min: float = 0.0,
        t_max: float = 1.0,
    ) -> None:
        self._alpha, self._sigma = alpha, sigma
        self._d_alpha, self._d_sigma = d_alpha, d_sigma
        self.t_min, self.t_max = float(t_min), float(t_max)
        probe = torch.linspace(t_min, t_max, 33, dtype=torch.float64)
        a, s = alpha(probe), sigma(probe)
        if not (torch.all(torch.isfinite(a)) and torch.all(torch.isfinite(s))):
            raise ValueError("affine path: alpha(t)/sigma(t) must be finite on [t_min, t_max]")
        if torch.any(a < 0) or torch.any(s < 0):
            raise ValueError("affine path: alpha(t) and sigma(t) must be non-negative")
        snr = torch.log(a) - torch.log(s)
        if torch.any(snr[1:] < snr[:-1]):
            raise ValueError(
                "affine path: alpha/sigma must increase with t (t = 0 is noise, t = 1 is data)"
            )

    @staticmethod
    def _grad(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
        with torch.enable_grad():
            tt = torch.as_tensor(t).detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(fn(tt).sum(), tt)
        return g

    def alpha(self, t: Tensor) -> Tensor:
        return self._alpha(torch.as_tensor(t))

    def sigma(self, t: Tensor) -> Tensor:
        return self._sigma(torch.as_tensor(t))

    def d_alpha(self, t: Tensor) -> Tensor:
        return self._d_alpha(t) if self._d_alpha else self._grad(self._alpha, t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return self._d_sigma(t) if self._d_sigma else self._grad(self._sigma, t)
