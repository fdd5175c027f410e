"""`toolkit eval` dispatches AR + diffusion hybrid runs (MAR, Diffusion Forcing, Transfusion)
to their evaluators and refuses bad keys by name."""

from __future__ import annotations

import json

import pytest
import torch

from tests.toolkit.train.conftest import TINY, TINY_BY_RECIPE
from toolkit.cli import main
from toolkit.train import compose_recipe, train_recipe


def _tiny(recipe: str, run_dir) -> None:
    torch.set_num_threads(1)
    cfg = compose_recipe(recipe, [*TINY, *TINY_BY_RECIPE[recipe], f"run_dir={run_dir}"])
    train_recipe(cfg)


def test_eval_cli_diffusion_forcing(tmp_path, capsys):
    run = tmp_path / "df"
    _tiny("diffusion_forcing_traj", run)
    assert main(["eval", f"checkpoint={run}", "n=3", "length=16", "steps=2"]) == 0
    out = capsys.readouterr().out
    assert "finite" in out and "eval.json" in out
    res = json.loads((run / "eval.json").read_text())
    assert res["n"] == 3 and res["length"] == 16
    assert 0.0 <= res["fraction_finite"] <= 1.0
    assert (run / "eval" / "rollouts.png").stat().st_size > 0
    assert main(["eval", f"checkpoint={run}", "lenght=16"]) == 2
    assert "Did you mean 'length'" in capsys.readouterr().err


def test_eval_cli_transfusion(tmp_path, capsys):
    run = tmp_path / "tf"
    _tiny("transfusion_mnist", run)
    assert main(["eval", f"checkpoint={run}", "n=10", "steps=2", "n_captions=5",
                 "batch_size=10"]) == 0
    out = capsys.readouterr().out
    assert "image accuracy from captions" in out
    res = json.loads((run / "eval.json").read_text())
    assert 0.0 <= res["image_accuracy"] <= 1.0 and 0.0 <= res["caption_accuracy"] <= 1.0
    assert (run / "eval_images.png").stat().st_size > 0
    assert main(["eval", f"checkpoint={run}", "cfg=abc"]) == 2
    assert "cfg" in capsys.readouterr().err


@pytest.mark.parametrize("iters", [2, 4])
def test_eval_cli_mar_counts_iterations(tmp_path, capsys, iters):
    run = tmp_path / "mar"
    _tiny("mar_mnist", run)
    assert main(["eval", f"checkpoint={run}", "n=20", "steps=2", f"iters={iters}",
                 "batch_size=20"]) == 0
    res = json.loads((run / "eval.json").read_text())
    assert 0.0 <= res["class_accuracy"] <= 1.0 and res["sampler"]["iterations"] == iters
    assert "ms/image" in capsys.readouterr().out
