"""SE(3)^N rigid frames, backbone frames and ideal backbone atoms (synthetic and TS50)."""

import json
import math
from pathlib import Path

import pytest
import torch

from toolkit.geometry import se3, so3
from toolkit.geometry.se3 import Rigid

F64 = torch.float64
TS50 = Path("/work/shared/data/ts50/ts50.json")


def _rigid(shape, seed=0, scale=10.0):
    g = torch.Generator().manual_seed(seed)
    rots = so3.random_uniform(shape, generator=g, dtype=F64)
    return Rigid(rots, scale * torch.randn(*shape, 3, generator=g, dtype=F64))


def _close(a: Rigid, b: Rigid, atol=1e-10):
    return torch.allclose(a.rots, b.rots, atol=atol) and torch.allclose(a.trans, b.trans, atol=atol)


def _rmsd(a, b):
    return ((a - b) ** 2).sum(-1).mean().sqrt().item()


def test_compose_inverse_apply():
    T1, T2, T3 = _rigid((3, 7), seed=1), _rigid((3, 7), seed=2), _rigid((3, 7), seed=3)
    eye = Rigid.identity((3, 7), dtype=F64)
    assert _close(T1.compose(T1.inverse()), eye) and _close(T1.inverse().compose(T1), eye)
    assert _close(T1.compose(T2).compose(T3), T1.compose(T2.compose(T3)))
    p = torch.randn(3, 7, 3, dtype=F64)
    assert torch.allclose(T1.compose(T2).apply(p), T1.apply(T2.apply(p)))
    assert torch.allclose(T1.invert_apply(T1.apply(p)), p)
    assert torch.allclose(T1.inverse().apply(p), T1.invert_apply(p))
    # distances are preserved
    q = torch.randn(3, 7, 3, dtype=F64)
    assert torch.allclose((T1.apply(p) - T1.apply(q)).norm(dim=-1), (p - q).norm(dim=-1))
    # homogeneous matrices: round trip and composition = matrix product
    M1, M2 = T1.to_matrix(), T2.to_matrix()
    assert _close(Rigid.from_matrix(M1), T1)
    assert torch.allclose(T1.compose(T2).to_matrix(), M1 @ M2)
    # unsqueeze: apply each of 7 frames to 5 points
    pts = torch.randn(5, 3, dtype=F64)
    out = T1.unsqueeze(-1).apply(pts)  # (3, 7, 5, 3)
    assert out.shape == (3, 7, 5, 3)
    assert torch.allclose(out[1, 4, 2], T1.rots[1, 4] @ pts[2] + T1.trans[1, 4])


def test_rigid_bad_shapes():
    with pytest.raises(ValueError, match=r"batch shapes differ.*\(2, 3, 3\).*\(3, 3\)"):
        Rigid(torch.zeros(2, 3, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"Rigid.rots: expected \(\.\.\., 3, 3\), got \(2, 3\)"):
        Rigid(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"Rigid.apply: expected \(\.\.\., 3\), got \(4, 2\)"):
        Rigid.identity().apply(torch.zeros(4, 2))


def test_interpolate_product_geodesic():
    T0, T1 = _rigid((4, 6), seed=4), _rigid((4, 6), seed=5)
    assert _close(se3.interpolate(T0, T1, 0.0), T0)
    assert _close(se3.interpolate(T0, T1, 1.0), T1, atol=1e-9)
    t = torch.tensor([0.1, 0.25, 0.5, 0.9], dtype=F64)
    Tt = se3.interpolate(T0, T1, t[:, None])  # one time per structure, broadcast over residues
    assert torch.allclose(Tt.trans, T0.trans + t[:, None, None] * (T1.trans - T0.trans))
    d = so3.geodesic_distance(T0.rots, T1.rots)
    assert torch.allclose(so3.geodesic_distance(T0.rots, Tt.rots), t[:, None] * d, atol=1e-10)


def test_center():
    g = torch.Generator().manual_seed(6)
    x = 5 + torch.randn(3, 10, 3, dtype=F64, generator=g)
    assert se3.center(x).mean(-2).abs().max() < 1e-12
    mask = torch.rand(3, 10, generator=g) > 0.4
    mask[:, 0] = True
    y = se3.center(x, mask)
    m = mask.to(F64)[..., None]
    assert ((y * m).sum(-2) / m.sum(-2)).abs().max() < 1e-12  # masked mean removed exactly
    shift = x - y  # one rigid shift per structure, applied to every position
    assert torch.allclose(shift, shift[:, :1].expand_as(shift))
    assert torch.equal(se3.center(x, torch.zeros(3, 10, dtype=torch.bool)), x)
    with pytest.raises(ValueError, match=r"center: mask must be \(\.\.\., N\) = \(3, 10\)"):
        se3.center(x, mask[:, :5])


def _ideal_residues(n, seed):
    T = _rigid((n,), seed=seed)
    local = torch.tensor((se3.IDEAL_N, se3.IDEAL_CA, se3.IDEAL_C), dtype=F64)
    return T, T.unsqueeze(-1).apply(local)  # (n, 3, 3) atoms N, CA, C


def test_frames_from_backbone():
    T, atoms = _ideal_residues(50, seed=7)
    n, ca, c = atoms.unbind(-2)
    F = se3.frames_from_backbone(n, ca, c)
    eye = torch.eye(3, dtype=F64)
    assert torch.allclose(F.rots.transpose(-1, -2) @ F.rots, eye.expand(50, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(F.rots), torch.ones(50, dtype=F64))
    assert torch.equal(F.trans, ca)
    assert _close(F, T)  # an ideal residue gives back the frame it was built in
    assert torch.allclose(se3.ideal_backbone(F), atoms, atol=1e-12)
    loc_c, loc_n = F.invert_apply(c), F.invert_apply(n)  # C on +x, N in the xy-plane, y > 0
    assert torch.allclose(loc_c[:, 1:], torch.zeros(50, 2, dtype=F64), atol=1e-12)
    assert (loc_c[:, 0] > 0).all() and (loc_n[:, 1] > 0).all()
    assert loc_n[:, 2].abs().max() < 1e-12


def test_frames_equivariance():
    g = torch.Generator().manual_seed(8)
    n, ca, c = torch.randn(3, 2, 30, 3, dtype=F64, generator=g).unbind(0)
    G = _rigid((), seed=9)
    F = se3.frames_from_backbone(n, ca, c)
    FG = se3.frames_from_backbone(G.apply(n), G.apply(ca), G.apply(c))
    assert _close(FG, G.unsqueeze(0).unsqueeze(0).compose(F))
    # invariance of local coordinates
    assert torch.allclose(FG.invert_apply(G.apply(n)), F.invert_apply(n))


def test_frames_bad_shapes():
    with pytest.raises(ValueError, match=r"shapes differ: \(5, 3\), \(4, 3\), \(5, 3\)"):
        se3.frames_from_backbone(torch.zeros(5, 3), torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"\(ca\): expected \(\.\.\., 3\), got \(5, 2\)"):
        se3.frames_from_backbone(torch.zeros(5, 3), torch.zeros(5, 2), torch.zeros(5, 3))


def test_dihedral_and_place_atom():
    a, b, c = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 1]], dtype=F64)
    d = torch.tensor([0.0, 1, 1], dtype=F64)
    # IUPAC sign: a rotated clockwise (seen along b -> c) by 90 deg onto d is +90 deg
    assert math.isclose(se3.dihedral(a, b, c, d).item(), math.pi / 2, abs_tol=1e-12)
    g = torch.Generator().manual_seed(10)
    A, B, C = torch.randn(3, 100, 3, dtype=F64, generator=g).unbind(0)
    tau = (torch.rand(100, dtype=F64, generator=g) * 2 - 1) * math.pi
    D = se3.place_atom(A, B, C, 1.5, math.radians(110), tau)
    assert torch.allclose((D - C).norm(dim=-1), torch.full((100,), 1.5, dtype=F64))
    cosang = ((B - C) * (D - C)).sum(-1) / ((B - C).norm(dim=-1) * 1.5)
    assert torch.allclose(cosang, torch.full_like(cosang, math.cos(math.radians(110))))
    diff = torch.remainder(se3.dihedral(A, B, C, D) - tau + math.pi, 2 * math.pi) - math.pi
    assert diff.abs().max() < 1e-10


def test_ts50_real_backbone():
    if not TS50.exists():
        pytest.skip(f"TS50 data not found at {TS50}")
    chains = json.loads(TS50.read_text())
    X = torch.tensor(chains[0]["coords"], dtype=F64)  # (L, 4, 3): N, CA, C, O
    n, ca, c, o = X.unbind(-2)
    F = se3.frames_from_backbone(n, ca, c)
    eye = torch.eye(3, dtype=F64).expand(len(X), 3, 3)
    assert torch.allclose(F.rots.transpose(-1, -2) @ F.rots, eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(F.rots), torch.ones(len(X), dtype=F64))
    psi = se3.dihedral(n[:-1], ca[:-1], c[:-1], n[1:])  # psi_i = N_i CA_i C_i N_{i+1}
    psi = torch.cat((psi, torch.zeros(1, dtype=F64)))  # last residue: no psi, O not compared
    ideal = se3.ideal_backbone(F, psi)  # (L, 4, 3)
    rmsd_nc = _rmsd(ideal[:, [0, 2]], X[:, [0, 2]])
    rmsd_o = _rmsd(ideal[:-1, 3], o[:-1])
    assert torch.equal(ideal[:, 1], ca)
    assert rmsd_nc < 0.2, rmsd_nc  # measured 0.063 A on 1eteA
    assert rmsd_o < 0.2, rmsd_o  # measured 0.027 A on 1eteA
    # the thresholds catch wrong conventions: N mirrored across the CA-C axis, psi sign flipped
    local_bad = torch.tensor((se3.IDEAL_N[0], -se3.IDEAL_N[1], 0.0), dtype=F64)
    assert _rmsd(F.apply(local_bad), n) > 1.0
    assert _rmsd(se3.ideal_backbone(F, -psi)[:-1, 3], o[:-1]) > 1.0
