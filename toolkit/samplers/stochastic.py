"""Stochastic samplers: DDPM ancestral, Euler-Maruyama, EDM (Karras Alg. 2), predictor-corrector
and annealed Langevin dynamics, for any affine Gaussian path (t = 0 noise, t = 1 data).

All draw noise only from the ``generator`` argument (``torch.Generator``), so the same seed
gives the same samples. The reverse-time SDE of a path (see :mod:`toolkit.paths.base`) is

    dx = [v(x, t) + (g(t)^2 / 2) score(x, t)] dt + g(t) dW,
    g^2 = 2 sigma^2 (alpha'/alpha - sigma'/sigma)    # Song et al. 2021 (score SDE), eq. 6

An interval onto a zero-noise end (``den.ends_at_data``) is a denoising step. At a flow path's
prior end (``alpha = 0``) g^2 is infinite (the SDE forgets its state at once), so an interval
that starts there takes the exact DDPM posterior step instead of an SDE step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from toolkit.field import Denoiser
from toolkit.registry import unknown_name_error
from toolkit.samplers.common import Callback, report
from toolkit.samplers.multistep import ddim_step, randn_like, schedule
from toolkit.samplers.registry import register

__all__ = ["ddpm", "euler_maruyama", "edm", "pc", "langevin"]


def _check(name: str, value: float, low: float = 0.0, strict: bool = False) -> float:
    value = float(value)
    bad = not math.isfinite(value) or value < low or (strict and value == low)
    if bad:
        op = ">" if strict else ">="
        raise ValueError(f"option {name} must be a finite number {op} {low}, got {value!r}")
    return value


def _check_count(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"option {name} must be an integer >= {low}, got {value!r}")
    return value


def _denoise(den: Denoiser, x: Tensor, t: float, a_next: float) -> Tensor:
    """Step onto sigma = 0: ``x_1 = alpha_1 E[x_1 | x_t]`` (alpha_1 = 1 on every stock path)."""
    return a_next * den.data(x, t)


@register("ddpm", aliases=("ancestral", "ddpm_ancestral"))
def ddpm(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
    callback: Callback = None,
) -> Tensor:
    """Ancestral sampling from the DDPM posterior ``q(x_s | x_t, x1_hat)`` (Ho et al. 2020).

    For an affine path, with ``e^{-h} = alpha_t sigma_s / (alpha_s sigma_t)`` (s the cleaner
    time), the posterior is ``N(alpha_s x1_hat + sigma_s e^{-h} eps_hat, sigma_s^2 (1 - e^{-2h}))``
    (Ho et al. 2020, eq. 6-7, general alpha/sigma), i.e. DDIM with eta = 1. One NFE per step.
    """
    alpha, sigma, lam = schedule(den, ts)
    for i in range(len(ts) - 1):
        pred = den(x, float(ts[i]))
        x = ddim_step(pred, alpha[i + 1], sigma[i + 1], lam[i + 1] - lam[i], 1.0, generator)
        report(callback, i, float(ts[i + 1]), x)
    return x


def _em_step(
    den: Denoiser, x: Tensor, t: float, h: float, churn: float,
    generator: torch.Generator | None,
) -> Tensor:
    """``x + h [v + churn g^2/2 score] + sqrt(churn g^2 h) z`` (Euler-Maruyama, order 1/2)."""
    pred = den(x, t)
    g2 = float(den.path.diffusion_sq(torch.tensor(t, dtype=torch.float64)))
    drift = pred.velocity
    if churn > 0:
        drift = drift + (0.5 * churn * g2) * pred.score
    out = x + h * drift
    if churn > 0 and g2 > 0:
        out = out + math.sqrt(churn * g2 * h) * randn_like(x, generator)
    return out


@register("euler_maruyama", aliases=("em", "sde_euler"))
def euler_maruyama(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
    callback: Callback = None, churn: float = 1.0,
) -> Tensor:
    """Euler-Maruyama on ``dx = [v + churn (g^2/2) score] dt + sqrt(churn) g dW``.

    Every ``churn >= 0`` has the path's marginals (the score term and the noise cancel in the
    Fokker-Planck equation); ``churn = 1`` is the reverse-time SDE, ``churn = 0`` the PF-ODE
    (Euler). An interval starting at ``alpha = 0`` takes the DDIM step with
    ``eta = sqrt(churn)`` (its continuous limit is this SDE); one onto sigma = 0 denoises.

    Args:
        churn: multiplier of g^2 (>= 0).
    """
    churn = _check("churn", churn)
    alpha, sigma, lam = schedule(den, ts)
    for i in range(len(ts) - 1):
        t, t_next = float(ts[i]), float(ts[i + 1])
        if den.ends_at_data(t_next):
            x = _denoise(den, x, t, alpha[i + 1])
        elif alpha[i] <= 0.0:
            x = ddim_step(den(x, t), alpha[i + 1], sigma[i + 1], lam[i + 1] - lam[i],
                          math.sqrt(churn), generator)
        else:
            x = _em_step(den, x, t, t_next - t, churn, generator)
        report(callback, i, t_next, x)
    return x


@register("edm", aliases=("edm_sde", "karras_sde"))
def edm(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
    callback: Callback = None, s_churn: float = 0.0, s_tmin: float = 0.0,
    s_tmax: float = math.inf, s_noise: float = 1.0,
) -> Tensor:
    """Karras et al. 2022, Alg. 2 (stochastic Heun) in the path's EDM noise level.

    With ``r = sigma_t / alpha_t`` and ``x~ = x / alpha_t`` every affine path follows the EDM ODE
    ``dx~/dr = (x~ - D(x~; r)) / r = eps_hat``. Per step: ``gamma = min(S_churn/N, sqrt2 - 1)``
    if ``r_i in [S_tmin, S_tmax]``, ``r^ = r_i (1 + gamma)`` (capped at the path's largest noise
    level, time ``t^ = path.t_from_sigma_ratio(r^)``), ``x~^ = x~_i + sqrt(r^2 - r_i^2) S_noise z``,
    then Heun from ``r^`` to ``r_{i+1}`` (Euler when ``r_{i+1} = 0``). With ``S_churn = 0`` this
    is the deterministic Heun sampler of Karras et al. 2022, Alg. 1. NFE: 2 per step, 1 for a
    final step to sigma = 0 and for a step from ``alpha = 0`` (infinite ``r``: Euler = DDIM).

    Args:
        s_churn: total stochasticity S_churn (>= 0). s_tmin / s_tmax: noise-level window
            (in ``sigma/alpha`` units) where churn applies. s_noise: noise inflation S_noise.
    """
    s_churn, s_noise = _check("s_churn", s_churn), _check("s_noise", s_noise)
    s_tmin = _check("s_tmin", s_tmin)
    if not s_tmax >= s_tmin:
        raise ValueError(f"option s_tmax must be >= s_tmin, got {s_tmax!r} < {s_tmin!r}")
    path = den.path
    alpha, sigma, _ = schedule(den, ts)
    n = len(ts) - 1
    gamma_max = min(s_churn / n, math.sqrt(2.0) - 1.0)
    ratio = [s / a if a > 0 else math.inf for a, s in zip(alpha, sigma)]
    r_top = float(path.sigma_ratio(torch.tensor(path.t_min, dtype=torch.float64)))
    for i in range(n):
        t, t_next, r, r_next = float(ts[i]), float(ts[i + 1]), ratio[i], ratio[i + 1]
        if not math.isfinite(r):  # alpha = 0: x~ = D + r_next eps_hat exactly (DDIM)
            x = ddim_step(den(x, t), alpha[i + 1], sigma[i + 1], math.inf, 0.0, None)
            report(callback, i, t_next, x)
            continue
        xt = x / alpha[i]  # EDM state x~, (B, ...)
        r_hat, t_hat, a_hat = r, t, alpha[i]
        gamma = gamma_max if s_tmin <= r <= s_tmax else 0.0
        if gamma > 0.0 and r < r_top:
            t_hat = float(path.t_from_sigma_ratio(torch.tensor(min(r * (1 + gamma), r_top))))
            t_hat = min(t_hat, t)
            r_hat = float(path.sigma_ratio(torch.tensor(t_hat, dtype=torch.float64)))
            a_hat = float(path.alpha(torch.tensor(t_hat, dtype=torch.float64)))
            noise = math.sqrt(max(r_hat * r_hat - r * r, 0.0)) * s_noise
            xt = xt + noise * randn_like(xt, generator)
        d = den(a_hat * xt, t_hat).noise  # (x~ - D) / r = eps_hat
        xt_next = xt + (r_next - r_hat) * d
        if r_next > 0.0 and not den.ends_at_data(t_next):
            d2 = den(alpha[i + 1] * xt_next, t_next).noise
            xt_next = xt + (r_next - r_hat) * 0.5 * (d + d2)
        else:
            xt_next = xt - r_hat * d  # = D(x~^; r^): Euler onto r = 0 is denoising
        x = alpha[i + 1] * xt_next
        report(callback, i, t_next, x)
    return x


_PREDICTORS = ("reverse_diffusion", "euler_maruyama", "ancestral")


@register("pc", aliases=("predictor_corrector",))
def pc(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
    callback: Callback = None, predictor: str = "reverse_diffusion", snr: float = 0.16,
    n_corrector: int = 1,
) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Alg. 2 (VE) / Alg. 3 (VP)).

    Predictor from ``t`` to ``t'`` with the path's one-step forward kernel ``x_t = a x_t' + b z``,
    ``a = alpha_t / alpha_t'``, ``b^2 = sigma_t^2 - a^2 sigma_t'^2``:

    - ``reverse_diffusion``: ``x' = (2 - a) x + b^2 score(x, t) + b z`` (their eq. 46/47);
    - ``euler_maruyama``: the reverse SDE's Euler-Maruyama step;
    - ``ancestral``: the DDPM posterior step (exact for any step size; best on flow paths).

    Corrector at ``t'``: ``n_corrector`` Langevin steps ``x <- x + e score + sqrt(2 e) z`` with
    ``e = 2 a^2 (snr ||z|| / ||score||)^2`` (``a^2 = 1 - beta_i`` for VP, 1 for VE), the norms
    averaged over the batch as in Song et al.'s code, so results depend on the batch.
    No corrector follows a final denoising step. NFE per step: ``1 + n_corrector``.

    Args:
        predictor: one of ``reverse_diffusion | euler_maruyama | ancestral``.
        snr: signal-to-noise ratio r of the corrector (> 0).
        n_corrector: Langevin steps per noise level (>= 0).
    """
    if predictor not in _PREDICTORS:
        raise unknown_name_error("predictor", predictor, _PREDICTORS)
    snr = _check("snr", snr, strict=True)
    n_corrector = _check_count("n_corrector", n_corrector, 0)
    alpha, sigma, lam = schedule(den, ts)
    for i in range(len(ts) - 1):
        t, t_next = float(ts[i]), float(ts[i + 1])
        if den.ends_at_data(t_next):
            x = _denoise(den, x, t, alpha[i + 1])
            report(callback, i, t_next, x)
            continue
        a = alpha[i] / alpha[i + 1]
        if predictor == "ancestral" or alpha[i] <= 0.0:
            x = ddim_step(den(x, t), alpha[i + 1], sigma[i + 1], lam[i + 1] - lam[i], 1.0,
                          generator)
        elif predictor == "euler_maruyama":
            x = _em_step(den, x, t, t_next - t, 1.0, generator)
        else:
            b2 = max(sigma[i] ** 2 - (a * sigma[i + 1]) ** 2, 0.0)
            score = den(x, t).score
            x = (2.0 - a) * x + b2 * score + math.sqrt(b2) * randn_like(x, generator)
        for _ in range(n_corrector):
            score = den(x, t_next).score
            z = randn_like(x, generator)
            # batch-averaged norms as in the reference implementation (score_sde): a
            # per-sample ||score|| can vanish at a mode in low dimension and blow the step up
            z_norm = z.flatten(1).norm(dim=-1).mean()
            s_norm = score.flatten(1).norm(dim=-1).mean().clamp_min(1e-30)
            step = float(2.0 * a * a * (snr * z_norm / s_norm) ** 2)
            x = x + step * score + math.sqrt(2.0 * step) * z
        report(callback, i, t_next, x)
    return x


@register("langevin", aliases=("annealed_langevin", "ald"))
def langevin(
    den: Denoiser, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None,
    callback: Callback = None, n_steps_each: int = 100, step_lr: float = 2e-5,
) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1) over the grid's noise levels.

    At each level ``t`` (noise ``sigma_t``), ``n_steps_each`` steps
    ``x <- x + (a_i / 2) score(x, t) + sqrt(a_i) z`` with ``a_i = eps sigma_t^2 / sigma_L^2``
    (``sigma_L``: the last level). If the grid ends at sigma = 0 the levels are ``ts[:-1]``
    and a final denoising step ``E[x_1 | x]`` (Song & Ermon 2020) follows; otherwise the
    levels are all of ``ts``. NFE = levels * n_steps_each (+ 1).

    Args:
        n_steps_each: Langevin steps T per level (>= 1).
        step_lr: base step size eps (> 0).
    """
    n_steps_each = _check_count("n_steps_each", n_steps_each, 1)
    step_lr = _check("step_lr", step_lr, strict=True)
    alpha, sigma, _ = schedule(den, ts)
    clean_end = den.ends_at_data(float(ts[-1]))
    levels = len(ts) - 1 if clean_end else len(ts)
    s_last = sigma[levels - 1]
    for i in range(levels):
        t = float(ts[i])
        step = step_lr * (sigma[i] / s_last) ** 2
        for _ in range(n_steps_each):
            score = den(x, t).score
            x = x + (0.5 * step) * score + math.sqrt(step) * randn_like(x, generator)
        report(callback, i, t, x)
    if clean_end:
        x = _denoise(den, x, float(ts[levels - 1]), alpha[-1])
    return x
