"""Untrusted weights: safetensors only by default; pickle-based files refused unless allowed."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from toolkit.files import load_tensors, refuse_pickle


def test_safetensors_loads_and_truncated_file_is_named(tmp_path):
    save_file({"w": torch.arange(4.0)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(load_tensors(tmp_path / "w.safetensors")["w"], torch.arange(4.0))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="t.safetensors.*not a valid safetensors.*truncated"):
        load_tensors(tmp_path / "t.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_tensors(tmp_path / "missing.safetensors")


class _Payload:
    """Unpickling this would call print (stand-in for arbitrary code)."""

    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("name", ["w.pt", "w.bin", "w.ckpt", "weights"])
def test_pickle_refused_by_default(tmp_path, name, capsys):
    torch.save({"w": torch.ones(2), "evil": _Payload()}, tmp_path / name)
    with pytest.raises(ValueError, match=r"pickle-based.*refused.*allow_pickle"):
        load_tensors(tmp_path / name)
    # allowed: torch's restricted unpickler still refuses the arbitrary object
    with pytest.raises(ValueError, match="weights_only=True"):
        load_tensors(tmp_path / name, allow_pickle=True)
    assert "pwned" not in capsys.readouterr().out
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    assert torch.equal(load_tensors(tmp_path / "plain.pt", allow_pickle=True)["w"], torch.ones(2))


def test_refuse_pickle_by_magic_bytes(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "noext")
    with pytest.raises(ValueError, match="noext.*pickle-based"):
        refuse_pickle(tmp_path / "noext")
    save_file({"w": torch.ones(1)}, str(tmp_path / "ok.safetensors"))
    refuse_pickle(tmp_path / "ok.safetensors")  # no error


def test_diffusers_folder_with_only_bin_weights_is_refused(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from modalities.image.codec_io import DiffusersCodec

    vae = diffusers.AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=2,
                                  in_channels=1, out_channels=1, layers_per_block=1)
    vae.save_pretrained(tmp_path / "vae", safe_serialization=False)
    with pytest.raises(ValueError, match=r"only pickle-based \.bin.*allow_pickle"):
        DiffusersCodec.from_pretrained(tmp_path / "vae")
    codec = DiffusersCodec.from_pretrained(tmp_path / "vae", allow_pickle=True)
    assert codec.model.config.latent_channels == 2


def test_text_encoder_folder_with_only_bin_weights_is_refused(tmp_path):
    tf = pytest.importorskip("transformers")
    from conditioners.text_backends import load_text_backend, minilm_path

    model = tf.AutoModel.from_pretrained(str(minilm_path()), local_files_only=True)
    model.save_pretrained(tmp_path / "enc")  # transformers 5 always writes safetensors ...
    (tmp_path / "enc" / "model.safetensors").unlink()  # ... so make a legacy .bin folder
    torch.save(model.state_dict(), tmp_path / "enc" / "pytorch_model.bin")
    tok = tf.AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    tok.save_pretrained(tmp_path / "enc")
    with pytest.raises(ValueError, match=r"only pickle-based \.bin.*allow_pickle"):
        load_text_backend(tmp_path / "enc")
