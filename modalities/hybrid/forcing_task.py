"""Diffusion Forcing task: per-token noise levels in a causal transformer (and two baselines).

Chen et al. 2024, "Diffusion Forcing: Next-token Prediction Meets Full-Sequence Diffusion".
Windows ``x1 (B, L, D)`` of a sequence (pose tokens of rigid bodies, or action vectors; see
:mod:`.forcing_data`) are noised on the linear path ``x_t = t x1 + (1 - t) x0`` with a time
*per token* and a :class:`~toolkit.nn.seq.SeqTransformer` regresses the flow-matching target
``u = x1 - x0`` per token (Lipman et al. 2023, eq. 23; :func:`toolkit.losses.cfm_loss` with
``t (B, L)``). ``noise_mode`` picks how the times are drawn:

* ``independent`` (Diffusion Forcing, Chen et al. 2024, Alg. 1): ``t_l ~ p(t)`` i.i.d. per
  token, causal network. Sampled with any scheduling matrix (:mod:`.forcing`), context clean
  (optionally stabilised).
* ``full_sequence`` (baseline): one ``t`` per window for all tokens, *non-causal* network
  (``model.causal=false``); continuation with the context clamped to its clean values at
  ``t = 1`` (default; measured better here) or by the replacement method
  (``context_mode="replace"``: context noised to the current time each step; Ho et al.
  2022, Sec. 3.1).
* ``teacher_forcing`` (next-token baseline): a clean prefix of ``k ~ U{min_context..L-1}``
  tokens at ``t = 1`` and the rest noisy at one shared ``t``; loss on the noisy tokens only.
  Sampled token by token (``autoregressive`` schedule) after a clean context.

With ``representation="rigid"`` each window is expressed in the frame of its first pose
(:func:`~.forcing_data.canonicalize`) before normalisation by per-dimension statistics that
:meth:`setup` fits on the training data and stores in the model's buffers (so checkpoints
carry them); generated poses are projected back onto SO(3) by Gram-Schmidt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modalities.hybrid import forcing
from modalities.hybrid.forcing_data import (
    RIGID_DIM,
    canonicalize,
    decanonicalize,
    project_tokens,
)
from toolkit import timesteps as timesteps_mod
from toolkit.losses import cfm_loss
from toolkit.train.tasks import SamplerSpec, StepContext, Task

__all__ = ["NOISE_MODES", "REPRESENTATIONS", "DiffusionForcingTask", "ForcingModel"]

NOISE_MODES = ("independent", "full_sequence", "teacher_forcing")
REPRESENTATIONS = ("rigid", "vector")


class ForcingModel(nn.Module):
    """A :class:`~toolkit.nn.seq.SeqTransformer` plus an optional class embedding (its last
    row the null class) and the token statistics ``mean``, ``std`` (buffers, ``(D,)``).

    ``forward(x (B, L, D), t (B, L), y (B,) | None) -> (B, L, D)`` velocity.
    """

    def __init__(self, net: nn.Module, dim: int, num_classes: int = 0) -> None:
        super().__init__()
        self.net, self.num_classes = net, int(num_classes)
        self.classes = nn.Embedding(num_classes + 1, net.pooled_dim) if num_classes else None
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @property
    def max_len(self) -> int:
        """Longest window the backbone's positions cover."""
        return int(self.net.max_len)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Velocity at per-token times ``t``; ``y`` class labels (None: null class)."""
        cond = None
        if self.classes is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long)
            cond = {"pooled": self.classes(y.long().to(x.device))}  # (B, Dp)
        return self.net(x, t, cond=cond)


class DiffusionForcingTask(Task):
    """Diffusion Forcing and its full-sequence / teacher-forcing baselines (module doc).

    Batches are dicts ``{"x": (B, L, D) tokens, "y": (B,) labels (optional)}``.

    Args:
        noise_mode: one of :data:`NOISE_MODES`.
        horizon: training window ``H`` (batches may be shorter, never longer).
        representation: ``"rigid"`` (9-D pose tokens, canonical frames) or ``"vector"``.
        num_classes: class labels conditioning the model (0: unconditional).
        path / t_sampler / t_sampler_kwargs: probability path and training-time sampler.
        min_context: smallest clean prefix in ``teacher_forcing``.
        chunk / schedule / steps / delay / stabilization: rollout defaults for ``independent``
            (:func:`~.forcing.rollout`); the baselines use their own schedule (module doc).
        val_n / val_length: validation rollouts (number and
            generated tokens). stats_items: windows used to fit the normalisation.
        sampler: ignored (accepted for the recipe system).
    """

    prediction = "velocity"

    def __init__(self, noise_mode: str = "independent", horizon: int = 16,
                 representation: str = "rigid", num_classes: int = 0, path: str = "linear",
                 t_sampler: str = "uniform", t_sampler_kwargs: dict[str, Any] | None = None,
                 min_context: int = 1, chunk: int = 8, schedule: str = "pyramid",
                 steps: int = 10, delay: int = 1, stabilization: float = 0.02,
                 val_n: int = 4, val_length: int = 32,
                 stats_items: int = 4096, sampler: SamplerSpec | None = None) -> None:
        from toolkit import paths

        if noise_mode not in NOISE_MODES:
            raise ValueError(f"task.noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if representation not in REPRESENTATIONS:
            raise ValueError(f"task.representation must be one of {REPRESENTATIONS}, got "
                             f"{representation!r}")
        if schedule not in forcing.SCHEDULES:
            raise ValueError(f"task.schedule must be one of {forcing.SCHEDULES}, got "
                             f"{schedule!r}")
        if not 1 <= min_context < horizon or not 1 <= chunk <= horizon:
            raise ValueError(f"need 1 <= task.min_context < horizon and 1 <= task.chunk <= "
                             f"horizon, got {min_context}, {chunk}, horizon={horizon}")
        if min(steps, val_n, val_length, stats_items) < 1 or num_classes < 0 or delay < 0:
            raise ValueError("task.steps, val_n, val_length, stats_items must be >= 1, "
                             "num_classes and delay >= 0")
        if not 0.0 <= stabilization < 1.0:
            raise ValueError(f"task.stabilization must be in [0, 1), got {stabilization}")
        self.noise_mode, self.horizon, self.representation = noise_mode, int(horizon), \
            representation
        self.num_classes, self.min_context = int(num_classes), int(min_context)
        self.path = paths.get(path)
        self.t_sampler = timesteps_mod.get(t_sampler, **dict(t_sampler_kwargs or {}))
        self.chunk, self.schedule, self.steps = int(chunk), schedule, int(steps)
        self.delay, self.stabilization = int(delay), float(stabilization)
        self.val_n, self.val_length, self.stats_items = int(val_n), int(val_length), \
            int(stats_items)
        self.sampler = sampler
        self._val: tuple[Tensor, Tensor | None] | None = None

    # ------------------------------------------------------------------ model and data
    def wrap_model(self, net: nn.Module) -> nn.Module:
        """Backbone + class embedding + statistics; checks causality against the mode."""
        dim = int(getattr(net, "in_dim", 0))
        if self.representation == "rigid" and dim != RIGID_DIM:
            raise ValueError(f"rigid pose tokens have {RIGID_DIM} dims, but model.in_dim={dim}")
        if getattr(net, "out_dim", dim) != dim:
            raise ValueError(f"model.out_dim={net.out_dim} must equal model.in_dim={dim}")
        causal = bool(getattr(net, "causal", False))
        if self.noise_mode == "full_sequence" and causal:
            raise ValueError("noise_mode=full_sequence is the non-causal baseline: set "
                             "model.causal=false")
        if self.noise_mode != "full_sequence" and not causal:
            raise ValueError(f"noise_mode={self.noise_mode} needs a causal network: set "
                             "model.causal=true")
        if self.num_classes and not getattr(net, "pooled_dim", None):
            raise ValueError("task.num_classes > 0 needs model.pooled_dim (class embedding)")
        if self.horizon > int(getattr(net, "max_len", self.horizon)):
            raise ValueError(f"task.horizon={self.horizon} exceeds the model's positional "
                             f"range model.max_len={net.max_len}")
        return ForcingModel(net, dim, self.num_classes)

    def setup(self, dataset: Any, run_dir: Path, model: nn.Module | None = None) -> None:
        """Fit the per-dimension token statistics (canonical frames for poses) on up to
        ``stats_items`` windows and keep a few long sequences for validation rollouts."""
        n = len(dataset)
        idx = torch.linspace(0, n - 1, min(n, self.stats_items)).round().long().unique()
        x = torch.stack([dataset[int(i)]["x"] for i in idx])  # (N, L, D)
        self._check_x(x, model)
        if self.representation == "rigid":
            x, _ = canonicalize(x, x[:, 0])
        flat = x.reshape(-1, x.shape[-1]).double()
        if model is not None:
            model = _core(model)
            model.mean.copy_(flat.mean(0).to(model.mean.dtype))
            model.std.copy_(flat.std(0).clamp_min(1e-4).to(model.std.dtype))
        if hasattr(dataset, "long_sequences"):
            self._val = dataset.long_sequences(self.val_n, min_length=self.horizon)

    def _check_x(self, x: Tensor, model: nn.Module | None) -> None:
        if not isinstance(x, Tensor) or x.ndim != 3:
            raise ValueError(f"DiffusionForcingTask expects x (B, L, D), got "
                             f"{tuple(getattr(x, 'shape', ())) or type(x).__name__}")
        dim = int(_core(model).mean.shape[0]) if model is not None else x.shape[-1]
        if x.shape[-1] != dim:
            raise ValueError(f"tokens have dim {x.shape[-1]}, but the model expects {dim}")
        if x.shape[1] > self.horizon:
            raise ValueError(f"sequence of {x.shape[1]} tokens is longer than the horizon "
                             f"{self.horizon} (the positional range the model is trained on)")

    def encode_window(self, model: nn.Module, raw: Tensor) -> tuple[Tensor, Any]:
        """Raw tokens ``(B, l, D)`` -> network tokens (canonical frame of the first token for
        poses, then normalised) and the state :meth:`decode_window` needs."""
        frame, core = None, _core(model)
        if self.representation == "rigid" and raw.shape[1] > 0:
            raw, frame = canonicalize(raw, raw[:, 0])
        return (raw - core.mean) / core.std, frame

    def decode_window(self, model: nn.Module, tokens: Tensor, frame: Any) -> Tensor:
        """Inverse of :meth:`encode_window` (poses projected onto SO(3))."""
        core = _core(model)
        raw = tokens * core.std + core.mean
        if self.representation == "rigid":
            if frame is not None:
                raw = decanonicalize(raw, frame)
            raw = project_tokens(raw)
        return raw

    # ------------------------------------------------------------------ training
    def loss(self, model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Tensor]:
        """Per-token flow matching with the mode's times (module docstring)."""
        if not isinstance(batch, dict) or "x" not in batch:
            raise ValueError("DiffusionForcingTask expects batches {'x': (B, L, D), 'y': ...}")
        raw = batch["x"]
        self._check_x(raw, model)
        x1, _ = self.encode_window(model, raw)  # (B, L, D)
        b, L, _ = x1.shape
        x0 = ctx.randn(x1.shape, dtype=x1.dtype).to(x1.device)  # (B, L, D)
        mask = None
        if self.noise_mode == "independent":  # Chen et al. 2024, Alg. 1: k_l ~ U per token
            t = ctx.sample_t(self.t_sampler, (b, L), dtype=x1.dtype)  # (B, L)
        else:
            t = ctx.sample_t(self.t_sampler, b, dtype=x1.dtype)[:, None].expand(b, L)
            if self.noise_mode == "teacher_forcing":
                if L <= self.min_context:
                    raise ValueError(f"teacher_forcing needs windows longer than min_context="
                                     f"{self.min_context}, got {L}")
                u = ctx.rand((b,), dtype=torch.float64)
                k = self.min_context + (u * (L - self.min_context)).floor().long()  # (B,)
                pos = torch.arange(L)[None]  # (1, L)
                mask = (pos >= k[:, None]).to(x1.device)  # (B, L): noisy suffix, in the loss
                t = torch.where(mask, t, torch.ones_like(t))  # clean prefix at t = 1
        t = t.to(x1.device)
        cond = {"y": batch["y"]} if self.num_classes and "y" in batch else None
        out = cfm_loss(model, x1, x0, path=self.path, t=t, cond=cond, mask=mask)
        return {"loss": out.loss}

    # ------------------------------------------------------------------ sampling
    def rollout_defaults(self) -> dict[str, Any]:
        """Schedule, context mode and stabilisation this mode is sampled with."""
        if self.noise_mode == "full_sequence":
            return {"schedule": "full_sequence", "context_mode": "clean", "stabilization": 0.0}
        if self.noise_mode == "teacher_forcing":
            return {"schedule": "autoregressive", "context_mode": "clean", "stabilization": 0.0}
        return {"schedule": self.schedule, "context_mode": "clean",
                "stabilization": self.stabilization}

    @torch.no_grad()
    def rollout(self, model: nn.Module, context: Tensor, length: int, *,
                y: Tensor | None = None, generator: torch.Generator | None = None,
                schedule: str | None = None, steps: int | None = None,
                chunk: int | None = None, stabilization: float | None = None,
                context_mode: str | None = None, delay: int | None = None,
                info: dict[str, Any] | None = None) -> Tensor:
        """Continue raw ``context (B, k, D)`` by ``length`` tokens with sliding windows of the
        training horizon (:func:`~.forcing.rollout`); None arguments take the mode's
        defaults (:meth:`rollout_defaults`) and the task's settings."""
        d = self.rollout_defaults()
        p = next(model.parameters())
        context = context.to(p.device, p.dtype)
        cond = {"y": y.to(p.device)} if (y is not None and self.num_classes) else None
        return forcing.rollout(
            model, context, length, self.horizon, chunk=chunk or self.chunk,
            schedule=schedule or d["schedule"], steps=steps or self.steps,
            delay=self.delay if delay is None else delay, path=self.path,
            prediction=self.prediction, generator=generator,
            stabilization=d["stabilization"] if stabilization is None else stabilization,
            context_mode=context_mode or d["context_mode"],
            encode=lambda w: self.encode_window(model, w),
            decode=lambda z, s: self.decode_window(model, z, s), cond=cond, info=info)

    def validate(self, model: nn.Module, step: int, out_dir: Path,
                 generator: torch.Generator) -> dict[str, float]:
        """Roll out ``val_length`` tokens from ``H - chunk`` given ones of a few training
        sequences; PNG of error curves (vs constant velocity) and paths; final errors."""
        from modalities.hybrid.forcing_eval import errors, plot_rollouts

        if self._val is None:
            return {}
        seqs, y = self._val
        k = max(2, self.horizon - self.chunk)
        length = min(self.val_length, seqs.shape[1] - k)
        if length < 1:
            return {}
        pred = self.rollout(model, seqs[:, :k], length, y=y, generator=generator).cpu()
        err = errors(pred[:, k:], seqs[:, k:k + length], self.representation)
        base = errors(_constant_velocity(seqs[:, :k], length, self.representation),
                      seqs[:, k:k + length], self.representation)
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_rollouts(out_dir / f"step_{step:08d}.png", pred, seqs[:, :k + length], k,
                      {"model": err, "constant velocity": base}, self.representation,
                      title=f"{self.noise_mode}, step {step}")
        return {f"val/{key}_final": float(v[:, -1].mean()) for key, v in err.items()}


def _core(model: nn.Module) -> nn.Module:
    """The :class:`ForcingModel` inside a process wrapper (DDP keeps it as ``.module``)."""
    return getattr(model, "module", model)


def _constant_velocity(context: Tensor, length: int, representation: str) -> Tensor:
    """Constant-velocity continuation of raw tokens (the last step repeated)."""
    if representation == "rigid":
        from modalities.hybrid.forcing_data import rigid_to_tokens, tokens_to_rigid
        from modalities.trajectory.metrics import constant_velocity_forecast

        R, x = tokens_to_rigid(context.double())
        Rf, xf = constant_velocity_forecast(R, x, length)
        return rigid_to_tokens(Rf, xf).to(context.dtype)
    m = torch.arange(1, length + 1, dtype=context.dtype)[:, None]  # (F, 1)
    return context[:, -1:] + m * (context[:, -1:] - context[:, -2:-1])  # (B, F, D)
