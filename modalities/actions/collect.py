"""Scripted-expert demonstrations on Meta-World, written as a local LeRobotDataset v3.

:func:`collect` runs each task's ``metaworld.policies`` expert (:class:`~.sim.ScriptedExpert`)
on seeded configurations (:class:`~.sim.MetaWorldEnv`; seeds ``seed, seed + 1, ...``) and keeps
only successful episodes, until ``episodes`` successes per task or
``episodes * max_attempts_factor`` attempts. Every kept episode is recorded frame by frame with
``LeRobotDataset.create(...)`` / ``add_frame`` / ``save_episode`` / ``finalize()`` (lerobot
0.6, format v3.0, ``use_videos=False``: images are stored as PNG images inside the parquet
files). Frame ``t`` holds the observation before step ``t`` and the action taken there:

* ``observation.state``: float32 ``(39,)`` (see :class:`~.sim.MetaWorldEnv`),
* ``action``: float32 ``(4,)``, the expert action as executed (clipped to ``[-1, 1]``),
* ``observation.images.<camera>``: uint8 ``(H, W, 3)`` image, only if ``image_size`` is set,
* ``task``: the instruction string (:data:`~.sim.TASK_INSTRUCTIONS`).

With ``action_noise = sigma > 0`` the demonstrations are collected DART-style (Laskey et al.,
"DART: Noise Injection for Robust Imitation Learning", CoRL 2017): the environment executes
``clip(a* + eps, -1, 1)`` with ``eps ~ N(0, sigma^2 I)`` on the motion dims (the gripper effort is
left clean), while the frame records the expert's clean label ``a*``. The policy then sees the
states a slightly wrong action leads to, labelled with the expert's correction, which covers
the overshoot region around the goal that noise-free demonstrations never visit.

Recording stops ``extra_frames`` steps after the first success (the expert keeps holding the
goal in those frames), so demonstrations end at the goal rather than idling until step 500.
Nothing touches the Hugging Face Hub: the dataset is written under ``root`` only (to a
temporary sibling folder first, renamed to ``root`` once finalized, so an interrupted run leaves
no half-written dataset), and ``meta/collection.json`` records the seeds of every kept episode.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from modalities.actions.sim import (
    ACTION_DIM,
    EVAL_SEED_OFFSET,
    MT10_TASKS,
    STATE_DIM,
    MetaWorldEnv,
    ScriptedExpert,
    check_task,
    instruction,
)

COLLECTION_FILE = "meta/collection.json"


def resolve_tasks(tasks: str | list[str]) -> list[str]:
    """``"mt10"`` -> :data:`MT10_TASKS`; ``"a,b"`` or ``["a", "b"]`` -> checked task names."""
    if isinstance(tasks, str):
        if tasks.lower() == "mt10":
            return list(MT10_TASKS)
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError("no task given")
    out = [check_task(t) for t in tasks]
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate tasks in {out}")
    return out


def default_repo_id(tasks: list[str]) -> str:
    """``local/metaworld_<tasks>`` (``local/metaworld_mt10`` for the MT10 set)."""
    name = "mt10" if sorted(tasks) == sorted(MT10_TASKS) else "_".join(tasks)
    return f"local/metaworld_{name}"


def features(image_size: int | None = None, camera: str = "corner") -> dict[str, dict]:
    """LeRobot feature spec of the recorded frames."""
    feats: dict[str, dict] = {
        "observation.state": {"dtype": "float32", "shape": (STATE_DIM,), "names": None},
        "action": {"dtype": "float32", "shape": (ACTION_DIM,),
                   "names": ["dx", "dy", "dz", "gripper"]},
    }
    if image_size is not None:
        feats[f"observation.images.{camera}"] = {
            "dtype": "image", "shape": (image_size, image_size, 3),
            "names": ["height", "width", "channels"]}
    return feats


def _expert_episode(env: MetaWorldEnv, policy: ScriptedExpert, seed: int, extra_frames: int,
                    action_noise: float = 0.0) -> tuple[bool, list[dict[str, Any]]]:
    """Run one expert episode; ``(success, frames)`` with frames cut ``extra_frames`` steps
    after the first success. ``action_noise``: DART noise std on the executed motion dims
    (module docstring), drawn from a generator seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    obs = env.reset(seed)
    frames: list[dict[str, Any]] = []
    success_at: int | None = None
    for t in range(env.max_episode_steps):
        action = policy.select_action(obs)  # (4,) float32 in [-1, 1]
        frames.append({**obs, "action": action})
        executed = action
        if action_noise > 0:
            executed = action.copy()
            executed[:3] += action_noise * rng.standard_normal(3).astype(np.float32)
            executed = np.clip(executed, -1.0, 1.0)
        obs, _, _, info = env.step(executed)
        if info["success"] and success_at is None:
            success_at = t
        if success_at is not None and t >= success_at + extra_frames:
            break
    return success_at is not None, frames


@contextlib.contextmanager
def quiet_datasets():
    """Silence the ``datasets`` "Map" bars that lerobot's ``save_episode`` / reads print."""
    from datasets.utils.tqdm import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _check_root(root: Path) -> None:
    if root.exists():
        if not root.is_dir() or any(root.iterdir()):
            raise FileExistsError(f"{root} already exists and is not empty; choose a new root "
                                  "(a LeRobotDataset is never written over existing files)")


def _record(ds: Any, record: dict[str, Any], task_list: list[str], episodes: int, seed: int,
            max_attempts: int, progress: bool) -> dict[str, dict[str, Any]]:
    """Run the experts and append successful episodes to ``ds``; per-task summary."""
    from tqdm.auto import tqdm

    per_task: dict[str, dict[str, Any]] = {}
    image_size, camera, extra = record["image_size"], record["camera"], record["extra_frames"]
    noise = record["action_noise"]
    bar = tqdm(total=episodes * len(task_list), desc="collect", disable=not progress)
    for task in task_list:
        policy = ScriptedExpert(task)
        kept = attempts = 0
        with MetaWorldEnv(task, seed=seed, image_size=image_size, camera=camera) as env:
            while kept < episodes and attempts < max_attempts:
                ep_seed = seed + attempts
                attempts += 1
                ok, frames = _expert_episode(env, policy, ep_seed, extra, noise)
                if not ok:
                    continue
                for f in frames:
                    ds.add_frame(f)
                ds.save_episode()
                record["episodes"].append({"episode_index": len(record["episodes"]),
                                           "task": task, "seed": ep_seed, "length": len(frames)})
                kept += 1
                bar.update(1)
                bar.set_postfix(task=task, expert=f"{kept}/{attempts}")
        per_task[task] = {"kept": kept, "attempts": attempts,
                          "expert_success_rate": kept / attempts, "complete": kept == episodes}
        if kept < episodes:
            warnings.warn(f"{task}: only {kept}/{episodes} successful expert episodes in "
                          f"{attempts} attempts (seeds {seed} .. {seed + attempts - 1})",
                          stacklevel=3)
    bar.close()
    return per_task


def collect(root: str | Path, tasks: str | list[str] = "push-v3", episodes: int = 50,
            seed: int = 0, image_size: int | None = None, fps: int = 80,
            max_attempts_factor: int = 3, progress: bool = True, camera: str = "corner",
            extra_frames: int = 5, repo_id: str | None = None, action_noise: float = 0.0
            ) -> dict[str, Any]:
    """Record ``episodes`` successful expert demonstrations per task into ``root``.

    Args:
        root: new (or empty) folder for the dataset.
        tasks: task name, comma-separated names, a list, or ``"mt10"``.
        episodes: successful episodes wanted per task.
        seed: first configuration seed; task attempts use ``seed .. seed + episodes *
            max_attempts_factor - 1``, which must stay below :data:`~.sim.EVAL_SEED_OFFSET`.
        image_size: also record ``observation.images.<camera>`` at this square size.
        fps: frame rate stored in the dataset (Meta-World's control rate is 80 Hz: 5 MuJoCo
            steps of 2.5 ms); it only sets timestamps ``frame_index / fps``.
        max_attempts_factor: attempts per task are bounded by ``episodes * factor``.
        progress: show a tqdm bar.
        camera: camera of the recorded images.
        extra_frames: frames recorded after the first success.
        repo_id: LeRobot repo id stored in the metadata (default :func:`default_repo_id`).
        action_noise: DART noise std on the executed motion actions (labels stay clean).

    Returns:
        Summary: ``root``, ``repo_id``, per task ``{"kept", "attempts", "expert_success_rate",
        "complete"}``, ``episodes``, ``frames``, ``seconds`` and ``seconds_per_episode``.
    """
    task_list = resolve_tasks(tasks)
    if episodes < 1 or max_attempts_factor < 1 or extra_frames < 0:
        raise ValueError("need episodes >= 1, max_attempts_factor >= 1 and extra_frames >= 0")
    if not 0.0 <= action_noise < float("inf"):
        raise ValueError(f"action_noise must be a finite value >= 0, got {action_noise}")
    max_attempts = episodes * max_attempts_factor
    if seed < 0 or seed + max_attempts > EVAL_SEED_OFFSET:
        raise ValueError(f"collection seeds {seed} .. {seed + max_attempts - 1} must lie in "
                         f"[0, {EVAL_SEED_OFFSET}): seeds >= {EVAL_SEED_OFFSET} are evaluation's")
    root = Path(root)
    _check_root(root)
    repo_id = repo_id or default_repo_id(task_list)
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # slow import: after checks

    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    ds = LeRobotDataset.create(repo_id=repo_id, fps=fps, features=features(image_size, camera),
                               root=tmp, robot_type="sawyer", use_videos=False,
                               video_backend="pyav")  # no videos; skips torchcodec probing
    record: dict[str, Any] = {"env": "metaworld", "fps": fps, "image_size": image_size,
                              "camera": camera, "shadows": False, "extra_frames": extra_frames,
                              "action_noise": float(action_noise), "seed": int(seed),
                              "episodes_per_task": int(episodes),
                              "episodes": [],
                              "instructions": {t: instruction(t) for t in task_list}}
    try:
        with quiet_datasets():
            per_task = _record(ds, record, task_list, episodes, seed, max_attempts, progress)
            ds.finalize()
        n_eps = len(record["episodes"])
        if n_eps == 0:
            raise RuntimeError(f"the expert succeeded in no episode of {task_list}")
        (tmp / COLLECTION_FILE).write_text(json.dumps(record, indent=1))
        if root.exists():
            root.rmdir()  # empty (checked above)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    return {"root": str(root), "repo_id": repo_id, "tasks": per_task, "episodes": n_eps,
            "frames": sum(e["length"] for e in record["episodes"]), "seconds": seconds,
            "seconds_per_episode": seconds / n_eps}


_CLI_KEYS: dict[str, type] = {
    "env": str, "task": str, "tasks": str, "episodes": int, "root": str, "seed": int,
    "image_size": int, "fps": int, "max_attempts_factor": int, "camera": str,
    "extra_frames": int, "repo_id": str, "action_noise": float,
}


def parse_args(argv: list[str]) -> dict[str, Any]:
    """``key=value`` strings -> typed collect kwargs (ValueError for a bad key or value)."""
    from toolkit.kv import parse_key_values

    out = parse_key_values(argv, _CLI_KEYS, "data collect")
    env = out.pop("env", "metaworld")
    if env != "metaworld":
        raise ValueError(f"env={env!r}: only env=metaworld is supported")
    if "task" in out and "tasks" in out:
        raise ValueError("give task= or tasks=, not both")
    out["tasks"] = out.pop("task", out.pop("tasks", "push-v3"))
    if "root" not in out:
        raise ValueError("missing root=DIR (a new folder for the dataset)")
    return out


def collect_main(argv: list[str]) -> int:
    """CLI: ``env=metaworld task=push-v3 episodes=50 root=DIR [seed=0] [image_size=64] ...``;
    prints the summary as JSON and returns 0 (ValueError on bad arguments)."""
    kwargs = parse_args(argv)
    summary = collect(**kwargs)
    print(json.dumps(summary, indent=1))
    return 0
