"""Action-chunk training data from a local LeRobotDataset v3 (read through ``lerobot``).

:class:`ChunkDataset` serves, for every frame ``t`` of every episode, the observation at ``t``
and the chunk of the next ``horizon`` actions ``a_t, ..., a_{t+H-1}`` (the π0 / ACT training
target; Black et al., "π0: A Vision-Language-Action Flow Model for General Robot Control",
2024; Zhao et al., "Learning Fine-Grained Bimanual Manipulation with Low-Cost Hardware", RSS
2023). The chunk is read by lerobot's ``delta_timestamps={"action": [k / fps for k < H]}``.

**Padding.** Where the chunk runs past the episode's last frame ``T - 1``, lerobot clamps the
frame index to ``T - 1``: the padded actions *repeat the episode's last action* and
``action_is_pad[k] = (t + k >= T)``. Losses should mask padded steps (or learn to hold still).

**Fast path.** lerobot's per-item ``__getitem__`` costs ~4-6 ms (row decoding plus one query
per chunk column), too slow for CPU training. With ``cache=True`` (default) the state, action,
task and index columns of lerobot's loaded frames are held as tensors and chunks are cut with
exactly lerobot's clamping rule above (tests check equality with lerobot's items); images are
still decoded per item from lerobot's frame table (~1-2 ms at 64x64). ``cache=False`` serves
lerobot's own items.

**Statistics.** :attr:`ChunkDataset.stats` gives, per feature (``observation.state``,
``action``), float32 tensors ``mean, std, min, max, q01, q99`` over all frames of the selected
episodes (one row per frame, never per chunk). ``std`` is the population one (ddof = 0, as
lerobot's); the quantiles are exact, ``np.quantile(x, q, axis=0)`` with linear interpolation
between order statistics (Hyndman & Fan 1996, definition 7): for sorted ``x_(0..N-1)`` and
``h = (N - 1) q``, ``Q(q) = x_(floor h) + (h - floor h) (x_(floor h + 1) - x_(floor h))``.
lerobot's ``meta/stats.json`` quantiles are not exact (5000-bin histograms per episode,
averaged over episodes weighted by length) and its std is accumulated in float32 (about 1 %
off for near-constant dimensions such as goal coordinates), so neither is used; its mean /
std / min / max are checked against ours to float32 accuracy and a mismatch (a stale stats
file) is warned about.

**Checks.** ``meta/info.json`` must be valid with the keys used here (else ``ValueError``
naming the file and key); every frame's state and action must be ``(D,)`` finite numbers as
declared (else ``ValueError`` naming the root, feature, episode, frame and dimension); corrupt
parquet files are reported with the root and pyarrow's reason. A missing ``meta/stats.json``
or a missing entry in it only warns (naming the root and the keys): statistics are always
recomputed from the frames; a ``stats.json`` that is not JSON raises.

No network: the folder must hold a complete dataset (``meta/info.json``, ``meta/episodes``,
``data/*/*.parquet``); otherwise lerobot would try the Hub, so that case is an error here (or,
with ``collect=...``, the dataset is recorded first by :func:`~.collect.collect`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from toolkit.kv import did_you_mean

STAT_FEATURES: tuple[str, ...] = ("observation.state", "action")
QUANTILES: dict[str, float] = {"q01": 0.01, "q99": 0.99}


def has_dataset(root: str | Path) -> bool:
    """Whether ``root`` holds a complete local LeRobotDataset v3 (metadata and data files)."""
    root = Path(root)
    return ((root / "meta" / "info.json").is_file() and (root / "meta" / "episodes").is_dir()
            and any((root / "data").glob("*/*.parquet")))


def check_collection(root: str | Path, spec: dict[str, Any]) -> None:
    """Refuse to reuse a dataset recorded with other collection settings than ``spec``.

    Datasets written by :func:`~.collect.collect` keep their settings in
    ``meta/collection.json``; when the recipe asks for different ``tasks``, ``episodes``,
    ``seed``, ``image_size``, ``extra_frames`` or ``action_noise`` than the dataset at ``root``
    holds, training would silently learn from other demonstrations. Datasets without that file
    (a user's own LeRobotDataset) are not checked.
    """
    from modalities.actions.collect import COLLECTION_FILE, resolve_tasks

    path = Path(root) / COLLECTION_FILE
    if not path.is_file():
        return
    rec = json.loads(path.read_text())
    eps = rec.get("episodes", [])
    have: dict[str, Any] = {
        "tasks": sorted({e["task"] for e in eps}),
        "image_size": rec.get("image_size"),
        "extra_frames": rec.get("extra_frames", 5),
        "action_noise": float(rec.get("action_noise", 0.0)),
    }
    want: dict[str, Any] = {}
    spec = dict(spec)
    tasks = spec.get("tasks", spec.get("task"))
    if tasks is not None:
        want["tasks"] = sorted(resolve_tasks(tasks))
    for key in ("image_size", "extra_frames"):
        if key in spec:
            want[key] = spec[key]
    if "action_noise" in spec:
        want["action_noise"] = float(spec["action_noise"] or 0.0)
    for key, rec_key in (("episodes", "episodes_per_task"), ("seed", "seed")):
        if key in spec and rec.get(rec_key) is not None:  # recorded since action_noise
            have[key], want[key] = int(rec[rec_key]), int(spec[key])
    diff = {k: (have[k], v) for k, v in want.items() if k in have and have[k] != v}
    if diff:
        parts = ", ".join(f"{k}: dataset {a!r} vs requested {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"the LeRobotDataset at {root} was collected with other settings "
                         f"({parts}); point data.root at a new folder to collect these "
                         "demonstrations, or drop the changed data.collect keys")


@contextlib.contextmanager
def _collect_lock(root: Path) -> Iterator[None]:
    """An exclusive lock on ``.ROOT.lock`` beside ``root`` (POSIX ``flock``): processes
    started together (``torchrun``) collect once; the others wait, then read it."""
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(root.parent / f".{root.name}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_collect(root: str | Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Record the dataset described by ``spec`` (e.g. ``{"env": "metaworld", "tasks":
    "push-v3", "episodes": 50, "seed": 0}``) into ``root`` with :func:`~.collect.collect`."""
    from modalities.actions import collect as collect_mod

    spec = dict(spec)
    env = spec.pop("env", "metaworld")
    if env != "metaworld":
        raise ValueError(f"collect env={env!r}: only 'metaworld' is supported")
    if "task" in spec:
        spec["tasks"] = spec.pop("task")
    valid = [p for p in inspect.signature(collect_mod.collect).parameters if p != "root"]
    for key in spec:
        if key not in valid:
            raise ValueError(f"unknown collect key {key!r}.{did_you_mean(key, valid)} "
                             f"Valid keys: env, {', '.join(valid)}")
    return collect_mod.collect(root, **spec)


def _read_json(path: Path) -> Any:
    """A JSON file; unreadable or invalid JSON raises ``ValueError`` naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        msg = " ".join(str(err).split())
        raise ValueError(f"{path} is not a readable JSON file ({type(err).__name__}: {msg})"
                         ) from None


def _check_info(root: Path) -> dict[str, Any]:
    """``meta/info.json`` with the keys and types :class:`ChunkDataset` relies on; anything
    missing or malformed raises ``ValueError`` naming the file and the key."""
    path = root / "meta" / "info.json"
    info = _read_json(path)
    if not isinstance(info, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(info).__name__}")
    for key, kind in (("features", dict), ("fps", int | float), ("total_episodes", int)):
        if key not in info:
            raise ValueError(f"{path} lacks the key {key!r}")
        if not isinstance(info[key], kind) or isinstance(info[key], bool):
            raise ValueError(f"{path}: {key!r} is {info[key]!r}, not a {kind}")
    if not (math.isfinite(info["fps"]) and info["fps"] > 0 and int(info["fps"]) == info["fps"]):
        raise ValueError(f"{path}: 'fps' must be a positive integer, got {info['fps']!r}")
    if info["total_episodes"] < 1:
        raise ValueError(f"{path}: 'total_episodes' must be >= 1, got {info['total_episodes']}")
    feats = info["features"]
    for key in STAT_FEATURES:
        if key not in feats:
            raise ValueError(f"dataset {root} has no {key!r} feature: {list(feats)}")
    for key, f in feats.items():
        if not isinstance(f, dict) or "dtype" not in f or "shape" not in f:
            raise ValueError(f"{path}: feature {key!r} must be an object with 'dtype' and "
                             f"'shape', got {f!r:.100}")
        shape = f["shape"]
        if (not isinstance(shape, list | tuple) or not shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                           for d in shape)):
            raise ValueError(f"{path}: feature {key!r} has shape {shape!r}; expected a list of "
                             "positive integers")
        if key in STAT_FEATURES and len(shape) != 1:
            raise ValueError(f"{path}: feature {key!r} must be a vector (D,), got {shape}")
    return info


def _check_stats_file(root: Path) -> None:
    """``meta/stats.json`` (lerobot's statistics). :class:`ChunkDataset` computes its own
    statistics from the frames, so a missing file or a missing entry only warns (naming the
    dataset root and the missing keys); a file that is not JSON raises (lerobot cannot load
    the dataset with it)."""
    path = root / "meta" / "stats.json"
    if not path.is_file():
        warnings.warn(f"LeRobotDataset at {root} has no meta/stats.json; statistics are "
                      "recomputed from the frames (ChunkDataset.stats)", stacklevel=3)
        return
    stats = _read_json(path)
    if not isinstance(stats, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(stats).__name__}")
    missing: list[str] = []
    for key in STAT_FEATURES:
        entry = stats.get(key)
        if not isinstance(entry, dict):
            missing.append(key)
        else:
            missing += [f"{key}.{k}" for k in ("mean", "std", "min", "max") if k not in entry]
    if missing:
        warnings.warn(f"LeRobotDataset at {root}: meta/stats.json lacks {missing}; statistics "
                      "are recomputed from the frames (ChunkDataset.stats)", stacklevel=3)


def frame_stats(x: np.ndarray) -> dict[str, Tensor]:
    """``mean, std, min, max, q01, q99`` over the rows of ``x`` ``(N, D)`` as float32 ``(D,)``."""
    x = np.asarray(x, dtype=np.float64)  # (N, D)
    out = {"mean": x.mean(0), "std": x.std(0), "min": x.min(0), "max": x.max(0)}
    qs = np.quantile(x, list(QUANTILES.values()), axis=0)  # (2, D), linear = H&F type 7
    out.update({k: qs[i] for i, k in enumerate(QUANTILES)})
    return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in out.items()}


class ChunkDataset(Dataset):
    """Map-style dataset of ``(observation, action chunk)`` items from a local LeRobotDataset.

    Items (the default ``DataLoader`` collate works; ``task`` batches to a list of str):

    * ``"observation.state"``: float32 ``(S,)``;
    * ``"action"``: float32 ``(H, A)``, actions ``t .. t + H - 1`` (padding: module docstring);
    * ``"action_is_pad"``: bool ``(H,)``;
    * ``"task"``: the instruction string;
    * each of ``image_keys``: float32 ``(3, h, w)`` in ``[0, 1]``;
    * ``"episode_index"``, ``"frame_index"``: int64 scalars.

    Args:
        root: dataset folder.
        horizon: action chunk length ``H >= 1``.
        repo_id: LeRobot repo id (only a label here; default ``"local/<folder name>"``).
        image_keys: camera features to return (default: all of the dataset's; ``[]``: none).
        collect: if ``root`` is missing or empty, record it first with these
            :func:`~.collect.collect` settings (e.g. ``{"env": "metaworld", "tasks": "push-v3",
            "episodes": 50, "seed": 0}``); ``None``: FileNotFoundError instead.
        episodes: episode indices to use (default: all).
        cache: serve items from in-memory columns (module docstring); False: lerobot items.
    """

    def __init__(self, root: str | Path, horizon: int = 16, repo_id: str | None = None,
                 image_keys: list[str] | None = None, collect: dict[str, Any] | None = None,
                 episodes: list[int] | None = None, cache: bool = True) -> None:
        if int(horizon) < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.root = Path(root)
        if not has_dataset(self.root) and collect is not None:
            with _collect_lock(self.root):  # one collector when several processes start
                if not has_dataset(self.root):
                    self._missing(collect)
                    run_collect(self.root, collect)
        elif not has_dataset(self.root):
            self._missing(collect)
        elif collect is not None:
            check_collection(self.root, collect)
        info = _check_info(self.root)
        feats: dict[str, dict] = info["features"]
        _check_stats_file(self.root)
        cams = [k for k, f in feats.items() if f["dtype"] in ("image", "video")]
        keys = list(cams) if image_keys is None else list(image_keys)
        for key in keys:
            if key not in cams:
                raise ValueError(f"image key {key!r} is not in dataset {self.root}."
                                 f"{did_you_mean(key, cams)} "
                               f"Available image keys: {cams or 'none'}; features: {list(feats)}")
        total = int(info["total_episodes"])
        if episodes is not None:
            bad = [e for e in episodes if not 0 <= int(e) < total]
            if bad or not episodes:
                raise ValueError(f"episodes {bad or episodes} not in 0 .. {total - 1}")
        self._fps = int(info["fps"])
        self._horizon = int(horizon)
        self.image_keys = keys
        self._feats = feats
        self._episodes = None if episodes is None else [int(e) for e in episodes]
        self._stats: dict[str, dict[str, Tensor]] | None = None
        self.lerobot_stats_ok: bool | None = None  # set when stats are first computed

        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        from modalities.actions.collect import quiet_datasets

        has_video = any(feats[k]["dtype"] == "video" for k in cams)
        try:
            with quiet_datasets():
                self._ds = LeRobotDataset(
                    repo_id or f"local/{self.root.name}", root=self.root,
                    episodes=self._episodes,
                    delta_timestamps={"action": [k / self._fps for k in range(self._horizon)]},
                    video_backend=None if has_video else "pyav")  # pyav: no torchcodec probing
        except Exception as err:  # pyarrow / datasets / lerobot errors on corrupt files
            cause = err  # datasets wraps the informative pyarrow error: report the innermost
            for _ in range(20):
                if (cause.__cause__ or cause.__context__) is None:
                    break
                cause = cause.__cause__ or cause.__context__
            msg = " ".join(str(cause).split())[:300]
            raise ValueError(f"LeRobotDataset at {self.root} could not be read "
                             f"({type(cause).__name__}: {msg}); are its parquet files or meta/ "
                             "files truncated or corrupt?") from err
        cols = self._checked_columns()
        self.cache = bool(cache) and not has_video
        if self.cache:
            self._build_cache(cols)

    # ---------------------------------------------------------------- properties
    @property
    def fps(self) -> int:
        """Frames per second of the recording (chunk steps are ``1 / fps`` apart)."""
        return self._fps

    @property
    def horizon(self) -> int:
        """Action chunk length ``H``."""
        return self._horizon

    @property
    def state_dim(self) -> int:
        """``S``, the state size."""
        return int(self._feats["observation.state"]["shape"][0])

    @property
    def action_dim(self) -> int:
        """``A``, the action size."""
        return int(self._feats["action"]["shape"][0])

    @property
    def features(self) -> dict[str, tuple[int, ...]]:
        """Per-frame shapes as items carry them: state ``(S,)``, action ``(A,)`` (items hold
        ``(H, A)``), images channel-first ``(3, h, w)``."""
        out = {"observation.state": (self.state_dim,), "action": (self.action_dim,)}
        for k in self.image_keys:
            h, w, c = self._feats[k]["shape"]
            out[k] = (int(c), int(h), int(w))
        return out

    @property
    def tasks(self) -> list[str]:
        """Unique instruction strings of the selected episodes (by task index)."""
        idx = np.unique(self._column("task_index"))
        names = self._ds.meta.tasks.index
        return [str(names[int(i)]) for i in idx]

    @property
    def num_episodes(self) -> int:
        """Number of selected episodes."""
        return int(self._ds.num_episodes)

    def _missing(self, collect: dict[str, Any] | None) -> None:
        """Raise unless ``root`` is absent or empty and ``collect`` settings are given."""
        empty = not self.root.exists() or (self.root.is_dir() and not any(self.root.iterdir()))
        if collect is None or not empty:
            what = "does not exist" if not self.root.exists() else "holds no complete dataset"
            raise FileNotFoundError(
                f"LeRobotDataset root {self.root} {what} (needs meta/info.json, meta/episodes "
                "and data/*/*.parquet). Record one with `toolkit data collect env=metaworld "
                f"task=push-v3 episodes=50 root={self.root}`"
                + (" or pass collect={...}." if collect is None else "; not overwriting."))

    @property
    def collection_info(self) -> dict[str, Any] | None:
        """``meta/collection.json`` written by :func:`~.collect.collect` (seeds per episode)."""
        path = self.root / "meta" / "collection.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def stats(self) -> dict[str, dict[str, Tensor]]:
        """Exact per-frame statistics of ``observation.state`` and ``action`` (module doc)."""
        if self._stats is None:
            self._stats = {k: frame_stats(self._column(k)) for k in STAT_FEATURES}
            self.lerobot_stats_ok = self._check_lerobot_stats()
        return self._stats

    # ---------------------------------------------------------------- internals
    def _column(self, key: str) -> np.ndarray:
        """All selected frames' values of a non-image column, ``(N, D)`` or ``(N,)``."""
        hf = self._ds.hf_dataset.select_columns([key]).with_format("numpy")
        return np.asarray(hf[:][key])

    def _checked_columns(self) -> dict[str, np.ndarray]:
        """Episode / frame indices and the state and action columns of all selected frames,
        checked against ``meta/info.json``: ``(N, D)`` numbers, all finite. A bad frame raises
        ``ValueError`` naming the dataset root, the feature, the episode, frame and dimension.
        """
        cols = {k: self._column(k) for k in ("episode_index", "frame_index", *STAT_FEATURES)}
        n = len(cols["episode_index"])
        if n == 0:
            raise ValueError(f"LeRobotDataset at {self.root} holds no frames")
        for key in STAT_FEATURES:
            dim = int(self._feats[key]["shape"][0])
            x = cols[key]
            if x.dtype == object or x.shape != (n, dim) or x.dtype.kind not in "fiu":
                raise ValueError(f"LeRobotDataset at {self.root}: column {key!r} holds "
                                 f"{x.dtype} {x.shape}, but meta/info.json declares ({dim},) "
                                 f"numbers per frame for {n} frames")
            bad = ~np.isfinite(x)
            if bad.any():
                r, d = (int(v) for v in np.argwhere(bad)[0])
                raise ValueError(
                    f"LeRobotDataset at {self.root}: {key!r} is {x[r, d]} at episode "
                    f"{int(cols['episode_index'][r])}, frame {int(cols['frame_index'][r])} "
                    f"(row {r}), dimension {d}; {int(bad.any(1).sum())} frame(s) hold NaN or "
                    "inf. Fix or drop them before training")
        return cols

    def _build_cache(self, cols: dict[str, np.ndarray]) -> None:
        """Tensors of all selected frames and, per row, the end row of its episode."""
        ep = cols["episode_index"].astype(np.int64)  # (N,)
        frame = cols["frame_index"].astype(np.int64)  # (N,)
        index = self._column("index").astype(np.int64)  # (N,)
        if np.any(np.diff(index) <= 0):
            raise RuntimeError(f"{self.root}: frames are not stored in index order")
        first = np.r_[True, ep[1:] != ep[:-1]]  # (N,) row starts an episode
        if np.any(frame[first] != 0) or np.any(np.diff(frame)[~first[1:]] != 1):
            raise RuntimeError(f"{self.root}: episodes are not contiguous runs of frames 0..T-1")
        starts = np.flatnonzero(first)
        ends = np.r_[starts[1:], len(ep)]
        self._ep_end = torch.as_tensor(np.repeat(ends, ends - starts))  # (N,) exclusive end row
        self._state = torch.as_tensor(cols["observation.state"], dtype=torch.float32)
        self._action = torch.as_tensor(cols["action"], dtype=torch.float32)  # (N, A)
        self._task_index = self._column("task_index").astype(np.int64)
        self._ep = torch.as_tensor(ep)
        self._frame = torch.as_tensor(frame)
        self._offsets = torch.arange(self._horizon)  # (H,)
        self._names = [str(t) for t in self._ds.meta.tasks.index]
        self._images = (self._ds.hf_dataset.select_columns(self.image_keys)
                        if self.image_keys else None)

    def _cached_item(self, i: int) -> dict[str, Any]:
        end = int(self._ep_end[i])
        want = i + self._offsets  # (H,) rows t .. t + H - 1
        rows = want.clamp(max=end - 1)  # lerobot: min(ep_end - 1, idx + delta)
        item: dict[str, Any] = {
            "observation.state": self._state[i].clone(),  # (S,)
            "action": self._action[rows],  # (H, A)
            "action_is_pad": want >= end,  # (H,)
            "task": self._names[int(self._task_index[i])],
            "episode_index": self._ep[i], "frame_index": self._frame[i],
        }
        if self._images is not None:
            row = self._images[i]
            for k in self.image_keys:
                item[k] = row[k].to(torch.float32)  # (3, h, w) in [0, 1]
        return item

    def _check_lerobot_stats(self) -> bool | None:
        """Do lerobot's mean / min / max / std match ours to float32 accuracy? lerobot
        accumulates in float32, so its variance carries an error ~1e-7 * mean^2 (about 1 % of
        the std of a near-constant dimension such as a goal coordinate): variances are compared
        with tolerance ``1e-5 * (mean^2 + var)``, the rest with ``1e-5 * (|x| + 1e-3)``."""
        theirs = self._ds.meta.stats
        if self._episodes is not None or not theirs:
            return None  # lerobot's stats cover all episodes
        ok = True
        for key in STAT_FEATURES:
            ours = {k: v.double().numpy() for k, v in self._stats[key].items()}
            try:
                th = {k: np.asarray(theirs[key][k], dtype=np.float64).reshape(-1)
                      for k in ("mean", "std", "min", "max")}
            except (KeyError, TypeError, ValueError):
                return None  # missing or malformed: warned about at construction
            if any(v.shape != ours["mean"].shape for v in th.values()):
                ok = False  # other shapes: certainly stale
                continue
            for k in ("mean", "min", "max"):
                ok &= bool(np.all(np.abs(th[k] - ours[k]) <= 1e-5 * (np.abs(ours[k]) + 1e-3)))
            var, var_th = ours["std"] ** 2, th["std"] ** 2
            ok &= bool(np.all(np.abs(var_th - var) <= 1e-5 * (ours["mean"] ** 2 + var) + 1e-12))
        if not ok:
            warnings.warn(f"{self.root}/meta/stats.json disagrees with the frames (stale?); "
                          "using statistics computed from the data", stacklevel=3)
        return ok

    # ---------------------------------------------------------------- Dataset API
    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} out of range for {n} frames")
        if self.cache:
            return self._cached_item(int(idx) % n)
        raw = self._ds[int(idx) % n]
        item: dict[str, Any] = {
            "observation.state": raw["observation.state"].to(torch.float32),  # (S,)
            "action": raw["action"].to(torch.float32),  # (H, A)
            "action_is_pad": raw["action_is_pad"].to(torch.bool),  # (H,)
            "task": str(raw["task"]),
            "episode_index": raw["episode_index"].to(torch.int64).reshape(()),
            "frame_index": raw["frame_index"].to(torch.int64).reshape(()),
        }
        for k in self.image_keys:
            item[k] = raw[k].to(torch.float32)  # (3, h, w) in [0, 1]
        return item

    def __repr__(self) -> str:
        return (f"ChunkDataset(root={str(self.root)!r}, frames={len(self)}, "
                f"episodes={self.num_episodes}, horizon={self.horizon}, fps={self.fps}, "
                f"features={self.features}, tasks={self.tasks})")
