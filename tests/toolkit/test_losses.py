"""Losses: exact conditional targets (GMM oracle), weighting identities, loss-space
conversion, masks, per-token times and the CFG dropout helper."""

import math

import pytest
import torch

from toolkit import paths, timesteps
from toolkit.losses import (
    data_weight,
    drop_condition,
    loss_weight,
    regression_loss,
    space_coef,
)
from toolkit.param import convert
from toolkit.testing.gmm import ring_gmm

N = 20_000
KINDS = ["data", "noise", "velocity", "v", "score"]
T_MID = timesteps.get("uniform", t_min=0.05, t_max=0.95)


@pytest.fixture(scope="module")
def setup():
    gmm = ring_gmm(4, radius=1.5, radial_std=0.3, tangential_std=0.3)
    g = torch.Generator().manual_seed(0)
    x1 = gmm.sample(N, generator=g)
    x0 = torch.randn(N, 2, generator=g, dtype=torch.float64)
    t = T_MID(N, generator=g, dtype=torch.float64)
    return gmm, x1, x0, t


@pytest.mark.parametrize("path_name", ["vp", "linear"])
@pytest.mark.parametrize("kind", KINDS)
def test_oracle_is_the_regression_minimiser(setup, path_name, kind):
    # L(f* + d) - L(f*) = |d|^2 + 2 E<f* - target, d>, and the cross term vanishes iff the
    # target's conditional mean is the oracle's prediction (the target is exact).
    gmm, x1, x0, t = setup
    path = paths.get(path_name)
    oracle = gmm.model(path, kind)
    base = regression_loss(oracle, x1, path, kind, x0=x0, t=t)
    # perturbation d(x_t) = k x_t: the cross term is 2 E<f* - target, k x_t>, zero iff the
    # residual is orthogonal to functions of x_t; k keeps |d| ~ 5% of the target's scale
    k = 0.05 * float(base.target.pow(2).mean().sqrt() / base.x_t.pow(2).mean().sqrt())

    def check(x1_, x0_):
        b0 = regression_loss(oracle, x1_, path, kind, x0=x0_, t=t)
        b1 = regression_loss(lambda x, tt: oracle(x, tt) + k * x, x1_, path, kind, x0=x0_, t=t)
        dd = k * b0.x_t
        cross = float(b1.loss - b0.loss) - float(dd.pow(2).mean())
        terms = ((b0.pred - b0.target) * dd).mean(-1)  # (N,) per-sample cross terms
        se = float(2 * terms.std() / math.sqrt(N))
        return cross, se

    cross, se = check(x1, x0)
    assert abs(cross) < 5 * se, f"cross term {cross:.3g} vs se {se:.3g}"
    # the statistic has power: a wrong target (data and noise swapped) is detected
    if kind != "score":  # -x0/sigma is too noisy near sigma -> 0 for this power check
        cross_bad, se_bad = check(x0, x1)
        assert abs(cross_bad) > 5 * se_bad


def test_loss_space_conversion_is_linear(setup):
    gmm, x1, x0, t = setup
    path = paths.get("vp")
    model = lambda x, tt: gmm.predict(x, tt, path, "velocity") + 0.1  # noqa: E731
    lv = regression_loss(model, x1, path, "velocity", x0=x0, t=t)
    ld = regression_loss(model, x1, path, "velocity", x0=x0, t=t, loss_space="data")
    c = space_coef(path, t, "velocity")
    torch.testing.assert_close(ld.per_sample * c**2, lv.per_sample)


@pytest.mark.parametrize("weighting", ["snr", "min_snr", "edm", "truncated_snr", "sigmoid"])
def test_weighted_loss_is_parameterization_independent(setup, weighting):
    gmm, x1, x0, t = setup
    path = paths.get("vp")

    def make(kind):  # the same (imperfect) denoiser expressed in different kinds
        def f(x, tt):
            data = gmm.predict(x, tt, path, "data") * 0.9
            return convert(data, x, tt, path, "data", kind)
        return f

    vals = [regression_loss(make(k), x1, path, k, x0=x0, t=t, weighting=weighting).loss
            for k in ["noise", "data", "v", "velocity"]]
    for v in vals[1:]:
        torch.testing.assert_close(v, vals[0], rtol=1e-9, atol=0)


def test_weightings_reduce_to_known_forms():
    path = paths.get("vp")
    t = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    snr = torch.exp(path.log_snr(t))
    gamma = 5.0
    # Min-SNR (Hang et al. 2023): noise prediction min(SNR, g)/SNR, v on VP min(SNR, g)/(SNR+1)
    torch.testing.assert_close(loss_weight(path, t, "min_snr", "noise", gamma=gamma),
                               snr.clamp(max=gamma) / snr)
    torch.testing.assert_close(loss_weight(path, t, "min_snr", "v", gamma=gamma),
                               snr.clamp(max=gamma) / (snr + 1))
    torch.testing.assert_close(loss_weight(path, t, "min_snr", "data", gamma=gamma),
                               snr.clamp(max=gamma))
    # SNR weighting == plain epsilon MSE
    torch.testing.assert_close(loss_weight(path, t, "snr", "noise"), torch.ones_like(t))
    # EDM lambda(sigma) on the data loss
    sig = path.sigma_ratio(t)
    torch.testing.assert_close(data_weight(path, t, "edm", sigma_data=0.5),
                               (sig**2 + 0.25) / (sig * 0.5) ** 2)
    # the velocity conversion for the linear path: c = a' - s' a / s = 1/(1-t)
    lin = paths.get("linear")
    torch.testing.assert_close(space_coef(lin, t, "velocity"), 1.0 / (1.0 - t))


def test_mask_and_per_token_time():
    g = torch.Generator().manual_seed(1)
    b, l, d = 4, 6, 3
    x1 = torch.randn(b, l, d, generator=g, dtype=torch.float64)
    mask = torch.ones(b, l)
    mask[:, 4:] = 0  # padded tokens
    seen = {}

    def model(x, t):
        seen["t"] = t
        out = torch.zeros_like(x)
        out[:, 4:] = 1e6  # garbage on padding must not matter
        return out

    out = regression_loss(model, x1, "linear", "velocity", per_token=True, mask=mask,
                          generator=g)
    assert seen["t"].shape == (b, l) and out.t.shape == (b, l)
    assert out.t.std(1).min() > 0
    # per-token t enters x_t token by token
    x0 = (out.x_t - out.t[..., None] * x1) / (1 - out.t[..., None])
    torch.testing.assert_close(out.target, x1 - x0)
    ref = (out.target[:, :4] ** 2).mean()
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(out.per_sample, (out.target[:, :4] ** 2).mean((1, 2)))


def test_drop_condition_fraction_and_values():
    g = torch.Generator().manual_seed(2)
    n, p = 20_000, 0.1
    y = torch.randint(0, 10, (n,), generator=g)
    y2, m = drop_condition(y, p, null=10, generator=g)
    assert m.dtype == torch.bool and m.shape == (n,)
    frac = m.double().mean().item()
    assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert torch.all(y2[m] == 10) and torch.equal(y2[~m], y[~m])
    _, m_exact = drop_condition(y[:30], 0.2, 10, generator=g, exact=True)
    assert int(m_exact.sum()) == 6


def test_drop_condition_learned_null_and_dict():
    emb = torch.randn(8, 4)
    null = torch.nn.Parameter(torch.zeros(4))
    out, m = drop_condition(emb, 1.0, null)
    assert m.all()
    out.sum().backward()
    assert null.grad is not None and torch.all(null.grad == 8)
    cond = {"y": torch.arange(8), "e": emb}
    out, m = drop_condition(cond, 0.5, {"y": -1, "e": torch.zeros(4)},
                            generator=torch.Generator().manual_seed(0))
    assert torch.all((out["y"] == -1) == m) and torch.all(out["e"][m] == 0)
    with pytest.raises(ValueError, match="null must be a dict"):
        drop_condition(cond, 0.5, null=0)
    with pytest.raises(ValueError, match="drop probability"):
        drop_condition(emb, 1.5, null)


def test_bad_inputs():
    x1 = torch.randn(4, 2)
    with pytest.raises(ValueError, match="Valid weightings"):
        regression_loss(lambda x, t: x, x1, weighting="minsnr")
    with pytest.raises(ValueError, match="Valid predictions"):
        regression_loss(lambda x, t: x, x1, prediction="eps_pred")
    with pytest.raises(ValueError, match="model output"):
        regression_loss(lambda x, t: x[:, :1], x1)
