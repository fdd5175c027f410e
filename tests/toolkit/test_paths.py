"""Paths: derivatives, log-SNR inverses, SDE view, DDPM parity with diffusers, errors."""

from __future__ import annotations

import math

import pytest
import torch

from toolkit import paths

NAMES = [n for n in paths.available() if n != "affine"]


def make(name: str) -> paths.GaussianPath:
    return paths.get(name)


@pytest.mark.parametrize("name", NAMES)
def test_derivatives_match_finite_differences(name: str) -> None:
    p = make(name)
    # avoid DDPM knots (piecewise-linear log alpha) by sampling between them
    t = torch.linspace(0.031, 0.9713, 17, dtype=torch.float64) + 1.3e-4
    h = 1e-6
    fd_a = (p.alpha(t + h) - p.alpha(t - h)) / (2 * h)
    fd_s = (p.sigma(t + h) - p.sigma(t - h)) / (2 * h)
    torch.testing.assert_close(p.d_alpha(t), fd_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p.d_sigma(t), fd_s, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_log_snr_monotone_and_inverse(name: str) -> None:
    p = make(name)
    t = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    lam = p.log_snr(t)
    assert torch.all(lam[1:] > lam[:-1]), "log-SNR must increase from noise (t=0) to data (t=1)"
    torch.testing.assert_close(p.t_from_log_snr(lam), t, rtol=0, atol=1e-9)
    torch.testing.assert_close(p.t_from_sigma_ratio(p.sigma_ratio(t)), t, rtol=0, atol=1e-9)
    torch.testing.assert_close(lam, 2 * torch.log(p.alpha(t) / p.sigma(t)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_ends_are_finite_and_data_end_is_clean(name: str) -> None:
    p = make(name)
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for f in (p.alpha, p.sigma, p.d_alpha, p.prior_std, p.drift_coef, p.diffusion_sq):
        assert torch.all(torch.isfinite(f(ends))), (name, f.__name__)
    assert float(p.alpha(ends[1])) == pytest.approx(1.0)
    assert float(p.sigma_ratio(ends[1])) <= 0.011  # data end: at most the path's sigma_min


@pytest.mark.parametrize("name", ["vp", "subvp", "vp_discrete", "ve", "edm", "linear", "trig"])
def test_sde_view_reproduces_marginals(name: str) -> None:
    """Euler–Maruyama on the noising SDE dx = f x dt + g dW (t decreasing) from a fixed x_1
    must give mean alpha_t x_1 and std sigma_t (Song et al. 2021, eq. 5)."""
    p = make(name)
    gen = torch.Generator().manual_seed(0)
    n, x1 = 40000, 0.7
    t_stop = 0.35
    ts = torch.linspace(1.0, t_stop, 801, dtype=torch.float64)
    x = torch.full((n,), x1, dtype=torch.float64)
    for i in range(len(ts) - 1):
        t, dt = ts[i], ts[i + 1] - ts[i]  # dt < 0
        tm = t + 0.5 * dt  # midpoint coefficients (g may be singular exactly at t = 1)
        x = (
            x
            + p.drift_coef(tm) * x * dt
            + torch.sqrt(p.diffusion_sq(tm) * -dt)
            * torch.randn(n, dtype=torch.float64, generator=gen)
        )
    tt = torch.tensor(t_stop, dtype=torch.float64)
    scale = float(p.prior_std(tt))
    assert float(x.mean()) == pytest.approx(float(p.alpha(tt)) * x1, abs=0.02 * scale)
    assert float(x.std()) == pytest.approx(float(p.sigma(tt)), rel=0.02)


@pytest.mark.parametrize(
    "schedule,kw",
    [
        ("linear", {}),
        ("scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
        ("cosine", {}),
    ],
)
def test_discrete_vp_matches_diffusers(schedule: str, kw: dict) -> None:
    diffusers = pytest.importorskip("diffusers")
    name = {"cosine": "squaredcos_cap_v2"}.get(schedule, schedule)
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, **kw)
    p = paths.get("vp_discrete", schedule=schedule, **kw)
    k = torch.arange(1000)
    t = p.t_from_timestep(k)
    abar = ref.alphas_cumprod.to(torch.float64)
    torch.testing.assert_close(p.alpha(t) ** 2, abar, rtol=2e-6, atol=1e-9)
    torch.testing.assert_close(
        p.sigma(t) ** 2, 1 - abar, rtol=0, atol=2e-6
    )  # diffusers: float32 cumprod
    torch.testing.assert_close(p.timestep(t), k.to(torch.float64), rtol=0, atol=1e-9)


def test_edm_uniform_t_is_karras_schedule() -> None:
    p = paths.get("edm", sigma_min=0.002, sigma_max=80.0, rho=7.0)
    n = 18
    i = torch.arange(n, dtype=torch.float64)
    # Karras et al. 2022, eq. 5
    ref = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(p.sigma(i / (n - 1)), ref, rtol=1e-12, atol=0)


def test_vp_continuous_matches_song_formula() -> None:
    p = paths.get("vp", beta_min=0.1, beta_max=20.0)
    s = torch.linspace(0, 1, 11, dtype=torch.float64)  # diffusion time
    log_mean = -0.25 * s**2 * 19.9 - 0.5 * s * 0.1  # Song et al. 2021, eq. 33
    torch.testing.assert_close(p.alpha(1 - s), torch.exp(log_mean))
    torch.testing.assert_close(p.sigma(1 - s), torch.sqrt(1 - torch.exp(2 * log_mean)))


def test_linear_and_trig_closed_forms() -> None:
    t = torch.rand(20, dtype=torch.float64)
    lin = paths.get("linear", sigma_min=0.1)
    torch.testing.assert_close(lin.sigma(t), 1 - 0.9 * t)
    torch.testing.assert_close(lin.alpha(t), t)
    trig = paths.get("trig")
    torch.testing.assert_close(trig.alpha(t) ** 2 + trig.sigma(t) ** 2, torch.ones_like(t))


def test_affine_path_from_user_functions_with_autograd_derivatives() -> None:
    p = paths.get("affine", alpha=lambda t: t**2, sigma=lambda t: 1 - t**2, t_min=0.0, t_max=1.0)
    t = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    torch.testing.assert_close(p.d_alpha(t), 2 * t)
    torch.testing.assert_close(p.d_sigma(t), -2 * t)
    lam = p.log_snr(t)
    torch.testing.assert_close(p.t_from_log_snr(lam), t, atol=1e-9, rtol=0)


def test_affine_path_rejects_decreasing_snr() -> None:
    with pytest.raises(ValueError, match="increase with t"):
        paths.get("affine", alpha=lambda t: 1 - t, sigma=lambda t: t)


def test_unknown_path_lists_valid_names() -> None:
    with pytest.raises(ValueError) as e:
        paths.get("lineer")
    msg = str(e.value)
    assert "'lineer'" in msg and "linear" in msg and "Did you mean 'linear'" in msg


def test_bad_constructor_argument_is_named() -> None:
    with pytest.raises(TypeError, match="path 'vp'"):
        paths.get("vp", beta_mn=0.1)
    with pytest.raises(ValueError, match="sigma_min"):
        paths.get("linear", sigma_min=1.5)


def test_per_token_times_broadcast() -> None:
    p = paths.get("linear")
    x1 = torch.randn(3, 5, 4)
    x0 = torch.randn(3, 5, 4)
    t = torch.rand(3, 5)
    xt = p.sample_xt(x1, x0, t)
    torch.testing.assert_close(xt, t[..., None] * x1 + (1 - t[..., None]) * x0)
    u = p.target_velocity(x1, x0, t)
    torch.testing.assert_close(u, x1 - x0)


def test_vp_prior_std_is_one() -> None:
    for name in ("vp", "vp_discrete", "trig"):
        p = paths.get(name)
        t = torch.linspace(0, 1, 5, dtype=torch.float64)
        torch.testing.assert_close(p.prior_std(t), torch.ones_like(t))
    ve = paths.get("ve", sigma_max=50.0)
    assert float(ve.prior_std(torch.tensor(0.0))) == pytest.approx(math.sqrt(1 + 50.0**2))
