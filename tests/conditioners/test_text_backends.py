"""Local loading of transformers text models (tiny random CLIP text / T5 encoder saved to a
tmp folder with MiniLM's tokenizer) and the open_clip loader's error without the package."""

import importlib.util

import pytest
import torch

from conditioners import TextConditioner
from conditioners.text_backends import load_text_backend, minilm_path

CAPS = ["a red circle", "two small blue squares at the bottom", ""]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


def _save_clip(folder, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=40,
                         bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = CLIPTextModel(cfg).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def _save_t5(folder, tokenizer):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                   num_heads=4, pad_token_id=tokenizer.pad_token_id)
    model = T5EncoderModel(cfg).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def test_local_clip_text(tmp_path, tokenizer):
    model = _save_clip(tmp_path / "clip", tokenizer)
    tc = TextConditioner(tmp_path / "clip", null="zero", cache_dtype="float32")
    assert tc.backend.pooling == "eos" and tc.backend.max_length == 40
    assert tc.token_dim == tc.pooled_dim == 32
    c = tc(CAPS)
    am = tokenizer(CAPS, padding=True, return_tensors="pt")["attention_mask"].bool()
    assert torch.equal(c.mask, am)
    with torch.no_grad():
        ids = tokenizer(CAPS[:1], return_tensors="pt")["input_ids"]
        h = model(input_ids=ids).last_hidden_state  # (1, n, 32), causal: padding-invariant
    torch.testing.assert_close(c.tokens[0, : ids.shape[1]], h[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c.pooled[0], h[0, -1], atol=1e-5, rtol=1e-5)  # EOS = [SEP]


def test_local_t5_and_diffusers_layout(tmp_path, tokenizer):
    model = _save_t5(tmp_path / "pipe" / "text_encoder", tokenizer)
    tokenizer.save_pretrained(tmp_path / "pipe" / "tokenizer")
    # finds text_encoder/ + tokenizer/
    tc = TextConditioner(tmp_path / "pipe", cache_dtype="float32")
    assert "T5EncoderModel" in tc.fingerprint and tc.token_dim == 32
    c = tc(CAPS)
    batch = tokenizer(CAPS, padding=True, return_tensors="pt")
    assert torch.equal(c.mask, batch["attention_mask"].bool())
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    torch.testing.assert_close(c.pooled, (h * m).sum(1) / m.sum(1), atol=1e-5, rtol=1e-5)
    # the frozen backend is not registered: only the learned null is trainable
    assert [k for k, _ in tc.named_parameters()] == ["null_pooled", "null_tokens"]


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is not None,
                    reason="open_clip installed")
def test_open_clip_missing_package(tmp_path):
    with pytest.raises(ImportError, match="open_clip_torch"):
        load_text_backend(tmp_path / "model.bin", kind="open_clip", model_name="ViT-B-32")


def test_to_moves_frozen_backend_and_deepcopy(tmp_path, tokenizer):
    import copy

    _save_clip(tmp_path / "clip", tokenizer)
    tc = TextConditioner(tmp_path / "clip").to(torch.float64)
    assert next(tc.backend.parameters()).dtype == torch.float64
    c = tc(CAPS)
    assert c.tokens.dtype == c.pooled.dtype == torch.float64 and c.mask.dtype == torch.bool
    ema = copy.deepcopy(tc)  # e.g. an EMA copy of the model holding the conditioner
    torch.testing.assert_close(ema(CAPS).pooled, c.pooled)
    assert ema.backend is not tc.backend


def test_open_clip_loader_plumbing_with_a_stub(tmp_path, monkeypatch):
    """The open_clip path with a stand-in module (the real package is optional)."""
    import sys
    import types

    from torch import nn

    class Tower(nn.Module):
        context_length, output_tokens = 6, False

        def __init__(self):
            super().__init__()
            self.emb, self.ln_final = nn.Embedding(50, 4), nn.LayerNorm(4)
            self.text_projection = nn.Parameter(torch.randn(4, 3))

        def forward(self, ids):
            h = self.ln_final(self.emb(ids))  # (B, L, 4)
            pooled = h[torch.arange(ids.shape[0]), ids.argmax(-1)] @ self.text_projection
            return (pooled, h) if self.output_tokens else pooled

    stub = types.ModuleType("open_clip")
    stub.create_model = lambda name, pretrained, device: _Model(Tower())
    stub.get_tokenizer = lambda name: lambda texts: torch.tensor(
        [[49, 0, 0, 0, 0, 0] if not t else [1, 2, 49, 0, 0, 0] for t in texts])

    class _Model(nn.Module):
        def __init__(self, text):
            super().__init__()
            self.text = text

    monkeypatch.setitem(sys.modules, "open_clip", stub)
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"")
    with pytest.raises(ValueError, match="model_name"):
        load_text_backend(ckpt, kind="open_clip")
    (tmp_path / "m.bin").write_bytes(b"\x80\x02")
    with pytest.raises(ValueError, match="pickle-based"):  # refused before open_clip sees it
        load_text_backend(tmp_path / "m.bin", kind="open_clip", model_name="tiny")
    tc = TextConditioner(ckpt, kind="open_clip", model_name="tiny")
    assert (tc.token_dim, tc.pooled_dim, tc.backend.max_length) == (4, 3, 6)
    c = tc(["ab", ""])
    # valid = up to the end-of-text token (largest id); padding is trimmed to the longest
    assert torch.equal(c.mask, torch.tensor([[True, True, True], [True, False, False]]))
    assert c.pooled.shape == (2, 3)


def test_hidden_layer_selects_token_states():
    """Layer 0 (MiniLM's embedding layer) does not mix tokens: "red" at the same position has
    the same state whatever follows; the last layer is contextual. Fingerprints differ."""
    from conditioners.text_backends import load_text_backend

    last = load_text_backend()
    emb = load_text_backend(hidden_layer=0)
    caps = ["a red cross at the top", "a red circle at the bottom"]
    h0, m0, p0 = emb.encode(caps)
    h1, _, _ = last.encode(caps)
    red = 2  # [CLS] a red ...
    assert torch.allclose(h0[0, red], h0[1, red], atol=1e-6)
    assert not torch.allclose(h1[0, red], h1[1, red], atol=1e-3)
    mean0 = (h0 * m0[..., None]).sum(1) / m0.sum(1, keepdim=True)  # pooled from layer 0 too
    assert torch.allclose(p0, torch.nn.functional.normalize(mean0, dim=-1), atol=1e-5)
    assert emb.fingerprint != last.fingerprint and "layer=0" in emb.fingerprint
    assert load_text_backend(hidden_layer=-1).encode(caps[:1])[0].allclose(h1[:1], atol=1e-5)
    with pytest.raises(ValueError, match="hidden_layer=9"):
        load_text_backend(hidden_layer=9)
