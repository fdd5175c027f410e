"""Training-time samplers: distributions of ``t`` in [0, 1] for diffusion / flow objectives.

All samplers return times in the toolkit's convention: **t = 0 is the prior (noise), t = 1 is
data**. Papers that put noise at t = 1 (SD3, openpi / pi0, diffusers) are converted with
``t_ours = 1 - t_theirs``; noise-level samplers (EDM) go through
:meth:`~toolkit.paths.GaussianPath.t_from_sigma_ratio`.

Every sampler is a callable ``sampler(shape, generator=None, device=None, dtype=...)``; pass
an int ``B`` for per-sample times ``(B,)`` or a tuple ``(B, L)`` for per-token times
(Diffusion Forcing, Chen et al. 2024). Continuous samplers also expose their analytic
``cdf(t)`` (used by the tests' Kolmogorov-Smirnov checks).

Example:
    >>> t = timesteps.get("logit_normal", m=0.0, s=1.0)(256)          # (256,)
    >>> t = timesteps.get("uniform")((8, 16), generator=g)             # (8, 16) per token
"""

from __future__ import annotations

import math
from typing import Any

import torch
from scipy import special
from torch import Tensor

from toolkit import paths as paths_mod
from toolkit.registry import Registry

Shape = int | tuple[int, ...] | torch.Size


def _shape(shape: Shape) -> tuple[int, ...]:
    out = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    if len(out) == 0 or any(s <= 0 for s in out):
        raise ValueError(f"time shape must be non-empty with positive sizes, got {shape}")
    return out


def _normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


class TimeSampler:
    """Base class: draws t of a given shape; subclasses implement :meth:`_draw64`."""

    name = "base"

    def __call__(
        self,
        shape: Shape,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Draw times of ``shape`` (``B`` or ``(B, L)``) in [0, 1]."""
        t = self._draw64(_shape(shape), generator).clamp(0.0, 1.0)
        return t.to(device=device, dtype=dtype)

    def _uniform(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        return torch.rand(shape, generator=generator, dtype=torch.float64)

    def _draw64(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def cdf(self, t: Tensor) -> Tensor:
        """Analytic CDF ``P(T <= t)`` in our time (float64)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({inner})"


class Uniform(TimeSampler):
    """``t ~ U[t_min, t_max]`` (Lipman et al. 2023; Ho et al. 2020 in continuous form)."""

    name = "uniform"

    def __init__(self, t_min: float = 0.0, t_max: float = 1.0) -> None:
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"uniform: need 0 <= t_min < t_max <= 1, got {t_min}, {t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)

    def _draw64(self, shape, generator):
        return self.t_min + (self.t_max - self.t_min) * self._uniform(shape, generator)

    def cdf(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return ((t - self.t_min) / (self.t_max - self.t_min)).clamp(0.0, 1.0)


class LogitNormal(TimeSampler):
    """Logit-normal times (Esser et al. 2024, SD3, eq. 19).

    SD3 samples its noise-time ``t_sd3 = sigmoid(u)``, ``u ~ N(m, s^2)``, where ``t_sd3 = 1``
    is pure noise. In our time ``t = 1 - t_sd3 = sigmoid(-u)``. ``m`` keeps SD3's meaning:
    **m > 0 puts more mass at high noise (our t near 0)**; m = 0 is symmetric about 1/2.
    CDF: ``P(t <= x) = Phi((logit(x) + m) / s)``.

    Args:
        m: location of ``u`` (SD3's sign convention). s: scale of ``u`` (> 0).
    """

    name = "logit_normal"

    def __init__(self, m: float = 0.0, s: float = 1.0) -> None:
        if s <= 0:
            raise ValueError(f"logit_normal: s must be > 0, got {s}")
        self.m, self.s = float(m), float(s)

    def _draw64(self, shape, generator):
        u = self.m + self.s * torch.randn(shape, generator=generator, dtype=torch.float64)
        return torch.sigmoid(-u)

    def cdf(self, t):
        t = torch.as_tensor(t, dtype=torch.float64).clamp(1e-300, 1.0 - 1e-16)
        return _normal_cdf((torch.logit(t) + self.m) / self.s)


class LogNormalSigma(TimeSampler):
    """EDM's training noise distribution (Karras et al. 2022, Table 1):
    ``ln sigma ~ N(P_mean, P_std^2)`` with ``sigma = sigma_t / alpha_t``.

    Mapped to our time by ``t = path.t_from_sigma_ratio(sigma)`` (sigma decreases with t), so
    ``P(t <= x) = 1 - Phi((ln sigma_ratio(x) - P_mean) / P_std)``. Noise levels outside the
    path's range are clamped to its ends. The default path is the linear one, whose
    ``sigma / alpha = (1 - t) / t`` covers (0, inf) so no clamping happens.

    Args:
        p_mean: mean of ln sigma. p_std: std of ln sigma. path: path name or object.
    """

    name = "lognormal_sigma"

    def __init__(
        self, p_mean: float = -1.2, p_std: float = 1.2, path: str | Any = "linear"
    ) -> None:
        if p_std <= 0:
            raise ValueError(f"lognormal_sigma: p_std must be > 0, got {p_std}")
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        self.path = paths_mod.get(path)

    def _draw64(self, shape, generator):
        ln_sigma = self.p_mean + self.p_std * torch.randn(shape, generator=generator,
                                                          dtype=torch.float64)
        # lambda = -2 ln sigma; t_from_log_snr clamps to the path's range
        return self.path.t_from_log_snr(-2.0 * ln_sigma).to(torch.float64)

    def cdf(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        ln_s = -0.5 * self.path.log_snr(t)
        return 1.0 - _normal_cdf((ln_s - self.p_mean) / self.p_std)


class BetaPi0(TimeSampler):
    """pi0's flow-matching time distribution (Black et al. 2024, sec. 4 / appendix).

    The paper (data at tau = 1, like us) uses ``p(tau) = Beta((s - tau)/s; a, b)`` with
    ``a = 1.5, b = 1, s = 0.999``: draw ``y ~ Beta(a, b)`` and set ``t = s (1 - y)``, so
    high noise (our t near 0) is emphasised and ``t <= s``. openpi's code puts noise at 1
    and draws ``u = s y + (1 - s)``; our ``t = 1 - u`` is the same ``s (1 - y)``.
    CDF: ``P(t <= x) = 1 - I_{1 - x/s}(a, b)`` (regularized incomplete beta).

    Args:
        a / b: Beta parameters. s: cutoff (largest t).
    """

    name = "beta_pi0"

    def __init__(self, a: float = 1.5, b: float = 1.0, s: float = 0.999) -> None:
        if a <= 0 or b <= 0 or not 0 < s <= 1:
            raise ValueError(f"beta_pi0: need a, b > 0 and 0 < s <= 1, got {a}, {b}, {s}")
        self.a, self.b, self.s = float(a), float(b), float(s)

    def _draw64(self, shape, generator):
        u = self._uniform(shape, generator)
        y = torch.from_numpy(special.betaincinv(self.a, self.b, u.numpy()))  # inverse CDF
        return self.s * (1.0 - y)

    def cdf(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        y = (1.0 - t / self.s).clamp(0.0, 1.0)
        return 1.0 - torch.from_numpy(special.betainc(self.a, self.b, y.numpy()))


class Discrete(TimeSampler):
    """DDPM's integer timesteps (Ho et al. 2020): ``k ~ U{0, ..., N-1}`` mapped to our time
    by ``t = 1 - (k + 1) / N`` (:meth:`~toolkit.paths.DiscreteVPPath.t_from_timestep`).

    Use :meth:`timesteps` to get the integers ``k`` themselves (e.g. for diffusers UNets).

    Args:
        num_train_timesteps: N (ignored if ``path`` is given). path: a ``DiscreteVPPath``.
    """

    name = "discrete"

    def __init__(
        self, num_train_timesteps: int = 1000, path: paths_mod.DiscreteVPPath | None = None
    ) -> None:
        if path is not None and not isinstance(path, paths_mod.DiscreteVPPath):
            raise TypeError(f"discrete: path must be a DiscreteVPPath, got {type(path).__name__}")
        n = path.num_train_timesteps if path is not None else int(num_train_timesteps)
        if n < 1:
            raise ValueError(f"discrete: num_train_timesteps must be >= 1, got {n}")
        self.num_train_timesteps = n

    def timesteps(self, shape: Shape, generator: torch.Generator | None = None) -> Tensor:
        """Integer DDPM timesteps ``k`` of ``shape`` (int64)."""
        return torch.randint(0, self.num_train_timesteps, _shape(shape), generator=generator)

    def t_from_timestep(self, k: Tensor) -> Tensor:
        """``t = 1 - (k + 1) / N`` (same as ``DiscreteVPPath.t_from_timestep``)."""
        return 1.0 - (torch.as_tensor(k, dtype=torch.float64) + 1.0) / self.num_train_timesteps

    def _draw64(self, shape, generator):
        return self.t_from_timestep(self.timesteps(shape, generator))

    def cdf(self, t):
        # P(1 - (k+1)/N <= x) = P(k >= N (1 - x) - 1), k uniform on {0..N-1}
        n = self.num_train_timesteps
        t = torch.as_tensor(t, dtype=torch.float64)
        k_min = torch.ceil(n * (1.0 - t) - 1.0 - 1e-9).clamp(0, n)
        return (n - k_min) / n


_REGISTRY = Registry("time sampler")
_REGISTRY.register("uniform", Uniform, aliases=("rand",))
_REGISTRY.register("logit_normal", LogitNormal, aliases=("logitnormal", "sd3"))
_REGISTRY.register("lognormal_sigma", LogNormalSigma, aliases=("edm", "lognormal"))
_REGISTRY.register("beta_pi0", BetaPi0, aliases=("beta", "pi0"))
_REGISTRY.register("discrete", Discrete, aliases=("ddpm",))


def get(name: str | TimeSampler, **kwargs: Any) -> TimeSampler:
    """Build a time sampler by name (see :func:`available`), or return a given one.

    Raises:
        ValueError: unknown name (the message lists valid ones).
    """
    if isinstance(name, TimeSampler):
        if kwargs:
            raise ValueError("timesteps.get: kwargs given together with a sampler object")
        return name
    if callable(name) and not isinstance(name, str):
        return name  # user callable (shape, generator=..., ...) -> t
    cls = _REGISTRY[name]
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise TypeError(f"time sampler {name!r}: {e}") from None


def available() -> list[str]:
    """Canonical names accepted by :func:`get`."""
    return _REGISTRY.names()


__all__ = [
    "TimeSampler", "Uniform", "LogitNormal", "LogNormalSigma", "BetaPi0", "Discrete",
    "get", "available",
]
