"""Tests of toolkit.guidance: CFG (interval, rescale, multi-condition), classifier guidance, DPS."""

from __future__ import annotations

import pytest
import torch

import toolkit
from toolkit import guidance, paths
from toolkit.testing.gmm import GaussianMixture, ring_gmm

B, D = 6, 3



class ToyNet:
    """A label-conditional model that records every call (batch size, labels, times)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.emb = torch.randn(6, D, dtype=torch.float64, generator=g)  # row 0: null label
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, t, y, style=None):
        self.calls.append((x.shape[0], y.clone(), t.clone()))
        out = torch.tanh(x) * (1 + t[:, None]) + self.emb[y + 1] * (2 - t[:, None])
        if style is not None:
            out = out + 0.3 * self.emb[style + 1].flip(-1) * x
        return out


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, D, dtype=torch.float64, generator=g)
    t = torch.rand(B, dtype=torch.float64, generator=g)
    labels = torch.arange(B) % 4
    return x, t, labels, torch.full((B,), -1)


@pytest.mark.parametrize("batched", [True, False])
def test_cfg_endpoints_and_formula(batched):
    net = ToyNet()
    x, t, y, null = _inputs()
    e_c, e_u = net(x, t, y), net(x, t, null)
    kw = {"cond": {"y": y}, "uncond": {"y": null}, "batched": batched}
    assert torch.equal(guidance.cfg(net, 1.0, **kw)(x, t), e_c)
    assert torch.equal(guidance.cfg(net, 0.0, **kw)(x, t), e_u)
    torch.testing.assert_close(guidance.cfg(net, 3.5, **kw)(x, t), e_u + 3.5 * (e_c - e_u))
    # per-sample scales: exact endpoints row by row
    w = torch.tensor([0.0, 1.0, 0.0, 1.0, 2.0, -1.0], dtype=torch.float64)
    out = guidance.cfg(net, w, **kw)(x, t)
    assert torch.equal(out[[0, 2]], e_u[[0, 2]]) and torch.equal(out[[1, 3]], e_c[[1, 3]])
    torch.testing.assert_close(out[4:], (e_u + w[:, None] * (e_c - e_u))[4:])


def test_cfg_batched_call_layout_and_shared_kwargs():
    net = ToyNet()
    x, t, y, null = _inputs()
    style = torch.full((B,), 2)
    g_b = guidance.cfg(net, 2.0, cond={"y": y}, uncond={"y": null}, batched=True)
    g_u = guidance.cfg(net, 2.0, cond={"y": y}, uncond={"y": null}, batched=False)
    net.calls.clear()
    out_b = g_b(x, t, style=style)  # call-time kwargs are shared by both branches
    assert [c[0] for c in net.calls] == [2 * B] and g_b.last_nfe == 1
    net.calls.clear()
    out_u = g_u(x, t, style=style)
    assert [c[0] for c in net.calls] == [B, B] and g_u.last_nfe == 2
    torch.testing.assert_close(out_b, out_u, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="batched=False"):
        guidance.cfg(net, 2.0, cond={"y": y}, uncond={})(x, t)


def test_cfg_interval_skips_uncond_outside():
    net = ToyNet()
    x, _, y, null = _inputs()
    g = guidance.cfg(net, 4.0, cond={"y": y}, uncond={"y": null}, interval=(0.3, 0.7),
                     batched=False)
    plain = guidance.cfg(net, 4.0, cond={"y": y}, uncond={"y": null})
    for tv in (0.1, 0.9):
        t = torch.full((B,), tv, dtype=torch.float64)
        net.calls.clear()
        assert torch.equal(g(x, t), net(x, t, y))
        assert len(net.calls) == 2 and g.last_nfe == 1  # g's single call + our reference
        assert torch.equal(net.calls[0][1], y)  # the null label was never evaluated
    t = torch.full((B,), 0.5, dtype=torch.float64)
    torch.testing.assert_close(g(x, t), plain(x, t))
    assert g.last_nfe == 2
    # a batch straddling the edge: guided inside, conditional outside
    t = torch.tensor([0.1, 0.5, 0.9, 0.3, 0.7, 0.71], dtype=torch.float64)
    out, inside = g(x, t), (t >= 0.3) & (t <= 0.7)
    torch.testing.assert_close(out[inside], plain(x, t)[inside])
    torch.testing.assert_close(out[~inside], net(x, t, y)[~inside])


def test_cfg_nfe_through_sample():
    gmm, path = ring_gmm(), paths.get("linear")
    base = gmm.model(path)

    def net(x, t, y):
        return base(x, t) + 0.1 * y[:, None].to(x.dtype)

    y, null = torch.ones(4), torch.zeros(4)
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for batched, interval, expected in [
        (True, None, 10), (False, None, 20), (False, (0.5, 1.0), 15), (True, (0.5, 1.0), 10)
    ]:
        info = {}
        g = guidance.cfg(net, 2.0, cond={"y": y}, uncond={"y": null}, batched=batched,
                         interval=interval)
        toolkit.sample(g, x0, path=path, solver="euler", steps=10, info=info)
        assert info["nfe"] == expected == g.nfe, (batched, interval)


def test_cfg_rescale():
    net = ToyNet()
    x, t, y, null = _inputs()
    kw = {"cond": {"y": y}, "uncond": {"y": null}}
    plain = guidance.cfg(net, 5.0, **kw)(x, t)
    assert torch.equal(guidance.cfg(net, 5.0, rescale=0.0, **kw)(x, t), plain)
    e_c = net(x, t, y)
    full = guidance.cfg(net, 5.0, rescale=1.0, **kw)(x, t)
    # phi = 1: per-sample std equals the conditional one, direction of the guided output kept
    torch.testing.assert_close(full.std(1), e_c.std(1))
    ratio = full / plain
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    half = guidance.cfg(net, 5.0, rescale=0.5, **kw)(x, t)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * plain)
    with pytest.raises(ValueError, match="rescale"):
        guidance.cfg(net, 5.0, rescale=1.5, **kw)


@pytest.mark.parametrize("batched", [True, False])
def test_multi_condition_special_cases(batched):
    net = ToyNet()
    x, t, y, null = _inputs()
    style, nostyle = torch.full((B,), 3), torch.full((B,), -1)
    conds, unc = [{"y": y}, {"style": style}], {"y": null, "style": nostyle}

    def e(yy, ss):
        return net(x, t, yy, style=ss)

    e00, e10, e11, e01 = e(null, nostyle), e(y, nostyle), e(y, style), e(null, style)
    m = guidance.multi_cfg(net, conds, [2.0, 3.0], uncond=unc, batched=batched)
    torch.testing.assert_close(m(x, t), e00 + 2 * (e10 - e00) + 3 * (e11 - e10))
    assert m.last_nfe == (1 if batched else 3)
    s = guidance.multi_cfg(net, conds, [2.0, 3.0], uncond=unc, mode="sum", batched=batched)
    torch.testing.assert_close(s(x, t), e00 + 2 * (e10 - e00) + 3 * (e01 - e00))
    # all scales 1 (nested) telescopes to the fully conditional model
    ones = guidance.multi_cfg(net, conds, [1.0, 1.0], uncond=unc, batched=batched)
    torch.testing.assert_close(ones(x, t), e11)
    # a leading unit scale telescopes exactly and its branch e(∅) is never evaluated
    seen = []

    def counting(xx, tt, y=None, style=None):
        seen.append(xx.shape[0])
        return net(xx, tt, y, style=style)

    lead = guidance.multi_cfg(counting, conds, [1.0, 3.0], uncond=unc, batched=batched)
    torch.testing.assert_close(lead(x, t), e10 + 3 * (e11 - e10))
    assert seen == ([2 * B] if batched else [B, B])
    assert lead.last_nfe == (1 if batched else 2) and lead.nfe_per_call == lead.last_nfe
    # a zero scale on the second condition reduces both modes to CFG on the first
    ref = guidance.cfg(net, 2.5, cond={"y": y}, uncond={"y": null})(x, t, style=nostyle)
    for mode in ("nested", "sum"):
        g = guidance.multi_cfg(net, conds, [2.5, 0.0], uncond=unc, mode=mode, batched=batched)
        torch.testing.assert_close(g(x, t), ref)
    one = guidance.multi_cfg(net, [{"y": y}], [2.5], uncond={"y": null}, batched=batched)
    torch.testing.assert_close(one(x, t, style=nostyle), ref)
    # outside the interval: the fully conditional model, one evaluation
    g = guidance.multi_cfg(net, conds, [2.0, 3.0], uncond=unc, interval=(0.0, 0.0),
                           mode="sum", batched=batched)
    torch.testing.assert_close(g(x, t + 0.01), net(x, t + 0.01, y, style))
    assert g.last_nfe == 1
    with pytest.raises(ValueError, match="nested"):
        guidance.multi_cfg(net, conds, [1.0, 1.0], uncond=unc, mode="product")


def _class_log_posterior(gmm: GaussianMixture, path, k: int):
    """Exact log p(class = k | x_t) of the mixture (differentiable in x)."""

    def fn(x, t):
        logits = gmm._parts(x, t, path)[-1]  # (B, K)
        return logits[:, k] - torch.logsumexp(logits, -1)

    return fn


@pytest.mark.parametrize("prediction", ["velocity", "noise", "data", "score", "v"])
@pytest.mark.parametrize("name", ["linear", "vp"])
def test_classifier_guidance_gives_class_conditional_model(name, prediction):
    """grad log p_t(x) + grad log p_t(k | x) = grad log p_t(x | k): exact conditional model."""
    gmm, path, k = ring_gmm(), paths.get(name), 2
    comp = GaussianMixture(gmm.means[k:k + 1], gmm.covs[k:k + 1])
    guided = guidance.classifier_guidance(gmm.model(path, prediction),
                                          _class_log_posterior(gmm, path, k), 1.0, path=path,
                                          prediction=prediction)
    g = torch.Generator().manual_seed(4)
    x = 1.5 * torch.randn(32, 2, dtype=torch.float64, generator=g)
    t = 0.05 + 0.9 * torch.rand(32, dtype=torch.float64, generator=g)
    torch.testing.assert_close(guided(x, t), comp.predict(x, t, path, prediction),
                               rtol=1e-8, atol=1e-8)


def test_classifier_guided_sampling_yields_the_component():
    gmm, path, k = ring_gmm(), paths.get("vp"), 5
    comp = GaussianMixture(gmm.means[k:k + 1], gmm.covs[k:k + 1])
    guided = guidance.classifier_guidance(gmm.model(path, "noise"),
                                          _class_log_posterior(gmm, path, k), 1.0, path=path,
                                          prediction="noise")
    x0 = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kw = {"path": path, "prediction": "noise", "solver": "heun", "steps": 12, "grid": "logsnr"}
    xs = toolkit.sample(guided, x0, **kw)
    torch.testing.assert_close(xs, toolkit.sample(comp.model(path, "noise"), x0, **kw),
                               rtol=1e-7, atol=1e-7)
    nearest = torch.cdist(xs, gmm.means).argmin(1)
    assert float((nearest == k).double().mean()) > 0.9


def test_dps_reduces_measurement_residual():
    gmm, path = ring_gmm(), paths.get("linear")
    y = torch.full((128, 1), 0.95, dtype=torch.float64)  # observe the first coordinate

    def A(x):
        return x[:, :1]

    x0 = torch.randn(128, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kw = {"path": path, "solver": "euler", "steps": 40}
    plain = toolkit.sample(gmm.model(path), x0, **kw)
    g = guidance.dps(gmm.model(path), A, y, 2.0, path=path, prediction="velocity")
    info = {}
    guided = toolkit.sample(g, x0, info=info, **kw)
    assert info["nfe"] == 40
    r_plain = (A(plain) - y).abs().mean()
    r_dps = (A(guided) - y).abs().mean()
    assert float(r_dps) < 0.3 * float(r_plain), (float(r_dps), float(r_plain))
    assert torch.isfinite(guided).all()


def test_score_shift_matches_conversion():
    """The closed-form prediction shifts agree with converting a shifted score."""
    from toolkit.param import convert

    path = paths.get("trig")
    g = torch.Generator().manual_seed(2)
    x, s = (torch.randn(5, 2, dtype=torch.float64, generator=g) for _ in range(2))
    t, d = torch.rand(5, dtype=torch.float64, generator=g) * 0.8 + 0.1, 0.1 * s
    for kind in ("velocity", "noise", "data", "v"):
        ref = convert(s + d, x, t, path, "score", kind) - convert(s, x, t, path, "score", kind)
        torch.testing.assert_close(guidance.score_shift(d, x, t, path, kind), ref)


def test_batched_cfg_concatenates_structured_conditions() -> None:
    """Condition objects (pooled + padded tokens + mask) share one batch like tensors do."""
    from conditioners.base import Condition

    def net(x, t, cond=None):
        tok = (cond.tokens * cond.mask[..., None]).sum((1, 2))[:, None]
        return x * 0.5 + cond.pooled.sum(-1, keepdim=True) + tok + t[:, None]

    g = torch.Generator().manual_seed(0)
    c = Condition(pooled=torch.randn(4, 3, generator=g), tokens=torch.randn(4, 5, 2, generator=g),
                  mask=torch.ones(4, 5, dtype=torch.bool))
    u = Condition(pooled=torch.zeros(4, 3), tokens=torch.zeros(4, 2, 2),
                  mask=torch.zeros(4, 2, dtype=torch.bool))
    x, t = torch.randn(4, 2, generator=g), torch.rand(4, generator=g)
    batched = guidance.cfg(net, 3.0, cond={"cond": c}, uncond={"cond": u}, batched=True)
    single = guidance.cfg(net, 3.0, cond={"cond": c}, uncond={"cond": u}, batched=False)
    torch.testing.assert_close(batched(x, t), single(x, t))
    assert batched.nfe_per_call == 1 and single.nfe_per_call == 2
