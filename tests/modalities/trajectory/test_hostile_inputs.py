"""Hostile trajectory items (issue 9, category 5): a corrupted ``TrajectoryDataset`` cache.

The cache is derived data, so an unusable file (truncated, garbage, another pickle, other
settings, wrong shapes or dtypes, NaN / inf, non-rotations, out-of-range classes) must be
reported with a warning naming the file and regenerated: the dataset then equals a fresh
one. Never an obscure torch / pickle error, never a corrupt split served silently.
"""

from __future__ import annotations

import json
import math
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modalities.trajectory.sim import TrajectoryDataset
from tests.modalities.hostile import outcome, report

#: distinct hostile case kinds of this file (the issue's table counts them)
HOSTILE_CASES: dict[str, str] = {
    "truncated": "the .pt cache cut at a random byte",
    "garbage": "random bytes in place of the cache",
    "bit_flips": "a few bytes of the cache overwritten",
    "wrong_container": "a list / tensor / dict without settings saved instead",
    "wrong_settings": "settings missing, not a string, not JSON, or of another split",
    "missing_key": "one of rots / trans / cls / inertia / omega missing",
    "wrong_shape": "a tensor with too few items or frames, or a wrong trailing shape",
    "wrong_dtype": "a float class index, integer rotations, a non-tensor value",
    "nonfinite": "NaN / inf at a random position of a float tensor",
    "invalid_values": "non-rotation matrices, class indices out of range, inertia <= 0",
}
N_HOSTILE_CASES = len(HOSTILE_CASES)
EXAMPLES = 30  # hypothesis examples per test (fixed budget)

KW = dict(n=4, n_frames=5)
KEYS = ("rots", "trans", "cls", "inertia", "omega")


@pytest.fixture(scope="module", autouse=True)
def _print_tally():
    yield
    print(f"\n{report('trajectory.')}")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> TrajectoryDataset:
    return TrajectoryDataset("train", cache_dir=tmp_path_factory.mktemp("traj"), **KW)


def _check_regenerated(path_bytes: bytes | None, blob: object, case: str,
                       fresh: TrajectoryDataset) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = TrajectoryDataset("train", cache_dir=d, **KW).path  # same name as the cache
        if path_bytes is not None:
            path.write_bytes(path_bytes)
        else:
            torch.save(blob, path)
        kind, ds = outcome(lambda: TrajectoryDataset("train", cache_dir=d, **KW), str(path),
                           case=case)
        assert kind == "warned" and not ds.loaded_from_cache
        for k in KEYS:
            assert torch.equal(getattr(ds, k), getattr(fresh, k)), k
        again = TrajectoryDataset("train", cache_dir=d, **KW)  # the rewritten cache is good
        assert again.loaded_from_cache and torch.equal(again.rots, fresh.rots)


SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


@SETTINGS
@example(how="truncated", frac=0.0, junk=b"", data=None)
@given(how=st.sampled_from(["truncated", "garbage", "bit_flips"]), frac=st.floats(0.0, 0.999),
       junk=st.binary(max_size=300), data=st.data())
def test_corrupt_bytes_are_regenerated(fresh, how, frac, junk, data):
    good = fresh.path.read_bytes()
    if how == "truncated":
        raw = good[: int(len(good) * frac)]
    elif how == "garbage":
        raw = junk
    else:
        buf = bytearray(good)
        flipped = False
        for _ in range(data.draw(st.integers(1, 6))):
            i, v = data.draw(st.integers(0, len(buf) - 1)), data.draw(st.integers(0, 255))
            flipped |= buf[i] != v
            buf[i] = v
        raw = bytes(buf)
        if not flipped:
            return
        kind, ds = _outcome_of_bytes(raw)
        if kind == "accepted":  # a flip inside padding or an unused zip field: data intact
            for k in KEYS:
                assert torch.equal(getattr(ds, k), getattr(fresh, k)), k
            return
        assert kind == "warned"
        for k in KEYS:
            assert torch.equal(getattr(ds, k), getattr(fresh, k)), k
        return
    _check_regenerated(raw, None, f"trajectory.{how}", fresh)


def _outcome_of_bytes(raw: bytes) -> tuple[str, TrajectoryDataset]:
    with tempfile.TemporaryDirectory() as d:
        path = TrajectoryDataset("train", cache_dir=d, **KW).path
        path.write_bytes(raw)
        return outcome(lambda: TrajectoryDataset("train", cache_dir=d, **KW), str(path),
                       case="trajectory.bit_flips")


def _blob(fresh: TrajectoryDataset) -> dict:
    return {**{k: getattr(fresh, k).clone() for k in KEYS},
            "settings": json.dumps(fresh.settings, sort_keys=True)}


@SETTINGS
@given(how=st.sampled_from(["wrong_container", "wrong_settings", "missing_key"]),
       data=st.data())
def test_wrong_structure_is_regenerated(fresh, how, data):
    blob = _blob(fresh)
    if how == "wrong_container":
        blob = data.draw(st.sampled_from([[1, 2, 3], torch.zeros(3), {"rots": fresh.rots},
                                          "a string", None, 7]))
    elif how == "wrong_settings":
        other = dict(fresh.settings, split="val")
        blob["settings"] = data.draw(st.sampled_from(
            [None, 3, "{not json", json.dumps(other), json.dumps([1]), ""]))
        if blob["settings"] is None:
            del blob["settings"]
    else:
        del blob[data.draw(st.sampled_from(KEYS))]
    _check_regenerated(None, blob, f"trajectory.{how}", fresh)


@SETTINGS
@given(key=st.sampled_from(KEYS), how=st.sampled_from(["wrong_shape", "wrong_dtype",
                                                       "nonfinite", "invalid_values"]),
       data=st.data())
def test_wrong_tensors_are_regenerated(fresh, key, how, data):
    blob = _blob(fresh)
    x = blob[key]
    if how == "wrong_shape":
        cut = data.draw(st.sampled_from(["items", "frames", "last"]))
        if cut == "items" or x.ndim < 3 and cut == "frames":
            blob[key] = x[:-1]
        elif cut == "frames":
            blob[key] = x[:, :-1]
        else:
            blob[key] = x[..., :-1] if x.ndim > 1 else x[None]
    elif how == "wrong_dtype":
        blob[key] = (x.double() if key == "cls" else x.long()) if data.draw(st.booleans()) \
            else x.tolist()
    elif how == "nonfinite" and key != "cls":
        flat = x.clone().reshape(-1)
        flat[data.draw(st.integers(0, flat.numel() - 1))] = data.draw(
            st.sampled_from([math.nan, math.inf, -math.inf]))
        blob[key] = flat.reshape(x.shape)
    elif key in ("rots", "cls", "inertia"):  # invalid values
        if key == "rots":
            blob[key] = x * 2.0
        elif key == "cls":
            blob[key] = x + 17
        else:
            blob[key] = -x
    else:
        return  # nonfinite classes do not exist; trans / omega have no invalid finite values
    _check_regenerated(None, blob, f"trajectory.{how}", fresh)


def test_a_flipped_bit_inside_the_tensor_data_is_caught(fresh):
    """``torch.save`` files carry no checksum of the tensor bytes: the cache's own digest
    catches a value that changed in its last bit."""
    raw = bytearray(fresh.path.read_bytes())
    i = raw.find(fresh.trans[1].numpy().tobytes())
    assert i > 0
    raw[i] ^= 1
    _check_regenerated(bytes(raw), None, "trajectory.bit_flips", fresh)
