"""Hostile robot items (issue 9, category 3): NaN / inf and wrong shapes in LeRobot datasets,
missing or broken ``meta/stats.json`` / ``meta/info.json``, corrupt parquet files, and bad
observations given to :meth:`Policy.predict_action_chunk` / :meth:`Policy.select_action`.

Datasets must end in a clear ``ValueError`` / ``FileNotFoundError`` naming the dataset root
(and, for a bad frame, the feature, episode and frame), or, for a missing ``stats.json`` or a
missing statistic, a warning naming the root and the missing key while statistics are
recomputed from the frames (the chosen behaviour: ChunkDataset never used lerobot's statistics
for training). Observations must be refused with a ``ValueError`` / ``TypeError`` /
``KeyError`` naming the observation key, or give finite actions.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.modalities.hostile import TALLY, assert_clear_message, outcome, report

pytest.importorskip("lerobot")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from modalities.actions.data import ChunkDataset  # noqa: E402
from modalities.actions.nets import FlowPolicyNet  # noqa: E402
from modalities.actions.policy import Policy  # noqa: E402
from modalities.actions.task import FlowPolicyTask  # noqa: E402
from tests.modalities.actions.test_task import A, FakeChunkDataset, H, S  # noqa: E402

#: distinct hostile case kinds of this file (the issue's table counts them)
HOSTILE_CASES: dict[str, str] = {
    "nonfinite_frame": "NaN / inf / -inf in observation.state or action at a random frame",
    "wrong_frame_shape": "state / action vectors longer or shorter than meta/info.json says",
    "stats_missing": "meta/stats.json deleted, or a feature / statistic removed from it",
    "stats_broken": "meta/stats.json not JSON, not an object, or with non-numeric values",
    "info_broken": "meta/info.json not JSON, missing keys, bad fps / shapes / episodes",
    "parquet_corrupt": "a data parquet file truncated or replaced by random bytes",
    "obs_nonfinite": "NaN / inf / 1e300 in the state or image given to the policy",
    "obs_wrong_shape": "state / image of wrong rank, size, channels, empty batch",
    "obs_wrong_type": "strings, None, objects, complex, bool, nested lists",
    "obs_image_range": "float images outside [0, 1], integer images outside 0..255",
    "obs_task": "task of the wrong type, an empty list, a wrong batch size",
    "prev_chunk": "prev_chunk of the wrong shape or with NaN",
}
N_HOSTILE_CASES = len(HOSTILE_CASES)
EXAMPLES = 8  # hypothesis examples per dataset test (each builds a LeRobotDataset: ~0.3 s)
OBS_EXAMPLES = 30  # per observation test (one tiny forward pass each)

STATE_DIM, ACTION_DIM, EPISODES, FRAMES = 3, 2, 2, 5
DS_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                       suppress_health_check=[HealthCheck.too_slow,
                                              HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def _print_tally():
    yield
    print(f"\n{report('actions.')}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A LeRobotDataset v3 of 2 episodes x 5 frames (state (3,), action (2,)), no images."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from modalities.actions.collect import quiet_datasets

    root = tmp_path_factory.mktemp("lerobot") / "tiny"
    feats = {"observation.state": {"dtype": "float32", "shape": (STATE_DIM,), "names": None},
             "action": {"dtype": "float32", "shape": (ACTION_DIM,), "names": None}}
    rng = np.random.default_rng(0)
    with quiet_datasets():
        ds = LeRobotDataset.create(repo_id="local/tiny", fps=10, features=feats, root=root,
                                   use_videos=False, video_backend="pyav")
        for _ in range(EPISODES):
            for _ in range(FRAMES):
                ds.add_frame({"observation.state": rng.standard_normal(STATE_DIM)
                              .astype(np.float32),
                              "action": rng.standard_normal(ACTION_DIM).astype(np.float32),
                              "task": "do it"})
            ds.save_episode()
        ds.finalize()
    return root


def _copy(tiny: Path, d: str) -> Path:
    root = Path(d) / "ds"
    shutil.copytree(tiny, root)
    return root


def _data_file(root: Path) -> Path:
    (path,) = sorted((root / "data").glob("*/*.parquet"))
    return path


def _set_column(root: Path, key: str, rows: list) -> None:
    path = _data_file(root)
    table = pq.read_table(path)
    i = table.schema.get_field_index(key)
    try:
        arr = pa.array(rows, type=table.schema.field(key).type)
        table = table.set_column(i, table.schema.field(key), arr)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError):  # other lengths: a plain list
        table = table.set_column(i, key, pa.array(rows))
    pq.write_table(table, path)


def _open(root: Path, case: str, *culprits: str, horizon: int = 3) -> tuple[str, object]:
    return outcome(lambda: ChunkDataset(root, horizon=horizon), str(root), *culprits, case=case)


def _check_dataset(ds: ChunkDataset) -> None:
    assert len(ds) == EPISODES * FRAMES
    for key in ("observation.state", "action"):
        st_ = ds.stats[key]
        assert all(bool(torch.isfinite(v).all()) for v in st_.values())
    item = ds[len(ds) - 1]
    assert item["action"].shape == (3, ACTION_DIM) and bool(torch.isfinite(item["action"]).all())


@DS_SETTINGS
@given(key=st.sampled_from(["observation.state", "action"]), row=st.integers(0, 9),
       dim=st.integers(0, 1), value=st.sampled_from([math.nan, math.inf, -math.inf]),
       cache=st.booleans())
def test_nonfinite_frame_is_refused_naming_episode_and_frame(tiny, key, row, dim, value, cache):
    with tempfile.TemporaryDirectory() as d:
        root = _copy(tiny, d)
        rows = pq.read_table(_data_file(root)).column(key).to_pylist()
        rows[row][dim] = value
        _set_column(root, key, rows)
        kind, err = outcome(lambda: ChunkDataset(root, horizon=3, cache=cache), str(root),
                            case="actions.nonfinite_frame")
        assert kind == "error"
        ep, fr = divmod(row, FRAMES)
        assert f"{key!r}" in str(err) and f"episode {ep}, frame {fr}" in str(err)


@DS_SETTINGS
@given(key=st.sampled_from(["observation.state", "action"]), delta=st.sampled_from([-1, 1, 5]),
       which=st.sampled_from(["all", "one"]))
def test_frame_vectors_of_the_wrong_length_are_refused(tiny, key, delta, which):
    with tempfile.TemporaryDirectory() as d:
        root = _copy(tiny, d)
        rows = pq.read_table(_data_file(root)).column(key).to_pylist()
        for r in range(len(rows)) if which == "all" else [3]:
            rows[r] = (rows[r] + [0.5] * 5)[: len(rows[r]) + delta]
        _set_column(root, key, rows)
        assert _open(root, "actions.wrong_frame_shape")[0] == "error"


@DS_SETTINGS
@example(how="delete", key="action", stat="mean")
@given(how=st.sampled_from(["delete", "drop_feature", "drop_stat"]),
       key=st.sampled_from(["observation.state", "action"]),
       stat=st.sampled_from(["mean", "std", "min", "max"]))
def test_missing_stats_warn_naming_root_and_key_and_are_recomputed(tiny, how, key, stat):
    ref = ChunkDataset(tiny, horizon=3)
    with tempfile.TemporaryDirectory() as d:
        root = _copy(tiny, d)
        path = root / "meta" / "stats.json"
        stats = json.loads(path.read_text())
        if how == "delete":
            path.unlink()
            missing = "stats.json"
        elif how == "drop_feature":
            del stats[key]
            missing = key
        else:
            del stats[key][stat]
            missing = f"{key}.{stat}"
        if how != "delete":
            path.write_text(json.dumps(stats))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = ChunkDataset(root, horizon=3)
        msgs = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        assert any(missing in m and str(root) in m for m in msgs), msgs
        TALLY["actions.stats_missing", "warned"] += 1
        _check_dataset(ds)
        for k in ("observation.state", "action"):
            for name, v in ref.stats[k].items():
                assert torch.equal(ds.stats[k][name], v), (k, name)


@DS_SETTINGS
@given(text=st.sampled_from(["{not json", "", "[1, 2]", "null", "\"s\"",
                             '{"action": {"mean": "abc"}}', '{"action": 3}']))
def test_broken_stats_file(tiny, text):
    with tempfile.TemporaryDirectory() as d:
        root = _copy(tiny, d)
        (root / "meta" / "stats.json").write_text(text)
        kind, ds = _open(root, "actions.stats_broken", "stats.json")
        if kind != "error":
            _check_dataset(ds)


INFO_EDITS = st.sampled_from([
    ("raw", "{truncated"), ("raw", ""), ("raw", "[]"), ("del", "features"), ("del", "fps"),
    ("del", "total_episodes"), ("set", ("fps", 0)), ("set", ("fps", "ten")),
    ("set", ("fps", -3)), ("set", ("total_episodes", 0)), ("set", ("features", [])),
    ("feat", ("action", {"dtype": "float32"})), ("feat", ("action", {"dtype": "float32",
                                                                   "shape": [0]})),
    ("feat", ("observation.state", {"dtype": "float32", "shape": "3"})),
    ("feat", ("observation.state", {"dtype": "float32", "shape": [3, 2]})),
    ("feat_del", "action"), ("feat_del", "observation.state"),
])


@DS_SETTINGS
@given(edit=INFO_EDITS)
def test_broken_info_file(tiny, edit):
    with tempfile.TemporaryDirectory() as d:
        root = _copy(tiny, d)
        path = root / "meta" / "info.json"
        info = json.loads(path.read_text())
        op, arg = edit
        if op == "raw":
            path.write_text(arg)
        else:
            if op == "del":
                del info[arg]
            elif op == "set":
                info[arg[0]] = arg[1]
            elif op == "feat":
                info["features"][arg[0]] = arg[1]
            else:
                del info["features"][arg]
            path.write_text(json.dumps(info))
        assert _open(root, "actions.info_broken", "info.json")[0] == "error"


@DS_SETTINGS
@example(frac=0.0, junk=b"", garbage=False)
@given(frac=st.floats(0.0, 0.99), junk=st.binary(max_size=200), garbage=st.booleans())
def test_corrupt_parquet(tiny, frac, junk, garbage):
    with tempfile.TemporaryDirectory() as d:
        root = _copy(tiny, d)
        path = _data_file(root)
        raw = path.read_bytes()
        path.write_bytes(junk if garbage else raw[: int(len(raw) * frac)])
        assert _open(root, "actions.parquet_corrupt")[0] == "error"


# ---------------------------------------------------------------- policy observations
CAM = "observation.images.top"
OBS_ERRORS = (ValueError, TypeError, KeyError)


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Policy:
    torch.manual_seed(0)
    task = FlowPolicyTask(text=True, text_kind="hash", text_path="16", val_batch=0)
    model = task.wrap_model(FlowPolicyNet(S, A, H, width=32, depth=1, heads=2, text_dim=16,
                                          cameras=("top",)))
    task.setup(FakeChunkDataset(camera=True), tmp_path_factory.mktemp("flow"), model)
    return Policy(model, task, steps=2)


def _good(b: int | None = None) -> dict:
    g = torch.Generator().manual_seed(0)
    if b is None:
        return {"observation.state": torch.rand(S, generator=g), CAM: torch.rand(3, 16, 16,
                                                                                 generator=g),
                "task": "push the block left"}
    return {"observation.state": torch.rand(b, S, generator=g),
            CAM: torch.rand(b, 3, 16, 16, generator=g), "task": ["push the block left"] * b}


def _predict(pol: Policy, obs: dict, case: str, culprit: str, **kw) -> str:
    pol.reset()
    try:
        chunk = pol.predict_action_chunk(obs, **kw)
    except OBS_ERRORS as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        assert_clear_message(str(msg), (culprit,))
        TALLY[case, "error"] += 1
        return "error"
    assert chunk.ndim == 3 and chunk.shape[1:] == (H, A) and bool(torch.isfinite(chunk).all())
    TALLY[case, "accepted"] += 1
    return "accepted"


OBS_SETTINGS = settings(max_examples=OBS_EXAMPLES, deadline=None, derandomize=True,
                        suppress_health_check=[HealthCheck.too_slow,
                                               HealthCheck.function_scoped_fixture])


@OBS_SETTINGS
@example(key="observation.state", value=math.nan, batched=False, data=None)
@given(key=st.sampled_from(["observation.state", CAM]),
       value=st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300]),
       batched=st.booleans(), data=st.data())
def test_nonfinite_observation(policy, key, value, batched, data):
    obs = _good(2 if batched else None)
    x = obs[key].clone().double().reshape(-1)
    x[0 if data is None else data.draw(st.integers(0, x.numel() - 1))] = value
    obs[key] = x.reshape(obs[key].shape)
    assert _predict(policy, obs, "actions.obs_nonfinite", key) == "error"


SHAPES = {"observation.state": [(), (S + 1,), (1, S + 1), (0, S), (2, 1, S), (S, 1)],
          CAM: [(16, 16), (4, 16, 16), (16, 16, 4), (0, 3, 16, 16), (3, 0, 16), (1, 1, 3, 16, 16),
                (3,), (2, 3, 1, 1), (16, 16, 3)]}


@OBS_SETTINGS
@given(key=st.sampled_from(sorted(SHAPES)), data=st.data())
def test_observation_of_the_wrong_shape(policy, key, data):
    shape = data.draw(st.sampled_from(SHAPES[key]))
    obs = _good()
    obs[key] = torch.rand(shape)
    kind = _predict(policy, obs, "actions.obs_wrong_shape", key)
    assert kind == ("accepted" if (key, shape) == (CAM, (16, 16, 3)) else "error")


@OBS_SETTINGS
@given(key=st.sampled_from(["observation.state", CAM]),
       value=st.sampled_from(["abc", None, object(), [["a"]], {"x": 1}, [1, [2, 3]],
                              np.array(["x", "y", "z"]), np.ones(S, complex),
                              np.ones(S, bool), torch.ones(S, dtype=torch.complex64)]))
def test_observation_of_the_wrong_type(policy, key, value):
    obs = _good()
    obs[key] = value
    assert _predict(policy, obs, "actions.obs_wrong_type", key) == "error"


@OBS_SETTINGS
@given(kind=st.sampled_from(["float_255", "float_neg", "int_big", "int_neg", "int_ok",
                             "uint8", "float_ok"]), hwc=st.booleans())
def test_image_value_range(policy, kind, hwc):
    g = torch.Generator().manual_seed(1)
    img = {"float_255": torch.rand(3, 16, 16, generator=g) * 255,
           "float_neg": torch.rand(3, 16, 16, generator=g) * 2 - 1,
           "int_big": torch.randint(0, 1000, (3, 16, 16), generator=g),
           "int_neg": torch.randint(-5, 5, (3, 16, 16), generator=g),
           "int_ok": torch.randint(0, 256, (3, 16, 16), generator=g),
           "uint8": torch.randint(0, 256, (3, 16, 16), generator=g).to(torch.uint8),
           "float_ok": torch.rand(3, 16, 16, generator=g)}[kind]
    obs = dict(_good(), **{CAM: img.permute(1, 2, 0) if hwc else img})
    res = _predict(policy, obs, "actions.obs_image_range", CAM)
    assert res == ("accepted" if kind in ("int_ok", "uint8", "float_ok") else "error")


@OBS_SETTINGS
@given(task=st.sampled_from([3, None, [], [1, 2], ["a", "b", "c"], [b"bytes"], ("a", 3)]))
def test_bad_task(policy, task):
    obs = dict(_good(2), task=task)
    assert _predict(policy, obs, "actions.obs_task", "task") == "error"


@OBS_SETTINGS
@given(shape=st.sampled_from([(1, H, A), (2, H - 1, A), (2, H, A + 1), (H, A), (2, H, A)]),
       nan=st.booleans())
def test_bad_prev_chunk(policy, shape, nan):
    prev = torch.zeros(shape)
    if nan:
        prev.view(-1)[0] = math.nan
    kind = _predict(policy, _good(2), "actions.prev_chunk", "prev_chunk", prev_chunk=prev)
    assert kind == ("accepted" if shape == (2, H, A) and not nan else "error")
