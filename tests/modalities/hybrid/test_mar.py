"""MAR: unmasking schedule, patchify, independence from masked / future tokens, masked-only
loss, a tiny fit, sampling, bad input."""

from __future__ import annotations

import pytest
import torch

from modalities.hybrid.mar import MAR
from modalities.hybrid.mar_task import MARTask, truncated_normal, unmask_schedule
from toolkit.nn.layers import AdaLNModulation
from toolkit.train.tasks import SamplerSpec, StepContext


def _model(order: str = "random", **kw) -> MAR:
    torch.manual_seed(0)
    base = dict(image_size=8, channels=1, patch_size=2, num_classes=10, dim=32,
                encoder_depth=2, decoder_depth=2, num_heads=2, buffer_size=2, order=order,
                head_width=32, head_depth=1, head_batch_mul=2, head_steps=2)
    base.update(kw)
    m = MAR(**base)
    # AdaLN-Zero blocks start as the identity and the head ignores z: randomise them so
    # that the tests see attention and z receives gradients
    for mod in m.modules():
        if isinstance(mod, AdaLNModulation):
            torch.nn.init.normal_(mod.lin.weight, std=0.1)
            torch.nn.init.normal_(mod.lin.bias, std=0.5)
    torch.nn.init.normal_(m.head.out.weight, std=0.1)
    return m


def _task(**kw) -> MARTask:
    return MARTask(image_size=8, channels=1, sampler=SamplerSpec(solver="euler", steps=2,
                                                                 guidance_scale=2.0), **kw)


@pytest.mark.parametrize("length", [1, 5, 16, 64, 256])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 8, 16, 64, 300])
def test_unmask_schedule_reveals_every_token_exactly_once(length, k):
    sched = unmask_schedule(length, k)
    assert len(sched) == min(k, length) and min(sched) >= 1 and sum(sched) == length
    # replay it on a random order: every position revealed exactly once
    order = torch.randperm(length, generator=torch.Generator().manual_seed(length + k))
    seen = torch.zeros(length, dtype=torch.long)
    start = 0
    for r in sched:
        seen[order[start:start + r]] += 1
        start += r
    assert torch.equal(seen, torch.ones(length, dtype=torch.long))
    if k == 1:
        assert sched == [length]
    if k <= length:  # the cosine schedule: floor(L cos(pi/2 (i+1)/K)) left where feasible
        left = length - torch.tensor(sched).cumsum(0)
        assert int(left[-1]) == 0 and torch.all(left[:-1] >= 1)
    assert unmask_schedule(64, 4) == [5, 14, 21, 24]  # masked after: 59, 45, 24, 0
    with pytest.raises(ValueError, match=">= 1"):
        unmask_schedule(0, 4)


def test_truncated_normal_stays_in_range():
    u = torch.rand(20000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r = truncated_normal(u, 1.0, 0.25, 0.7, 1.0)
    assert float(r.min()) >= 0.7 and float(r.max()) <= 1.0
    # N(1, 0.25^2) truncated to [0.7, 1]: mean 1 - 0.25 (phi(0) - phi(-1.2)) / (1/2 - Phi(-1.2))
    assert abs(float(r.mean()) - 0.8670) < 0.003


def test_patchify_round_trip_and_layout():
    m = _model(image_size=8, channels=2, patch_size=4)
    x = torch.randn(3, 2, 8, 8)
    tok = m.patchify(x)
    assert tok.shape == (3, 4, 32) and m.seq_len == 4 and m.token_dim == 32
    assert torch.equal(m.unpatchify(tok), x)
    # token 1 is the top-right patch, channel-major inside the token
    assert torch.equal(tok[0, 1].view(2, 4, 4), x[0, :, :4, 4:])


def test_outputs_do_not_depend_on_masked_token_values():
    m = _model().eval()
    g = torch.Generator().manual_seed(1)
    tok = torch.randn(4, 16, 4, generator=g)
    mask = torch.rand(4, 16, generator=g) < 0.6
    mask[0] = True  # a sample with nothing visible
    mask[1] = False  # and one with everything visible
    y = torch.tensor([0, 3, 9, 10])  # 10: the null class
    z = m(tok, mask, y)
    assert z.shape == (4, 16, 32)
    tok2 = tok + 5.0 * mask[..., None] * torch.randn(4, 16, 4, generator=g)  # masked only
    assert torch.allclose(m(tok2, mask, y), z, atol=1e-5)
    # a visible token does matter, and so does the class
    tok3 = tok.clone()
    i = int((~mask[2]).nonzero()[0])
    tok3[2, i] += 1.0
    assert not torch.allclose(m(tok3, mask, y)[2], z[2], atol=1e-4)
    assert not torch.allclose(m(tok, mask, torch.tensor([0, 3, 8, 10]))[2], z[2], atol=1e-4)


def test_causal_variant_position_i_sees_only_earlier_tokens():
    m = _model("raster").eval()
    g = torch.Generator().manual_seed(2)
    tok = torch.randn(2, 16, 4, generator=g)
    y = torch.tensor([1, 7])
    z = m(tok, None, y)
    assert z.shape == (2, 16, 32)
    for j in (0, 5, 15):
        tok2 = tok.clone()
        tok2[:, j] += torch.randn(2, 4, generator=g)
        z2 = m(tok2, None, y)
        assert torch.allclose(z2[:, :j + 1], z[:, :j + 1], atol=1e-5)  # z_i, i <= j: unchanged
        if j < 15:
            assert not torch.allclose(z2[:, j + 1:], z[:, j + 1:], atol=1e-4)
    # the prefix pass used at sampling gives the same z
    assert torch.allclose(m.forward_causal(tok, y, 6), z[:, :6], atol=1e-5)


def test_loss_counts_only_masked_tokens():
    task, m = _task(p_drop=0.0), _model()
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    y = torch.arange(6)
    seen = {}
    fwd = m.forward

    def spy(tok, mask, yy):
        z = fwd(tok, mask, yy)
        z.retain_grad()
        seen.update(z=z, mask=mask)
        return z

    m.forward = spy
    out = task.loss(m, [x, y], StepContext(0, 0, torch.Generator().manual_seed(0)))
    out["loss"].backward()
    mask, grad = seen["mask"], seen["z"].grad.abs().sum(-1)  # (B, L)
    assert mask.any(1).all() and (~mask).any()  # ratios in [0.7, 1]: some tokens visible
    n = mask.sum(1)
    assert torch.all(n >= 12) and torch.all(n <= 16)  # ceil(16 * [0.7, 1])
    assert torch.all(grad[~mask] == 0) and torch.all(grad[mask] > 0)
    assert float(out["mask_ratio"]) == pytest.approx(float(mask.float().mean()))
    # the same draws replayed: the loss is the head's loss on the masked tokens alone
    ctx = StepContext(0, 0, torch.Generator().manual_seed(0))
    ctx.bernoulli(0.0, 6)
    mask2 = task.masks(6, 16, ctx)
    assert torch.equal(mask2, mask)
    x0 = ctx.randn((6, 2, 16, 4)).transpose(0, 1)[:, mask]
    t = ctx.sample_t(m.head.t_sampler, (6, 2, 16)).transpose(0, 1)[:, mask]
    with torch.no_grad():
        want = m.head.loss(m.patchify(x)[mask], fwd(m.patchify(x), mask, y)[mask], x0=x0, t=t)
    assert float(out["loss"].detach()) == pytest.approx(float(want), rel=1e-5)


def test_raster_loss_uses_every_token():
    task, m = _task(), _model("raster")
    out = task.loss(m, [torch.rand(4, 1, 8, 8) * 2 - 1, torch.arange(4)],
                    StepContext(0, 0, torch.Generator().manual_seed(0)))
    assert float(out["mask_ratio"]) == 1.0 and torch.isfinite(out["loss"])


@pytest.mark.parametrize("order", ["random", "raster"])
def test_tiny_training_lowers_the_loss_and_samples(order):
    task = _task()
    m = _model(order)
    g = torch.Generator().manual_seed(0)
    # two "classes" of 8x8 images: a bright left half or a bright top half
    x = -torch.ones(32, 1, 8, 8)
    y = torch.arange(32) % 2
    x[y == 0, :, :, :4] = 1.0
    x[y == 1, :, :4, :] = 1.0
    x = x + 0.05 * torch.randn(x.shape, generator=g)

    def eval_loss() -> float:
        with torch.no_grad():
            return sum(float(task.loss(m, [x, y], StepContext(0, 0, torch.Generator()
                                                              .manual_seed(s)))["loss"])
                       for s in range(4)) / 4

    before = eval_loss()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for i in range(60):
        loss = task.loss(m, [x, y], StepContext(i, 0, g))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.6 * before, (before, after)
    info: dict = {}
    img = task.generate(m.eval(), torch.tensor([0, 1, 1]), torch.Generator().manual_seed(0),
                        iterations=3, temperature=0.5, info=info)
    assert img.shape == (3, 1, 8, 8) and img.abs().max() <= 1.0
    assert info["iterations"] == (16 if order == "raster" else 3) and info["head_nfe"] == 2
    a = task.generate(m, 4, torch.Generator().manual_seed(5), iterations=20, batch_size=3)
    b = task.generate(m, 4, torch.Generator().manual_seed(5), iterations=20, batch_size=3)
    assert torch.equal(a, b)  # K > L runs L iterations; reproducible with the generator


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        MAR(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="order must be one of"):
        MAR(order="zigzag")
    m, task = _model(), _task()
    ctx = StepContext(0, 0, torch.Generator())
    with pytest.raises(ValueError, match=r"images must be \(B, 1, 8, 8\)"):
        m.patchify(torch.zeros(2, 1, 12, 12))
    with pytest.raises(ValueError, match=r"labels must be \(B,\) integers in \[0, 10\)"):
        task.loss(m, [torch.zeros(2, 1, 8, 8), torch.tensor([0, 10])], ctx)
    with pytest.raises(ValueError, match=r"MARTask expects images \(B, 1, 8, 8\)"):
        task.loss(m, [torch.zeros(2, 1, 16, 16), torch.tensor([0, 1])], ctx)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        m(torch.zeros(2, 16, 4), torch.ones(2, 16, dtype=torch.bool), torch.tensor([0, 11]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        task.generate(m, torch.tensor([3, 10]), torch.Generator())
    with pytest.raises(ValueError, match=r"mask must be a \(2, 16\) bool"):
        m(torch.zeros(2, 16, 4), torch.ones(2, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"tokens must be \(B, 16, 4\)"):
        m(torch.zeros(2, 16, 3), torch.ones(2, 16, dtype=torch.bool), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="task.num_classes"):
        MARTask(num_classes=5, image_size=8).wrap_model(m)
    with pytest.raises(ValueError, match="task images"):
        MARTask(image_size=16).wrap_model(m)
    with pytest.raises(ValueError, match="needs a MAR network"):
        task.wrap_model(torch.nn.Linear(2, 2))


def test_mar_run_is_evaluated_by_the_class_eval(tmp_path, monkeypatch):
    """recipe=mar_mnist, 2 steps -> evaluate_class_run with MAR's keywords; the CLI routes
    MARTask runs there with iters= / temperature=."""
    import modalities.image.class_eval as ce
    from tests.toolkit.train.conftest import TINY, TINY_BY_RECIPE
    from toolkit.cli import main
    from toolkit.train import compose_recipe, train_recipe

    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    train_recipe(compose_recipe("mar_mnist", [*TINY, *TINY_BY_RECIPE["mar_mnist"], "data.n=64",
                                              f"run_dir={run}"]))
    res = ce.evaluate_class_run(run, n=20, steps=2, iterations=3, temperature=0.7, feature_kw={
        "steps": 3, "width": 8, "feature_dim": 16, "batch_size": 32})
    for key in ("fd_local", "fd_local_real", "precision", "recall", "class_accuracy"):
        assert res[key] == res[key], key  # present, not NaN
    assert res["sampler"]["iterations"] == 3 and res["sampler"]["temperature"] == 0.7
    assert res["sampler"]["steps"] == 2 and res["n"] == 20
    with pytest.raises(ValueError, match="does not take bogus="):
        ce.evaluate_class_run(run, n=4, bogus=1)
    with pytest.raises(ValueError, match="bpd= needs a flow run"):
        ce.evaluate_class_run(run, n=4, bpd=2)
    seen = {}
    monkeypatch.setattr(ce, "evaluate_class_run", lambda *a, **kw: seen.update(kw) or res)
    assert main(["eval", f"checkpoint={run}", "n=4", "iters=5", "temperature=0.9"]) == 0
    assert seen["iterations"] == 5 and seen["temperature"] == 0.9
