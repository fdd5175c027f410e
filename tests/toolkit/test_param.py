"""Parameterizations: exact round trips for every (path, kind) pair, finite ends."""

from __future__ import annotations

import itertools

import pytest
import torch

from toolkit import param, paths
from toolkit.testing.gmm import ring_gmm

NAMES = [n for n in paths.available() if n != "affine"]
PAIRS = list(itertools.product(param.PREDICTIONS, param.PREDICTIONS))


@pytest.fixture(scope="module")
def gmm():
    return ring_gmm(radial_std=0.05, tangential_std=0.2)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_round_trip_every_pair(name: str, dtype: torch.dtype, tol: float, gmm) -> None:
    p = paths.get(name)
    g = torch.Generator().manual_seed(1)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.9 + 0.05
    x = (torch.randn(64, 2, generator=g, dtype=torch.float64) * p.prior_std(t)[:, None]).to(dtype)
    t = t.to(dtype)
    for src, dst in PAIRS:
        pred = gmm.predict(x, t, p, src)
        there = param.convert(pred, x, t, p, src, dst)
        back = param.convert(there, x, t, p, dst, src)
        # float32 cancellation is relative to the largest quantity involved (x ~ sigma_max)
        scale = torch.maximum(pred.abs().max(), x.abs().max()).clamp_min(1.0)
        assert (back - pred).abs().max() / scale < tol, (src, dst)
        # and the converted value is the oracle's own prediction of that kind
        ref = gmm.predict(x, t, p, dst)
        ref_scale = torch.maximum(ref.abs().max(), x.abs().max()).clamp_min(1.0)
        assert (there - ref).abs().max() / ref_scale < 10 * tol, (src, dst)


@pytest.mark.parametrize("name", NAMES)
def test_no_nan_or_inf_at_the_ends(name: str, gmm) -> None:
    p = paths.get(name)
    for tv in (0.0, 1.0):
        for dtype in (torch.float32, torch.float64):
            t = torch.full((16,), tv, dtype=dtype)
            x = torch.randn(16, 2, dtype=dtype) * float(p.prior_std(torch.tensor(tv)))
            for src, dst in PAIRS:
                pred = torch.randn(16, 2, dtype=dtype)
                out = param.convert(pred, x, t, p, src, dst)
                assert torch.all(torch.isfinite(out)), (name, tv, src, dst, dtype)


def test_known_special_cases() -> None:
    lin = paths.get("linear")
    x1, x0 = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    t = torch.rand(8, dtype=torch.float64)
    xt = lin.sample_xt(x1, x0, t)
    # rectified flow: velocity = x1 - x0; v (Salimans–Ho) on the trig path = alpha eps - sigma x1
    v = param.from_data_noise(x1, x0, xt, t, lin, "velocity")
    torch.testing.assert_close(v, x1 - x0)
    trig = paths.get("trig")
    xt = trig.sample_xt(x1, x0, t)
    a, s = trig.alpha(t)[:, None], trig.sigma(t)[:, None]
    torch.testing.assert_close(param.from_data_noise(x1, x0, xt, t, trig, "v"), a * x0 - s * x1)
    torch.testing.assert_close(param.from_data_noise(x1, x0, xt, t, trig, "score"), -x0 / s)


def test_per_token_times() -> None:
    p = paths.get("vp")
    x = torch.randn(2, 7, 4, dtype=torch.float64)
    t = torch.rand(2, 7, dtype=torch.float64) * 0.8 + 0.1
    eps = torch.randn_like(x)
    d = param.convert(eps, x, t, p, "noise", "data")
    torch.testing.assert_close(param.convert(d, x, t, p, "data", "noise"), eps)


def test_unknown_prediction_lists_valid() -> None:
    with pytest.raises(ValueError, match="Valid predictions"):
        param.check_prediction("epsilonn")
    assert param.check_prediction("eps") == "noise"


@pytest.mark.parametrize("name", NAMES)
def test_scalar_fast_path_equals_tensor_path(name: str, gmm) -> None:
    p = paths.get(name)
    x = torch.randn(32, 2, dtype=torch.float64)
    for tv in (0.0, 0.13, 0.5, 0.97, 1.0):
        t = torch.full((32,), tv, dtype=torch.float64)
        coefs = param.scalar_coefs(p, tv)
        for src, dst in PAIRS:
            pred = torch.randn(32, 2, dtype=torch.float64)
            ref = param.convert(pred, x, t, p, src, dst)
            fast = param.convert(pred, x, t, p, src, dst, coefs=coefs)
            assert torch.all(torch.isfinite(fast)), (name, tv, src, dst)
            if 0.0 < tv < 1.0:
                torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-9)
