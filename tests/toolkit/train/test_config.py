"""Recipes: every recipe composes and trains 2 steps; bad overrides fail with suggestions."""

from __future__ import annotations

import pytest
import torch

from tests.toolkit.train.conftest import TINY, TINY_BY_RECIPE, tiny_codec_overrides
from toolkit import cli
from toolkit.train import checkpoint as ck
from toolkit.train.config import RecipeError, compose_recipe, list_recipes
from toolkit.train.logging import read_metrics
from toolkit.train.trainer import train_recipe

RECIPES = sorted(list_recipes())


def test_recipes_have_descriptions():
    assert "toy2d_cfm" in RECIPES
    for name, desc in list_recipes().items():
        assert desc and "\n" not in desc, f"recipe {name} needs a one-line description"


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_trains_two_steps_and_samples(recipe, tmp_path):
    cfg = compose_recipe(recipe, [*TINY, *TINY_BY_RECIPE.get(recipe, []),
                                  *tiny_codec_overrides(recipe, tmp_path),
                                  f"run_dir={tmp_path / recipe}"])
    assert cfg.recipe == recipe and cfg.trainer.max_steps == 2
    res = train_recipe(cfg)
    assert res["step"] == 2 and res["checkpoint"].name == "step_00000002"
    run = tmp_path / recipe
    assert (run / "config.yaml").is_file() and any((run / "samples").glob("*.png"))
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [1, 2]
    model, task, loaded_cfg, ckpt = ck.load_run(run)  # everything needed to sample
    assert loaded_cfg.recipe == recipe and ckpt == res["checkpoint"]
    if hasattr(task, "generate"):
        x = task.generate(model, 4, torch.Generator().manual_seed(0))
        if isinstance(x, list):  # variable-size samples (backbones, trajectories)
            assert len(x) == 4 and all(torch.isfinite(s).all() for s in x)
        else:
            assert x.shape[0] == 4 and torch.isfinite(x).all()


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["trainer.max_stepz=3"],
         r"unknown key 'trainer.max_stepz'.*Did you mean 'trainer.max_steps'"),
        (["seedd=1"], r"unknown key 'seedd'.*Did you mean 'seed'"),
        (["model.hiden=3"], r"unknown key 'model.hiden'.*Did you mean 'model.hidden'"),
        (["trainer.max_steps=abc"], r"trainer.max_steps='abc': expected an int"),
        (["trainer.progress=7"], r"expected a bool"),
        (["model=time_mpl"], r"unknown model option 'time_mpl'.*Did you mean 'time_mlp'"),
        (["trainer.lr"], r"not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_problem(overrides, pattern):
    with pytest.raises(RecipeError, match=pattern):
        compose_recipe("toy2d_cfm", overrides)


def test_unknown_recipe_suggests_closest():
    with pytest.raises(RecipeError, match=r"unknown recipe 'toy2d_cmf'.*Did you mean 'toy2d_cfm'"):
        compose_recipe("toy2d_cmf")


def test_valid_overrides_apply_and_new_keys_need_plus():
    cfg = compose_recipe("toy2d_cfm", ["trainer.lr=1", "data.name=moons", "+extra.k=2", "seed=5"])
    assert cfg.trainer.lr == 1 and cfg.data.name == "moons" and cfg.extra.k == 2
    assert cfg.run_dir == "runs/toy2d_cfm" and cfg.seed == 5


def test_cli_recipes_and_train_errors(capsys, tmp_path):
    assert cli.main(["recipes"]) == 0
    assert "toy2d_cfm" in capsys.readouterr().out
    assert cli.main(["train", "recipe=toy2d_cfm", "--dry-run", "trainer.max_steps=7"]) == 0
    assert "max_steps: 7" in capsys.readouterr().out
    assert cli.main(["train", "recipe=toy2d_cfn"]) == 2
    assert "Did you mean 'toy2d_cfm'" in capsys.readouterr().err
    assert cli.main(["train", "trainer.lr=1"]) == 2
    assert "missing recipe=NAME" in capsys.readouterr().err
    assert cli.main(["paths"]) == 0  # the older subcommands still work
