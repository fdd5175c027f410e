"""Rigid frames SE(3)^N for protein backbones (FrameDiff / FrameFlow / FoldFlow style).

A frame ``T = (R, x)`` maps local coordinates to global ones, ``T(p) = R p + x``. A protein
backbone of N residues is N frames ``(..., N)``: ``R`` is ``(..., N, 3, 3)``, ``x`` (the CA
positions) ``(..., N, 3)``. Ideal local atom coordinates (Angstrom) are AlphaFold's rigid-group
literature values (Jumper et al. 2021, supplementary rigid-group atom positions):
N at (-0.525, 1.363, 0), CA at the origin, C at (1.526, 0, 0); the carbonyl O, placed in the
psi group at (0.627, 1.062, 0) relative to C, gives C=O 1.233 A and CA-C-O 120.56 deg.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from toolkit.geometry import so3
from toolkit.geometry.so3 import _check

IDEAL_N = (-0.525, 1.363, 0.0)
IDEAL_CA = (0.0, 0.0, 0.0)
IDEAL_C = (1.526, 0.0, 0.0)
O_BOND = math.hypot(0.627, 1.062)  # |C=O| = 1.233 A
O_ANGLE = math.pi - math.atan2(1.062, 0.627)  # CA-C-O = 120.56 deg


@dataclass(frozen=True)
class Rigid:
    """Batch of rigid transforms ``T(p) = rots @ p + trans``.

    Attributes:
        rots: ``(..., 3, 3)`` rotation matrices.
        trans: ``(..., 3)`` translations (same batch shape as ``rots``).
    """

    rots: Tensor
    trans: Tensor

    def __post_init__(self) -> None:
        _check(self.rots, (3, 3), "Rigid.rots")
        _check(self.trans, (3,), "Rigid.trans")
        if self.rots.shape[:-2] != self.trans.shape[:-1]:
            raise ValueError(
                f"Rigid: batch shapes differ, rots {tuple(self.rots.shape)} vs trans "
                f"{tuple(self.trans.shape)}"
            )

    @classmethod
    def identity(cls, shape: tuple[int, ...] = (), dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> Rigid:
        """Identity transforms of batch shape ``shape``."""
        eye = torch.eye(3, dtype=dtype, device=device).expand(*shape, 3, 3).clone()
        return cls(eye, torch.zeros(*shape, 3, dtype=dtype, device=device))

    @property
    def shape(self) -> torch.Size:
        """Batch shape."""
        return self.trans.shape[:-1]

    def compose(self, other: Rigid) -> Rigid:
        """``self o other``: ``p -> R1 (R2 p + x2) + x1``."""
        return Rigid(self.rots @ other.rots, self.apply(other.trans))

    def inverse(self) -> Rigid:
        """Inverse transform ``(R^T, -R^T x)``."""
        rt = self.rots.transpose(-1, -2)
        return Rigid(rt, -(rt @ self.trans[..., None])[..., 0])

    def apply(self, points: Tensor) -> Tensor:
        """``R p + x`` for ``(..., 3)`` points broadcast against the batch shape."""
        _check(points, (3,), "Rigid.apply")
        return (self.rots @ points[..., None])[..., 0] + self.trans

    def invert_apply(self, points: Tensor) -> Tensor:
        """``R^T (p - x)``: global points into local coordinates."""
        _check(points, (3,), "Rigid.invert_apply")
        return (self.rots.transpose(-1, -2) @ (points - self.trans)[..., None])[..., 0]

    def unsqueeze(self, dim: int) -> Rigid:
        """Insert a batch dimension (negative ``dim`` counts from the end of the batch shape)."""
        if dim < 0:
            return Rigid(self.rots.unsqueeze(dim - 2), self.trans.unsqueeze(dim - 1))
        return Rigid(self.rots.unsqueeze(dim), self.trans.unsqueeze(dim))

    def to_matrix(self) -> Tensor:
        """``(..., 4, 4)`` homogeneous matrices."""
        top = torch.cat((self.rots, self.trans[..., None]), -1)  # (..., 3, 4)
        bottom = torch.zeros_like(top[..., :1, :])
        bottom[..., 0, 3] = 1
        return torch.cat((top, bottom), -2)

    @classmethod
    def from_matrix(cls, M: Tensor) -> Rigid:
        """Rigid from ``(..., 4, 4)`` homogeneous matrices."""
        _check(M, (4, 4), "Rigid.from_matrix")
        return cls(M[..., :3, :3], M[..., :3, 3])


def interpolate(T0: Rigid, T1: Rigid, t: Tensor | float) -> Rigid:
    """Product-geodesic interpolation on SE(3)^N (Yim et al. 2023, FrameFlow).

    Rotations follow the SO(3) geodesic ``R_t = R0 exp(t log(R0^T R1))``; translations the
    straight line ``x_t = (1 - t) x0 + t x1``.

    Args:
        T0: frames at t = 0, batch shape ``(...)``.
        T1: frames at t = 1, same batch shape.
        t: float or tensor broadcastable to the batch shape; for frames ``(B, N)`` with one
            time per structure pass ``t[:, None]``.

    Returns:
        Frames at time t.
    """
    t = torch.as_tensor(t, dtype=T0.trans.dtype, device=T0.trans.device)
    trans = T0.trans + t[..., None] * (T1.trans - T0.trans)
    return Rigid(so3.interpolate(T0.rots, T1.rots, t), trans)


def center(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Subtract the (masked) centre of mass of ``(..., N, 3)`` positions.

    The centre ``sum_i m_i x_i / sum_i m_i`` is subtracted from every position, masked ones
    included (multiply by the mask to zero them). An all-zero mask leaves ``x`` unchanged.

    Args:
        x: ``(..., N, 3)`` positions.
        mask: optional ``(..., N)`` bool or float weights.

    Returns:
        ``(..., N, 3)`` centred positions.
    """
    _check(x, (3,), "center")
    if x.dim() < 2:
        raise ValueError(f"center: expected (..., N, 3), got {tuple(x.shape)}")
    if mask is None:
        return x - x.mean(-2, keepdim=True)
    if mask.shape != x.shape[:-1]:
        raise ValueError(
            f"center: mask must be (..., N) = {tuple(x.shape[:-1])}, got {tuple(mask.shape)}"
        )
    w = mask.to(x.dtype)[..., None]  # (..., N, 1)
    tot = w.sum(-2, keepdim=True)  # (..., 1, 1)
    com = (w * x).sum(-2, keepdim=True) / torch.where(tot > 0, tot, torch.ones_like(tot))
    return x - com


def _unit(v: Tensor, eps: float) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(eps)


def frames_from_backbone(n: Tensor, ca: Tensor, c: Tensor, eps: float = 1e-8) -> Rigid:
    """Backbone frames by Gram-Schmidt (AlphaFold, Jumper et al. 2021, Suppl. Alg. 21).

    ``e1 = (c - ca)/|c - ca|``, ``e2 = normalise((n - ca) - ((n - ca).e1) e1)``,
    ``e3 = e1 x e2``, ``R = [e1 e2 e3]`` (columns), origin at CA. In the local frame C lies on
    +x and N in the xy-plane with y > 0.

    Args:
        n: ``(..., N, 3)`` nitrogen positions.
        ca: ``(..., N, 3)`` alpha-carbon positions.
        c: ``(..., N, 3)`` carbonyl-carbon positions.
        eps: floor on norms (degenerate residues).

    Returns:
        Rigid frames of batch shape ``(..., N)``.
    """
    for name, a in (("n", n), ("ca", ca), ("c", c)):
        _check(a, (3,), f"frames_from_backbone ({name})")
    if not n.shape == ca.shape == c.shape:
        raise ValueError(
            f"frames_from_backbone: n, ca, c shapes differ: {tuple(n.shape)}, "
            f"{tuple(ca.shape)}, {tuple(c.shape)}"
        )
    e1 = _unit(c - ca, eps)  # (..., 3)
    u = n - ca
    e2 = _unit(u - (u * e1).sum(-1, keepdim=True) * e1, eps)
    e3 = torch.linalg.cross(e1, e2, dim=-1)
    return Rigid(torch.stack((e1, e2, e3), -1), ca)  # rots (..., 3, 3) with columns e1, e2, e3


def dihedral(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """IUPAC dihedral angle a-b-c-d in (-pi, pi] (positive = clockwise seen along b -> c).

    Args:
        a, b, c, d: ``(..., 3)`` positions.

    Returns:
        ``(...,)`` angles.
    """
    b1, b2, b3 = b - a, c - b, d - c
    n1, n2 = torch.linalg.cross(b1, b2, dim=-1), torch.linalg.cross(b2, b3, dim=-1)
    # phi = atan2(|b2| b1.(b2 x b3), (b1 x b2).(b2 x b3))  (Blondel & Karplus 1996)
    y = (torch.linalg.cross(n1, n2, dim=-1) * _unit(b2, 1e-12)).sum(-1)
    return torch.atan2(y, (n1 * n2).sum(-1))


def place_atom(a: Tensor, b: Tensor, c: Tensor, bond: float, angle: float,
               torsion: Tensor | float) -> Tensor:
    """Place d with ``|cd| = bond``, angle b-c-d = ``angle``, dihedral a-b-c-d = ``torsion``.

    Natural extension reference frame (NeRF, Parsons et al. 2005).

    Args:
        a, b, c: ``(..., 3)`` previous atoms.
        bond: bond length c-d.
        angle: bond angle b-c-d in radians.
        torsion: float or ``(...,)`` dihedral a-b-c-d in radians.

    Returns:
        ``(..., 3)`` positions of d.
    """
    torsion = torch.as_tensor(torsion, dtype=c.dtype, device=c.device)
    bc = _unit(c - b, 1e-12)
    nrm = _unit(torch.linalg.cross(b - a, bc, dim=-1), 1e-12)
    m = torch.linalg.cross(nrm, bc, dim=-1)  # (bc, m, nrm) is a right-handed frame
    # d = c + bond * (-cos(angle) bc + sin(angle) cos(tau) m + sin(angle) sin(tau) nrm)
    dx = -math.cos(angle) * bc
    return c + bond * (dx + math.sin(angle) * (torch.cos(torsion)[..., None] * m
                                               + torch.sin(torsion)[..., None] * nrm))


def ideal_backbone(rigid: Rigid, psi: Tensor | None = None) -> Tensor:
    """Ideal backbone atoms in each frame (AlphaFold literature coordinates, module docstring).

    Args:
        rigid: frames of batch shape ``(...)``.
        psi: optional ``(...)`` backbone torsion psi = dihedral(N_i, CA_i, C_i, N_{i+1}); when
            given, O is added in the peptide plane at dihedral N-CA-C-O = psi + pi.

    Returns:
        ``(..., 3, 3)`` atoms N, CA, C, or ``(..., 4, 3)`` N, CA, C, O with ``psi``.
    """
    r = rigid.trans
    local = torch.tensor((IDEAL_N, IDEAL_CA, IDEAL_C), dtype=r.dtype, device=r.device)  # (3, 3)
    atoms = rigid.unsqueeze(-1).apply(local)  # (..., 3, 3)
    if psi is None:
        return atoms
    if psi.shape != rigid.shape:
        raise ValueError(
            f"ideal_backbone: psi must match the frames' batch shape {tuple(rigid.shape)}, "
            f"got {tuple(psi.shape)}"
        )
    n, ca, c = atoms.unbind(-2)
    o = place_atom(n, ca, c, O_BOND, O_ANGLE, psi + math.pi)
    return torch.cat((atoms, o[..., None, :]), -2)
