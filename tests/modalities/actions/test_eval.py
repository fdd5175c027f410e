"""`toolkit eval env=metaworld` and `toolkit data collect` on a 2-step recipe run."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("metaworld", reason="the robot extra (uv sync --extra robot)")
pytest.importorskip("lerobot", reason="the robot extra (uv sync --extra robot)")

from tests.toolkit.train.conftest import TINY, TINY_BY_RECIPE  # noqa: E402
from toolkit.cli import main  # noqa: E402
from toolkit.train import compose_recipe, train_recipe  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("policy")
    train_recipe(compose_recipe("metaworld_flow_policy", [
        *TINY, *TINY_BY_RECIPE["metaworld_flow_policy"], "data.collect.tasks=reach-v3",
        f"data.root={d / 'reach'}", f"run_dir={d / 'run'}"]))
    return d / "run"


def test_eval_cli_reports_success_ci_and_latency(run, capsys):
    assert main(["eval", f"checkpoint={run}", "env=metaworld", "episodes=2",
                 "n_action_steps=16"]) == 0
    out = capsys.readouterr().out
    assert "reach-v3" in out and "95% CI" in out and "per-chunk latency" in out
    res = json.loads((run / "eval_reach-v3.json").read_text())
    r = res["per_task"]["reach-v3"]
    assert r["episodes"] == 2 and 0 <= r["ci95"][0] <= r["success_rate"] <= r["ci95"][1] <= 1
    assert res["seed_offset"] >= 100_000 and res["chunk_latency_ms"]["count"] > 0
    assert res["n_action_steps"] == 16 and res["threads"] == 1


def test_eval_and_collect_bad_input(run, tmp_path, capsys):
    assert main(["eval", f"checkpoint={run}", "env=libero"]) == 2
    assert "env='libero' is not supported" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={run}", "env=metaworld", "task=psh-v3"]) == 2
    assert "psh-v3" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={run}", "env=metaworld", "rtc=maybe"]) == 2
    assert "rtc='maybe': expected bool" in capsys.readouterr().err
    assert main(["data", "collect", "env=metaworld", "tsk=push-v3", f"root={tmp_path}"]) == 2
    assert "Did you mean 'task'" in capsys.readouterr().err


def test_image_policy_collect_train_eval(tmp_path, capsys):
    """Image observations end to end: render while collecting, train 2 steps with a camera
    in the prefix, evaluate with rendered observations."""
    from modalities.actions.eval import evaluate_policy_run
    from modalities.actions.sim import MetaWorldEnv

    try:
        MetaWorldEnv("reach-v3", seed=0, image_size=16).reset(0)
    except RuntimeError as e:
        pytest.skip(f"no offscreen OpenGL (install libegl1 or libosmesa6): {e}")
    run = tmp_path / "run"
    train_recipe(compose_recipe("metaworld_flow_policy", [
        *TINY, *TINY_BY_RECIPE["metaworld_flow_policy"], "data.collect.tasks=reach-v3",
        "data.collect.image_size=32", "data.image_keys=[observation.images.corner]",
        "model.cameras=[corner]", f"data.root={tmp_path / 'reach_img'}", f"run_dir={run}"]))
    res = evaluate_policy_run(run, task="reach-v3", episodes=1, n_action_steps=16,
                              max_steps=64, progress=False, write=False)
    r = res["per_task"]["reach-v3"]
    assert r["episodes"] == 1 and 1 <= res["chunk_latency_ms"]["count"] <= 4
    import numpy as np

    from modalities.actions.policy import Policy

    with pytest.raises(KeyError, match="observation.images.corner"):
        Policy.from_pretrained(run).select_action(
            {"observation.state": np.zeros(39, np.float32)})
