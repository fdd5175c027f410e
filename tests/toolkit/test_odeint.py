"""Tests of toolkit.odeint and the adaptive ("dopri5") sampler."""

from __future__ import annotations

import math

import pytest
import torch

import toolkit
from toolkit import paths
from toolkit.odeint import odeint
from toolkit.testing.gmm import ring_gmm

A = torch.tensor([[-0.3, 2.0, 0.0], [-2.0, -0.3, 0.5], [0.0, -0.5, -0.1]], dtype=torch.float64)
Y0 = torch.tensor([[1.0, 0.5, -0.2], [0.3, -1.0, 0.8]], dtype=torch.float64)  # (B=2, D=3)



def linear_rhs(t: float, y: torch.Tensor) -> torch.Tensor:
    return y @ A.T  # dy/dt = A y


def exact(t0: float, t1: float, y0: torch.Tensor = Y0) -> torch.Tensor:
    return y0 @ torch.linalg.matrix_exp(A * (t1 - t0)).T


@pytest.mark.parametrize("controller", ["pi", "standard"])
def test_dopri5_meets_tolerance(controller):
    errs, nfes = [], []
    for tol in (1e-4, 1e-6, 1e-8):
        info = {}
        y = odeint(linear_rhs, Y0, 0.0, 3.0, rtol=tol, atol=tol, controller=controller, info=info)
        err = float(((y - exact(0.0, 3.0)).abs() / (tol + tol * exact(0.0, 3.0).abs())).max())
        errs.append(err)
        nfes.append(info["nfe"])
        # global error stays within a small multiple of the local tolerance
        assert err < 10.0, (tol, err)
    assert nfes[0] < nfes[1] < nfes[2]
    assert errs[2] * 1e-8 < errs[0] * 1e-4  # absolute error shrinks with the tolerance


def test_dopri5_backward_in_time():
    y3 = exact(0.0, 3.0)
    info = {}
    y = odeint(linear_rhs, y3, 3.0, 0.0, rtol=1e-8, atol=1e-8, info=info)
    assert info["steps"] > 3
    torch.testing.assert_close(y, Y0, rtol=0, atol=1e-6)
    # fixed-step methods integrate backward too
    y_rk = odeint(linear_rhs, y3, 3.0, 0.0, method="rk4", steps=200)
    torch.testing.assert_close(y_rk, Y0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2), ("midpoint", 2), ("rk4", 4)])
def test_fixed_step_order(method, order):
    errs = []
    for n in (20, 40, 80):
        y = odeint(linear_rhs, Y0, 0.0, 2.0, method=method, steps=n)
        errs.append(float((y - exact(0.0, 2.0)).abs().max()))
    observed = math.log2(errs[1] / errs[2])
    assert abs(observed - order) < 0.25, (method, errs)


def test_dopri5_fixed_steps_is_fifth_order():
    errs = [
        float((odeint(linear_rhs, Y0, 0.0, 2.0, steps=n) - exact(0.0, 2.0)).abs().max())
        for n in (10, 20)
    ]
    assert abs(math.log2(errs[0] / errs[1]) - 5) < 0.5


def test_tuple_state_and_nfe_accounting():
    # y' = -y, z' = |y|^2  =>  z(T) = |y0|^2 (1 - exp(-2T)) / 2
    def f(t, s):
        y, _ = s
        return -y, (y * y).sum(1)

    y0 = Y0.clone()
    info = {}
    y, z = odeint(f, (y0, torch.zeros(2, dtype=torch.float64)), 0.0, 1.5, rtol=1e-9,
                  atol=1e-9, info=info)
    torch.testing.assert_close(y, y0 * math.exp(-1.5), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(z, (y0 * y0).sum(1) * (1 - math.exp(-3.0)) / 2, rtol=1e-7, atol=0)
    # 6 new stages per attempted step (FSAL) + first evaluation + starting-step heuristic
    assert info["nfe"] == 6 * (info["steps"] + info["rejected"]) + 2
    info = {}
    odeint(linear_rhs, Y0, 0.0, 1.0, method="rk4", steps=7, info=info)
    assert info["nfe"] == 28


def test_odeint_errors():
    with pytest.raises(ValueError, match="dopri5"):
        odeint(linear_rhs, Y0, 0.0, 1.0, method="rk5")
    with pytest.raises(ValueError, match="steps"):
        odeint(linear_rhs, Y0, 0.0, 1.0, method="rk4")
    with pytest.raises(RuntimeError, match="max_steps"):
        odeint(linear_rhs, Y0, 0.0, 50.0, rtol=1e-12, atol=1e-12, max_steps=20)
    with pytest.raises(TypeError, match="Tensor"):
        odeint(linear_rhs, [1.0, 2.0], 0.0, 1.0)


# -- the adaptive sampler ------------------------------------------------------------------


def _noise(n: int = 64) -> torch.Tensor:
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_adaptive_sampler_converges_and_ignores_grid():
    gmm, path = ring_gmm(), paths.get("linear")
    model, x0 = gmm.model(path, "velocity"), _noise()
    ref = toolkit.sample(model, x0, path=path, solver="dopri5", rtol=1e-10, atol=1e-10)
    errs = []
    for tol in (1e-3, 1e-5):
        info = {}
        x = toolkit.sample(model, x0, path=path, solver="adaptive", rtol=tol, atol=tol, info=info)
        errs.append(float((x - ref).abs().max()))
        assert info["nfe"] > 0
    assert errs[1] < errs[0] / 10
    assert errs[1] < 1e-3
    a = toolkit.sample(model, x0, path=path, solver="dopri5", steps=3)
    b = toolkit.sample(model, x0, path=path, solver="dopri5", steps=50, grid="karras")
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name, prediction", [("vp", "noise"), ("trig", "data")])
def test_adaptive_sampler_zero_noise_end(name, prediction):
    """The data end is reached by a free denoising step; matches a fine RK4 reference."""
    gmm, path = ring_gmm(), paths.get(name)
    model, x0 = gmm.model(path, prediction), _noise(32)
    steps_seen = []
    x = toolkit.sample(model, x0, path=path, prediction=prediction, solver="dopri5", rtol=1e-7,
                       atol=1e-7, callback=lambda d: steps_seen.append(d["t"]))
    ref = toolkit.sample(model, x0, path=path, prediction=prediction, solver="rk4", steps=120,
                         grid="logsnr", grid_options={"sigma_min": 1e-3})
    assert steps_seen[-1] == 1.0 and all(t < 1.0 for t in steps_seen[:-1])
    assert torch.isfinite(x).all()
    assert float((x - ref).abs().max()) < 1e-4


def test_adaptive_sampler_option_errors():
    with pytest.raises(ValueError, match="sigma_end"):
        toolkit.sample(ring_gmm().model(paths.get("linear")), _noise(4), solver="dopri5",
                       sigma_end=-1.0)
