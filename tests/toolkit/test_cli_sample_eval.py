"""`toolkit sample` / `toolkit eval` on a tiny text2img run, and imagefolder fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from modalities.image import attributes
from modalities.image.sample import grid_size
from tests.toolkit.train.conftest import TINY, TINY_BY_RECIPE
from toolkit.cli import main
from toolkit.train import compose_recipe, train_recipe


def _tiny(recipe: str, run_dir, *extra: str):
    torch.set_num_threads(1)
    tiny = TINY_BY_RECIPE.get(recipe, [])
    if "data=imagefolder" in extra:  # no data.n there
        tiny = [o for o in tiny if not o.startswith("data.")]
    cfg = compose_recipe(recipe, [*TINY, *tiny, f"run_dir={run_dir}", *extra])
    return train_recipe(cfg)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step text2img_cfm run with a tiny DiT."""
    d = tmp_path_factory.mktemp("t2i") / "run"
    _tiny("text2img_cfm", d)
    return d


def test_sample_cli_writes_grid_of_expected_size(run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    rc = main(["sample", f"checkpoint={run}", "prompt=a red circle at the top left",
               "prompt=a small blue square at the bottom", "n=4", "steps=2", "cfg=2.0",
               f"out={out}"])
    assert rc == 0 and str(out) in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.size == grid_size(4, 32, prompts=2)
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 0  # not a blank image


def test_sample_cli_list_prompt_and_errors(run, tmp_path, capsys):
    out = tmp_path / "g.png"
    assert main(["sample", f"checkpoint={run}", "prompt=[a red circle, a green cross]", "n=1",
                 "steps=1", "solver=euler", f"out={out}"]) == 0
    with Image.open(out) as im:
        assert im.size == grid_size(1, 32, prompts=2)
    assert main(["sample", f"checkpoint={tmp_path / 'nope'}", "prompt=x"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["sample", f"checkpoint={run}", "promt=x"]) == 2
    assert "Did you mean 'prompt'" in capsys.readouterr().err
    assert main(["sample", f"checkpoint={run}", "prompt=x", "n=abc"]) == 2
    assert "n='abc'" in capsys.readouterr().err
    assert main(["sample", "prompt=x"]) == 2
    assert "checkpoint=RUN_DIR" in capsys.readouterr().err


def test_eval_cli_writes_structure(run, monkeypatch, capsys):
    clf = attributes.AttributeClassifier(8, 8, 32).eval()  # untrained: fast, structure only
    monkeypatch.setattr(attributes, "load_or_train_classifier", lambda **kw: clf)
    assert main(["eval", f"checkpoint={run}", "n=6", "steps=1"]) == 0
    res = json.loads((run / "eval.json").read_text())
    assert res["n"] == 6 and res["seconds_per_image"] > 0
    for who in ("generated", "real"):
        assert set(res[who]) == {"single", "two"}
        assert sum(res[who][g]["n"] for g in ("single", "two")) == 6
        for g in ("single", "two"):
            if res[who][g]["n"]:
                assert {"colour", "shape", "size", "position", "count", "all"} <= set(res[who][g])
    assert "ms/image" in capsys.readouterr().out


def test_other_recipe_and_imagefolder_finetune(run, tmp_path, capsys):
    toy = tmp_path / "toy"
    _tiny("toy2d_cfm", toy)
    assert main(["sample", f"checkpoint={toy}", "prompt=x"]) == 2
    assert "not a text-to-image run" in capsys.readouterr().err
    # a small captioned folder, fine-tuned from the tiny run
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
            folder / f"im{i}.png")
        lines.append(json.dumps({"file_name": f"im{i}.png", "text": f"a photo number {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    res = _tiny("text2img_cfm", tmp_path / "ft", "data=imagefolder", f"data.root={folder}",
                f"init_from={run}")
    assert res["step"] == 2
    assert "initialised weights from" in capsys.readouterr().out
    assert any((tmp_path / "ft" / "samples").glob("*.png"))
    with pytest.raises(ValueError, match="recipe 'toy2d_cfm'"):
        _tiny("text2img_cfm", tmp_path / "ft2", f"init_from={toy}")
    with pytest.raises(ValueError, match="data.root"):
        _tiny("text2img_cfm", tmp_path / "ft3", "data=imagefolder")
