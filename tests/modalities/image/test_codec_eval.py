"""`toolkit eval` on tokenizer runs, and bits/dim of held-out images for class runs."""

from __future__ import annotations

import json

import pytest
import torch

from modalities.image.class_eval import held_out_bits_per_dim
from modalities.image.class_task import Class2ImgTask
from modalities.image.codec_eval import evaluate_codec_run, format_codec_report
from tests.toolkit.train.conftest import TINY, TINY_BY_RECIPE
from toolkit.cli import main
from toolkit.nn.unet import UNet
from toolkit.train import compose_recipe, train_recipe


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("vq") / "run"
    train_recipe(compose_recipe("vq_train", [*TINY, *TINY_BY_RECIPE["vq_train"],
                                             f"run_dir={d}"]))
    return d


def test_codec_eval_reports_heldout_psnr_and_codebook(vq_run):
    res = evaluate_codec_run(vq_run, n=8, features=False)
    assert res["n_heldout"] == 8 and res["latent_shape"] == [4, 16, 16]
    # aggregate PSNR is 10 log10(4 / MSE) of the same reconstructions
    assert res["psnr"] == pytest.approx(10 * torch.log10(torch.tensor(4 / res["mse"])).item())
    assert 0 < res["usage"] <= 1 and res["perplexity"] >= 1
    assert "codebook usage" in format_codec_report(res)
    assert json.loads((vq_run / "eval.json").read_text())["n_heldout"] == 8


def test_codec_eval_cli(vq_run, capsys, monkeypatch):
    import modalities.image.codec_eval as ce

    monkeypatch.setattr(ce, "_recon_features", lambda *a: {})  # no feature-net training here
    assert main(["eval", f"checkpoint={vq_run}", "n=4"]) == 0
    assert "PSNR" in capsys.readouterr().out
    assert main(["eval", f"checkpoint={vq_run}", "bdp=3"]) == 2
    assert "Did you mean 'bpd'" in capsys.readouterr().err


def test_held_out_bits_per_dim_of_a_class_model():
    torch.manual_seed(0)
    task = Class2ImgTask(image_size=8, channels=1)
    model = task.wrap_model(UNet(in_channels=1, base_channels=8, channel_mults=(1, 2),
                                 num_heads=2, groups=4, pooled_dim=16, zero_init=True))
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    res = held_out_bits_per_dim(model, task, x, torch.tensor([0, 1, 2]), rtol=1e-2, atol=1e-2)
    # a zero-initialised velocity net is the identity flow: p = N(0, I) on the dequantised
    # points, so bpd = -(log N(z) + D log(2/256)) / (D ln 2) with z in [-1, 1]
    assert res["bpd_n"] == 3 and res["bpd_nfe"] > 0
    lo = (0.5 * torch.log(torch.tensor(2 * torch.pi)) - torch.log(torch.tensor(2 / 256))
          ) / torch.log(torch.tensor(2.0))
    assert float(lo) < res["bpd_uncond"] < float(lo) + 0.5 / 0.6931
    assert res["bpd_cond"] == pytest.approx(res["bpd_uncond"], rel=1e-3)  # other u draws


def test_class_eval_reports_metrics_with_real_reference(tmp_path, monkeypatch):
    """The class2img eval path end to end on a 2-step run (tiny feature net, own cache)."""
    from modalities.image.class_eval import evaluate_class_run

    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    train_recipe(compose_recipe("class2img_cfm", [
        *TINY, *TINY_BY_RECIPE["class2img_cfm"], "data.n=64", f"run_dir={run}"]))
    res = evaluate_class_run(run, n=20, steps=2, bpd=2, feature_kw={
        "steps": 3, "width": 8, "feature_dim": 16, "batch_size": 32})
    for key in ("fd_local", "fd_local_real", "precision", "recall_real", "class_accuracy",
                "class_accuracy_real", "bpd_uncond", "bpd_cond", "seconds_per_image"):
        assert key in res and res[key] == res[key], key  # present, not NaN
    assert res["n"] == 20 and res["feature_dim"] == 16 and res["bpd_n"] == 2
    assert json.loads((run / "eval.json").read_text())["n_generated"] == 20
