"""ComposedConditioner: shapes, separate dropout, and multi-CFG null variants."""

import pytest
import torch

from conditioners import (
    ClassConditioner,
    ComposedConditioner,
    Condition,
    TrainableTextConditioner,
    condition_kwargs_model,
)
from toolkit import guidance

CAPS = ["a red circle", "a blue square on the left", "green", "a tiny yellow star"]


def _parts():
    torch.manual_seed(0)
    return {"text": TrainableTextConditioner(16, layers=1, heads=2, p_drop=0.3),
            "cls": ClassConditioner(5, 8, tokens=True, p_drop=0.6)}


def _values():
    return {"text": CAPS, "cls": torch.tensor([0, 1, 2, 3])}


def test_concat_and_sum_shapes():
    comp = ComposedConditioner(_parts(), token_dim=16)
    c = comp(_values())
    n_text = comp.parts["text"](CAPS).tokens.shape[1]
    assert comp.pooled_dim == 24 and comp.token_dim == 16
    assert c.pooled.shape == (4, 24) and c.tokens.shape == (4, n_text + 1, 16)
    assert "cls" in comp.token_proj and "text" not in comp.token_proj
    s = ComposedConditioner(_parts(), pooled="sum", dim=12)
    cs = s(_values())
    assert s.pooled_dim == 12 and cs.pooled.shape == (4, 12) and cs.tokens.shape[-1] == 12
    with pytest.raises(ValueError, match="token widths"):
        ComposedConditioner(_parts())
    with pytest.raises(KeyError, match="missing"):
        comp({"text": CAPS})
    with pytest.raises(ValueError, match="Did you mean 'cls'"):
        ComposedConditioner(_parts(), token_dim=16, p_drop={"clss": 0.1})


def test_separate_dropout():
    comp = ComposedConditioner(_parts(), token_dim=16)
    g = torch.Generator().manual_seed(0)
    drops = comp.sample_drop(20_000, g)
    assert abs(drops["text"].float().mean().item() - 0.3) < 0.02
    assert abs(drops["cls"].float().mean().item() - 0.6) < 0.02
    both = (drops["text"] & drops["cls"]).float().mean().item()
    assert abs(both - 0.18) < 0.02  # independent
    drop = {"text": torch.tensor([True, False, False, True]),
            "cls": torch.tensor([False, False, True, True])}
    c, full = comp(_values(), drop=drop), comp(_values())
    text_null = comp.parts["text"].null_pooled
    assert torch.equal(c.pooled[0, :16], text_null)
    assert torch.equal(c.pooled[0, 16:], full.pooled[0, 16:])
    assert torch.equal(c.pooled[2, 16:], comp.parts["cls"].embedding.weight[5])
    assert torch.equal(c.pooled[1], full.pooled[1])
    comp_all = ComposedConditioner(_parts(), token_dim=16, p_drop={"text": 0.0, "cls": 0.0},
                                   p_drop_all=0.5)
    d = comp_all.sample_drop(1000, g)
    assert torch.equal(d["text"], d["cls"]) and 0.4 < d["text"].float().mean() < 0.6


@pytest.mark.parametrize("mode", ["nested", "sum"])
def test_guidance_variants_feed_multi_cfg(mode):
    comp = ComposedConditioner(_parts(), token_dim=16).eval()
    values = _values()
    conds, uncond = comp.guidance_kwargs(values, ["cls", "text"], mode=mode)
    full, null = comp(values), comp.null(4)
    torch.testing.assert_close(conds[-1 if mode == "nested" else 1]["cond"].pooled[:, :16],
                               full.pooled[:, :16])
    torch.testing.assert_close(uncond["cond"].pooled, null.pooled)
    lengths = {c["cond"].tokens.shape[1] for c in conds} | {uncond["cond"].tokens.shape[1]}
    assert len(lengths) == 1  # one layout, so the branches can share a batch

    def net(x, t, cond: Condition | None = None):
        w = (cond.tokens * cond.mask[..., None]).mean((1, 2)) + cond.pooled.mean(-1)
        return x * (1 + w[:, None])

    x, t = torch.randn(4, 3), torch.full((4,), 0.3)
    ref = guidance.multi_cfg(net, conds, [2.0, 3.0], uncond=uncond, mode=mode, batched=False)(x, t)
    fc, fu = comp.guidance_kwargs(values, ["cls", "text"], mode=mode, flat=True)
    out = guidance.multi_cfg(condition_kwargs_model(net), fc, [2.0, 3.0], uncond=fu, mode=mode,
                             batched=True)(x, t)
    torch.testing.assert_close(out, ref)
