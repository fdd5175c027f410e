"""Frozen MiniLM text conditioner (vs sentence-transformers), caching, dropout, and the
small trainable text encoder."""

import pytest
import torch

from conditioners import TextConditioner, TrainableTextConditioner
from conditioners.text_backends import minilm_path

CAPS = ["a red circle at the top left", "a small blue square at the bottom right",
        "green triangle", ""]


def test_pooled_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(
        CAPS, convert_to_tensor=True)
    exact = TextConditioner(backend=minilm.backend, cache_dtype="float32")(CAPS)
    assert minilm.pooled_dim == minilm.token_dim == 384
    torch.testing.assert_close(exact.pooled, ref.float(), atol=1e-5, rtol=0)
    # the default float16 cache rounds every embedding the same way, hit or miss
    c = minilm(CAPS)
    assert c.pooled.dtype == torch.float32
    torch.testing.assert_close(c.pooled, ref.float(), atol=2e-4, rtol=1e-3)
    assert torch.equal(c.pooled, exact.pooled.half().float())


def test_mask_matches_tokenizer(minilm):
    c = minilm(CAPS)
    am = minilm.backend.tokenizer(CAPS, padding=True, return_tensors="pt")["attention_mask"]
    assert torch.equal(c.mask, am.bool())
    assert c.tokens.shape == (4, am.shape[1], 384)
    assert torch.equal(c.tokens[~c.mask], torch.zeros(int((~c.mask).sum()), 384))


def test_drop_is_exact_and_null_is_empty_caption(minilm):
    c = minilm(CAPS[:3])
    drop = torch.tensor([False, True, False])
    d = minilm(CAPS[:3], drop=drop)
    n = minilm.null(3)
    n0 = n.tokens.shape[1]
    assert torch.equal(d.pooled[1], n.pooled[1]) and torch.equal(d.tokens[1, :n0], n.tokens[1])
    assert d.mask[1].sum() == n0
    for i in (0, 2):
        assert torch.equal(d.pooled[i], c.pooled[i]) and torch.equal(d.tokens[i], c.tokens[i])
    empty = minilm([""])  # the learned null starts at the encoding of ""
    torch.testing.assert_close(n.pooled[:1], empty.pooled)
    # the learned null is trainable, the frozen encoder is not in parameters()
    names = [k for k, _ in minilm.named_parameters()]
    assert names == ["null_pooled", "null_tokens"]
    assert all(not k.startswith("backend") for k in minilm.state_dict())
    d.pooled.sum().backward()
    assert minilm.null_pooled.grad is not None and not c.pooled.requires_grad
    assert all(p.grad is None for p in minilm.backend.parameters())
    minilm.zero_grad()


def test_cache_hits_identical_and_no_recompute(minilm):
    minilm.cache.clear()
    calls = minilm.encoder_calls
    a = minilm(["cache me", "and me", "cache me"])
    assert minilm.encoder_calls == calls + 1  # one batch for 2 unique captions
    b = minilm(["and me", "cache me"])
    assert minilm.encoder_calls == calls + 1 and minilm.cache.hits >= 2
    assert torch.equal(a.pooled[1], b.pooled[0]) and torch.equal(a.pooled[0], a.pooled[2])
    n = int(a.mask[1].sum())
    assert torch.equal(a.tokens[1, :n], b.tokens[0, :n])


def test_cache_dtype_halves_disk_and_miss_equals_hit(minilm, tmp_path):
    caps = [f"a caption number {i}" for i in range(20)]
    p16 = minilm.precompute(caps, tmp_path / "f16")
    full = TextConditioner(backend=minilm.backend, cache_dtype="float32")
    p32 = full.precompute(caps, tmp_path / "f32")
    assert p16.stat().st_size < 0.6 * p32.stat().st_size
    cold = TextConditioner(backend=minilm.backend, cache_size=0)  # no LRU: every call misses
    warm = TextConditioner(backend=minilm.backend, cache_dir=tmp_path / "f16")
    warm.precompute(caps)
    a, b = cold(caps), warm(caps)
    assert torch.equal(a.pooled, b.pooled) and torch.equal(a.tokens, b.tokens)
    pooled, tokens = warm.cached_rows(caps)
    assert pooled.shape == (20, 384) and tokens.shape == (int(a.mask.sum()), 384)
    with pytest.raises(ValueError, match="cache_dtype"):
        TextConditioner(backend=minilm.backend, cache_dtype="int8")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # trainer.mixed_precision=bf16 on CPU
        c = warm(caps)
    assert c.pooled.dtype == torch.float32 and torch.equal(c.pooled, b.pooled)


def test_disk_cache_roundtrip(minilm, tmp_path):
    caps = ["one red circle", "two blue squares", "one red circle"]
    path = minilm.precompute(caps, tmp_path)
    assert path.is_file()
    fresh = TextConditioner(backend=minilm.backend, cache_dir=tmp_path)
    calls = fresh.encoder_calls
    assert fresh.precompute(caps) == path and fresh.encoder_calls == calls
    torch.testing.assert_close(fresh(caps).pooled, minilm(caps).pooled, atol=0, rtol=0)
    assert fresh.encoder_calls == calls
    with pytest.raises(ValueError, match="made with encoder"):
        fresh.cache.load(path, "another-encoder")


def test_zero_and_empty_null_modes(minilm):
    z = TextConditioner(backend=minilm.backend, null="zero")
    assert z.null(2).tokens.shape == (2, 1, 384) and z.null(2).pooled.abs().sum() == 0
    assert list(z.parameters()) == []
    e = TextConditioner(backend=minilm.backend, null="empty")
    assert list(e.parameters()) == []
    torch.testing.assert_close(e.null(1).pooled, minilm([""]).pooled)


def test_bad_inputs(minilm, tmp_path):
    with pytest.raises(TypeError, match="single str"):
        minilm("a caption")
    with pytest.raises(TypeError, match="caption 1"):
        minilm(["ok", 3])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextConditioner(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        TextConditioner(tmp_path / "empty")
    with pytest.raises(ValueError, match="Did you mean 'clip'"):
        TextConditioner(tmp_path, kind="clp")
    with pytest.raises(ValueError, match="null mode"):
        TextConditioner(backend=minilm.backend, null="none")


@pytest.mark.parametrize("tok", ["char", "word"])
def test_trainable_text_encoder(tok):
    torch.manual_seed(0)
    tt = TrainableTextConditioner(32, layers=1, heads=4, tokenizer=tok, max_length=16)
    c = tt(CAPS)
    assert c.tokens.shape[0] == 4 and c.tokens.shape[2] == 32 and c.pooled.shape == (4, 32)
    assert c.mask[:, 0].all() and c.mask[3].sum() == 1  # BOS only for ""
    assert c.tokens.shape[1] <= 16 and torch.isfinite(c.tokens).all()
    c2 = tt(["green triangle"])
    n = int(c2.mask.sum())
    torch.testing.assert_close(c2.tokens[0, :n], c.tokens[2, :n], atol=1e-5, rtol=1e-5)
    d = tt(CAPS, drop=torch.tensor([True, False, False, False]))
    assert torch.equal(d.pooled[0], tt.null_pooled) and torch.equal(d.pooled[1:], c.pooled[1:])
    d.pooled.sum().backward()
    assert tt.embed.weight.grad.abs().sum() > 0 and tt.null_pooled.grad is not None
