"""EDM preconditioning: paper coefficients, exact inversion with the GMM oracle on several
paths, and the unit-variance / loss-weighting properties (Karras et al. 2022, sec. 5)."""

import math

import pytest
import torch

from toolkit import paths
from toolkit.losses import regression_loss
from toolkit.precond import EDMPrecond, edm_coefficients, edm_loss_weight
from toolkit.testing.gmm import GaussianMixture, ring_gmm

SD = 0.5


def test_coefficients_match_table1():
    for s in [0.002, 0.1, 0.5, 2.0, 80.0]:
        c = edm_coefficients(torch.tensor(s, dtype=torch.float64), SD)
        assert float(c["c_skip"]) == pytest.approx(SD**2 / (s**2 + SD**2), rel=1e-12)
        assert float(c["c_out"]) == pytest.approx(s * SD / math.sqrt(s**2 + SD**2), rel=1e-12)
        assert float(c["c_in"]) == pytest.approx(1 / math.sqrt(s**2 + SD**2), rel=1e-12)
        assert float(c["c_noise"]) == pytest.approx(math.log(s) / 4, rel=1e-12)
        # lambda(sigma) = 1 / c_out^2
        assert float(edm_loss_weight(torch.tensor(s), SD) * c["c_out"] ** 2) == pytest.approx(1)


@pytest.mark.parametrize("path_name", ["edm", "linear", "vp", "ve"])
def test_parts_match_paper_on_any_path(path_name):
    path = paths.get(path_name)
    pre = EDMPrecond(lambda x, c: x, path, SD)
    t = torch.tensor([0.1, 0.4, 0.7, 0.9], dtype=torch.float64)
    x_t = torch.randn(4, 3, dtype=torch.float64)
    a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
    sigma = (s / a)[:, 0]
    c = edm_coefficients(sigma, SD)
    x = x_t / a  # = x1 + sigma x0
    p = pre.parts(x_t, t)
    torch.testing.assert_close(p["x_in"], c["c_in"][:, None] * x)
    torch.testing.assert_close(p["skip"], c["c_skip"][:, None] * x)
    torch.testing.assert_close(p["c_out"][:, 0], c["c_out"])
    torch.testing.assert_close(p["c_noise"], c["c_noise"])


@pytest.mark.parametrize("path_name", ["linear", "vp", "edm"])
def test_oracle_inverted_into_F_gives_exact_data_prediction(path_name):
    # A raw net built in EDM's own coordinates (x = x1 + sigma n, alpha = 1) from the oracle:
    # F(c_in x, c_noise) = (D*(x; sigma) - c_skip x) / c_out. Wrapped for ANY path, the
    # preconditioned model must reproduce that path's exact data prediction.
    gmm = ring_gmm(6, radius=1.0, radial_std=0.1, tangential_std=0.2)
    ve = paths.CallablePath(lambda t: torch.ones_like(t), lambda t: (1 - t) / t.clamp_min(1e-300))

    def net(x_in, c_noise):
        sigma = torch.exp(4 * c_noise)
        c = edm_coefficients(sigma, SD)
        x = x_in / c["c_in"][:, None]
        t_ve = 1.0 / (1.0 + sigma)  # (1 - t)/t = sigma
        d = gmm.predict(x, t_ve, ve, "data")
        return (d - c["c_skip"][:, None] * x) / c["c_out"][:, None]

    path = paths.get(path_name)
    pre = EDMPrecond(net, path, SD)
    g = torch.Generator().manual_seed(0)
    t = torch.rand(256, generator=g, dtype=torch.float64) * 0.9 + 0.05
    x1 = gmm.sample(256, generator=g)
    x_t = path.sample_xt(x1, torch.randn(256, 2, generator=g, dtype=torch.float64), t)
    torch.testing.assert_close(pre(x_t, t), gmm.predict(x_t, t, path, "data"), rtol=1e-9,
                               atol=1e-9)
    # invert() is the same map
    f = pre.invert(gmm.predict(x_t, t, path, "data"), x_t, t)
    p = pre.parts(x_t, t)
    torch.testing.assert_close(net(p["x_in"], p["c_noise"]), f, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 5.0, 50.0])
def test_unit_variance_of_inputs_and_targets(sigma):
    # data with std sigma_data per coordinate (a GMM, not a Gaussian)
    gmm = GaussianMixture(torch.tensor([[-0.4, 0.3], [0.4, -0.3]], dtype=torch.float64),
                          torch.eye(2, dtype=torch.float64).expand(2, 2, 2) * 0.09)
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x1 = gmm.sample(n, generator=g)
    x1 = (x1 - x1.mean(0)) / x1.std(0) * SD  # exact std sigma_data
    path = paths.get("linear")
    t = path.t_from_sigma_ratio(torch.full((n,), sigma, dtype=torch.float64))
    x_t = path.sample_xt(x1, torch.randn(n, 2, generator=g, dtype=torch.float64), t)
    pre = EDMPrecond(lambda x, c: torch.zeros_like(x), path, SD)
    p = pre.parts(x_t, t)
    f_target = pre.f_target(x1, x_t, t)
    for v in (p["x_in"].var(0), f_target.var(0)):
        torch.testing.assert_close(v, torch.ones(2, dtype=torch.float64), rtol=0.02, atol=0)


def test_edm_weighted_loss_equals_F_regression():
    gmm = ring_gmm(4)
    g = torch.Generator().manual_seed(2)
    x1 = gmm.sample(512, generator=g)
    x0 = torch.randn(512, 2, generator=g, dtype=torch.float64)
    path = paths.get("vp")
    t = torch.rand(512, generator=g, dtype=torch.float64) * 0.9 + 0.05
    net = lambda x, c: 0.3 * x + c[:, None]  # noqa: E731
    pre = EDMPrecond(net, path, SD)
    out = regression_loss(pre, x1, path, "data", x0=x0, t=t, weighting="edm", sigma_data=SD)
    p = pre.parts(out.x_t, t)
    f_loss = (net(p["x_in"], p["c_noise"]) - pre.f_target(x1, out.x_t, t)).pow(2).mean()
    torch.testing.assert_close(out.loss, f_loss)


def test_prior_end_is_finite():
    pre = EDMPrecond(lambda x, c: x, "linear", SD)
    x = torch.randn(3, 2)
    out = pre(x, torch.zeros(3))
    assert torch.isfinite(out).all()
