"""Tests of toolkit/samplers/extra.py (iPNDM / variable-step Adams–Bashforth)."""

from __future__ import annotations

import math

import pytest
import torch

import toolkit
from toolkit import paths
from toolkit.samplers.extra import IPNDM_WEIGHTS, ab_weights
from toolkit.testing.gmm import GaussianMixture, ring_gmm


def _gaussian() -> GaussianMixture:
    # a single anisotropic Gaussian: the PF-ODE has a closed form
    return GaussianMixture(torch.tensor([[0.5, -0.3]]), torch.diag(torch.tensor([0.3, 0.05]))[None])


def _exact_gaussian_endpoint(x0: torch.Tensor, path, t0: float) -> torch.Tensor:
    # For N(mu, diag(v)) data, y = x/alpha, r = sigma/alpha: y - mu scales as sqrt(v + r^2)
    # along the PF-ODE (Karras et al. 2022, eq. 4), so y(0) = mu + (y0 - mu) sqrt(v / (v + r0^2)).
    mu, v = torch.tensor([0.5, -0.3], dtype=torch.float64), torch.tensor([0.3, 0.05])
    t = torch.tensor(t0, dtype=torch.float64)
    a, s = float(path.alpha(t)), float(path.sigma(t))
    y0, r0 = x0 / a, s / a
    return mu + (y0 - mu) * torch.sqrt(v / (v + r0**2)).to(torch.float64)


def test_ab_weights_match_fixed_ipndm_on_uniform_nodes():
    # variable-step Adams–Bashforth on equally spaced nodes reduces to the classical weights
    for k, fixed in enumerate(IPNDM_WEIGHTS, start=1):
        nodes = [-float(j) for j in range(k)]  # r_n = 0, r_{n-1} = -1, ... with h = 1
        assert ab_weights(nodes, 0.0, 1.0) == pytest.approx(list(fixed), abs=1e-12)


def test_ab_weights_integrate_polynomials_exactly():
    nodes, a, b = [0.3, 0.7, 1.5, 4.0], 0.3, 0.05
    w = ab_weights(nodes, a, b)
    for deg in range(4):
        exact = (b ** (deg + 1) - a ** (deg + 1)) / (deg + 1)
        assert sum(wj * r**deg for wj, r in zip(w, nodes, strict=True)) == pytest.approx(exact)


@pytest.mark.parametrize(("weights", "min_rate"), [("fixed", 1.8), ("variable", 3.2)])
def test_ipndm_convergence_order_on_gaussian(weights, min_rate):
    # fixed iPNDM weights are second order on a non-uniform (geometric) grid; exact
    # variable-step Adams–Bashforth weights recover order ~4
    gmm, path = _gaussian(), paths.VPPath()
    x0 = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = _exact_gaussian_endpoint(x0, path, 0.0)
    errs = []
    for steps in (80, 160):
        x = toolkit.sample(gmm.model(path, "noise"), x0, path=path, prediction="noise",
                           solver="ipndm", steps=steps, grid="logsnr", weights=weights,
                           grid_options={"sigma_min": 1e-4})
        errs.append(float((x - ref).norm(dim=-1).max()))
    rate = math.log2(errs[0] / errs[1])
    assert errs[1] < 1e-3
    assert rate > min_rate, f"observed order {rate:.2f}"


def test_ipndm_nfe_equals_steps_and_first_step_from_alpha_zero_is_ddim():
    gmm, path = ring_gmm(), paths.LinearPath()
    x0 = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    info: dict = {}
    x = toolkit.sample(gmm.model(path, "velocity"), x0, path=path, solver="ipndm", steps=7,
                       info=info)
    assert info["nfe"] == 7 and torch.all(torch.isfinite(x))
    one = toolkit.sample(gmm.model(path, "velocity"), x0, path=path, solver="ipndm", steps=1)
    ddim = toolkit.sample(gmm.model(path, "velocity"), x0, path=path, solver="ddim", steps=1)
    torch.testing.assert_close(one, ddim)


def test_ipndm_velocity_space_matches_eps_space_in_the_limit():
    gmm, path = ring_gmm(radial_std=0.15), paths.LinearPath()
    x0 = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    kw = dict(path=path, solver="ipndm", steps=100, grid="logsnr")
    a = toolkit.sample(gmm.model(path, "velocity"), x0, **kw)
    b = toolkit.sample(gmm.model(path, "velocity"), x0, space="velocity", weights="variable", **kw)
    assert float((a - b).norm(dim=-1).max()) < 1e-3


def test_ipndm_bad_options_name_the_problem():
    gmm, path = _gaussian(), paths.LinearPath()
    x0 = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="order"):
        toolkit.sample(gmm.model(path), x0, path=path, solver="ipndm", order=5)
    with pytest.raises(ValueError, match="weights.*fixed"):
        toolkit.sample(gmm.model(path), x0, path=path, solver="ipndm", weights="fancy")
    with pytest.raises(ValueError, match="space.*velocity"):
        toolkit.sample(gmm.model(path), x0, path=path, solver="ipndm", space="x")
