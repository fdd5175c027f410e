"""Inference API of trained action-chunk policies, with real-time chunking.

    policy = Policy.from_pretrained("runs/pusht_flow", device="cpu")
    policy.reset()
    action = policy.select_action(obs)        # (A,) for one observation, (B, A) batched
    chunk = policy.predict_action_chunk(obs)  # (B, H, A) unnormalised

Observations are dicts of numpy arrays / tensors: ``"observation.state"`` (S,) or (B, S),
``"observation.images.<cam>"`` as ``(h, w, 3)`` uint8 or ``(3, h, w)`` float in [0, 1]
(batched with a leading B), and ``"task"`` (str or list[str]) for instruction policies.
Bad observations raise naming the key: NaN / inf, wrong shapes or types, float images outside
``[0, 1]``, integer images outside 0..255; a chunk with NaN / inf actions is never returned.
:meth:`Policy.select_action` keeps a queue of ``n_action_steps`` actions per chunk.

**Real-time chunking** (Black, Galliker & Levine 2025, "Real-Time Execution of Action
Chunking Flow Policies", RTC). With inference delay ``d`` and execution horizon ``s``
(``d <= s <= H - d``), the chunk ``A`` generated at time ``T`` must agree with what the
previous chunk ``A_prev`` (generated at ``T - s``) still has to execute: the target is
``Y_i = A_prev[s + i]`` for ``i < H - s``. It is produced by inpainting with PiGDM-style
guidance (Song et al. 2023) on the flow (``tau = 0`` noise, ``tau = 1`` data, as in RTC;
RTC sec. 4 and Algorithm 1):

    A_hat^1 = A^tau + (1 - tau) v(A^tau, o, tau)          (one-step estimate of the clean chunk)
    v_PiGDM = v + min(beta, (1 - tau) / (tau r_tau^2)) (Y - A_hat^1)^T diag(W) dA_hat^1/dA^tau
    r_tau^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2)
    A^{tau + 1/n} = A^tau + (1/n) v_PiGDM

with the soft mask (RTC, sec. 4.2): ``W_i = 1`` for ``i < d`` (actions executed during the
delay: frozen), ``W_i = c_i (e^{c_i} - 1) / (e - 1)``, ``c_i = (H - s - i) / (H - s - d + 1)``
for ``d <= i < H - s`` (exponentially decaying overlap), ``W_i = 0`` for ``i >= H - s``. The
vector-Jacobian product is one backward pass through the action expert (prefix cached).
:meth:`select_action` simulates the delay synchronously: after a new chunk, the next ``d``
actions still come from the previous chunk (``A_prev[s:s+d]``), then ``A[d:s]``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modalities.actions.task import ACTION, IMAGE, STATE, FlowPolicyTask

__all__ = ["Policy", "FlowPolicy", "rtc_weights", "rtc_guided_sample"]


def rtc_weights(horizon: int, delay: int, exec_horizon: int) -> Tensor:
    """RTC's soft mask ``W (H,)`` (Black et al. 2025, sec. 4.2; see the module docstring)."""
    h, d, s = int(horizon), int(delay), int(exec_horizon)
    if not 0 <= d <= s <= h - d:
        raise ValueError(f"real-time chunking needs 0 <= inference_delay d <= n_action_steps "
                         f"s <= horizon H - d; got d={d}, s={s}, H={h}")
    i = torch.arange(h, dtype=torch.float64)
    c = (h - s - i) / (h - s - d + 1)
    w = torch.where(i < h - s, c * torch.expm1(c) / math.expm1(1.0), torch.zeros_like(i))
    return torch.where(i < d, torch.ones_like(i), w).float()


def rtc_guided_sample(velocity, x0: Tensor, y: Tensor, w: Tensor, steps: int = 10,
                      beta: float = 5.0) -> Tensor:
    """Guided Euler inpainting of ``y`` (B, H, A) under mask ``w`` (H,) (RTC, Algorithm 1).

    Args:
        velocity: ``v(x (B,H,A), tau (B,)) -> (B,H,A)``, differentiable in ``x``.
        x0: noise ``(B, H, A)``. steps: Euler steps n. beta: guidance-weight clip.
    """
    x, wm = x0, w.to(x0)[None, :, None]  # (1, H, 1)
    for k in range(steps):
        tau = k / steps
        tt = torch.full((x.shape[0],), tau, dtype=x.dtype, device=x.device)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            v = velocity(xg, tt)  # (B, H, A)
            a1 = xg + (1.0 - tau) * v  # A_hat^1 = A^tau + (1 - tau) v (RTC, sec. 4)
            err = (y - a1).detach() * wm  # (Y - A_hat^1)^T diag(W)
            # VJP err^T dA_hat^1/dA^tau as the gradient of <A_hat^1, err> (err held fixed)
            (g,) = torch.autograd.grad((a1 * err).sum(), xg)
        r2 = (1.0 - tau) ** 2 / (tau**2 + (1.0 - tau) ** 2)  # r_tau^2 (PiGDM variance)
        gw = beta if tau == 0.0 else min(beta, (1.0 - tau) / (tau * r2))
        x = x + (v.detach() + gw * g) / steps  # Euler step on v_PiGDM (RTC, Algorithm 1)
    return x.detach()


def _tensor(key: str, v: Any) -> Tensor:
    """``v`` as a real-valued tensor; strings, objects, complex or bool values raise."""
    try:
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        elif not isinstance(v, Tensor):
            v = torch.as_tensor(v)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"observation {key!r}: expected an array of numbers, got "
                        f"{type(v).__name__} ({' '.join(str(e).split())[:120]})") from None
    if v.is_complex() or v.dtype == torch.bool:
        raise TypeError(f"observation {key!r}: expected real numbers, got dtype {v.dtype}")
    return v


def _image(k: str, v: Tensor) -> Tensor:
    """Camera image(s) -> float ``(B, 3, h, w)`` in ``[0, 1]``: uint8 (or other integers in
    0..255) are divided by 255; floats must already lie in ``[0, 1]``."""
    if v.ndim not in (3, 4) or 3 not in (v.shape[-1], v.shape[-3]):
        raise ValueError(f"observation {k!r} must be (h, w, 3) / (3, h, w) (or batched), got "
                         f"{tuple(v.shape)}")
    v = v[None] if v.ndim == 3 else v
    if v.shape[-1] == 3 and v.shape[1] != 3:
        v = v.permute(0, 3, 1, 2)  # (B, 3, h, w)
    if min(v.shape[-2:]) < 1 or v.shape[0] < 1:
        raise ValueError(f"observation {k!r} is empty: shape {tuple(v.shape)} (B, 3, h, w)")
    if not v.is_floating_point():
        lo, hi = int(v.min()), int(v.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"observation {k!r}: integer pixels must lie in 0..255, got "
                             f"{lo}..{hi}")
        return v.float() / 255.0
    v = v.float()
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"observation {k!r} contains NaN or inf")
    lo, hi = float(v.min()), float(v.max())
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(f"observation {k!r}: float pixels must lie in [0, 1], got "
                         f"{lo:.4g}..{hi:.4g} (pass uint8 0..255 or divide by 255)")
    return v.clamp(0.0, 1.0)


class Policy:
    """A trained flow (pi0-style) or diffusion (DP) chunk policy (see the module docstring).

    Args:
        model / task: from :func:`toolkit.train.checkpoint.load_run`.
        n_action_steps: actions executed per chunk, RTC's ``s`` (default ``H // 2``).
        steps / solver: sampler overrides (default: the task's, e.g. Euler 10 / DDIM 10).
        rtc: real-time chunking (flow policies only; guided Euler with ``steps`` steps).
        inference_delay: ``d`` steps; without ``rtc`` it simulates naive asynchronous
            execution (the delay replays ``A_prev[s:s+d]``, then the unguided chunk from
            index ``d``), the baseline RTC is compared with.
        rtc_beta: guidance-weight clip beta. seed: noise seed. device: where to run.
    """

    def __init__(self, model: torch.nn.Module, task: Any, *, n_action_steps: int | None = None,
                 steps: int | None = None, solver: str | None = None, rtc: bool = False,
                 inference_delay: int = 0, rtc_beta: float = 5.0, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        self.model, self.task = model.to(device).eval(), task
        self.net, self.device = model.net, torch.device(device)
        self.horizon, self.action_dim = int(self.net.horizon), int(self.net.action_dim)
        self.n_action_steps = int(n_action_steps or max(1, self.horizon // 2))
        if not 1 <= self.n_action_steps <= self.horizon:
            raise ValueError(f"n_action_steps must be in [1, {self.horizon}], got "
                             f"{self.n_action_steps}")
        self.steps, self.solver = steps, solver
        self.rtc, self.delay, self.beta = bool(rtc), int(inference_delay), float(rtc_beta)
        if self.rtc and not isinstance(task, FlowPolicyTask):
            raise ValueError("real-time chunking needs a flow policy (FlowPolicyTask), got "
                             f"{type(task).__name__}")
        if self.rtc or self.delay:
            rtc_weights(self.horizon, self.delay, self.n_action_steps)  # validates d, s, H
        self.generator = torch.Generator().manual_seed(int(seed))
        self._latency: list[float] = []
        self.reset()

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, device: str = "cpu",
                        checkpoint: str = "latest", use_ema: bool = True, **kw: Any) -> Policy:
        """Load a run directory written by the trainer (either policy task)."""
        from toolkit.train.checkpoint import load_run

        model, task, _, _ = load_run(run_dir, checkpoint, use_ema, map_location=device)
        if not hasattr(task, "predict_chunk"):
            raise ValueError(f"run {str(run_dir)!r} is not an action-policy run (task "
                             f"{type(task).__name__})")
        return cls(model, task, device=device, **kw)

    def reset(self) -> None:
        """Forget queued actions and the previous chunk (call at every episode start)."""
        self._queue: deque[Tensor] = deque()
        self._prev: Tensor | None = None  # last normalised chunk (B, H, A)
        self._prev_actions: Tensor | None = None  # the same, unnormalised
        self._batch: int | None = None

    @property
    def last_chunk(self) -> Tensor | None:
        """The last chunk :meth:`select_action` generated, unnormalised ``(B, H, A)``."""
        return self._prev_actions

    @property
    def clipped(self) -> dict[str, int]:
        """Actions clamped to the data range so far (with ``clip_actions`` in the task)."""
        return dict(self.model.normalizer.clipped)

    @property
    def latency(self) -> dict[str, float]:
        """Per-chunk inference time in ms: count, mean, p50, p95, max, last."""
        if not self._latency:
            return {"count": 0}
        a = np.asarray(self._latency)
        return {"count": len(a), "mean_ms": float(a.mean()), "p50_ms": float(np.median(a)),
                "p95_ms": float(np.percentile(a, 95)), "max_ms": float(a.max()),
                "last_ms": float(a[-1])}

    # ------------------------------------------------------------------ observations
    def _batchify(self, obs: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        if not isinstance(obs, Mapping):
            raise TypeError(f"obs must be a dict, got {type(obs).__name__}")
        need = [STATE] if getattr(self.net, "state_tokens", 1) else []
        need += [IMAGE + c for c in getattr(self.net, "cameras", ())]
        need += ["task"] if self.task.use_text else []
        missing = [k for k in need if k not in obs]
        if missing:
            raise KeyError(f"observation is missing {missing}; got keys {sorted(obs)}")
        out, sizes = {}, {}
        for k in need:
            if k == "task":
                v = obs[k]
                out[k] = [v] if isinstance(v, str) else list(v) if isinstance(
                    v, list | tuple) else None
                if out[k] is None or not all(isinstance(s, str) for s in out[k]):
                    raise TypeError(f"observation 'task' must be a str or a list of str, got "
                                    f"{v!r:.80}")
                if not out[k]:
                    raise ValueError("observation 'task' is an empty list")
                sizes[k] = (len(out[k]), isinstance(v, str))
                continue
            v = _tensor(k, obs[k])
            if k == STATE:
                s = self.net.state_dim
                if v.ndim not in (1, 2) or v.shape[-1] != s or v.ndim == 2 and not len(v):
                    raise ValueError(f"observation {k!r} must be ({s},) or (B, {s}) with "
                                     f"B >= 1, got {tuple(v.shape)}")
                single, v = v.ndim == 1, v.float().reshape(-1, s)
                if not torch.isfinite(v).all():
                    raise ValueError(f"observation {k!r} contains NaN or inf (or values "
                                     "beyond the float32 range)")
            else:
                single, v = v.ndim == 3, _image(k, v)
            out[k], sizes[k] = v.contiguous(), (v.shape[0], single)
        if len({b for b, _ in sizes.values()}) > 1:
            raise ValueError(f"observation entries disagree on the batch size: "
                             f"{ {k: b for k, (b, _) in sizes.items()} }")
        b, single = next(iter(sizes.values()))
        if "task" in out and b > 1 and len(out["task"]) == 1:
            out["task"] = out["task"] * b
        return out, all(s for k, (_, s) in sizes.items() if k != "task") and b == 1

    # ------------------------------------------------------------------ inference
    def _chunk(self, batch: dict[str, Any], prev: Tensor | None, delay: int) -> Tensor:
        """Normalised chunk (B, H, A); RTC-guided towards ``prev`` when given."""
        task, m = self.task, self.model
        b = next(len(v) for v in batch.values())
        x0 = torch.randn(b, self.horizon, self.action_dim, generator=self.generator)
        x0 = x0.to(self.device)
        t0 = time.perf_counter()
        if prev is None:
            with torch.inference_mode():
                obs = task.model_obs(m, batch)
                x = task.sample_normalized(m, obs, x0, self.steps, self.solver)
        else:
            s = self.n_action_steps
            y = torch.zeros_like(prev)
            y[:, : self.horizon - s] = prev[:, s:]  # Y_i = A_prev[s + i]
            w = rtc_weights(self.horizon, delay, s).to(self.device)
            with torch.no_grad():
                v = task.velocity_field(m, task.model_obs(m, batch))
            x = rtc_guided_sample(v, x0, y, w, int(self.steps or task.sampler.steps), self.beta)
        self._latency.append((time.perf_counter() - t0) * 1e3)
        return x

    def predict_action_chunk(self, obs: Mapping[str, Any], prev_chunk: Tensor | None = None,
                             inference_delay: int | None = None) -> Tensor:
        """Unnormalised chunks ``(B, H, A)``; with ``prev_chunk`` (unnormalised, generated
        ``n_action_steps`` earlier) the overlap is inpainted by RTC guidance."""
        batch, _ = self._batchify(obs)
        prev = None
        if prev_chunk is not None:
            if not isinstance(self.task, FlowPolicyTask):
                raise ValueError("real-time chunking needs a flow policy (FlowPolicyTask)")
            p = _tensor("prev_chunk", prev_chunk).float()
            b = next(len(v) for v in batch.values())
            want = (b, self.horizon, self.action_dim)
            if tuple(p.shape) != want:
                raise ValueError(f"prev_chunk must be (B, H, A) = {want}, got {tuple(p.shape)}")
            if not bool(torch.isfinite(p).all()):
                raise ValueError("prev_chunk contains NaN or inf")
            prev = self.model.normalizer.normalize(ACTION, p.to(self.device))
        d = self.delay if inference_delay is None else int(inference_delay)
        x = self._chunk(batch, prev, d)
        return self._finite(self.model.normalizer.unnormalize(ACTION, x).float().cpu())

    @staticmethod
    def _finite(chunk: Tensor) -> Tensor:
        """``chunk``, refused when the network produced NaN / inf (never sent to a robot)."""
        if not bool(torch.isfinite(chunk).all()):
            bad = int((~torch.isfinite(chunk)).flatten(1).any(1).sum())
            raise ValueError(f"the policy produced NaN or inf actions for {bad} of "
                             f"{len(chunk)} observation(s); check the observation values "
                             "(e.g. states far outside the training range) and the weights")
        return chunk

    def select_action(self, obs: Mapping[str, Any]) -> Tensor:
        """The next action: ``(A,)`` for a single observation, ``(B, A)`` for a batch."""
        batch, single = self._batchify(obs)
        b = next(len(v) for v in batch.values())
        if self._batch is not None and b != self._batch:
            raise ValueError(f"batch size changed from {self._batch} to {b}; call reset()")
        self._batch = b
        if not self._queue:
            s, d, prev = self.n_action_steps, self.delay, self._prev
            x = self._chunk(batch, prev if self.rtc else None, d)  # (B, H, A) normalised
            acts = self._finite(self.model.normalizer.unnormalize(ACTION, x).float().cpu())
            if prev is not None and d > 0:  # the delay: A_prev[s : s + d] run meanwhile
                old = self._prev_actions
                steps = [old[:, s + j] for j in range(d)] + [acts[:, j] for j in range(d, s)]
            else:
                steps = [acts[:, j] for j in range(s)]
            self._queue.extend(steps)
            self._prev, self._prev_actions = x, acts
        a = self._queue.popleft()  # (B, A)
        return a[0] if single else a


FlowPolicy = Policy
