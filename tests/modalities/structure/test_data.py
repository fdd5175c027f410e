"""Backbone readers (PDB, TS50 JSON), round trips and frame crops."""

from pathlib import Path

import pytest
import torch

from modalities.structure.data import (
    THREE_TO_ONE,
    TS50_PATH,
    Backbone,
    BackboneCrops,
    load_ts50,
    read_pdb,
    read_pdb_folder,
)
from toolkit.geometry import se3, so3

TS50 = TS50_PATH  # shipped with the package (modalities/structure/assets)
ONE_TO_THREE = {v: k for k, v in THREE_TO_ONE.items() if k != "MSE"}


def _write_pdb(path: Path, b: Backbone, chain: str = "A", extra: str = "") -> Path:
    lines, serial = [], 1
    for r, (aa, xyz) in enumerate(zip(b.seq, b.coords.tolist()), 1):
        for name, (x, y, z) in zip(("N", "CA", "C", "O"), xyz):
            lines.append(f"ATOM  {serial:5d}  {name:<3s} {ONE_TO_THREE[aa]} {chain}{r:4d}    "
                         f"{x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00           {name[0]}")
            serial += 1
    path.write_text(extra + "\n".join(lines) + "\nEND\n")
    return path


def _toy_chain(n: int = 12, seed: int = 0) -> Backbone:
    g = torch.Generator().manual_seed(seed)
    frames = se3.Rigid(so3.random_uniform((n,), generator=g, dtype=torch.float64),
                       torch.cumsum(torch.randn(n, 3, generator=g, dtype=torch.float64), 0) * 3)
    atoms = se3.ideal_backbone(frames, psi=torch.zeros(n, dtype=torch.float64))  # (n, 4, 3)
    return Backbone("toy", "ACDEFGHIKLMN"[:n], atoms.float())


def test_pdb_round_trip_and_chain_selection(tmp_path):
    b = _toy_chain()
    p = _write_pdb(tmp_path / "toy.pdb", b, extra="HEADER    TEST\nHETATM    1  O   HOH A 999"
                   "       0.000   0.000   0.000  1.00  0.00           O\n")
    r = read_pdb(p)
    assert r.seq == b.seq and r.coords.shape == (12, 4, 3)
    assert torch.allclose(r.coords, b.coords, atol=6e-4)  # PDB keeps 3 decimals
    with pytest.raises(ValueError, match="no residue with N, CA and C atoms in chain 'B'"):
        read_pdb(p, chain="B")
    assert len(read_pdb_folder(tmp_path)) == 1


def test_bad_pdb_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_pdb(tmp_path / "missing.pdb")
    bad = tmp_path / "bad.pdb"
    bad.write_text("ATOM      1  N   ALA A   1      xx.000   0.000   0.000  1.00  0.00\n")
    with pytest.raises(ValueError, match="line 1: malformed ATOM record"):
        read_pdb(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no chain"):
        read_pdb_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"coords must be \(L, 4, 3\)"):
        Backbone("x", "A", torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="non-finite"):
        Backbone("x", "A", torch.full((1, 4, 3), float("nan")))


def test_crops_are_centred_frames_with_padding():
    chains = [_toy_chain(12, 0), _toy_chain(5, 1)]
    ds = BackboneCrops(chains, crop=8, seed=3)
    a, b = ds[0], ds[1]
    assert a["rots"].shape == (8, 3, 3) and a["trans"].shape == (8, 3) and a["mask"].all()
    assert int(b["length"]) == 5 and b["mask"].tolist() == [True] * 5 + [False] * 3
    assert torch.equal(b["rots"][5:], torch.eye(3).expand(3, 3, 3))
    for item in (a, b):
        m = item["mask"]
        r = item["rots"][m].double()
        assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3, dtype=torch.float64),
                              atol=1e-5)
        assert item["trans"][m].mean(0).abs().max() < 1e-5  # centred, in nm
    again = BackboneCrops(chains, crop=8, seed=3)[0]
    assert torch.equal(again["trans"], a["trans"])  # reproducible windows
    # the frames of a crop are those of the full chain's window (up to the centring shift)
    full = se3.frames_from_backbone(*chains[0].coords.double().unbind(1)[:3])
    d = so3.geodesic_distance(full.rots.float()[:, None], a["rots"][None]).min(0).values
    assert d.max() < 1e-4


def test_ts50_chains_and_pdb_round_trip(tmp_path):
    chains = load_ts50(TS50)
    assert len(chains) == 50 and sum(len(c) for c in chains) == 6861
    ca = chains[0].coords[:, 1]
    step = (ca[1:] - ca[:-1]).norm(dim=-1)
    assert abs(float(step.mean()) - 3.80) < 0.05  # consecutive CA-CA distance (Angstrom)
    r = read_pdb(_write_pdb(tmp_path / "c.pdb", chains[0]))
    assert r.seq == chains[0].seq and torch.allclose(r.coords, chains[0].coords, atol=6e-4)
    item = BackboneCrops(chains, crop=64)[0]
    span = item["trans"][item["mask"]].norm(dim=-1).max()
    assert 0.5 < float(span) < 5.0  # a 64-residue window spans nanometres, not Angstrom


# ---- PDB writer and oxygen completion -------------------------------------------------------

def test_write_pdb_round_trip_and_columns(tmp_path):
    from modalities.structure.data import write_pdb

    b = _toy_chain()
    p = write_pdb(tmp_path / "out" / "toy.pdb", b.coords, seq=b.seq, chain="B", name="toy model")
    r = read_pdb(p)
    assert r.seq == b.seq and torch.allclose(r.coords, b.coords, atol=1e-3)  # O included
    lines = p.read_text().splitlines()
    assert lines[0].startswith("HEADER    toy model") and lines[-1] == "END"
    assert lines[-2].startswith("TER   ") and lines[-2][17:20] == "ASN" and lines[-2][21] == "B"
    atoms = [ln for ln in lines if ln.startswith("ATOM  ")]
    assert len(atoms) == 48 and all(len(ln) == 80 for ln in atoms)
    ca = atoms[1]
    assert ca[12:16] == " CA " and ca[17:20] == "ALA" and ca[21] == "B" and ca[22:26] == "   1"
    assert ca[76:78] == " C" and atoms[3][76:78] == " O" and int(atoms[47][6:11]) == 48
    assert abs(float(ca[30:38]) - float(b.coords[0, 1, 0])) < 6e-4
    # (L, 3, 3) numpy input without a sequence: poly-GLY, O absent on reading back
    q = write_pdb(tmp_path / "ncac.pdb", b.coords[:, :3].double().numpy())
    r2 = read_pdb(q)
    assert r2.seq == "G" * 12 and torch.isnan(r2.coords[:, 3]).all()
    assert torch.allclose(r2.coords[:, :3], b.coords[:, :3], atol=1e-3)


def test_write_pdb_rejects_bad_input(tmp_path):
    from modalities.structure.data import write_pdb

    x = _toy_chain().coords.clone()
    x[3, 1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"residue 4 \(GLY\) has non-finite CA"):
        write_pdb(tmp_path / "nan.pdb", x)
    assert not (tmp_path / "nan.pdb").exists()
    good = _toy_chain().coords
    with pytest.raises(ValueError, match="sequence length 3 != 12"):
        write_pdb(tmp_path / "a.pdb", good, seq="ACD")
    with pytest.raises(ValueError, match="residue 2 has unknown one-letter code 'X'"):
        write_pdb(tmp_path / "a.pdb", good, seq="AX" + "A" * 10)
    with pytest.raises(ValueError, match=r"expected \(L, 3\|4, 3\)"):
        write_pdb(tmp_path / "a.pdb", good[:, :2])
    with pytest.raises(ValueError, match="beyond"):
        write_pdb(tmp_path / "a.pdb", good * 1000)


def test_write_pdb_models_reads_first_model(tmp_path):
    from modalities.structure.data import write_pdb_models

    a, b = _toy_chain(12, 0), _toy_chain(5, 1)
    p = write_pdb_models(tmp_path / "m.pdb", [a.coords, b.coords], seqs=[a.seq, None])
    text = p.read_text()
    assert text.count("\nMODEL ") == 2 and text.count("ENDMDL") == 2
    r = read_pdb(p)
    assert r.seq == a.seq and torch.allclose(r.coords, a.coords, atol=1e-3)


def test_complete_oxygens_geometry_and_keep_existing():
    from modalities.structure.data import complete_oxygens

    b = _toy_chain(12, 2)
    x = b.coords.double()
    full = complete_oxygens(x[:, :3], bond=1.231, angle=120.1)  # (L, 4, 3)
    assert full.shape == (12, 4, 3) and full.dtype == torch.float64
    n, ca, c, o = full.unbind(1)
    assert torch.allclose((o - c).norm(dim=-1), torch.full((12,), 1.231, dtype=x.dtype))
    u, v = ca - c, o - c
    ang = torch.rad2deg(torch.acos((u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))))
    assert torch.allclose(ang, torch.full_like(ang, 120.1), atol=1e-6)
    # peptide plane: O opposite N_{i+1} across the CA_i-C_i axis (dihedral 180 deg)
    d = se3.dihedral(n[1:], ca[:-1], c[:-1], o[:-1])
    assert torch.allclose(d.abs(), torch.full_like(d, torch.pi), atol=1e-6)
    # the toy chain's O came from psi = 0 (ideal_backbone), which last_psi=0 reproduces
    last = complete_oxygens(x, keep_existing=False, bond=se3.O_BOND,
                            angle=float(torch.rad2deg(torch.tensor(se3.O_ANGLE))), last_psi=0.0)
    assert torch.allclose(last[-1, 3], x[-1, 3], atol=1e-6)
    part = x.clone()
    part[[2, 7], 3] = float("nan")
    kept = complete_oxygens(part)
    assert torch.equal(kept[[0, 1, 3]], part[[0, 1, 3]]) and torch.isfinite(kept).all()
    assert not torch.allclose(complete_oxygens(part, keep_existing=False)[:, 3], x[:, 3])
    with pytest.raises(ValueError, match="residue 1 has non-finite"):
        complete_oxygens(torch.where(torch.arange(12)[:, None, None] == 1, torch.nan, x))


def test_complete_oxygens_reproduces_ts50_carbonyls():
    from modalities.structure.data import complete_oxygens

    sq, n = 0.0, 0
    for b in load_ts50(TS50):
        o = complete_oxygens(b.coords[:, :3].double())[:-1, 3]  # (L - 1, 3)
        sq += float(((o - b.coords[:-1, 3].double()) ** 2).sum())
        n += len(o)
        assert torch.equal(complete_oxygens(b.coords), b.coords)  # real O kept
    assert (sq / n) ** 0.5 < 0.3  # Angstrom RMS (measured 0.046)


def test_shipped_ts50_matches_the_shared_copy_and_load_chains():
    chains = load_ts50()  # the packaged gzip copy
    assert len(chains) == 50 and sum(len(c) for c in chains) == 6861
    shared = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "ts50" / "ts50.json"
    if shared.is_file():
        ref = load_ts50(shared)
        assert all(torch.equal(a.coords, b.coords) and a.seq == b.seq for a, b in zip(chains, ref))
    from modalities.structure.data import backbone_dataset, load_chains

    assert len(load_chains("ts50")) == 50
    with pytest.raises(FileNotFoundError, match="neither"):
        load_chains("no/such/source")
    ds = backbone_dataset(crop=128, min_length=60, repeats=2)
    lengths = [int(ds[i]["length"]) for i in range(len(ds))]
    assert len(ds) == 100 and min(lengths) >= 60 and max(lengths) <= 128
    assert len(set(lengths)) > 20  # variable crop lengths
    assert torch.equal(ds[7]["trans"], ds[7]["trans"])  # reproducible
    assert not torch.equal(ds[7]["trans"], ds[57]["trans"])  # same chain, other window


def test_read_pdb_reports_nonstandard_missing_atoms_and_breaks(tmp_path):
    from modalities.structure.data import complete_oxygens, write_pdb

    chain = load_ts50()[0]
    p = write_pdb(tmp_path / "ok.pdb", complete_oxygens(chain.coords[:30]), chain.seq[:30])
    lines = p.read_text().splitlines()
    import warnings as w

    with w.catch_warnings():
        w.simplefilter("error")  # a clean chain reads without any warning
        assert len(read_pdb(p)) == 30
    bad = []
    for line in lines:
        if line.startswith("ATOM") and line[22:26].strip() == "5":
            line = line[:17] + "XYZ" + line[20:]  # a non-standard residue
        if line.startswith("ATOM") and line[22:26].strip() == "9" and line[12:16].strip() == "CA":
            continue  # residue 9 loses its CA
        bad.append(line)
    q = tmp_path / "bad.pdb"
    q.write_text("\n".join(bad) + "\n")
    with pytest.warns(UserWarning) as rec:
        b = read_pdb(q)
    msg = str(rec[0].message)
    assert str(q) in msg and "XYZ A5" in msg and "A9 (no CA)" in msg and "chain breaks" in msg
    assert len(b) == 28
    with pytest.raises(ValueError, match="XYZ A5"):
        read_pdb(q, strict=True)
