"""Meta-World wrapper: seeded configurations, step contract, experts, held-out evaluation,
Wilson intervals and (where a headless GL exists) offscreen rendering."""

import math
import os

import numpy as np
import pytest

pytest.importorskip("metaworld")
pytest.importorskip("gymnasium")

from modalities.actions import sim  # noqa: E402
from modalities.actions.sim import (  # noqa: E402
    EVAL_SEED_OFFSET,
    MT10_TASKS,
    TASK_INSTRUCTIONS,
    MetaWorldEnv,
    evaluate,
    expert,
    rollout,
    wilson_interval,
)

Z2 = sim.WILSON_Z95**2


@pytest.fixture(scope="module")
def push_env():
    env = MetaWorldEnv("push-v3", seed=0)
    yield env
    env.close()


class _Still:
    """A policy that never moves."""

    def reset(self):
        pass

    def select_action(self, obs):
        return np.zeros(4, dtype=np.float32)


def test_instructions_cover_mt10():
    assert set(TASK_INSTRUCTIONS) == set(MT10_TASKS) and len(MT10_TASKS) == 10
    assert len(set(TASK_INSTRUCTIONS.values())) == 10
    assert set(MT10_TASKS) <= set(sim.task_names())
    assert TASK_INSTRUCTIONS["push-v3"] == "push the puck to the goal"
    assert sim.instruction("sweep-into-v3") == "sweep into"


def test_reset_seed_fixes_the_configuration(push_env):
    o1 = push_env.reset(3)
    c1 = push_env.configuration
    for _ in range(10):
        push_env.step(np.ones(4))
    o2 = push_env.reset(3)  # same seed after a different history: same start
    np.testing.assert_array_equal(o1["observation.state"], o2["observation.state"])
    np.testing.assert_array_equal(c1, push_env.configuration)
    push_env.reset(4)
    assert not np.allclose(c1, push_env.configuration)
    # the configuration depends on the episode seed only, not on the MT1 construction seed
    with MetaWorldEnv("push-v3", seed=123) as other:
        o3 = other.reset(3)
        np.testing.assert_array_equal(c1, other.configuration)
        np.testing.assert_array_equal(o1["observation.state"], o3["observation.state"])


def test_eval_configurations_are_held_out(push_env):
    train = []
    for s in range(10):  # collection seeds 0 .. 9
        push_env.reset(s)
        train.append(push_env.configuration)
    held = []
    for s in range(EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + 10):
        push_env.reset(s)
        held.append(push_env.configuration)
    d = np.linalg.norm(np.asarray(train)[:, None] - np.asarray(held)[None], axis=-1)  # (10, 10)
    assert d.min() > 1e-6
    with pytest.raises(ValueError, match="collection seeds"):
        evaluate(_Still(), "push-v3", episodes=1, seed_offset=5, progress=False)


def test_observation_and_step_contract(push_env):
    obs = push_env.reset(0)
    assert set(obs) == {"observation.state", "task"}
    s = obs["observation.state"]
    assert s.dtype == np.float32 and s.shape == (39,)
    np.testing.assert_array_equal(s[:18], s[18:36])  # previous frame = current after reset
    assert np.abs(s[36:]).sum() > 0  # goal visible
    assert obs["task"] == "push the puck to the goal"
    obs, reward, done, info = push_env.step(np.array([5.0, 0, 0, -3.0]))  # clipped to [-1, 1]
    assert isinstance(reward, float) and isinstance(info["success"], bool) and not done
    assert obs["observation.state"][0] > s[0]  # moved in +x
    with pytest.raises(ValueError, match="4 values"):
        push_env.step(np.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        push_env.step(np.array([np.nan, 0, 0, 0]))


def test_episode_limit():
    with MetaWorldEnv("reach-v3", seed=0) as env:
        assert env.max_episode_steps == 500
        r = rollout(_Still(), env, seed=1)
        assert not r["success"] and r["steps"] == 500 and len(r["latencies"]) == 500
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros(4))
        r = rollout(_Still(), env, seed=1, max_steps=20)
        assert r["steps"] == 20


def test_expert_rollout_stops_at_success(push_env):
    r = rollout(expert("push-v3"), push_env, seed=0)
    assert r["success"] and 10 < r["steps"] < 500 and len(r["latencies"]) == r["steps"]


def test_evaluate_expert_on_heldout_seeds():
    res = evaluate(expert("push-v3"), "push-v3", episodes=2, progress=False)
    assert res["successes"] == 2 and res["success_rate"] == 1.0
    assert [r["seed"] for r in res["results"]] == [EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + 1]
    lo, hi = res["ci95"]
    assert hi == 1.0 and lo == pytest.approx(2 / (2 + Z2), abs=1e-12)  # k = n: [n/(n+z^2), 1]
    assert lo == pytest.approx(0.342380, abs=1e-6)
    lat = res["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] and lat["mean"] > 0 and res["episodes_per_s"] > 0


def test_wilson_interval_hand_values():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 2)
    assert lo == 0.0 and hi == pytest.approx(Z2 / (2 + Z2), abs=1e-12)
    # 5 / 10: centre 1/2, half = z / (1 + z^2/10) * sqrt(0.025 + z^2/400) = 0.263406
    lo, hi = wilson_interval(5, 10)
    half = sim.WILSON_Z95 / (1 + Z2 / 10) * math.sqrt(0.025 + Z2 / 400)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-12)
    assert (lo, hi) == pytest.approx((0.236594, 0.763406), abs=1e-6)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_bad_task_and_camera_names():
    with pytest.raises(ValueError, match="push-v3"):
        MetaWorldEnv("psh-v3")
    with pytest.raises(ValueError, match="Valid tasks: .*reach-v3"):
        expert("not-a-task")
    with pytest.raises(ValueError, match="corner2"):
        MetaWorldEnv("reach-v3", image_size=16, camera="cornr")


def test_offscreen_rendering():
    try:
        env = MetaWorldEnv("reach-v3", seed=0, image_size=32)
        obs = env.reset(0)
    except RuntimeError as e:
        backend = sim.probe_rendering()  # egl, then osmesa, each in a fresh process
        pytest.skip(f"no offscreen OpenGL in this process (MUJOCO_GL="
                    f"{os.environ.get('MUJOCO_GL')}; a fresh process renders with: {backend}): "
                    f"install EGL (libegl1) or OSMesa (libosmesa6), set MUJOCO_GL. {e}")
    with env:
        img = obs["observation.images.corner"]
        assert img.dtype == np.uint8 and img.shape == (32, 32, 3) and img.std() > 5
        for _ in range(5):
            obs, *_ = env.step(np.array([1.0, 0, 0, 0]))
        assert np.abs(obs["observation.images.corner"].astype(int) - img).sum() > 0
        assert np.array_equal(env.reset(0)["observation.images.corner"], img)  # deterministic


def test_probe_rendering_reports_a_backend_or_none():
    assert sim.probe_rendering(backends=("no-such-backend",), timeout=60) is None
