"""Transfusion: attention mask, causality / bidirectionality of the real network, the
LM + lambda * flow loss, greedy captioning, bad input and a tiny training run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modalities.hybrid.transfusion import (
    BOI,
    BOS,
    EOI,
    EOS,
    IMG,
    PAD,
    CaptionVocab,
    TransfusionNet,
    build_sequences,
    image_index,
    image_prefix,
    lm_targets,
    patchify,
    transfusion_mask,
    unpatchify,
)
from modalities.hybrid.transfusion_task import TransfusionTask
from toolkit.train.tasks import SamplerSpec, StepContext

N, P = 16, 16  # 16x16 images, 4x4 patches


def _task(**kw) -> TransfusionTask:
    return TransfusionTask(image_size=16, patch_size=4, val_captions=0,
                           sampler=SamplerSpec(solver="euler", steps=3, guidance_scale=2.0), **kw)


def _net(seed: int = 0, zero_init: bool = False) -> TransfusionNet:
    torch.manual_seed(seed)
    return TransfusionNet(patch_dim=P, n_patches=N, hidden_dim=32, depth=2, num_heads=2,
                          max_len=32, zero_init=zero_init).eval()


def _batch(b: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, 16, 16, generator=g) * 2 - 1, torch.arange(b) % 10


def _seqs(first):
    task, (x, y) = _task(), _batch(len(first))
    caps = task.captions(y.tolist(), [0] * len(first))  # "the digit zero": 3 words
    return task, build_sequences(caps, patchify(x, 4), torch.tensor(first))


def test_layouts_targets_and_patchify_roundtrip():
    x = torch.randn(3, 1, 16, 16)
    assert torch.equal(unpatchify(patchify(x, 4), 4, 1, 16), x)
    assert torch.equal(patchify(x, 4)[0, 1], x[0, 0, :4, 4:8].reshape(-1))  # row-major
    _, seq = _seqs([False, True])
    c2i, i2c = seq.ids.tolist()
    assert c2i[:5] == [BOS, *c2i[1:4], BOI] and c2i[5:5 + N] == [IMG] * N
    assert c2i[5 + N:] == [EOI, EOS] and seq.img_start.tolist() == [5, 2]
    assert i2c[:2] == [BOS, BOI] and i2c[2 + N] == EOI and i2c[-1] == EOS
    tgt = lm_targets(seq.ids)[0].tolist()  # next text tokens, incl. <boi> and <eos>
    assert tgt[:4] == [*c2i[1:4], BOI] and set(tgt[4:4 + N + 1]) == {-100}
    assert tgt[5 + N] == EOS and tgt[-1] == -100
    dropped = build_sequences([[20, 21]], torch.zeros(1, N, P), [False], torch.tensor([True]))
    assert dropped.ids[0, :2].tolist() == [BOS, BOI]  # CFG: caption removed, <boi> kept
    v = CaptionVocab()
    assert v.parse_digit(v.caption(7, 0)) == 7 and v.parse_digit(v.caption(3, 2)) == 3
    assert v.parse_digit("the digit") == -1 and v.parse_digit("one 2") == -1


def test_mask_text_causal_images_bidirectional():
    ids = torch.tensor([[BOS, 20, BOI, IMG, IMG, IMG, EOI, 21, BOI, IMG, IMG, EOI, EOS]])
    m = transfusion_mask(image_index(ids))[0]  # (L, L)
    img0, img1 = [3, 4, 5], [9, 10]
    text = [i for i in range(13) if i not in img0 + img1]
    for i in text:  # text is causal
        assert m[i, :i + 1].all() and not m[i, i + 1:].any()
    for a in img0:  # bidirectional within the image, causal to what precedes it
        assert m[a, img0].all() and m[a, :3].all()
        assert not m[a, 6:].any()  # no later text (<eoi>, caption) and no later image
    assert m[9][img1].all() and m[9][img0].all()  # a later image sees the earlier one
    assert m[7, img0].all() and m[12, img0 + img1].all()  # text after an image sees all of it


@torch.no_grad()
def test_perturbation_causal_text_bidirectional_patches():
    net = _net()
    task, seq = _seqs([False, True])
    t = torch.tensor([0.3, 0.6])
    logits, v = net(seq.ids, seq.patches, t)
    # a later text token (caption word of the image -> caption row) changes nothing earlier
    ids2 = seq.ids.clone()
    j = 2 + N + 2  # second caption word after <eoi>
    ids2[1, j] = 30
    lo2, v2 = net(ids2, seq.patches, t)
    assert torch.equal(lo2[1, :j], logits[1, :j]) and torch.equal(v2, v)
    assert not torch.allclose(lo2[1, j:], logits[1, j:])
    # a later patch of the same image changes an earlier patch's output
    p2 = seq.patches.clone()
    p2[:, -1] += 1.0
    lo3, v3 = net(seq.ids, p2, t)
    assert not torch.allclose(v3[:, 0], v[:, 0])
    # ... but no text output before <boi> (caption -> image row: positions 0..4)
    assert torch.equal(lo3[0, :5], logits[0, :5])
    assert not torch.allclose(lo3[0, 5 + N:], logits[0, 5 + N:])  # text after the image


def test_loss_is_ce_plus_lambda_flow():
    net = _net()
    task, seq = _seqs([False, True, False, True])
    g = torch.Generator().manual_seed(1)
    x0, t = torch.randn(seq.patches.shape, generator=g), torch.rand(4, generator=g)
    out = task.loss_terms(net, seq, x0, t)
    xt = t[:, None, None] * seq.patches + (1 - t[:, None, None]) * x0
    logits, v = net(seq.ids, xt, t)
    flow = ((v - (seq.patches - x0)) ** 2).mean()
    terms = []
    for b in range(4):
        ids = seq.ids[b].tolist()
        for j in range(len(ids) - 1):
            if ids[j + 1] not in (PAD, IMG, EOI, BOS):
                terms.append(F.cross_entropy(logits[b, j][None], torch.tensor([ids[j + 1]])))
    ce = torch.stack(terms).mean()
    assert task.flow_weight == 5.0
    torch.testing.assert_close(out["flow"], flow)
    torch.testing.assert_close(out["ce"], ce)
    torch.testing.assert_close(out["loss"], ce + 5.0 * flow)
    x, y = _batch(8)
    res = [task.loss(net, [x, y], StepContext(0, 0, torch.Generator().manual_seed(3)))
           for _ in range(2)]  # all randomness through ctx: reproducible
    assert torch.equal(res[0]["loss"], res[1]["loss"])
    torch.testing.assert_close(res[0]["loss"], res[0]["ce"] + 5.0 * res[0]["flow"])


class _ScriptedLM(nn.Module):
    """Emits word 31 ("the") until the sequence is 2 tokens past the prompt, then <eos>;
    row 1 emits <eos> at once."""

    def __init__(self, prompt: int) -> None:
        super().__init__()
        self.w, self.prompt, self.calls = nn.Parameter(torch.zeros(())), prompt, 0

    def forward(self, ids, patches, t):
        self.calls += 1
        logits = torch.zeros(ids.shape[0], ids.shape[1], 35)
        done = ids.shape[1] >= self.prompt + 2
        logits[0, -1, EOS if done else 31] = 1.0
        logits[1, -1, EOS] = 1.0
        logits[:, -1, BOI] = 5.0  # special tokens other than <eos> are never emitted
        return logits, patches


def test_greedy_captions_stop_at_eos():
    task = _task()
    lm = _ScriptedLM(N + 3)
    caps = task.generate_captions(lm, torch.zeros(2, 1, 16, 16), max_len=10)
    assert caps == ["the the", ""] and lm.calls == 3  # stopped at <eos>, not max_len


def test_generation_shapes_and_cfg_nfe():
    task, net = _task(), _net()
    info: dict = {}
    x = task.generate_images(net, torch.tensor([7, 3]), torch.Generator().manual_seed(0),
                             info=info)
    assert x.shape == (2, 1, 16, 16) and torch.isfinite(x).all() and info["nfe"] == 3
    y = task.generate_images(net, ["the digit seven", 3],
                             torch.Generator().manual_seed(0), cfg=1.0)
    assert y.shape == x.shape and not torch.equal(x, y)
    assert len(task.generate_captions(net, x, max_len=3)) == 2
    with pytest.raises(ValueError, match="outside the vocabulary"):
        task.generate_images(net, ["the digit eleven"], torch.Generator())


@torch.no_grad()
def test_bad_input_is_refused():
    net = _net()
    task, seq = _seqs([False])
    with pytest.raises(ValueError, match="not followed by an image"):
        net(torch.tensor([[BOS, 20, BOI]]), seq.patches, 0.5)  # <boi> at the end
    short = torch.tensor([[BOS, BOI, *[IMG] * (N - 2), EOI, EOS, PAD]])
    with pytest.raises(ValueError, match="not followed by an image"):
        net(short, seq.patches, 0.5)
    with pytest.raises(ValueError, match="exactly one <boi>"):
        net(torch.tensor([[BOS, 20, EOS]]), seq.patches, 0.5)
    with pytest.raises(ValueError, match="patch dim"):
        net(seq.ids, torch.zeros(1, N, P + 1), 0.5)
    long = image_prefix([[20] * 20], N)  # 38 tokens > max_len 32
    with pytest.raises(ValueError, match="exceeds the positional range max_len=32"):
        net(long, seq.patches, 0.5)
    with pytest.raises(ValueError, match="model.patch_dim"):
        _task().wrap_model(TransfusionNet(patch_dim=12, n_patches=N, hidden_dim=32, depth=1,
                                          num_heads=2))
    with pytest.raises(ValueError, match="max_len"):
        _task().wrap_model(TransfusionNet(patch_dim=P, n_patches=N, hidden_dim=32, depth=1,
                                          num_heads=2, max_len=20))
    with pytest.raises(ValueError, match="images"):
        task.loss(net, [torch.zeros(2, 1, 32, 32), torch.zeros(2)], None)


def test_tiny_training_lowers_the_loss():
    task = _task()
    net = _net(zero_init=True).train()
    g = torch.Generator().manual_seed(0)
    proto = torch.rand(10, 1, 16, 16, generator=g) > 0.7  # one binary "digit" per class
    y = torch.arange(16) % 10
    x = proto[y].float() * 2 - 1 + 0.05 * torch.randn(16, 1, 16, 16, generator=g)

    def evaluate() -> float:
        with torch.no_grad():
            return sum(float(task.loss(net, [x, y], StepContext(0, 0, torch.Generator()
                                                                .manual_seed(100 + k)))["loss"])
                       for k in range(3)) / 3

    before = evaluate()
    params = list(net.parameters())
    m1, m2 = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    for step in range(1, 41):  # Adam by hand (torch.optim imports torch._dynamo: slow here)
        out = task.loss(net, [x, y], StepContext(step, 0, torch.Generator().manual_seed(step)))
        grads = torch.autograd.grad(out["loss"], params, allow_unused=True)
        with torch.no_grad():
            for p, g, a, b in zip(params, grads, m1, m2, strict=True):
                if g is not None:
                    a.mul_(0.9).add_(0.1 * g)
                    b.mul_(0.999).add_(0.001 * g * g)
                    p -= 5e-3 * (a / (1 - 0.9**step)) / ((b / (1 - 0.999**step)).sqrt() + 1e-8)
    after = evaluate()
    assert after < 0.7 * before, (before, after)


def test_format_eval_reports_both_directions():
    from modalities.hybrid.transfusion_eval import format_eval

    res = {"image_accuracy": 0.9, "image_accuracy_by_template": {"the digit {word}": 0.95},
           "fd_local": 2.0, "fd_local_real": 1.0, "precision": 0.8, "recall": 0.7,
           "precision_real": 0.85, "recall_real": 0.8, "metric_n": 100,
           "caption_accuracy": 0.75, "caption_n": 50, "caption_well_formed": 1.0,
           "caption_examples": [{"label": 7, "caption": "the digit seven"}],
           "sampler": {"solver": "heun", "steps": 12, "guidance_scale": 2.0}}
    text = format_eval(res)
    assert "image accuracy from captions   0.9000" in text
    assert "caption accuracy from images   0.7500" in text and "'the digit seven'" in text
