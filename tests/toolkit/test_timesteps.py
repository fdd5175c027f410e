"""Time samplers: ranges, shapes, and empirical distributions vs analytic CDFs (KS test)."""

import numpy as np
import pytest
import torch
from scipy import stats

from toolkit import paths, timesteps

N = 20_000
CONTINUOUS = [
    ("uniform", {}),
    ("uniform", {"t_min": 0.2, "t_max": 0.7}),
    ("logit_normal", {"m": 0.0, "s": 1.0}),
    ("logit_normal", {"m": 0.8, "s": 0.6}),
    ("lognormal_sigma", {}),
    ("lognormal_sigma", {"path": paths.VPPath()}),
    ("beta_pi0", {}),
]


@pytest.mark.parametrize("name,kw", CONTINUOUS)
def test_ks_matches_cdf_and_range(name, kw):
    s = timesteps.get(name, **kw)
    t = s(N, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert t.shape == (N,) and t.dtype == torch.float64
    assert t.min() >= 0.0 and t.max() <= 1.0
    cdf = lambda x: s.cdf(torch.as_tensor(x)).numpy()  # noqa: E731
    p = stats.kstest(t.numpy(), cdf).pvalue
    assert p > 1e-3, f"{name}{kw}: KS p={p}"


def test_ks_detects_wrong_cdf():
    # the test has power: logit-normal samples are rejected against a uniform CDF
    t = timesteps.get("logit_normal", s=0.5)(N, generator=torch.Generator().manual_seed(0))
    unif = timesteps.get("uniform")
    assert stats.kstest(t.numpy(), lambda x: unif.cdf(torch.as_tensor(x)).numpy()).pvalue < 1e-6


def test_logit_normal_m_is_sd3_noise_location():
    # m > 0 shifts SD3's noise-time up, i.e. OUR t (1 - t_sd3) down towards noise
    g = torch.Generator().manual_seed(0)
    t = timesteps.get("logit_normal", m=1.0)(N, generator=g)
    assert t.median() < 0.5
    ref = 1.0 - torch.sigmoid(torch.tensor(1.0))  # median of 1 - sigmoid(u), u ~ N(1, 1)
    assert abs(float(t.median()) - float(ref)) < 0.01


def test_lognormal_sigma_is_edm_distribution():
    # ln(sigma_t/alpha_t) of the drawn t is N(-1.2, 1.2^2) for any path inside its range
    path = paths.get("linear")
    t = timesteps.get("lognormal_sigma", path=path)(N, generator=torch.Generator().manual_seed(3),
                                                    dtype=torch.float64)
    ln_sigma = torch.log(path.sigma_ratio(t)).numpy()
    assert stats.kstest(ln_sigma, stats.norm(-1.2, 1.2).cdf).pvalue > 1e-3


def test_beta_pi0_conversion():
    # (s - t)/s ~ Beta(1.5, 1) with s = 0.999: mass near noise (our t = 0), t <= s
    t = timesteps.get("beta_pi0")(N, generator=torch.Generator().manual_seed(4),
                                   dtype=torch.float64)
    assert t.max() <= 0.999
    y = ((0.999 - t) / 0.999).numpy()
    assert stats.kstest(y, stats.beta(1.5, 1.0).cdf).pvalue > 1e-3
    assert (t < 0.5).float().mean() > 0.6  # P(t < 1/2) = 1 - (1 - 0.5/0.999)^1.5 ~ 0.65


def test_discrete_timesteps_uniform_over_grid():
    path = paths.DiscreteVPPath(num_train_timesteps=10)
    s = timesteps.get("discrete", path=path)
    g = torch.Generator().manual_seed(5)
    k = s.timesteps(N, generator=g)
    assert k.min() >= 0 and k.max() <= 9
    counts = np.bincount(k.numpy(), minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-3
    t = s(N, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.allclose(t, path.t_from_timestep(k))
    # empirical CDF equals the analytic step CDF at every grid point
    grid = torch.sort(torch.unique(t)).values
    emp = torch.tensor([(t <= g_).double().mean() for g_ in grid])
    assert torch.allclose(emp, s.cdf(grid), atol=0.02)


@pytest.mark.parametrize("name", timesteps.available())
def test_per_token_shape(name):
    t = timesteps.get(name)((4, 7), generator=torch.Generator().manual_seed(0))
    assert t.shape == (4, 7) and t.min() >= 0 and t.max() <= 1
    assert t.std(dim=1).min() > 0  # tokens get independent times


def test_bad_names_and_args():
    with pytest.raises(ValueError, match="Valid time samplers"):
        timesteps.get("logit_norml")
    with pytest.raises(ValueError, match="s must be > 0"):
        timesteps.get("logit_normal", s=0.0)
    with pytest.raises(ValueError, match="shape"):
        timesteps.get("uniform")(0)
