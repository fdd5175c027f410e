"""Rigid-body trajectory generation by flow matching on SE(3)^T.

A trajectory of T poses is a set of T frames, so the protein machinery applies unchanged
(:class:`~modalities.structure.task.BackboneFlowTask`: geodesic paths on SO(3), linear paths on
R^3, clean-frame prediction, Riemannian Euler through the exponential map), with two
conditionings:

* the **inertia class** ``y`` (:data:`~.sim.CLASS_NAMES`), added to every frame token of the
  :class:`~modalities.structure.nets.FrameNet` and dropped with probability ``cond_drop`` so
  that classifier-free guidance works (Ho & Salimans 2022);
* the **first k poses** (forecasting): with probability ``motif_prob`` a training batch gives
  a prefix of ``k ~ U{1..max_context}`` poses clean (flagged, excluded from the loss, frame
  centred on them); at sampling, :func:`generate_trajectories` holds the given poses fixed.

The network is SE(3)-equivariant, which matches the physics: a torque-free body's motion
rotated or translated as a whole is another valid motion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modalities.structure.sample import sample_frames
from modalities.structure.task import BackboneFlowTask
from modalities.trajectory.sim import CLASS_NAMES
from toolkit import grids
from toolkit.geometry import so3
from toolkit.geometry.se3 import Rigid
from toolkit.train.tasks import StepContext

__all__ = ["RigidTrajectoryTask", "generate_trajectories"]


class RigidTrajectoryTask(BackboneFlowTask):
    """Class- and context-conditional flow matching of pose trajectories.

    Args:
        cond_drop: probability of replacing the class label by the null label in training.
        max_context: largest number of given leading poses in context-conditioned batches.
        guidance: CFG scale on the class at sampling (1 = plain conditional).
        n_frames / dt: trajectory length and frame spacing (for sampling and metrics).
        **kw: :class:`BackboneFlowTask` arguments (``aux_weight`` defaults to 0 here: the
            auxiliary losses are backbone-specific).
    """

    def __init__(self, cond_drop: float = 0.1, max_context: int = 8, guidance: float = 1.0,
                 n_frames: int = 32, dt: float = 0.05, **kw: Any) -> None:
        kw.setdefault("aux_weight", 0.0)
        kw.setdefault("motif_prob", 0.5)
        kw.setdefault("val_lengths", (n_frames,))
        super().__init__(**kw)
        if not 0.0 <= cond_drop <= 1.0:
            raise ValueError(f"RigidTrajectoryTask: cond_drop must be in [0, 1], got {cond_drop}")
        if not 1 <= max_context < n_frames:
            raise ValueError(f"RigidTrajectoryTask: need 1 <= max_context < n_frames, got "
                             f"{max_context} and {n_frames}")
        self.cond_drop, self.max_context, self.guidance = cond_drop, int(max_context), guidance
        self.n_frames, self.dt = int(n_frames), float(dt)

    def model_kwargs(self, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Any]:
        y = batch["cls"].long()  # (B,)
        drop = ctx.bernoulli(self.cond_drop, len(y)).to(y.device)
        return {"y": torch.where(drop, torch.full_like(y, len(CLASS_NAMES)), y)}

    def _motif(self, mask: Tensor, ctx: StepContext) -> Tensor | None:
        """A prefix of k ~ U{1..max_context} given poses per example, or None."""
        if self.motif_prob == 0 or not ctx.coin(self.motif_prob):
            return None
        b, n = mask.shape
        k = (ctx.rand((b,)) * self.max_context).floor().long().to(mask.device) + 1  # (B,)
        return (torch.arange(n, device=mask.device)[None] < k[:, None]) & mask

    def generate(self, model: nn.Module, lengths: list[int] | int,
                 generator: torch.Generator | None = None, steps: int | None = None,
                 **kw: Any) -> list[Tensor]:
        """Class-balanced trajectories of the given lengths (an int n: n of ``n_frames``) as
        ``(T, 4, 4)`` pose matrices."""
        if isinstance(lengths, int):
            lengths = [self.n_frames] * lengths
        classes = torch.arange(len(lengths)) % len(CLASS_NAMES)
        out = []
        for n, c in zip(lengths, classes):
            T = generate_trajectories(model, self, c[None], int(n), generator=generator,
                                      steps=steps, **kw)
            out.append(T.to_matrix()[0])
        return out

    def validate(self, model: nn.Module, step: int, out_dir: Path,
                 generator: torch.Generator) -> dict[str, float]:
        from modalities.trajectory.metrics import invariant_drift, plot_trajectories
        from modalities.trajectory.sim import CLASSES

        cls = torch.arange(len(CLASS_NAMES))
        T = generate_trajectories(model, self, cls, self.n_frames, generator=generator)
        out_dir.mkdir(parents=True, exist_ok=True)
        inertia = torch.tensor([CLASSES[c].moments for c in CLASS_NAMES], dtype=torch.float64)
        plot_trajectories(T.rots, T.trans, out_dir / f"step_{step:08d}.png", dt=self.dt,
                          inertia=inertia)
        drift = invariant_drift(T.rots.double(), inertia, self.dt, order=2)
        return {f"drift_{k}": float(v.median()) for k, v in drift.items()}


def generate_trajectories(model: nn.Module, task: RigidTrajectoryTask, cls: Tensor | None,
                          n_frames: int, context: Rigid | None = None,
                          generator: torch.Generator | None = None, steps: int | None = None,
                          guidance: float | None = None, rot_rate: float | None | str = "task",
                          on_invalid: str = "error") -> Rigid:
    """Sample trajectories ``(B, n_frames)`` of poses.

    Args:
        model: a class-conditional :class:`~modalities.structure.nets.FrameNet`.
        task: the run's task. cls: ``(B,)`` class indices, or None (unconditional, null label).
        n_frames: poses per trajectory.
        context: optional leading poses ``(B, k)`` to continue (forecasting), in the data's
            units (positions relative to the first pose, as the dataset gives them).
        generator: prior RNG. steps: Euler steps (default the task's).
        guidance: CFG scale (default the task's). rot_rate: as
            :func:`~modalities.structure.sample.generate`.
        on_invalid: context rotations that are not rotations (det != 1, not orthogonal):
            ``"error"`` refuses them, ``"fix"`` re-orthogonalises with a warning
            (:func:`toolkit.geometry.so3.validate`).

    Returns:
        ``Rigid`` of shape ``(B, n_frames)``; with a context the given poses are returned
        exactly and everything is expressed in the context's coordinates.
    """
    if cls is None and context is None:
        raise ValueError("give class labels cls and/or a context")
    b = len(cls) if cls is not None else context.trans.shape[0]
    if cls is not None and (cls.dim() != 1 or int(cls.min()) < 0
                            or int(cls.max()) >= len(CLASS_NAMES)):
        raise ValueError(f"cls must be (B,) indices into {CLASS_NAMES}, got {cls.tolist()}")
    p = next(model.parameters())
    dev, dt = p.device, p.dtype
    mask = torch.ones(b, n_frames, dtype=torch.bool, device=dev)
    null = torch.full((b,), len(CLASS_NAMES), dtype=torch.long, device=dev)
    y = null if cls is None else cls.long().to(dev)
    fixed = Tm = None
    shift = torch.zeros(b, 1, 3, dtype=dt, device=dev)
    if context is not None:
        k = context.trans.shape[1]
        if context.trans.shape[0] != b or not 1 <= k < n_frames:
            raise ValueError(f"context must be (B={b}, k) poses with 1 <= k < n_frames="
                             f"{n_frames}, got {tuple(context.trans.shape[:-1])}")
        context = Rigid(so3.validate(context.rots, on_invalid, what="context rotations"),
                        context.trans)
        if not torch.isfinite(context.trans).all():
            raise ValueError("context positions contain NaN or inf")
        shift = context.trans.to(dev, dt).mean(1, keepdim=True)  # centre on the context
        rots = torch.eye(3, dtype=dt, device=dev).repeat(b, n_frames, 1, 1)
        trans = torch.zeros(b, n_frames, 3, dtype=dt, device=dev)
        rots[:, :k] = context.rots.to(dev, dt)
        trans[:, :k] = context.trans.to(dev, dt) - shift
        Tm, fixed = Rigid(rots, trans), torch.arange(n_frames, device=dev)[None] < k
        fixed = fixed.expand(b, n_frames)
    rate = task.rot_rate if rot_rate == "task" else rot_rate
    n_steps = int(steps or task.steps)
    times = grids.power(n_steps, exponent=task.grid_power)
    w = task.guidance if guidance is None else float(guidance)
    T = sample_frames(model, task, mask, fixed, Tm, rate, generator, times,
                      model_kw={"y": y}, null_kw={"y": null},
                      guidance=w if cls is not None else 1.0)
    return Rigid(T.rots, T.trans + shift)
