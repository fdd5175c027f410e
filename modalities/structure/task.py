"""Backbone flow matching on SE(3)^N (FrameFlow-style) and its Euclidean baseline.

Training pairs a prior draw with a data crop and regresses the network's clean prediction
(Yim et al. 2023, FrameFlow; Bose et al. 2024, FoldFlow), with t = 0 the prior, t = 1 data:

* **SE(3)** (:class:`~.nets.FrameNet`): ``R_t = R0 exp(t log(R0^T R1))`` with Haar ``R0``
  per residue, ``x_t = (1 - t) x0 + t x1`` with centred ``x0 ~ N(0, I)`` nm. The network
  predicts ``T_1_hat``; the Riemannian CFM loss is taken on the implied conditional fields
  ``u_rot = log(R_t^T R1) / (1 - t)``, ``u_x = (x1 - x_t) / (1 - t)`` with ``1 - t`` floored
  at ``min_remaining`` (FrameFlow's clipped denominators), plus FrameDiff's auxiliary
  backbone-atom and local-distance losses (in Angstrom^2) for ``t > aux_t`` (Yim et al.
  2023, sec. 4.2).
* **Euclidean** (:class:`~.nets.AtomNet`): the linear path on N, CA, C coordinates
  ``(N, 3, 3)`` with a random global rotation per example (augmentation) and the same
  clipped data-prediction loss and auxiliary distance loss.

Self-conditioning (Chen et al. 2022; FrameDiff): with probability ``self_cond`` a first pass
without gradients gives ``x_1_hat``, whose CA distances are fed to the second pass.
Motif conditioning: with probability ``motif_prob`` a random contiguous segment is given
clean (flagged, excluded from the loss) and coordinates are centred on it, so that
:func:`~.sample.generate` can inpaint scaffolds around a user's motif.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modalities.structure.nets import AtomNet, FrameNet
from toolkit.geometry import so3
from toolkit.geometry.se3 import Rigid, ideal_backbone
from toolkit.paths.riemannian import se3_ot_coupling
from toolkit.train.tasks import StepContext, Task

__all__ = ["BackboneFlowTask", "masked_center"]

NM = 10.0  # Angstrom per nm


def masked_center(x: Tensor, mask: Tensor) -> Tensor:
    """Subtract the masked mean over residues: ``x (B, N, ..., 3)``, ``mask (B, N)``."""
    m = mask.to(x.dtype).reshape(*mask.shape, *([1] * (x.dim() - 2)))
    mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
    mean = mean.mean(dim=tuple(range(2, x.dim() - 1)), keepdim=True) if x.dim() > 3 else mean
    return (x - mean) * m


def _masked_mean(err: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(err.dtype)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def local_distance_loss(a_hat: Tensor, a: Tensor, mask: Tensor, cutoff: float = 6.0) -> Tensor:
    """FrameDiff's auxiliary pairwise-distance loss over backbone atoms closer than ``cutoff``
    (same unit as the atoms) in the data: ``sum |d_hat_ij - d_ij|^2 / #pairs`` (Yim et al.
    2023, eq. 12).

    Args:
        a_hat, a: atoms ``(B, N, K, 3)``. mask: ``(B, N)`` residues.
    """
    b, n, k, _ = a.shape
    ah, at = a_hat.reshape(b, n * k, 3), a.reshape(b, n * k, 3)
    m = mask[:, :, None].expand(b, n, k).reshape(b, n * k)
    d_hat, d = torch.cdist(ah, ah), torch.cdist(at, at)  # (B, NK, NK)
    pm = (m[:, :, None] & m[:, None, :]) & (d < cutoff)
    pm = pm & ~torch.eye(n * k, dtype=torch.bool, device=a.device)
    return ((d_hat - d) ** 2 * pm).sum() / pm.sum().clamp_min(1)


class BackboneFlowTask(Task):
    """Backbone generation by Riemannian (SE(3)^N) or Euclidean flow matching.

    Args:
        trans_scale: prior std of translations in nm.
        trans_weight / rot_weight / aux_weight: loss weights.
        aux_t: the auxiliary losses apply for ``t > aux_t``.
        min_remaining: floor of ``1 - t`` in the loss denominators.
        self_cond: probability of a self-conditioning pass in training.
        motif_prob: probability that a batch trains motif conditioning.
        steps: sampling Euler steps. rot_rate: FrameFlow's exponential rotation schedule at
            sampling (``u_rot = c log(R_t^T R1_hat)``); ``None``: the geodesic ``1 / (1 - t)``.
        grid_power: sampling time grid ``t_k = 1 - (1 - k/K)^p`` (p > 1: finer near data).
        ot_coupling: pair prior and data structures by minibatch OT on SE(3)^N
            (:func:`toolkit.paths.riemannian.se3_ot_coupling`, FoldFlow-OT) instead of at random.
        val_lengths: chain lengths drawn in validation.
    """

    #: self-conditioning / motif inputs and class embeddings go unused in some steps
    find_unused_parameters = True

    def __init__(self, trans_scale: float = 1.0, trans_weight: float = 2.0,
                 rot_weight: float = 1.0, aux_weight: float = 1.0, aux_t: float = 0.75,
                 min_remaining: float = 0.1, self_cond: float = 0.5, motif_prob: float = 0.0,
                 steps: int = 100, rot_rate: float | None = 10.0, grid_power: float = 1.0,
                 ot_coupling: bool = False,
                 val_lengths: tuple[int, ...] = (64, 96, 128)) -> None:
        for name, v in (("self_cond", self_cond), ("motif_prob", motif_prob), ("aux_t", aux_t)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"BackboneFlowTask: {name} must be in [0, 1], got {v}")
        if not 0.0 < min_remaining <= 1.0 or trans_scale <= 0 or steps < 1:
            raise ValueError("BackboneFlowTask: need 0 < min_remaining <= 1, trans_scale > 0 "
                             f"and steps >= 1 (got {min_remaining}, {trans_scale}, {steps})")
        self.trans_scale, self.trans_weight, self.rot_weight = trans_scale, trans_weight, rot_weight
        self.aux_weight, self.aux_t, self.min_remaining = aux_weight, aux_t, min_remaining
        self.self_cond, self.motif_prob = self_cond, motif_prob
        self.steps, self.rot_rate, self.grid_power = int(steps), rot_rate, float(grid_power)
        self.ot_coupling = bool(ot_coupling)
        self.val_lengths = tuple(int(n) for n in val_lengths)

    @staticmethod
    def kind(model: nn.Module) -> str:
        """``"se3"`` for a :class:`FrameNet`, ``"euclidean"`` for an :class:`AtomNet` (also
        inside a DistributedDataParallel wrapper)."""
        model = getattr(model, "module", model)
        if isinstance(model, FrameNet):
            return "se3"
        if isinstance(model, AtomNet):
            return "euclidean"
        raise TypeError(f"BackboneFlowTask needs a FrameNet or AtomNet, got {type(model)}")

    # ------------------------------------------------------------------ training
    def _motif(self, mask: Tensor, ctx: StepContext) -> Tensor | None:
        """A random contiguous segment (5-30 % of each chain) per example, or None."""
        if self.motif_prob == 0 or not ctx.coin(self.motif_prob):
            return None
        b, n = mask.shape
        u = ctx.rand((b, 2)).to(mask.device)
        length = mask.sum(1).to(u.dtype)
        size = (length * (0.05 + 0.25 * u[:, 0])).clamp_min(1).floor()
        start = ((length - size) * u[:, 1]).floor()
        idx = torch.arange(n, device=mask.device)[None].to(u.dtype)
        return (idx >= start[:, None]) & (idx < (start + size)[:, None]) & mask

    def model_kwargs(self, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Any]:
        """Extra conditioning passed to every network call (none for unconditional backbones;
        subclasses add e.g. class labels with CFG dropout)."""
        return {}

    def loss(self, model: nn.Module, batch: dict[str, Tensor], ctx: StepContext
             ) -> dict[str, Tensor]:
        rots, trans = batch["rots"], batch["trans"]
        mask = batch["mask"].bool() if "mask" in batch else torch.ones(
            trans.shape[:2], dtype=torch.bool, device=trans.device)
        b, n = mask.shape
        t = ctx.sample_t("uniform", b).to(trans)  # (B,)
        kw = self.model_kwargs(batch, ctx)
        fixed = self._motif(mask, ctx)
        if fixed is None:
            trans = masked_center(trans, mask)  # the prior and the predictions are centred
        else:  # centre on the motif (what a user can give at sampling time)
            trans = trans - (trans * fixed[..., None]).sum(1, keepdim=True) / fixed.sum(
                1, keepdim=True).clamp_min(1)[..., None]
            trans = trans * mask[..., None]
        use_sc = self.self_cond > 0 and ctx.coin(self.self_cond)
        denom = (1.0 - t).clamp_min(self.min_remaining)  # (B,)
        keep = mask if fixed is None else mask & ~fixed
        if self.kind(model) == "se3":
            return self._loss_se3(model, rots, trans, mask, fixed, keep, t, denom, use_sc, ctx,
                                  kw)
        return self._loss_euclidean(model, rots, trans, mask, fixed, keep, t, denom, use_sc, ctx,
                                    kw)

    def _aux(self, a_hat: Tensor, a: Tensor, keep: Tensor, mask: Tensor, t: Tensor) -> Tensor:
        """Auxiliary losses in Angstrom^2 (in nm^2 they would be ~100x too small to shape the
        local geometry: a 0.1 A bond error is 1e-4 nm^2)."""
        a_hat, a = a_hat * NM, a * NM
        late = keep & (t > self.aux_t)[:, None]  # (B, N)
        atom = _masked_mean(((a_hat - a) ** 2).sum((-1, -2)), late)
        dist = local_distance_loss(a_hat, a, mask & (t > self.aux_t)[:, None])
        return atom + dist

    def _loss_se3(self, model, rots, trans, mask, fixed, keep, t, denom, use_sc, ctx, kw):
        b, n = mask.shape
        R0 = so3.quat_to_matrix(ctx.randn((b, n, 4)).to(trans))  # Haar (Shoemake 1992)
        x0 = ctx.randn((b, n, 3)).to(trans) * self.trans_scale
        if self.ot_coupling and fixed is None:
            T0, _ = se3_ot_coupling(Rigid(R0, masked_center(x0, mask)), Rigid(rots, trans), mask)
            R0, x0 = T0.rots, T0.trans
        x0 = masked_center(x0, mask)
        Rt = so3.interpolate(R0, rots, t[:, None])  # (B, N, 3, 3)
        xt = (1 - t)[:, None, None] * x0 + t[:, None, None] * trans
        if fixed is not None:
            Rt = torch.where(fixed[..., None, None], rots, Rt)
            xt = torch.where(fixed[..., None], trans, xt)
        Tt = Rigid(Rt, xt)
        sc = None
        if use_sc:
            with torch.no_grad():
                sc = self._center_pred(model(Tt, t, mask, None, fixed, **kw).trans, mask,
                                       fixed)
        pred = model(Tt, t, mask, sc, fixed, **kw)
        x_hat = self._center_pred(pred.trans, mask, fixed)
        RtT = Rt.transpose(-1, -2)
        rot_err = (so3.log(RtT @ pred.rots) - so3.log(RtT @ rots)) / denom[:, None, None]
        trans_err = (x_hat - trans) / denom[:, None, None]
        l_rot = ctx.masked_mean((rot_err ** 2).sum(-1), keep)  # global-batch means (DDP)
        l_trans = ctx.masked_mean((trans_err ** 2).sum(-1), keep)
        total = self.trans_weight * l_trans + self.rot_weight * l_rot
        aux = torch.zeros_like(total)
        if self.aux_weight:
            aux = self._aux(ideal_backbone(Rigid(pred.rots, x_hat)),
                            ideal_backbone(Rigid(rots, trans)), keep, mask, t)
            total = total + self.aux_weight * aux
        return {"loss": total, "rot": l_rot.detach(), "trans": l_trans.detach(),
                "aux": aux.detach()}

    def _loss_euclidean(self, model, rots, trans, mask, fixed, keep, t, denom, use_sc, ctx,
                        kw):
        b, n = mask.shape
        g = so3.quat_to_matrix(ctx.randn((b, 4)).to(trans))[:, None]  # (B, 1, 3, 3) augmentation
        x1 = ideal_backbone(Rigid(g @ rots, (g @ trans[..., None])[..., 0]))  # (B, N, 3, 3)
        x1 = x1 * mask[..., None, None]
        x0 = masked_center(ctx.randn((b, n, 3, 3)).to(trans) * self.trans_scale, mask)
        xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * x1
        if fixed is not None:
            xt = torch.where(fixed[..., None, None], x1, xt)
        sc = None
        if use_sc:
            with torch.no_grad():
                sc = model(xt, t, mask, None, fixed, **kw)
        x_hat = model(xt, t, mask, sc, fixed, **kw)
        err = ((x_hat - x1) / denom[:, None, None, None]) ** 2
        l_trans = ctx.masked_mean(err.sum((-1, -2)) / 3.0, keep)
        aux = self._aux(x_hat, x1, keep, mask, t)
        total = self.trans_weight * l_trans + self.aux_weight * aux
        return {"loss": total, "trans": l_trans.detach(), "aux": aux.detach()}

    @staticmethod
    def _center_pred(x: Tensor, mask: Tensor, fixed: Tensor | None) -> Tensor:
        """Centre predicted translations on the chain (no motif) - a motif anchors the frame."""
        return masked_center(x, mask) if fixed is None else x * mask[..., None]

    # ------------------------------------------------------------------ sampling
    def generate(self, model: nn.Module, lengths: list[int] | int,
                 generator: torch.Generator | None = None, steps: int | None = None,
                 **kw: Any) -> list[Tensor]:
        """Backbones ``(L, 3, 3)`` Angstrom (N, CA, C) for each of ``lengths``
        (:func:`modalities.structure.sample.generate`); an int n draws n chains with the
        validation lengths in turn."""
        from modalities.structure.sample import generate

        if isinstance(lengths, int):
            lengths = [self.val_lengths[i % len(self.val_lengths)] for i in range(lengths)]
        return generate(model, self, lengths, generator=generator,
                        steps=steps or self.steps, **kw)

    def validate(self, model: nn.Module, step: int, out_dir: Path,
                 generator: torch.Generator) -> dict[str, float]:
        from modalities.structure.sample import plot_ca_traces

        structs = self.generate(model, list(self.val_lengths), generator=generator)
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_ca_traces(structs, out_dir / f"step_{step:08d}.png")
        d = torch.cat([(s[1:, 1] - s[:-1, 1]).norm(dim=-1) for s in structs])
        return {"ca_ca_mean": float(d.mean()),
                "ca_ca_within_0.1": float(((d - 3.80).abs() <= 0.10).float().mean()),
                "ca_ca_std": float(d.std()) if len(d) > 1 else math.nan}
