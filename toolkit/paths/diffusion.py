"""Diffusion paths: VP (continuous and discrete DDPM betas), sub-VP, VE (SMLD) and EDM.

All are written in the toolkit's time: t = 0 is the prior, t = 1 is data. The literature's
diffusion time is ``s = 1 - t``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from toolkit.paths.base import GaussianPath, tiny


def _t(t) -> Tensor:
    t = torch.as_tensor(t)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


class VPPath(GaussianPath):
    """Continuous variance-preserving path of the VP-SDE (Song et al. 2021, eq. 33).

    With diffusion time ``s = 1 - t`` and ``beta(s) = beta_min + s (beta_max - beta_min)``:
    ``log alpha_t = -1/4 s^2 (beta_max - beta_min) - 1/2 s beta_min``,
    ``sigma_t = sqrt(1 - alpha_t^2)``.

    Args:
        beta_min: beta at the data end. beta_max: beta at the prior end.
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not 0 < beta_min < beta_max:
            raise ValueError(f"vp path: need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def log_alpha(self, t: Tensor) -> Tensor:
        s = 1.0 - _t(t)
        return -0.25 * s * s * (self.beta_max - self.beta_min) - 0.5 * s * self.beta_min

    def beta(self, t: Tensor) -> Tensor:
        """Instantaneous ``beta(s)`` at diffusion time ``s = 1 - t``."""
        return self.beta_min + (1.0 - _t(t)) * (self.beta_max - self.beta_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def d_alpha(self, t: Tensor) -> Tensor:
        return self.alpha(t) * 0.5 * self.beta(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        t = _t(t)
        a, s = self.alpha(t), self.sigma(t)
        return -a * self.d_alpha(t) / s.clamp_min(tiny(t.dtype))

    def log_snr(self, t: Tensor) -> Tensor:
        la = self.log_alpha(t)
        return 2.0 * la - torch.log(-torch.expm1(2.0 * la))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # alpha^2 = sigmoid(lambda); solve the quadratic in s for log alpha.
        lam = torch.as_tensor(lam, dtype=torch.float64)
        log_a = -0.5 * torch.nn.functional.softplus(-lam)
        db = self.beta_max - self.beta_min
        s = (-0.5 * self.beta_min + torch.sqrt(0.25 * self.beta_min**2 - db * log_a)) / (0.5 * db)
        return (1.0 - s).clamp(0.0, 1.0)


class SubVPPath(VPPath):
    """sub-VP path (Song et al. 2021, eq. 34): VP mean, ``sigma_t = 1 - alpha_t^2``."""

    name = "subvp"

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(2.0 * self.log_alpha(t))

    def d_sigma(self, t: Tensor) -> Tensor:
        return -2.0 * self.alpha(t) * self.d_alpha(t)

    def log_snr(self, t: Tensor) -> Tensor:
        la = self.log_alpha(t)
        return 2.0 * la - 2.0 * torch.log(-torch.expm1(2.0 * la))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        return GaussianPath.t_from_log_snr(self, lam)


def ddpm_betas(schedule: str, num_steps: int, beta_start: float, beta_end: float) -> Tensor:
    """DDPM beta schedules (float64), matching diffusers' ``beta_schedule`` names.

    ``linear`` (Ho et al. 2020), ``scaled_linear`` (latent diffusion: linear in sqrt(beta)),
    ``cosine`` (Nichol & Dhariwal 2021, eq. 17, betas clipped at 0.999).
    """
    n = num_steps
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    if schedule in ("cosine", "squaredcos_cap_v2"):

        def abar(u: Tensor) -> Tensor:
            return torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        i = torch.arange(n, dtype=torch.float64)
        return (1 - abar((i + 1) / n) / abar(i / n)).clamp(max=0.999)
    raise ValueError(
        f"unknown beta schedule {schedule!r}; valid: 'linear', 'scaled_linear', 'cosine'"
    )


class DiscreteVPPath(GaussianPath):
    """VP path of a discrete DDPM schedule, continuous in t.

    DDPM timestep ``k`` (0 = cleanest, N-1 = noisiest) sits at ``t_k = 1 - (k + 1) / N``;
    ``log alpha`` is interpolated linearly between knots and reaches 0 at t = 1, the
    continuous-time view of DPM-Solver (Lu et al. 2022, sec. 3.4). Use :meth:`timestep` to
    feed networks trained on integer timesteps (diffusers' UNets).

    Args:
        schedule: ``linear`` | ``scaled_linear`` | ``cosine``.
        num_train_timesteps: N.
        beta_start / beta_end: schedule endpoints (ignored for cosine).
        betas: explicit betas (overrides ``schedule``).
    """

    name = "vp_discrete"

    def __init__(
        self,
        schedule: str = "linear",
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        betas: Tensor | list[float] | None = None,
    ) -> None:
        if betas is None:
            betas = ddpm_betas(schedule, num_train_timesteps, beta_start, beta_end)
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or not torch.all((betas > 0) & (betas < 1)):
            raise ValueError("vp_discrete path: betas must be a 1-D sequence in (0, 1)")
        self.schedule, self.num_train_timesteps = schedule, len(betas)
        self.betas = betas
        log_abar = torch.cumsum(torch.log1p(-betas), 0)
        # knots at p = s * N = 0, 1, ..., N with log alpha = 0 at p = 0
        self._knots = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * log_abar])
        self.alphas_cumprod = torch.exp(log_abar)

    def _interp(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _t(t)
        n = self.num_train_timesteps
        knots = self._knots.to(device=t.device, dtype=t.dtype)
        p = ((1.0 - t) * n).clamp(0.0, float(n))
        j = p.floor().clamp(max=n - 1).long()
        w = p - j.to(t.dtype)
        lo, hi = knots[j], knots[j + 1]
        return lo + w * (hi - lo), (hi - lo) * n  # log alpha, d log alpha / ds

    def timestep(self, t: Tensor) -> Tensor:
        """Continuous DDPM timestep ``k = N (1 - t) - 1`` for a network's time input."""
        return self.num_train_timesteps * (1.0 - _t(t)) - 1.0

    def t_from_timestep(self, k: Tensor) -> Tensor:
        """Inverse of :meth:`timestep`: ``t = 1 - (k + 1) / N``."""
        return 1.0 - (torch.as_tensor(k, dtype=torch.float64) + 1.0) / self.num_train_timesteps

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self._interp(t)[0])

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2.0 * self._interp(t)[0]))

    def d_alpha(self, t: Tensor) -> Tensor:
        la, dla_ds = self._interp(t)
        return -torch.exp(la) * dla_ds

    def d_sigma(self, t: Tensor) -> Tensor:
        t = _t(t)
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t).clamp_min(tiny(t.dtype))

    def log_snr(self, t: Tensor) -> Tensor:
        la = self._interp(t)[0]
        return 2.0 * la - torch.log(-torch.expm1(2.0 * la))


class VEPath(GaussianPath):
    """Variance-exploding path of SMLD/NCSN (Song & Ermon 2019; Song et al. 2021, eq. 31).

    ``alpha_t = 1``, ``sigma_t = sigma_min (sigma_max / sigma_min)^(1 - t)`` (geometric).

    Args:
        sigma_min: noise level at t = 1. sigma_max: noise level at t = 0 (the prior std).
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"ve path: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}"
            )
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(sigma_max / sigma_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(_t(t))

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp((1.0 - _t(t)) * self._log_ratio)

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(_t(t))

    def d_sigma(self, t: Tensor) -> Tensor:
        return -self._log_ratio * self.sigma(t)

    def log_snr(self, t: Tensor) -> Tensor:
        return -2.0 * (math.log(self.sigma_min) + (1.0 - _t(t)) * self._log_ratio)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        lam = torch.as_tensor(lam, dtype=torch.float64)
        return 1.0 - (-0.5 * lam - math.log(self.sigma_min)) / self._log_ratio


class EDMPath(GaussianPath):
    """EDM path (Karras et al. 2022): ``alpha_t = 1`` and ``sigma`` on the rho-warped grid

    ``sigma_t = (sigma_max^(1/rho) + t (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    (their eq. 5), so uniform steps in t are Karras steps. ``sigma_min = 0`` is allowed
    (data exactly at t = 1).

    Args:
        sigma_min / sigma_max: noise levels at t = 1 / t = 0. rho: warping exponent.
    """

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> None:
        if not 0 <= sigma_min < sigma_max or rho <= 0:
            raise ValueError("edm path: need 0 <= sigma_min < sigma_max and rho > 0")
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)
        self._a = sigma_max ** (1 / rho)
        self._b = sigma_min ** (1 / rho) - self._a

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(_t(t))

    def sigma(self, t: Tensor) -> Tensor:
        return (self._a + _t(t) * self._b).clamp_min(0.0) ** self.rho

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(_t(t))

    def d_sigma(self, t: Tensor) -> Tensor:
        return self.rho * self._b * (self._a + _t(t) * self._b).clamp_min(0.0) ** (self.rho - 1)

    def log_snr(self, t: Tensor) -> Tensor:
        return -2.0 * torch.log(self.sigma(t))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        s = torch.exp(-0.5 * torch.as_tensor(lam, dtype=torch.float64))
        return ((s ** (1 / self.rho) - self._a) / self._b).clamp(0.0, 1.0)
