"""Expert demonstrations -> LeRobotDataset v3 -> action chunks: shapes, episode-end padding,
exact statistics, collate, determinism of the recorded episodes and clear errors."""

import glob
import json
import shutil

import numpy as np
import pytest
import torch

from modalities.actions import collect as collect_mod
from modalities.actions.sim import EVAL_SEED_OFFSET

pytest.importorskip("metaworld")
pytest.importorskip("lerobot")
pq = pytest.importorskip("pyarrow.parquet")

from modalities.actions.data import ChunkDataset, frame_stats  # noqa: E402
from modalities.actions.sim import MetaWorldEnv, expert  # noqa: E402

H = 8


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("actions") / "push"
    summary = collect_mod.collect(root, "push-v3", episodes=2, seed=0, progress=False)
    return root, summary


def _frames(root) -> dict[str, np.ndarray]:
    """The data parquet files read directly (independently of lerobot)."""
    tables = [pq.read_table(p) for p in sorted(glob.glob(str(root / "data" / "*" / "*.parquet")))]
    cols = ("episode_index", "frame_index", "action", "observation.state")
    return {c: np.concatenate([np.asarray(t.column(c).to_pylist()) for t in tables])
            for c in cols}


def test_collect_summary_and_metadata(demo):
    root, summary = demo
    assert summary["episodes"] == 2 and summary["tasks"]["push-v3"]["kept"] == 2
    assert summary["repo_id"] == "local/metaworld_push-v3"
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 2
    assert info["features"]["observation.state"]["shape"] == [39]
    assert info["total_frames"] == summary["frames"]
    rec = json.loads((root / "meta" / "collection.json").read_text())
    seeds = [e["seed"] for e in rec["episodes"]]
    assert all(0 <= s < EVAL_SEED_OFFSET for s in seeds) and len(set(seeds)) == 2


def test_items_shapes_and_collate(demo):
    root, summary = demo
    ds = ChunkDataset(root, horizon=H)
    assert len(ds) == summary["frames"] and ds.num_episodes == 2
    assert (ds.fps, ds.horizon, ds.state_dim, ds.action_dim) == (80, H, 39, 4)
    assert ds.features == {"observation.state": (39,), "action": (4,)}
    assert ds.tasks == ["push the puck to the goal"] and ds.image_keys == []
    it = ds[0]
    assert it["observation.state"].dtype == torch.float32 and it["observation.state"].shape == (39,)
    assert it["action"].dtype == torch.float32 and it["action"].shape == (H, 4)
    assert it["action_is_pad"].dtype == torch.bool and not it["action_is_pad"].any()
    assert it["task"] == "push the puck to the goal"
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5, shuffle=True)))
    assert batch["action"].shape == (5, H, 4) and batch["action_is_pad"].shape == (5, H)
    assert batch["observation.state"].shape == (5, 39)
    assert batch["task"] == ["push the puck to the goal"] * 5


def test_chunks_and_padding_at_episode_ends(demo):
    root, _ = demo
    ds = ChunkDataset(root, horizon=H)
    ref = ChunkDataset(root, horizon=H, cache=False)  # lerobot's own __getitem__
    raw = _frames(root)
    for i in range(len(ds)):
        it = ds[i]
        ep, t = int(raw["episode_index"][i]), int(raw["frame_index"][i])
        rows = np.flatnonzero(raw["episode_index"] == ep)
        T = len(rows)
        assert (int(it["episode_index"]), int(it["frame_index"])) == (ep, t)
        want_pad = np.arange(t, t + H) >= T  # True exactly where the chunk passes the end
        np.testing.assert_array_equal(it["action_is_pad"].numpy(), want_pad)
        src = rows[np.minimum(np.arange(t, t + H), T - 1)]  # padded steps repeat a_{T-1}
        np.testing.assert_allclose(it["action"].numpy(), raw["action"][src], rtol=0, atol=0)
        np.testing.assert_array_equal(it["observation.state"].numpy(),
                                      raw["observation.state"][i].astype(np.float32))
        if t < 2 or t >= T - H - 1:  # the fast path equals lerobot's items
            r = ref[i]
            for k in ("observation.state", "action", "action_is_pad"):
                assert torch.equal(it[k], r[k]), (k, i)
            assert it["task"] == r["task"]
    last = ds[len(ds) - 1]
    assert last["action_is_pad"][1:].all() and (last["action"] == last["action"][0]).all()


def test_stats_are_exact(demo, tmp_path):
    root, _ = demo
    ds = ChunkDataset(root, horizon=H)
    raw = _frames(root)
    for key in ("observation.state", "action"):
        x = raw[key].astype(np.float64)  # (N, D)
        want = {"mean": x.mean(0), "std": x.std(0), "min": x.min(0), "max": x.max(0),
                "q01": np.quantile(x, 0.01, axis=0), "q99": np.quantile(x, 0.99, axis=0)}
        for name, v in want.items():
            got = ds.stats[key][name]
            assert got.dtype == torch.float32 and got.shape == (x.shape[1],)
            np.testing.assert_allclose(got.numpy(), v, rtol=1e-6, atol=1e-7, err_msg=name)
    assert ds.lerobot_stats_ok is True  # lerobot's mean/std/min/max agree with the frames
    q = frame_stats(np.arange(101.0)[:, None])  # type-7 quantiles of 0..100: 1 and 99
    assert float(q["q01"]) == pytest.approx(1.0) and float(q["q99"]) == pytest.approx(99.0)
    stale = tmp_path / "stale"  # a stats.json that does not fit the frames is flagged
    shutil.copytree(root, stale)
    st = json.loads((stale / "meta" / "stats.json").read_text())
    st["action"]["mean"] = [m + 0.1 for m in st["action"]["mean"]]
    (stale / "meta" / "stats.json").write_text(json.dumps(st))
    bad = ChunkDataset(stale, horizon=H)
    with pytest.warns(UserWarning, match="disagrees"):
        np.testing.assert_allclose(bad.stats["action"]["mean"], ds.stats["action"]["mean"])
    assert bad.lerobot_stats_ok is False


def test_recorded_episodes_replay_and_end_after_success(demo):
    root, _ = demo
    rec = json.loads((root / "meta" / "collection.json").read_text())
    raw = _frames(root)
    policy = expert("push-v3")
    with MetaWorldEnv("push-v3", seed=999) as env:
        for e in rec["episodes"]:
            states = raw["observation.state"][raw["episode_index"] == e["episode_index"]]
            obs = env.reset(e["seed"])
            first = None
            for t in range(len(states)):
                np.testing.assert_allclose(obs["observation.state"], states[t], atol=1e-6)
                obs, _, _, info = env.step(policy.select_action(obs))
                if info["success"] and first is None:
                    first = t
            assert first == len(states) - 1 - rec["extra_frames"]  # stops 5 frames after


def test_episode_subset(demo):
    root, _ = demo
    ds = ChunkDataset(root, horizon=H, episodes=[1])
    assert ds.num_episodes == 1 and {int(ds[i]["episode_index"]) for i in range(len(ds))} == {1}
    with pytest.raises(ValueError, match="episodes"):
        ChunkDataset(root, horizon=H, episodes=[7])


def test_errors(demo, tmp_path):
    root, _ = demo
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ChunkDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="horizon"):
        ChunkDataset(root, horizon=0)
    with pytest.raises(ValueError, match=r"'observation.images.top'.*Available image keys: none"):
        ChunkDataset(root, image_keys=["observation.images.top"])
    with pytest.raises(ValueError, match="unknown collect key 'episode'.*'episodes'"):
        ChunkDataset(tmp_path / "new", collect={"env": "metaworld", "episode": 2})
    with pytest.raises(FileExistsError):
        collect_mod.collect(root, "push-v3", episodes=1, progress=False)
    with pytest.raises(ValueError, match="evaluation"):
        collect_mod.collect(tmp_path / "x", "push-v3", episodes=10, seed=EVAL_SEED_OFFSET - 5)


def test_collect_main(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown key 'episode'.*Did you mean 'episodes'"):
        collect_mod.collect_main(["env=metaworld", "task=push-v3", "episode=2", "root=x"])
    with pytest.raises(ValueError, match="only env=metaworld"):
        collect_mod.collect_main(["env=libero", "root=x"])
    with pytest.raises(ValueError, match="expected int"):
        collect_mod.collect_main(["episodes=two", "root=x"])
    assert collect_mod.resolve_tasks("mt10") == collect_mod.MT10_TASKS


def test_collect_on_missing_root_and_images(tmp_path, monkeypatch):
    """``collect=`` records a missing root; images are stored and read back channel-first.
    Rendering is replaced by a synthetic image (value = step count) to keep this GL-free."""
    count = {"n": 0}

    def fake_render(self):
        count["n"] += 1
        return np.full((16, 16, 3), count["n"] % 256, dtype=np.uint8)

    monkeypatch.setattr(MetaWorldEnv, "render", fake_render)
    spec = {"env": "metaworld", "task": "reach-v3", "episodes": 1, "seed": 3,
            "image_size": 16, "progress": False}
    ds = ChunkDataset(tmp_path / "auto", horizon=4, collect=spec)
    key = "observation.images.corner"
    assert ds.image_keys == [key] and ds.features[key] == (3, 16, 16)
    assert ds.tasks == ["reach the goal position with the gripper"]
    first, second = ds[0][key], ds[1][key]
    assert first.dtype == torch.float32 and first.shape == (3, 16, 16)
    assert torch.allclose(second - first, torch.full_like(first, 1 / 255), atol=1e-6)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch[key].shape == (3, 3, 16, 16) and 0 <= batch[key].min() <= batch[key].max() <= 1
    ref = ChunkDataset(tmp_path / "auto", horizon=4, cache=False)
    assert torch.equal(ref[2][key], ds[2][key])
    none = ChunkDataset(tmp_path / "auto", horizon=4, image_keys=[])
    assert key not in none[0]


def test_dart_noise_executes_noisy_actions_but_records_clean_labels():
    """DART collection: the recorded label is the expert's action at the recorded state, while
    the executed action was perturbed (so the next state differs from a clean rollout)."""
    task = "reach-v3"
    with MetaWorldEnv(task, seed=0) as env:
        ok_c, clean = collect_mod._expert_episode(env, expert(task), 3, 0, 0.0)
        ok_n, noisy = collect_mod._expert_episode(env, expert(task), 3, 0, 0.3)
    assert ok_c and ok_n
    pol = expert(task)
    for f in noisy[:20]:  # labels = expert(state), exactly
        np.testing.assert_allclose(f["action"], pol.select_action(f), atol=1e-6)
    s_clean = np.stack([f["observation.state"] for f in clean[:10]])
    s_noisy = np.stack([f["observation.state"] for f in noisy[:10]])
    np.testing.assert_allclose(s_clean[0], s_noisy[0])  # same configuration
    assert np.abs(s_clean[5:, :3] - s_noisy[5:, :3]).max() > 1e-3  # the noise was executed


def test_reusing_a_dataset_with_other_collection_settings_is_refused(demo, tmp_path):
    root, _ = demo
    rec = json.loads((root / collect_mod.COLLECTION_FILE).read_text())
    assert rec["action_noise"] == 0.0 and rec["seed"] == 0 and rec["episodes_per_task"] == 2
    same = {"env": "metaworld", "tasks": "push-v3", "episodes": 2, "seed": 0,
            "image_size": None, "extra_frames": 5, "action_noise": 0.0}
    ChunkDataset(root, horizon=H, collect=same)  # matching settings: reused
    for key, value in (("action_noise", 0.3), ("extra_frames", 40), ("tasks", "reach-v3"),
                       ("episodes", 50)):
        with pytest.raises(ValueError, match=key):
            ChunkDataset(root, horizon=H, collect={**same, key: value})
    with pytest.raises(ValueError, match="action_noise"):
        collect_mod.collect(tmp_path / "bad", "push-v3", episodes=1, action_noise=float("nan"))
