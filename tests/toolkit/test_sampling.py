"""``toolkit.sample``: API contract, bad input, NFE, dtypes, exactness on the oracle."""

from __future__ import annotations

import pytest
import torch

import toolkit
from toolkit import paths
from toolkit.testing.gmm import ring_gmm


@pytest.fixture(scope="module")
def gmm():
    return ring_gmm(radial_std=0.1, tangential_std=0.1)


def test_public_names_exist() -> None:
    assert {"euler", "heun", "midpoint", "rk4"} <= set(toolkit.samplers.available())
    assert "linear" in toolkit.paths.available()


def test_model_receives_per_sample_time_of_shape_b(gmm) -> None:
    seen = []

    def model(x, t):
        seen.append(tuple(t.shape))
        return gmm.predict(x, t, paths.get("linear"), "velocity")

    toolkit.sample(model, torch.randn(6, 2), steps=3)
    assert seen and all(s == (6,) for s in seen)


def test_float32_and_float64_are_preserved(gmm) -> None:
    p = paths.get("linear")
    for dtype in (torch.float32, torch.float64):
        x = toolkit.sample(gmm.model(p), torch.randn(5, 2, dtype=dtype), path=p, steps=4)
        assert x.dtype == dtype and torch.all(torch.isfinite(x))


@pytest.mark.parametrize(
    "solver,per_step", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)]
)
def test_nfe_is_counted(gmm, solver: str, per_step: int) -> None:
    p = paths.get("linear", sigma_min=0.01)  # no zero-noise end: every step is a full step
    info: dict = {}
    toolkit.sample(gmm.model(p), torch.randn(4, 2), path=p, solver=solver, steps=5, info=info)
    assert info["nfe"] == 5 * per_step
    p0 = paths.get("linear")  # zero-noise end: a data model's last interval is a denoising step
    x0 = torch.randn(4, 2, dtype=torch.float64)
    kw = dict(path=p0, solver=solver, steps=5, info=info)
    toolkit.sample(gmm.model(p0, "data"), x0, prediction="data", **kw)
    assert info["nfe"] == 4 * per_step + 1
    # a velocity model on a flow path takes the full step at t = 1 ("auto")
    full = toolkit.sample(gmm.model(p0), x0, **kw)
    assert info["nfe"] == 5 * per_step
    den = toolkit.sample(gmm.model(p0), x0, final_step="denoise", **kw)
    assert info["nfe"] == 4 * per_step + 1
    assert (full - den).abs().max() > 0  # the option changes what it should
    with pytest.raises(ValueError, match="final_step"):
        toolkit.sample(gmm.model(p0), x0, final_step="nope", **kw)


@pytest.mark.parametrize("name", ["linear", "vp", "edm", "trig", "ve", "vp_discrete", "subvp"])
@pytest.mark.parametrize("prediction", ["velocity", "data", "noise", "v", "score"])
def test_rk4_reaches_the_exact_flow_map(gmm, name: str, prediction: str) -> None:
    """Any path/prediction gives the same flow: compare 40 and 80 RK4 steps (karras grid)."""
    p = paths.get(name)
    x0 = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = toolkit.sample(
        gmm.model(p, prediction),
        x0,
        path=p,
        prediction=prediction,
        solver="rk4",
        steps=40,
        grid="karras",
    )
    b = toolkit.sample(
        gmm.model(p, prediction),
        x0,
        path=p,
        prediction=prediction,
        solver="rk4",
        steps=80,
        grid="karras",
    )
    # vp_discrete: log alpha is piecewise linear in t (kinks every 1/N) which caps RK4's order
    tol = 5e-3 if name == "vp_discrete" else 2e-3
    assert (a - b).norm(dim=-1).max() < tol
    # samples are on the data: their log-density is close to the mixture's typical value
    ll = gmm.log_prob(b)
    ref = gmm.log_prob(gmm.sample(4096, torch.Generator().manual_seed(1)))
    assert abs(float(ll.mean() - ref.mean())) < 0.25


def test_bad_names_list_valid_ones(gmm) -> None:
    m = gmm.model(paths.get("linear"))
    x = torch.randn(2, 2)
    with pytest.raises(ValueError, match="Did you mean 'heun'"):
        toolkit.sample(m, x, solver="huen")
    with pytest.raises(ValueError, match="Valid predictions"):
        toolkit.sample(m, x, prediction="flowz")
    with pytest.raises(ValueError, match="Valid paths"):
        toolkit.sample(m, x, path="nope")
    with pytest.raises(ValueError, match="unknown option"):
        toolkit.sample(m, x, solver="euler", eta=0.5)


def test_shape_and_dtype_mismatch_name_both(gmm) -> None:
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match=r"\(3, 1\).*\(3, 2\)"):
        toolkit.sample(lambda x, t: x[:, :1], x, steps=2)
    with pytest.raises(TypeError, match="floating"):
        toolkit.sample(lambda x, t: torch.zeros(3, 2, dtype=torch.long), x, steps=2)
    with pytest.raises(TypeError, match="Tensor"):
        toolkit.sample(lambda x, t: None, x, steps=2)


def test_bad_steps_and_times(gmm) -> None:
    m = gmm.model(paths.get("linear"))
    x = torch.randn(2, 2)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        toolkit.sample(m, x, steps=0)
    with pytest.raises(ValueError, match="t_start"):
        toolkit.sample(m, x, t_start=-0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        toolkit.sample(m, x, grid=[0.0, 1.5], steps=None)
    with pytest.raises(TypeError, match="floating-point"):
        toolkit.sample(m, torch.zeros(2, 2, dtype=torch.long))


def test_conditioning_reaches_the_model() -> None:
    def model(x, t, *, shift):
        return torch.zeros_like(x) + shift

    out = toolkit.sample(
        model,
        torch.zeros(2, 3),
        path=paths.get("linear", sigma_min=0.1),
        steps=4,
        cond={"shift": 2.0},
    )
    torch.testing.assert_close(out, torch.full((2, 3), 2.0))  # x0 = 0, velocity 2 for time 1


def test_image_shaped_state(gmm) -> None:
    model = lambda x, t: -x  # noqa: E731
    out = toolkit.sample(model, torch.randn(2, 3, 4, 4), path=paths.get("linear", sigma_min=0.1))
    assert out.shape == (2, 3, 4, 4)
