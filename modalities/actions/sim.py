"""Meta-World simulation: an observation-dict environment, scripted experts, rollouts, evaluation.

Meta-World (Yu et al., "Meta-World: A Benchmark and Evaluation for Multi-Task and Meta
Reinforcement Learning", CoRL 2019; v3 API of ``metaworld==3.1.1``, McLean et al., 2025) is a
Sawyer arm in MuJoCo with 50 manipulation tasks; MT10 is the ten-task subset in
:data:`MT10_TASKS`. Actions are 4-d in ``[-1, 1]``: an end-effector ``(dx, dy, dz)`` mocap
displacement (scaled by 1/100 m) and a gripper effort.

**How configurations vary (and why evaluation is held out).** ``gymnasium.make("Meta-World/MT1",
env_name=task, seed=s)`` pre-samples a pool of 50 configurations ("tasks": a ``rand_vec`` of
object start and goal positions, drawn from the task's ``_random_reset_space`` with the global
numpy RNG seeded by ``s``, rejecting degenerate ones, e.g. push goals within 15 cm of the puck),
then every ``reset()`` picks one of those 50 at random. Training and testing from one MT1 pool
therefore reuse the same 50 configurations. :class:`MetaWorldEnv` instead turns the pool off and
makes every configuration a deterministic function of the *episode* seed: ``reset(seed)``
re-seeds the environment's generator (``env.seed(seed)``) and lets Meta-World's own
``reset_model`` draw a fresh ``rand_vec`` from it (``seeded_rand_vec=True``, as LeRobot's
Meta-World wrapper does), with Meta-World's rejection rules. The draws are continuous, so
distinct seeds give distinct configurations; collection uses seeds ``seed ..
seed + episodes * max_attempts_factor - 1 < EVAL_SEED_OFFSET`` and :func:`evaluate` seeds
``>= EVAL_SEED_OFFSET``, so the two sets never share a seed and evaluation configurations are
held out (``MetaWorldEnv.configuration`` exposes the ``rand_vec`` for checks).

**Rendering.** Images are MuJoCo offscreen renders (gymnasium's ``MujocoRenderer``). On a
headless Linux machine :func:`_import_sim` sets ``MUJOCO_GL=egl`` unless it is already set
(read by gymnasium when it opens the GL context); ``MUJOCO_GL=osmesa`` (``apt-get install
libosmesa6``) is the CPU fallback. Meta-World's cameras are mounted upside down, so frames are
rotated by 180 degrees (LeRobot does the same). Shadows and reflections are switched off by
default (``shadows=False``): with software OpenGL (llvmpipe) the 4096^2 shadow map dominates,
~190 ms -> ~21 ms per 64x64 frame, while the scene looks the same apart from the shadows.
"""

from __future__ import annotations

import difflib
import math
import os
import subprocess
import sys
import time
import warnings
from typing import Any, Protocol

import numpy as np

MT10_TASKS: list[str] = [
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
    "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
]
TASK_INSTRUCTIONS: dict[str, str] = {
    "reach-v3": "reach the goal position with the gripper",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "door-open-v3": "open the door",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}
STATE_DIM = 39
ACTION_DIM = 4
EVAL_SEED_OFFSET = 100_000  # evaluation seeds start here; collection seeds stay below
WILSON_Z95 = 1.959963984540054  # Phi^{-1}(0.975)


def instruction(task: str) -> str:
    """Natural-language instruction of a task (MT10: :data:`TASK_INSTRUCTIONS`; other tasks:
    the task name without its version, e.g. ``"sweep-into-v3"`` -> ``"sweep into"``)."""
    return TASK_INSTRUCTIONS.get(task, task.rsplit("-v", 1)[0].replace("-", " "))


def _import_sim() -> tuple[Any, Any]:
    """``(gymnasium, metaworld)``; on headless Linux defaults ``MUJOCO_GL`` to ``egl``
    (gymnasium's renderer reads it when it creates its GL context, so this works even when
    ``mujoco`` was imported before; without it gymnasium would try GLFW, which needs X11)."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import gymnasium
        import metaworld
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise ImportError("Meta-World is not installed: pip install 'toolkit[robot]' "
                          "(metaworld==3.1.1, mujoco, gymnasium)") from e
    return gymnasium, metaworld


def task_names() -> list[str]:
    """All Meta-World v3 task names (50)."""
    _, metaworld = _import_sim()
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return list(ALL_V3_ENVIRONMENTS)


def check_task(task: str) -> str:
    """``task`` if it is a Meta-World v3 task name, else ValueError naming the closest ones."""
    names = task_names()
    if task not in names:
        close = difflib.get_close_matches(task, names, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown Meta-World task {task!r}.{hint} Valid tasks: {', '.join(names)}")
    return task


def probe_rendering(backends: tuple[str, ...] = ("egl", "osmesa"), timeout: float = 60.0
                    ) -> str | None:
    """First ``MUJOCO_GL`` backend of ``backends`` that renders a tiny scene in a fresh
    subprocess (the backend is fixed at ``import mujoco``), or ``None`` if none works."""
    xml = ('<mujoco><worldbody><light pos="0 0 1"/><geom type="sphere" size=".1"/>'
           "</worldbody></mujoco>")
    code = (f"import mujoco; m = mujoco.MjModel.from_xml_string({xml!r}); "
            "r = mujoco.Renderer(m, 8, 8); assert r.render().shape == (8, 8, 3); r.close()")
    for backend in backends:
        env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
        try:
            res = subprocess.run([sys.executable, "-c", code], env=env, timeout=timeout,
                                 capture_output=True)
        except subprocess.TimeoutExpired:
            continue
        if res.returncode == 0:
            return backend
    return None


class Policy(Protocol):
    """What :func:`rollout` needs: ``reset()`` per episode, ``select_action(obs) -> (A,)``."""

    def reset(self) -> None: ...

    def select_action(self, obs: dict[str, Any]) -> np.ndarray: ...


class MetaWorldEnv:
    """One Meta-World task with observation dicts and per-episode seeded configurations.

    Observations (dict):

    * ``"observation.state"``: float32 ``(39,)``: ``[0:3]`` end-effector xyz, ``[3]`` gripper
      opening in ``[0, 1]``, ``[4:18]`` object 1 xyz + quaternion and object 2 xyz + quaternion
      (zero-padded when a task has fewer objects), ``[18:36]`` the same 18 values one step
      earlier (equal to ``[0:18]`` right after reset), ``[36:39]`` goal xyz (MT1 makes the goal
      observable; the scripted experts read it).
    * ``"observation.images.<camera>"``: uint8 ``(H, W, 3)``, only when ``image_size`` is set.
    * ``"task"``: the instruction string (:func:`instruction`).

    Args:
        task: Meta-World v3 task name, e.g. ``"push-v3"``.
        seed: seed of ``gymnasium.make("Meta-World/MT1", seed=...)``: only decides the
            configurations of ``reset(None)``; ``reset(seed)`` fixes the configuration.
        image_size: render square ``image_size`` images each step (None: state only).
        camera: Meta-World camera name (``corner``, ``corner2``, ``corner3``, ``topview``, ...).
        shadows: render shadows and reflections (Meta-World's look; several times slower).
    """

    def __init__(self, task: str, seed: int = 0, image_size: int | None = None,
                 camera: str = "corner", shadows: bool = False) -> None:
        gym, _ = _import_sim()
        self.task = check_task(task)
        self.instruction = instruction(task)
        kwargs: dict[str, Any] = {}
        if image_size is not None:
            if image_size < 8:
                raise ValueError(f"image_size must be >= 8, got {image_size}")
            kwargs = dict(render_mode="rgb_array", camera_name=camera, width=image_size,
                          height=image_size)
        self._env = gym.make("Meta-World/MT1", env_name=task, seed=seed,
                             disable_env_checker=True, **kwargs)
        self._env.reset()  # sets one MT1 task: goal observability + task kwargs
        self._env.get_wrapper_attr("toggle_sample_tasks_on_reset")(False)
        u = self._env.unwrapped
        u._freeze_rand_vec = False  # draw a fresh configuration at every reset ...
        u.seeded_rand_vec = True  # ... from u.np_random, which reset(seed) re-seeds
        self.max_episode_steps = int(u.max_path_length)  # 500
        self.image_size = image_size
        self.camera = camera
        self.image_key = f"observation.images.{camera}" if image_size is not None else None
        self.shadows = shadows
        self._viewer_ready = False
        if image_size is not None:
            cams = [u.model.camera(i).name for i in range(u.model.ncam)]
            if camera not in cams:
                self.close()
                raise ValueError(f"unknown camera {camera!r}; Meta-World cameras: {cams}")
        self._steps = 0

    @property
    def configuration(self) -> np.ndarray:
        """The current episode's ``rand_vec`` (object start and goal positions), float64."""
        return np.array(self._env.unwrapped._last_rand_vec, dtype=np.float64)

    def render(self) -> np.ndarray:
        """uint8 ``(H, W, 3)`` image of the current state (RuntimeError if rendering fails)."""
        if self.image_size is None:
            raise RuntimeError("MetaWorldEnv was built without image_size; nothing to render")
        try:
            if not self._viewer_ready:  # gymnasium creates the GL context on first use
                import mujoco

                scn = self._env.unwrapped.mujoco_renderer._get_viewer("rgb_array").scn
                for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
                    scn.flags[flag] = int(self.shadows)
                self._viewer_ready = True
            img = self._env.render()
        except Exception as e:
            backend = os.environ.get("MUJOCO_GL", "<unset>")
            raise RuntimeError(
                f"MuJoCo offscreen rendering failed (MUJOCO_GL={backend}): {e!r}. Install a "
                "headless OpenGL (EGL: apt-get install libegl1; OSMesa: apt-get install "
                "libosmesa6) and set MUJOCO_GL=egl or MUJOCO_GL=osmesa before starting Python, "
                "or collect without images (image_size=None).") from e
        return np.ascontiguousarray(np.flip(img, (0, 1)))  # cameras are mounted upside down

    def _obs(self, raw: np.ndarray) -> dict[str, Any]:
        obs: dict[str, Any] = {"observation.state": np.asarray(raw, dtype=np.float32)}
        if self.image_key is not None:
            obs[self.image_key] = self.render()
        obs["task"] = self.instruction
        return obs

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        """Start an episode; ``seed`` fixes the object/goal configuration (module docstring)."""
        if seed is not None:
            self._env.unwrapped.seed(int(seed))
        raw, _ = self._env.reset()
        self._steps = 0
        return self._obs(raw)

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        """Apply a 4-d action (clipped to ``[-1, 1]``).

        Returns:
            ``(obs, reward, done, info)``; ``info["success"]`` is Meta-World's success flag,
            ``done`` is ``success or steps == max_episode_steps``. Stepping on after a success
            is allowed up to ``max_episode_steps``.
        """
        if hasattr(action, "detach"):
            action = action.detach().cpu().numpy()
        a = np.asarray(action, dtype=np.float32).reshape(-1)  # (4,)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"action must have {ACTION_DIM} values, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"non-finite action {a}")
        if self._steps >= self.max_episode_steps:
            raise RuntimeError(f"episode is over ({self.max_episode_steps} steps); call reset()")
        raw, reward, terminated, truncated, info = self._env.step(np.clip(a, -1.0, 1.0))
        self._steps += 1
        info = dict(info)
        info["success"] = bool(info.get("success", 0.0))
        info["steps"] = self._steps
        done = info["success"] or bool(terminated) or bool(truncated)
        return self._obs(raw), float(reward), done, info

    def close(self) -> None:
        """Release the simulator (and its GL context)."""
        self._env.close()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ScriptedExpert:
    """A ``metaworld.policies`` scripted expert behind the :class:`Policy` interface."""

    def __init__(self, task: str) -> None:
        _import_sim()
        from metaworld.policies import ENV_POLICY_MAP

        if task not in ENV_POLICY_MAP:
            close = difflib.get_close_matches(task, list(ENV_POLICY_MAP), n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"no scripted expert for task {task!r}.{hint} "
                             f"Valid tasks: {', '.join(ENV_POLICY_MAP)}")
        self.task = task
        self.policy = ENV_POLICY_MAP[task]()

    def reset(self) -> None:
        """The experts are memoryless; nothing to reset."""

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        """float32 ``(4,)`` action in ``[-1, 1]`` from ``obs["observation.state"]``."""
        state = np.asarray(obs["observation.state"], dtype=np.float64)
        with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips anyway
            warnings.simplefilter("ignore", UserWarning)
            a = self.policy.get_action(state)
        return np.clip(np.asarray(a, dtype=np.float32), -1.0, 1.0)


def expert(task: str) -> ScriptedExpert:
    """The scripted expert of ``task`` (ValueError listing valid names for a bad one)."""
    return ScriptedExpert(task)


def rollout(policy: Policy, env: MetaWorldEnv, seed: int, max_steps: int | None = None
            ) -> dict[str, Any]:
    """One episode from configuration ``seed``, stopping at the first success.

    Returns:
        ``{"seed", "success": bool, "steps": int, "latencies": [s per select_action call]}``.
    """
    limit = env.max_episode_steps if max_steps is None else min(max_steps, env.max_episode_steps)
    policy.reset()
    obs = env.reset(seed)
    latencies: list[float] = []
    success, steps = False, 0
    while steps < limit:
        t0 = time.perf_counter()
        action = policy.select_action(obs)
        latencies.append(time.perf_counter() - t0)
        obs, _, done, info = env.step(action)
        steps += 1
        if info["success"]:
            success = True
            break
        if done:
            break
    return {"seed": int(seed), "success": success, "steps": steps, "latencies": latencies}


def wilson_interval(successes: int, n: int, z: float = WILSON_Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (E. B. Wilson, "Probable inference, the
    law of succession, and statistical inference", JASA 22(158):209-212, 1927).

    With ``p = k / n``::

        centre = (p + z^2 / (2n)) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))

    Unlike the Wald interval it stays inside ``[0, 1]`` and is not degenerate at ``k = 0`` or
    ``k = n`` (e.g. ``k = n``: ``[n / (n + z^2), 1]``). ``n = 0`` gives ``(0, 1)``.
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate(policy: Policy, task: str, episodes: int = 50, seed_offset: int = EVAL_SEED_OFFSET,
             image_size: int | None = None, progress: bool = True, camera: str = "corner",
             max_steps: int | None = None) -> dict[str, Any]:
    """Success rate of ``policy`` on ``episodes`` held-out configurations of ``task``.

    Episode ``i`` uses seed ``seed_offset + i``; ``seed_offset`` must be ``>=``
    :data:`EVAL_SEED_OFFSET` so that no evaluation seed is a collection seed (module docstring).

    Returns:
        dict with ``task``, ``episodes``, ``successes``, ``success_rate``, ``ci95`` (Wilson,
        :func:`wilson_interval`), ``results`` (per episode: seed, success, steps, mean latency
        in ms), ``latency_ms`` (``mean``, ``p50``, ``p95`` over all ``select_action`` calls),
        ``episodes_per_s`` and ``seconds``.
    """
    from tqdm.auto import tqdm

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if seed_offset < EVAL_SEED_OFFSET:
        raise ValueError(f"seed_offset={seed_offset} would reuse collection seeds "
                         f"(0 .. {EVAL_SEED_OFFSET - 1}); use seed_offset >= {EVAL_SEED_OFFSET}")
    env = MetaWorldEnv(task, seed=seed_offset, image_size=image_size, camera=camera)
    results, latencies, successes = [], [], 0
    t0 = time.perf_counter()
    try:
        bar = tqdm(range(episodes), desc=f"eval {task}", disable=not progress, leave=False)
        for i in bar:
            r = rollout(policy, env, seed_offset + i, max_steps=max_steps)
            successes += int(r["success"])
            latencies.extend(r["latencies"])
            results.append({"seed": r["seed"], "success": r["success"], "steps": r["steps"],
                            "latency_ms": 1e3 * float(np.mean(r["latencies"]))})
            bar.set_postfix(success=f"{successes}/{i + 1}")
    finally:
        env.close()
    seconds = time.perf_counter() - t0
    lat = 1e3 * np.asarray(latencies, dtype=np.float64)  # (total steps,) ms
    return {
        "task": task, "episodes": episodes, "successes": successes,
        "success_rate": successes / episodes, "ci95": wilson_interval(successes, episodes),
        "results": results,
        "latency_ms": {"mean": float(lat.mean()), "p50": float(np.percentile(lat, 50)),
                       "p95": float(np.percentile(lat, 95))},
        "episodes_per_s": episodes / seconds, "seconds": seconds,
    }
