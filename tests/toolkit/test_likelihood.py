"""Tests of toolkit.likelihood against the closed-form Gaussian-mixture density."""

from __future__ import annotations

import math

import pytest
import torch

from toolkit import paths
from toolkit.likelihood import bits_per_dim, log_likelihood
from toolkit.testing.gmm import GaussianMixture, ring_gmm


def _data(n: int, seed: int = 1) -> torch.Tensor:
    return ring_gmm().sample(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "name, kwargs, prediction",
    [
        ("linear", {}, "velocity"),  # exact start at t = 1
        ("linear", {"sigma_min": 0.05}, "velocity"),  # p_1 = GMM convolved with N(0, 0.05^2)
        ("vp", {}, "noise"),  # t_eps start, approximate VP prior
        ("trig", {}, "data"),  # t_eps start, prior end at t = 1e-3
    ],
)
def test_exact_divergence_matches_gmm(name, kwargs, prediction, dtype):
    gmm, path = ring_gmm(), paths.get(name, **kwargs)
    x = _data(16)
    info = {}
    ll = log_likelihood(gmm.model(path, prediction), x.to(dtype), path=path,
                        prediction=prediction, info=info)
    assert ll.dtype == dtype and ll.shape == (16,)
    ref = gmm.log_prob(x, 1.0, path)
    err = float((ll.double() - ref).abs().max())
    assert err < 0.01, err
    assert info["nfe"] > 0 and info["t_prior"] < info["t_data"]
    assert torch.allclose(info["prior_logp"] + info["delta_logp"], ll.to(info["prior_logp"]))


def test_velocity_start_is_exact_at_data_end():
    gmm, path = ring_gmm(), paths.get("linear")
    info = {}
    ll = log_likelihood(gmm.model(path), _data(8), path=path, rtol=1e-8, atol=1e-8, info=info)
    assert info["t_data"] == 1.0 and info["t_prior"] == 0.0
    assert float((ll - gmm.log_prob(_data(8), 1.0, path)).abs().max()) < 1e-5


def test_fixed_step_method_converges():
    gmm, path = ring_gmm(), paths.get("linear")
    x, ref = _data(8), gmm.log_prob(_data(8), 1.0, path)
    e1, e2 = (
        float((log_likelihood(gmm.model(path), x, path=path, method="rk4", steps=n) - ref)
              .abs().max())
        for n in (10, 20)
    )
    assert e2 < e1 / 4 and e2 < 0.01


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_unbiased_and_variance_shrinks(probe):
    gmm, path = ring_gmm(), paths.get("linear")
    x = _data(48, seed=3)
    ref = gmm.log_prob(x, 1.0, path)
    errs = {}
    for k in (1, 8):
        gen = torch.Generator().manual_seed(10 + k)
        ll = log_likelihood(gmm.model(path), x, path=path, divergence="hutchinson", n_probes=k,
                            probe=probe, generator=gen, rtol=1e-4, atol=1e-4)
        errs[k] = ll - ref
    for k, e in errs.items():  # unbiased: mean error within 4 standard errors
        assert abs(float(e.mean())) < 4 * float(e.std()) / math.sqrt(len(e)) + 1e-3, k
    assert float(errs[8].var()) < float(errs[1].var()) / 3


def test_bits_per_dim_matches_dequantized_gaussian():
    """bpd equals the analytic uniform-dequantization bound of a Gaussian, which in turn
    upper-bounds (and nearly equals) the exact discretized bpd."""
    std, d = 0.3, 2
    gauss = GaussianMixture(torch.zeros(1, d), std**2 * torch.eye(d)[None])
    path = paths.get("linear")
    z = gauss.sample(8, generator=torch.Generator().manual_seed(0)).clamp(-0.99, 0.99)
    x = ((z + 1.0) * 128.0).floor().to(torch.uint8)
    lo, hi = x.double() / 128 - 1, (x.double() + 1) / 128 - 1  # the pixel's cell in [-1, 1]
    # E_u log N(z; 0, std^2) with z ~ U[lo, hi]:  E z^2 = (hi^3 - lo^3) / (3 (hi - lo))
    ez2 = (hi**3 - lo**3) / (3 * (hi - lo))
    e_log_p = (-0.5 * math.log(2 * math.pi * std**2) - ez2 / (2 * std**2)).sum(1)
    bound = -(e_log_p + d * math.log(2 / 256)) / (d * math.log(2))
    normal = torch.distributions.Normal(0.0, std)
    exact_bpd = -torch.log2(normal.cdf(hi) - normal.cdf(lo)).sum(1) / d
    assert torch.all(bound >= exact_bpd) and float((bound - exact_bpd).max()) < 5e-3
    info = {}
    bpd = bits_per_dim(gauss.model(path), x, path=path, n_dequant=4, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(1), info=info)
    assert bpd.shape == (8,) and info["nfe"] > 0
    gap = bpd - bound  # Monte Carlo error of the 4-draw estimate plus ODE error
    assert abs(float(gap.mean())) < 2e-3 and float(gap.abs().max()) < 5e-3, gap


def test_errors_name_the_problem():
    gmm, path = ring_gmm(), paths.get("linear")
    with pytest.raises(ValueError, match="hutchinson"):
        log_likelihood(gmm.model(path), _data(2), divergence="hutch")
    with pytest.raises(ValueError, match="rademacher"):
        log_likelihood(gmm.model(path), _data(2), divergence="hutchinson", probe="normal")
    with pytest.raises(TypeError, match="float"):
        log_likelihood(gmm.model(path), torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer"):
        bits_per_dim(gmm.model(path), torch.zeros(2, 2))
