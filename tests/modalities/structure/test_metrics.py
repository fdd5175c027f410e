"""Backbone metrics: local geometry, Ramachandran, DSSP, Rg scaling, clashes, TM-scores."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

pytest.importorskip("tmtools")
pytest.importorskip("pydssp")

from modalities.structure import metrics as M  # noqa: E402
from modalities.structure.data import TS50_PATH as TS50  # noqa: E402
from modalities.structure.data import load_ts50  # noqa: E402
from toolkit.geometry import se3, so3  # noqa: E402

needs_ts50 = pytest.mark.skipif(not TS50.is_file(), reason="packaged TS50 missing")

# Engh & Huber 1991 backbone bond lengths (A) and angles (deg)
B_CN, B_NCA, B_CAC = 1.329, 1.458, 1.525
A_CACN, A_CNCA, A_NCAC = 116.2, 121.7, 111.2


def nerf_chain(phi, psi, omega=180.0) -> torch.Tensor:
    """(L, 3, 3) N, CA, C backbone with the given phi/psi (degrees) by NeRF placement."""
    L = len(phi)
    rad = math.radians
    x = torch.zeros(L, 3, 3, dtype=torch.float64)
    x[0, 1] = torch.tensor([B_NCA, 0.0, 0.0])
    t = rad(180 - A_NCAC)
    x[0, 2] = x[0, 1] + B_CAC * torch.tensor([math.cos(t), math.sin(t), 0.0], dtype=x.dtype)
    for i in range(L - 1):
        n, ca, c = x[i]
        n1 = se3.place_atom(n, ca, c, B_CN, rad(A_CACN), rad(psi[i]))
        ca1 = se3.place_atom(ca, c, n1, B_NCA, rad(A_CNCA), rad(omega))
        x[i + 1] = torch.stack((n1, ca1, se3.place_atom(c, n1, ca1, B_CAC, rad(A_NCAC),
                                                        rad(phi[i + 1]))))
    return x


def helix(L: int = 30) -> torch.Tensor:
    return nerf_chain([-57.0] * L, [-47.0] * L)


def strand(L: int = 30) -> torch.Tensor:
    return nerf_chain([-120.0] * L, [130.0] * L)


def random_walk(L: int, seed: int) -> np.ndarray:
    """(L, 3, 3) chain whose CA steps are 3.8 A in uniformly random directions."""
    step = np.random.default_rng(seed).normal(size=(L, 3))
    ca = np.cumsum(3.8 * step / np.linalg.norm(step, axis=-1, keepdims=True), 0)
    return np.repeat(ca[:, None], 3, 1)


def test_phi_psi_recovers_nerf_torsions():
    g = np.random.default_rng(0)
    phi, psi = g.uniform(-180, 180, 20), g.uniform(-180, 180, 20)
    pp = M.phi_psi(nerf_chain(phi, psi))
    assert np.isnan(pp[0, 0]) and np.isnan(pp[-1, 1])
    wrap = lambda a: (a + 180) % 360 - 180  # noqa: E731
    assert np.abs(wrap(pp[1:, 0] - phi[1:])).max() < 1e-6
    assert np.abs(wrap(pp[:-1, 1] - psi[:-1])).max() < 1e-6


def test_helix_and_strand_geometry_regions_and_dssp():
    h, s = helix(30), strand(30)
    assert M.ramachandran_regions([h]) == {"alpha_R": 1.0, "beta": 0.0, "alpha_L": 0.0,
                                           "other": 0.0}
    assert M.ramachandran_regions([s])["beta"] == 1.0
    st = M.ca_ca_stats([h, s])
    assert abs(st["mean"] - 3.80) < 0.03 and st["frac_within"] == 1.0
    ang, dih = M.ca_bond_angles([h]), M.ca_dihedrals([h])
    assert ang.shape == (28,) and dih.shape == (27,)
    assert 85 < ang.mean() < 97 and 40 < dih.mean() < 60  # alpha-helix virtual geometry
    assert 110 < M.ca_bond_angles([s]).mean() < 135
    ss = M.secondary_structure([h])  # (L, 3, 3): O completed internally
    assert ss["helix"] > 0.7 and ss["strand"] == 0.0
    assert M.secondary_structure([s])["helix"] == 0.0
    assert math.isnan(M.secondary_structure([h[:4]])["helix"])  # too short for DSSP


def test_w1_zero_on_itself_positive_when_perturbed():
    xs = [helix(25), strand(20), torch.from_numpy(random_walk(30, 1))]
    w = M.angle_w1(xs, xs)
    assert w == {"ca_angle_w1": 0.0, "ca_dihedral_w1": 0.0}
    g = torch.Generator().manual_seed(0)
    noisy = [x + 0.7 * torch.randn(x.shape, generator=g, dtype=x.dtype) for x in xs]
    w2 = M.angle_w1(noisy, xs)
    assert w2["ca_angle_w1"] > 1.0 and w2["ca_dihedral_w1"] > 1.0
    a = np.random.default_rng(2).uniform(-60, 60, 500)
    assert M.circular_w1(a, a + 10.0) == pytest.approx(10.0)  # a rotation
    seam = (a + 180.0 + 180) % 360 - 180  # the same arc straddling +-180
    assert M.circular_w1(seam, seam + 10.0) == pytest.approx(10.0)
    assert wasserstein_distance(seam, (seam + 190) % 360 - 180) > 15  # linear W1 is not
    assert M.circular_w1([179.0], [-179.0]) == pytest.approx(2.0)
    u = np.random.default_rng(3).uniform(-180, 180, 2000)
    assert M.circular_w1(u, u + 90.0) < 5.0  # a uniform law is rotation invariant
    assert M.circular_w1(u, a) <= wasserstein_distance(u, a) + 1e-9


def test_rg_fit_recovers_scaling_exponent():
    g = np.random.default_rng(0)
    structs = []
    for L in (40, 80, 160, 320):
        ca = g.normal(size=(L, 3))
        ca -= ca.mean(0)
        ca *= 2.0 * L**0.4 / np.sqrt((ca**2).sum(-1).mean())
        structs.append(np.repeat(ca[:, None], 3, 1))
    fit = M.rg_fit(structs)
    assert fit["nu"] == pytest.approx(0.4, abs=1e-9) and fit["R0"] == pytest.approx(2.0)
    assert fit["rg_over_L04"] == pytest.approx(2.0)
    assert M.radius_of_gyration(structs[0]) == pytest.approx(2.0 * 40**0.4)
    assert math.isnan(M.rg_fit(structs[:1])["nu"])


def test_clash_counter_finds_planted_clash():
    h = helix(40)
    assert M.ca_clashes([h]) == {"pair_rate": 0.0, "structure_rate": 0.0, "n_clashes": 0.0}
    bad = h.clone()
    bad[30, 1] = bad[5, 1] + torch.tensor([1.5, 0.0, 0.0], dtype=bad.dtype)
    c = M.ca_clashes([h, bad])
    assert c["n_clashes"] >= 1 and c["structure_rate"] == 0.5
    eligible = 2 * sum(40 - k for k in range(3, 40))
    assert c["pair_rate"] == pytest.approx(c["n_clashes"] / eligible)
    # i, i+1 neighbours are 3.8 A apart: a 4 A threshold flags them only when min_sep = 1
    assert M.ca_clashes([h], threshold=4.0, min_sep=1)["n_clashes"] >= 39


def test_tm_scores_identity_and_random_walk():
    h = helix(60).numpy()
    R = so3.random_uniform((), generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64).numpy()
    moved = h @ R.T + np.array([5.0, -3.0, 12.0])
    assert M.tm_diversity([h, moved, h]) > 0.99
    rw = random_walk(60, 0)
    assert M.tm_score(h, rw)["tm"] < 0.3
    assert M.tm_novelty([moved], [rw]) < 0.3
    assert M.tm_novelty([moved], [rw, h]) > 0.99
    div = M.tm_diversity([h, rw, random_walk(50, 1), strand(40)], max_pairs=3)
    assert div == M.tm_diversity([h, rw, random_walk(50, 1), strand(40)], max_pairs=3)
    assert div < 0.5


def test_input_validation_messages():
    good = helix(10)
    with pytest.raises(ValueError, match=r"structure 1 has shape \(10, 2, 3\); expected "
                       r"\(L, 3\|4, 3\)"):
        M.ca_ca_stats([good, np.zeros((10, 2, 3))])
    bad = good.clone()
    bad[4, 1] = float("nan")
    with pytest.raises(ValueError, match="structure 0 residue 4 has non-finite"):
        M.ca_bond_angles([bad])
    with pytest.raises(ValueError, match="no structures"):
        M.ca_clashes([])
    with pytest.raises(ValueError, match="expected a list"):
        M.ca_dihedrals(good)
    with pytest.raises(ValueError, match="needs >= 2 structures"):
        M.tm_diversity([good])
    with pytest.raises(ValueError, match="phi_psi: structure 0 has shape"):
        M.phi_psi(np.zeros((5, 3)))


def test_backbone_report_table():
    gen = [helix(20), helix(30), strand(25)]
    ref = [strand(30), strand(22), helix(26)]
    rep = M.backbone_report(gen, ref, train=ref, max_pairs=3)
    assert rep["generated"]["ss_helix"] == M.secondary_structure(gen)["helix"]
    assert rep["generated"]["ca_angle_w1"] == M.angle_w1(gen, ref)["ca_angle_w1"] > 0
    assert rep["generated"]["tm_novelty"] > 0.5 and math.isnan(rep["data"]["tm_novelty"])
    table = M.format_backbone_report(rep)
    lines = table.splitlines()
    assert lines[0] == "| metric | generated | data |"
    assert len(lines) == 2 + len(M.METRIC_LABELS)
    assert "| DSSP helix |" in table and "n/a" in table


@needs_ts50
def test_ts50_reference_values():
    chains = load_ts50(TS50)
    st = M.ca_ca_stats(chains)
    assert abs(st["mean"] - 3.80) < 0.02 and st["frac_within"] >= 0.95
    assert M.ca_clashes(chains)["n_clashes"] == 0
    rama = M.ramachandran_regions(chains)
    assert sum(rama.values()) == pytest.approx(1.0) and rama["alpha_R"] + rama["beta"] > 0.85
    ss = M.secondary_structure(chains)
    assert 0.2 < ss["helix"] < 0.6 and 0.1 < ss["strand"] < 0.4
    assert 0.25 < M.rg_fit(chains)["nu"] < 0.45
    assert 0.2 < M.tm_diversity(chains, max_pairs=20) < 0.5
