"""Protein backbone data: PDB reading, TS50 JSON, residue frames and random crops.

A :class:`Backbone` holds one chain's backbone atoms ``(L, 4, 3)`` in Angstrom (N, CA, C, O)
and its one-letter sequence. :func:`read_pdb` parses the ATOM records of a PDB file (first
model, first alternate location, standard residues with complete N/CA/C backbones);
:func:`load_ts50` reads the TS50 JSON format (``name``, ``seq``, ``coords`` per residue:
N, CA, C, O). :class:`BackboneCrops` turns chains into training items: a random window of
up to ``crop`` residues, its SE(3) frames from N-CA-C (Gram-Schmidt, AlphaFold Suppl.
Alg. 21) with translations centred on the window's CA centre of mass and scaled from
Angstrom to nanometres (FrameFlow's convention), and a residue mask for padding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from toolkit.geometry import se3

__all__ = ["Backbone", "BackboneCrops", "load_ts50", "read_pdb", "read_pdb_folder"]

BACKBONE_ATOMS = ("N", "CA", "C", "O")
THREE_TO_ONE = {
    "ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E",
    "GLY": "G", "HIS": "H", "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F",
    "PRO": "P", "SER": "S", "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V", "MSE": "M",
}
ANGSTROM_PER_NM = 10.0


@dataclass(frozen=True)
class Backbone:
    """One chain: ``coords (L, 4, 3)`` float32 Angstrom (N, CA, C, O; O may be NaN when the
    file has none), ``seq`` (length L) and a ``name``."""

    name: str
    seq: str
    coords: Tensor

    def __post_init__(self) -> None:
        if self.coords.ndim != 3 or self.coords.shape[1:] != (4, 3):
            raise ValueError(f"Backbone {self.name!r}: coords must be (L, 4, 3), got "
                             f"{tuple(self.coords.shape)}")
        if len(self.seq) != self.coords.shape[0]:
            raise ValueError(f"Backbone {self.name!r}: sequence length {len(self.seq)} != "
                             f"{self.coords.shape[0]} residues")
        if not torch.isfinite(self.coords[:, :3]).all():
            raise ValueError(f"Backbone {self.name!r}: non-finite N/CA/C coordinates")

    def __len__(self) -> int:
        return self.coords.shape[0]


def read_pdb(path: str | Path, chain: str | None = None) -> Backbone:
    """Backbone of one chain of a PDB file (the first chain when ``chain`` is None).

    Raises:
        FileNotFoundError: missing file. ValueError: no usable residue, or a malformed ATOM
            record (the message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PDB file {str(path)!r} does not exist")
    residues: dict[tuple[str, str], dict[str, list[float]]] = {}
    names: dict[tuple[str, str], str] = {}
    chosen = chain
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if line.startswith("ENDMDL"):
            break  # first model only
        if not line.startswith(("ATOM", "HETATM")):
            continue
        try:
            atom, alt, res = line[12:16].strip(), line[16], line[17:20].strip()
            ch, key = line[21], (line[21], line[22:27])
            xyz = [float(line[30:38]), float(line[38:46]), float(line[46:54])]
        except (ValueError, IndexError) as e:
            raise ValueError(f"{path}: line {i}: malformed ATOM record ({e}): {line!r}") from e
        if res not in THREE_TO_ONE or atom not in BACKBONE_ATOMS or alt not in (" ", "A"):
            continue
        chosen = ch if chosen is None else chosen
        if ch != chosen:
            continue
        names[key] = res
        residues.setdefault(key, {}).setdefault(atom, xyz)
    rows, seq = [], []
    for key, atoms in residues.items():
        if all(a in atoms for a in ("N", "CA", "C")):
            nan = [float("nan")] * 3
            rows.append([atoms.get(a, nan) for a in BACKBONE_ATOMS])
            seq.append(THREE_TO_ONE[names[key]])
    if not rows:
        where = f"chain {chain!r}" if chain is not None else "any chain"
        raise ValueError(f"{path}: no residue with N, CA and C atoms in {where}")
    return Backbone(f"{path.stem}{chosen or ''}", "".join(seq),
                    torch.tensor(rows, dtype=torch.float32))


def read_pdb_folder(root: str | Path, min_length: int = 8) -> list[Backbone]:
    """Every ``*.pdb`` under ``root`` (first chain each; chains shorter than ``min_length``
    are skipped). Raises if the folder is missing or yields no chain."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"PDB folder {str(root)!r} does not exist")
    chains = [b for p in sorted(root.rglob("*.pdb")) if len(b := read_pdb(p)) >= min_length]
    if not chains:
        raise ValueError(f"no chain of >= {min_length} residues in a *.pdb file under {root}")
    return chains


def load_ts50(path: str | Path) -> list[Backbone]:
    """Chains of a TS50-style JSON list (``name``, ``seq``, ``coords`` (L, 4, 3))."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TS50 JSON {str(path)!r} does not exist")
    items = json.loads(path.read_text())
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a non-empty JSON list of chains")
    out = []
    for k, it in enumerate(items):
        try:
            out.append(Backbone(str(it["name"]), str(it["seq"]),
                                torch.tensor(it["coords"], dtype=torch.float32)))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: entry {k} is not a chain ({e})") from e
    return out


class BackboneCrops(torch.utils.data.Dataset):
    """Random windows of chains as frames: items ``{"rots" (crop, 3, 3), "trans" (crop, 3)
    in nm, centred, "mask" (crop,) bool, "length" ()}``; shorter chains are zero-padded
    (identity frames, mask False).

    Args:
        chains: :class:`Backbone` list. crop: window length. seed: crop positions are drawn
            from ``seed`` and the item index, so an epoch is reproducible.
    """

    def __init__(self, chains: list[Backbone], crop: int = 64, seed: int = 0) -> None:
        if not chains:
            raise ValueError("BackboneCrops: no chains")
        if crop < 2:
            raise ValueError(f"BackboneCrops: crop must be >= 2, got {crop}")
        self.chains, self.crop, self.seed = list(chains), int(crop), int(seed)

    def __len__(self) -> int:
        return len(self.chains)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        b = self.chains[i]
        n = min(len(b), self.crop)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        start = int(torch.randint(0, len(b) - n + 1, (), generator=g))
        xyz = b.coords[start:start + n].double()  # (n, 4, 3)
        fr = se3.frames_from_backbone(xyz[:, 0], xyz[:, 1], xyz[:, 2])
        trans = se3.center(fr.trans) / ANGSTROM_PER_NM  # (n, 3)
        rots = torch.eye(3, dtype=torch.float64).repeat(self.crop, 1, 1)
        rots[:n] = fr.rots
        t = torch.zeros(self.crop, 3, dtype=torch.float64)
        t[:n] = trans
        mask = torch.arange(self.crop) < n
        return {"rots": rots.float(), "trans": t.float(), "mask": mask,
                "length": torch.tensor(n)}
