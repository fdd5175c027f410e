"""Time grids: shape, monotonicity, endpoints, spacing in their own variable, errors."""

from __future__ import annotations

import pytest
import torch

from toolkit import grids, paths


@pytest.mark.parametrize("grid", grids.GRIDS)
@pytest.mark.parametrize("name", ["linear", "vp", "edm", "ve", "vp_discrete", "trig"])
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_grid_shape_and_ends(grid: str, name: str, steps: int) -> None:
    p = paths.get(name)
    ts = grids.get_grid(grid, steps, p)
    assert ts.shape == (steps + 1,) and ts.dtype == torch.float64
    assert torch.all(ts[1:] > ts[:-1])
    assert float(ts[0]) == pytest.approx(p.t_min) and float(ts[-1]) == pytest.approx(p.t_max)


def test_karras_is_uniform_in_sigma_pow_one_over_rho() -> None:
    p = paths.get("vp")
    ts = grids.karras(10, p, rho=7.0, sigma_min=0.01, sigma_max=1e4)
    r = p.sigma_ratio(ts[:-1]) ** (1 / 7)  # last point is the denoising step to sigma = 0
    d = r[1:] - r[:-1]
    torch.testing.assert_close(d, d.mean().expand_as(d), rtol=1e-6, atol=1e-9)
    assert float(p.sigma_ratio(ts[-2])) == pytest.approx(0.01)


def test_logsnr_grid_is_uniform_in_lambda() -> None:
    p = paths.get("edm")  # sigma(1) = sigma_min > 0: no extra denoising interval
    ts = grids.logsnr(12, p)
    lam = p.log_snr(ts)
    d = lam[1:] - lam[:-1]
    torch.testing.assert_close(d, d.mean().expand_as(d), rtol=1e-6, atol=1e-9)


def test_shift_one_is_uniform_and_shift_moves_steps_to_noise() -> None:
    p = paths.get("linear")
    torch.testing.assert_close(grids.shifted(10, p, shift=1.0), grids.uniform(10, p))
    ts = grids.shifted(10, p, shift=3.0)
    assert torch.all(ts[1:-1] < grids.uniform(10, p)[1:-1])  # more time spent near t = 0


def test_user_grid_validation() -> None:
    p = paths.get("linear")
    ts = grids.get_grid([0.0, 0.3, 1.0], None, p)
    assert ts.tolist() == [0.0, 0.3, 1.0]
    with pytest.raises(ValueError, match="strictly increasing"):
        grids.get_grid([0.0, 0.5, 0.4, 1.0], None, p)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        grids.get_grid([-0.1, 1.0], None, p)
    with pytest.raises(ValueError, match="at least 2"):
        grids.get_grid([0.5], None, p)
    with pytest.raises(ValueError, match="steps=3"):
        grids.get_grid([0.0, 0.5, 1.0], 3, p)


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_bad_steps(bad) -> None:
    with pytest.raises(ValueError, match="steps"):
        grids.get_grid("uniform", bad, paths.get("linear"))


def test_unknown_grid_name() -> None:
    with pytest.raises(ValueError, match="Did you mean 'karras'"):
        grids.get_grid("karas", 5, paths.get("linear"))


def test_power_grid_refines_the_data_end():
    u = grids.power(10, exponent=1.0)
    assert torch.allclose(u, grids.uniform(10))
    g = grids.power(10, exponent=2.0)
    assert g[0] == 0 and g[-1] == 1 and (g.diff() > 0).all()
    assert torch.allclose(g.diff()[-1], torch.tensor(0.01, dtype=g.dtype))  # (1/10)^2
    assert torch.allclose(grids.power(4, exponent=3.0, t_start=0.2, t_end=0.6)[[0, -1]],
                          torch.tensor([0.2, 0.6], dtype=g.dtype))
    with pytest.raises(ValueError, match="exponent"):
        grids.power(4, exponent=0.0)
