"""Backbone sampling (SE(3) and Euclidean), motif inpainting, CA-trace pictures, PDB output.

:func:`generate` integrates from the prior (t = 0) to data (t = 1) through
:func:`toolkit.sample`: for a :class:`~.nets.FrameNet` the path is
:class:`~toolkit.paths.riemannian.SE3Path`, so each Euler step is applied on the manifold,
``R <- R exp(dt u_rot)``, ``x <- x + dt u_x`` (Riemannian Euler). The field converts the
network's clean prediction ``T_1_hat`` into tangent vectors

    u_rot = rate(t) log(R_t^T R_1_hat),   u_x = (x_1_hat - x_t) / (1 - t),

with ``rate(t) = 1 / (1 - t)`` (geodesic) or FrameFlow's constant ``c`` (exponential rotation
schedule, Yim et al. 2023, sec. 3.3), and feeds its last prediction back as self-conditioning.
A :class:`~.nets.AtomNet` is integrated on the Euclidean linear path with ``prediction="data"``.
With a motif (``motif`` coordinates and ``motif_mask``) the motif residues are held at their
given frames and flagged to the network; coordinates are centred on the motif.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from toolkit import grids
from toolkit.geometry import se3, so3
from toolkit.geometry.se3 import Rigid
from toolkit.paths.riemannian import SE3Path, SO3GeodesicPath
from toolkit.sampling import sample

__all__ = ["generate", "plot_ca_traces", "sample_frames"]

NM = 10.0


def _mask(lengths: list[int], device: torch.device) -> Tensor:
    n = max(lengths)
    return torch.arange(n, device=device)[None] < torch.tensor(lengths, device=device)[:, None]


def _motif_frames(motif: Tensor, motif_mask: Tensor, b: int, n: int, dtype: torch.dtype
                  ) -> tuple[Rigid, Tensor]:
    """Motif backbone ``(n, 3|4, 3)`` Angstrom + ``(n,)`` mask -> frames (nm, centred on the
    motif CAs) broadcast to ``(b, n)`` and the ``(b, n)`` flag."""
    if motif.shape[0] != n or motif_mask.shape != (n,):
        raise ValueError(f"motif must be (L, 3|4, 3) with motif_mask (L,) for L={n}, got "
                         f"{tuple(motif.shape)} and {tuple(motif_mask.shape)}")
    m = motif_mask.bool()
    if not m.any():
        raise ValueError("motif_mask selects no residue")
    if not torch.isfinite(motif[m][:, :3]).all():
        raise ValueError("motif coordinates of the selected residues must be finite")
    x = torch.nan_to_num(motif[:, :3].to(torch.float64))
    fr = se3.frames_from_backbone(x[:, 0], x[:, 1], x[:, 2])
    trans = (fr.trans - fr.trans[m].mean(0)) / NM
    rots = torch.where(m[:, None, None], fr.rots, torch.eye(3, dtype=torch.float64))
    T = Rigid(rots.to(dtype).expand(b, n, 3, 3), (trans * m[:, None]).to(dtype).expand(b, n, 3))
    return T, m[None].expand(b, n)


def generate(model: nn.Module, task: Any, lengths: list[int], generator: torch.Generator | None
             = None, steps: int = 100, rot_rate: float | None | str = "task",
             self_cond: bool = True, motif: Tensor | None = None, motif_mask: Tensor | None = None,
             batch_size: int = 64, info: dict[str, Any] | None = None,
             grid_power: float | None = None) -> list[Tensor]:
    """Sample one backbone per entry of ``lengths``.

    Args:
        model: a :class:`~.nets.FrameNet` or :class:`~.nets.AtomNet` (EMA weights, eval mode).
        task: the run's :class:`~.task.BackboneFlowTask` (prior scale, rotation schedule).
        lengths: chain lengths (>= 2 each).
        generator: prior noise RNG. steps: Euler steps.
        rot_rate: ``"task"`` (the task's), a float c (exponential schedule) or None (geodesic).
        self_cond: feed the previous clean prediction back to the network.
        motif / motif_mask: optional ``(L, 3|4, 3)`` Angstrom backbone and ``(L,)`` bool mask
            of the residues to keep (all ``lengths`` must equal L).
        batch_size: structures per batch. info: receives ``nfe`` (per batch).
        grid_power: time grid ``t_k = 1 - (1 - k / K)^p`` (``p > 1``: finer steps near the
            data end, so the last prediction sees a less noisy input); ``None``: the task's.

    Returns:
        List of ``(L, 3, 3)`` float32 Angstrom N, CA, C coordinates (CPU).
    """
    from modalities.structure.task import BackboneFlowTask

    if not lengths or any(int(n) < 2 for n in lengths):
        raise ValueError(f"lengths must be a non-empty list of integers >= 2, got {lengths}")
    kind = BackboneFlowTask.kind(model)
    if motif is not None and (motif_mask is None or len(set(lengths)) != 1):
        raise ValueError("a motif needs motif_mask and one common length for all samples")
    rate = task.rot_rate if rot_rate == "task" else rot_rate
    power = float(getattr(task, "grid_power", 1.0) if grid_power is None else grid_power)
    if not power > 0:
        raise ValueError(f"grid_power must be > 0, got {power}")
    times = grids.power(int(steps), exponent=power)
    p = next(model.parameters())
    dev, dt = p.device, p.dtype
    out: list[Tensor] = []
    for k in range(0, len(lengths), batch_size):
        ls = [int(n) for n in lengths[k:k + batch_size]]
        mask = _mask(ls, dev)
        b, n = mask.shape
        fixed, Tm = None, None
        if motif is not None:
            Tm, fixed = _motif_frames(torch.as_tensor(motif), torch.as_tensor(motif_mask), b, n,
                                      dt)
            Tm, fixed = Rigid(Tm.rots.to(dev), Tm.trans.to(dev)), fixed.to(dev)
        atoms = _sample_batch(model, task, kind, mask, fixed, Tm, rate, generator, times,
                              self_cond, info)
        for i, length in enumerate(ls):
            out.append(atoms[i, :length].float().cpu())
    return out


def _sample_batch(model: nn.Module, task: Any, kind: str, mask: Tensor, fixed: Tensor | None,
                  Tm: Rigid | None, rate: float | None, generator: torch.Generator | None,
                  times: Tensor, self_cond: bool, info: dict[str, Any] | None) -> Tensor:
    """One padded batch -> atoms ``(B, N, 3, 3)`` Angstrom (see :func:`generate`)."""
    from modalities.structure.task import masked_center

    b, n = mask.shape
    p = next(model.parameters())
    dev, dt = p.device, p.dtype
    state: dict[str, Tensor | None] = {"sc": None}
    with torch.no_grad():
        if kind == "se3":
            T1 = sample_frames(model, task, mask, fixed, Tm, rate, generator, times, self_cond,
                               info)
            atoms = se3.ideal_backbone(Rigid(T1.rots, T1.trans * NM))  # (B, N, 3, 3) A
        else:
            x0 = torch.randn(b, n, 3, 3, generator=generator, dtype=dt).to(dev)
            x0 = masked_center(x0 * task.trans_scale, mask)
            xm = None
            if fixed is not None:
                xm = se3.ideal_backbone(Tm)
                x0 = torch.where(fixed[..., None, None], xm, x0)

            def data_field(x: Tensor, t: Tensor) -> Tensor:
                x1 = model(x, t, mask, state["sc"] if self_cond else None, fixed)
                state["sc"] = x1
                return x1

            x1 = sample(data_field, x0, path="linear", prediction="data", solver="euler",
                        steps=len(times) - 1, grid=times.to(dt), info=info)
            if xm is not None:
                x1 = torch.where(fixed[..., None, None], xm, x1)
            atoms = x1 * NM
    return atoms


def sample_frames(model: nn.Module, task: Any, mask: Tensor, fixed: Tensor | None = None,
                  Tm: Rigid | None = None, rate: float | None = 10.0,
                  generator: torch.Generator | None = None, times: Tensor | None = None,
                  self_cond: bool = True, info: dict[str, Any] | None = None,
                  model_kw: dict[str, Any] | None = None, null_kw: dict[str, Any] | None = None,
                  guidance: float = 1.0) -> Rigid:
    """Integrate frames ``(B, N)`` from the SE(3) prior to data with a clean-frame predictor.

    Args:
        model: ``model(T, t, mask, sc, fixed, **kw) -> T_1_hat`` (e.g. :class:`~.nets.FrameNet`).
        task: provides ``trans_scale``. mask: ``(B, N)`` bool.
        fixed / Tm: optional ``(B, N)`` bool frames held at ``Tm`` (motif / given context);
            translations are then centred on them, else on all frames.
        rate: FrameFlow's exponential rotation rate c, or None for the geodesic ``1/(1-t)``.
        times: increasing time grid from 0 to 1 (default 100 uniform steps).
        model_kw / null_kw / guidance: conditioning kwargs; with ``guidance != 1`` the tangent
            fields are combined as ``u = u_null + w (u_cond - u_null)`` (classifier-free
            guidance, Ho & Salimans 2022, applied in the tangent space at the current frames).

    Returns:
        Frames at t = 1 (translations in the model's units, nm for backbones).
    """
    from modalities.structure.task import masked_center

    b, n = mask.shape
    p = next(model.parameters())
    dev, dt = p.device, p.dtype
    times = grids.uniform(100) if times is None else times
    kw, nkw, w = dict(model_kw or {}), dict(null_kw or {}), float(guidance)
    state: dict[str, Tensor | None] = {"sc": None}
    path = SE3Path(SO3GeodesicPath("linear" if rate is None else "exp", exp_rate=rate or 10.0),
                   task.trans_scale)
    T0 = path.sample_prior((b,), n, generator=generator, mask=mask.cpu(), dtype=dt)
    T0 = Rigid(T0.rots.to(dev), masked_center(T0.trans.to(dev), mask))
    if fixed is not None:
        T0 = Rigid(torch.where(fixed[..., None, None], Tm.rots, T0.rots),
                   torch.where(fixed[..., None], Tm.trans, T0.trans))

    def center(x: Tensor) -> Tensor:
        return masked_center(x, mask) if fixed is None else x * mask[..., None]

    def velocity(T: Rigid, pred: Rigid, t: Tensor) -> tuple[Tensor, Tensor]:
        tt = t[:, None, None]
        u_rot = path.rot.rate(tt) * so3.log(T.rots.transpose(-1, -2) @ pred.rots)
        u_x = (center(pred.trans) - T.trans) / (1 - tt).clamp_min(1e-4)
        return u_rot, u_x

    def field(T: Rigid, t: Tensor) -> tuple[Tensor, Tensor]:
        sc = state["sc"] if self_cond else None
        pred = model(T, t, mask, sc, fixed, **kw)
        state["sc"] = center(pred.trans)
        u_rot, u_x = velocity(T, pred, t)
        if w != 1.0:
            ur0, ux0 = velocity(T, model(T, t, mask, sc, fixed, **nkw), t)
            u_rot, u_x = ur0 + w * (u_rot - ur0), ux0 + w * (u_x - ux0)
        if fixed is not None:  # the motif / context stays where it is
            u_rot, u_x = u_rot * ~fixed[..., None], u_x * ~fixed[..., None]
        return u_rot * mask[..., None], u_x * mask[..., None]

    with torch.no_grad():
        return sample(field, T0, path=path, solver="euler", grid=times, info=info)


def plot_ca_traces(structs: list[Tensor], path: str | Path, ncols: int = 4,
                   title: str | None = None) -> Path:
    """Picture of CA traces (3-D, coloured N -> C terminus), one panel per structure, written
    atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    n = len(structs)
    if n == 0:
        raise ValueError("plot_ca_traces: no structures")
    cols = min(ncols, n)
    rows = (n + cols - 1) // cols
    fig = plt.figure(figsize=(3.2 * cols, 3.2 * rows))
    for i, s in enumerate(structs):
        ca = torch.as_tensor(s)[:, 1].double()
        ca = (ca - ca.mean(0)).numpy()
        ax = fig.add_subplot(rows, cols, i + 1, projection="3d")
        cmap = plt.get_cmap("viridis")
        for j in range(len(ca) - 1):
            ax.plot(*ca[j:j + 2].T, color=cmap(j / max(1, len(ca) - 2)), lw=1.6)
        ax.set_title(f"L = {len(ca)}", fontsize=9)
        ax.set_axis_off()
        r = float(abs(ca).max())
        ax.set_xlim(-r, r), ax.set_ylim(-r, r), ax.set_zlim(-r, r)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
