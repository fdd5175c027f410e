"""Backbone readers (PDB, TS50 JSON), round trips and frame crops."""

from pathlib import Path

import pytest
import torch

from modalities.structure.data import (
    THREE_TO_ONE,
    Backbone,
    BackboneCrops,
    load_ts50,
    read_pdb,
    read_pdb_folder,
)
from toolkit.geometry import se3, so3

TS50 = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "ts50" / "ts50.json"
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


@pytest.mark.skipif(not TS50.is_file(), reason="TS50 JSON not present beside the repo")
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
