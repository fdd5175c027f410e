"""Protein backbone data: PDB reading, TS50 JSON, residue frames and random crops.

A :class:`Backbone` holds one chain's backbone atoms ``(L, 4, 3)`` in Angstrom (N, CA, C, O)
and its one-letter sequence. :func:`read_pdb` parses the ATOM records of a PDB file (first
model, first alternate location, standard residues with complete N/CA/C backbones);
:func:`load_ts50` reads the TS50 JSON format (``name``, ``seq``, ``coords`` per residue:
N, CA, C, O). :class:`BackboneCrops` turns chains into training items: a random window of
up to ``crop`` residues, its SE(3) frames from N-CA-C (Gram-Schmidt, AlphaFold Suppl.
Alg. 21) with translations centred on the window's CA centre of mass and scaled from
Angstrom to nanometres (FrameFlow's convention), and a residue mask for padding.
:func:`complete_oxygens` places carbonyl oxygens on N/CA/C backbones (generated ones have
none) and :func:`write_pdb` / :func:`write_pdb_models` write backbones as PDB files that
:func:`read_pdb` reads back.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from toolkit.files import atomic_write
from toolkit.geometry import se3

__all__ = ["Backbone", "BackboneCrops", "complete_oxygens", "load_ts50", "read_pdb",
           "read_pdb_folder", "write_pdb", "write_pdb_models"]

BACKBONE_ATOMS = ("N", "CA", "C", "O")
THREE_TO_ONE = {
    "ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E",
    "GLY": "G", "HIS": "H", "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F",
    "PRO": "P", "SER": "S", "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V", "MSE": "M",
}
ANGSTROM_PER_NM = 10.0
PDB_MAX_COORD = 9999.999  # the largest value the PDB format's 8.3f coordinate columns hold
_PDB_NUMBER = re.compile(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*", re.ASCII)
TS50_PATH = Path(__file__).parent / "assets" / "ts50.json.gz"  # see assets/README.md


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


def read_pdb(path: str | Path, chain: str | None = None, strict: bool = False,
             max_ca_gap: float = 4.2) -> Backbone:
    """Backbone of one chain of a PDB file (the first chain when ``chain`` is None).

    Residues that cannot be used are reported with file, chain and residue number: non-standard
    residues (not in :data:`THREE_TO_ONE`) and residues missing N, CA or C are skipped, and
    chain breaks (consecutive CA atoms more than ``max_ca_gap`` Angstrom apart) are found. By
    default each kind is reported once as a warning; ``strict=True`` raises instead.

    Raises:
        FileNotFoundError: missing file. ValueError: no usable residue, a malformed ATOM
            record (the message names the file and line), or (``strict``) any problem above.
    """
    import warnings

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PDB file {str(path)!r} does not exist")
    residues: dict[tuple[str, str], dict[str, list[float]]] = {}
    names: dict[tuple[str, str], str] = {}
    nonstd: dict[tuple[str, str], str] = {}
    chosen = chain
    records = 0
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if line.startswith("ENDMDL"):
            break  # first model only
        if not line.startswith(("ATOM", "HETATM")):
            continue
        records += 1
        if len(line.rstrip()) < 54:  # a cut line would parse "12.3" out of "12.345"
            raise ValueError(f"{path}: line {i}: truncated ATOM record ({len(line.rstrip())} "
                             f"characters; x, y, z take columns 31-54): {line[:80]!r}")
        fields = (line[30:38], line[38:46], line[46:54])
        bad = next((f for f in fields if not _PDB_NUMBER.fullmatch(f)), None)
        if bad is not None:
            raise ValueError(f"{path}: line {i}: malformed ATOM record (coordinate {bad!r} is "
                             f"not a number): {line[:80]!r}")
        xyz = [float(f) for f in fields]
        if not all(abs(v) <= PDB_MAX_COORD for v in xyz):
            raise ValueError(f"{path}: line {i}: coordinates {xyz} beyond +-{PDB_MAX_COORD} A "
                             f"(the PDB columns' range): {line[:80]!r}")
        atom, alt, res = line[12:16].strip(), line[16], line[17:20].strip()
        ch, key = line[21], (line[21], line[22:27])
        if alt not in (" ", "A") or (chosen is not None and ch != chosen):
            continue
        if res not in THREE_TO_ONE:
            if line.startswith("ATOM") or atom in ("N", "CA", "C"):  # not waters, ligands
                nonstd.setdefault(key, res)  # a polymer residue we cannot use
            continue
        if atom not in BACKBONE_ATOMS:
            continue
        chosen = ch if chosen is None else chosen
        names[key] = res
        residues.setdefault(key, {}).setdefault(atom, xyz)
    problems: list[str] = []
    nonstd = {k: v for k, v in nonstd.items() if k[0] == chosen}
    if nonstd:
        problems.append("non-standard residues skipped: " + ", ".join(
            f"{v} {k[0]}{k[1].strip()}" for k, v in list(nonstd.items())[:8])
            + (" ..." if len(nonstd) > 8 else ""))
    rows, seq, ids, missing = [], [], [], []
    for key, atoms in residues.items():
        if all(a in atoms for a in ("N", "CA", "C")):
            nan = [float("nan")] * 3
            rows.append([atoms.get(a, nan) for a in BACKBONE_ATOMS])
            seq.append(THREE_TO_ONE[names[key]])
            ids.append(f"{names[key]} {key[0]}{key[1].strip()}")
        else:
            lacking = [a for a in ("N", "CA", "C") if a not in atoms]
            missing.append(f"{names[key]} {key[0]}{key[1].strip()} (no {'/'.join(lacking)})")
    if missing:
        problems.append("residues missing backbone atoms skipped: " + ", ".join(missing[:8])
                        + (" ..." if len(missing) > 8 else ""))
    if not rows:
        where = f"chain {chain!r}" if chain is not None else "any chain"
        what = (f"{records} ATOM/HETATM records" if records else "no ATOM/HETATM records: "
                "empty or not a PDB file")
        raise ValueError(f"{path}: no residue with N, CA and C atoms in {where} ({what})")
    coords = torch.tensor(rows, dtype=torch.float32)
    gaps = (coords[1:, 1] - coords[:-1, 1]).norm(dim=-1)  # (L-1,)
    breaks = (gaps > max_ca_gap).nonzero()[:, 0].tolist()
    if breaks:
        problems.append(f"chain breaks (CA-CA > {max_ca_gap} A) after: " + ", ".join(
            f"{ids[j]} ({float(gaps[j]):.1f} A)" for j in breaks[:8])
            + (" ..." if len(breaks) > 8 else ""))
    if problems:
        msg = f"{path}: " + "; ".join(problems)
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    return Backbone(f"{path.stem}{chosen or ''}", "".join(seq), coords)


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


def load_ts50(path: str | Path | None = None) -> list[Backbone]:
    """Chains of a TS50-style JSON list (``name``, ``seq``, ``coords`` (L, 4, 3)), plain or
    gzip-compressed; ``None``: the TS50 set shipped with the package (:data:`TS50_PATH`)."""
    path = TS50_PATH if path is None else path
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TS50 JSON {str(path)!r} does not exist")
    import gzip
    import zlib

    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                items = json.load(f)
        else:
            items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable TS50 JSON file ({type(e).__name__}: "
                         f"{' '.join(str(e).split())})") from None
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a non-empty JSON list of chains")
    out = []
    for k, it in enumerate(items):
        try:
            xyz = torch.tensor(it["coords"], dtype=torch.float32)
            big = xyz.abs() > PDB_MAX_COORD  # NaN compares False: Backbone checks finiteness
            if bool(big.any()):
                raise ValueError(f"coordinates beyond +-{PDB_MAX_COORD} A")
            out.append(Backbone(str(it["name"]), str(it["seq"]), xyz))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{path}: entry {k} is not a chain ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]})") from None
    return out


class BackboneCrops(torch.utils.data.Dataset):
    """Random windows of chains as frames: items ``{"rots" (crop, 3, 3), "trans" (crop, 3)
    in nm, centred, "mask" (crop,) bool, "length" ()}``; windows shorter than ``crop`` are
    zero-padded (identity frames, mask False).

    Item ``i`` is a window of chain ``i % len(chains)``; its length is drawn uniformly from
    ``[min(min_length, L), min(crop, L)]`` and its start uniformly, from a generator seeded by
    ``(seed, i)``. ``repeats`` copies of the chain list make one epoch, each copy with fresh
    windows, so an epoch is reproducible and still shows every chain ``repeats`` times.

    Args:
        chains: :class:`Backbone` list. crop: maximum (padded) window length.
        min_length: minimum window length (``None``: always ``min(crop, L)``, the old fixed-size
            behaviour). repeats: copies of the chain list per epoch. seed: window seed.
    """

    def __init__(self, chains: list[Backbone], crop: int = 64, seed: int = 0,
                 min_length: int | None = None, repeats: int = 1) -> None:
        if not chains:
            raise ValueError("BackboneCrops: no chains")
        if crop < 2:
            raise ValueError(f"BackboneCrops: crop must be >= 2, got {crop}")
        if min_length is not None and not 2 <= min_length <= crop:
            raise ValueError(f"BackboneCrops: min_length must be in [2, crop={crop}], got "
                             f"{min_length}")
        if repeats < 1:
            raise ValueError(f"BackboneCrops: repeats must be >= 1, got {repeats}")
        self.chains, self.crop, self.seed = list(chains), int(crop), int(seed)
        self.min_length, self.repeats = min_length, int(repeats)

    def __len__(self) -> int:
        return len(self.chains) * self.repeats

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"BackboneCrops: index {i} out of range [0, {len(self)})")
        b = self.chains[i % len(self.chains)]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        hi = min(len(b), self.crop)
        lo = hi if self.min_length is None else min(self.min_length, hi)
        n = int(torch.randint(lo, hi + 1, (), generator=g))
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


# Carbonyl geometry of Engh & Huber 1991 (Acta Cryst. A47:392): C=O 1.231 A, CA-C-O 120.1 deg.
O_BOND_EH = 1.231
O_ANGLE_EH = 120.1
# psi used for the last residue's O (no N_{i+1} to fix the peptide plane): an extended,
# beta-region value; in TS50 most C-terminal carbonyls sit at psi in 110-180 deg.
DEFAULT_LAST_PSI = 140.0


def complete_oxygens(coords: Tensor, keep_existing: bool = True, bond: float = O_BOND_EH,
                     angle: float = O_ANGLE_EH, last_psi: float = DEFAULT_LAST_PSI) -> Tensor:
    """Backbone with a carbonyl O on every residue.

    For ``i < L - 1`` O lies in the peptide plane CA_i, C_i, N_{i+1}, on the far side of the
    CA_i-C_i axis from N_{i+1}: NeRF placement (Parsons et al. 2005) with
    ``|C=O| = bond``, angle CA-C-O ``= angle`` and dihedral N_{i+1}-CA_i-C_i-O = 180 deg. The
    last residue has no N_{i+1}; its O uses dihedral N-CA-C-O = ``last_psi`` + 180 deg
    (``ideal_backbone``'s psi rule with an extended default psi of 140 deg).

    Args:
        coords: ``(L, 3, 3)`` N, CA, C or ``(L, 4, 3)`` N, CA, C, O in Angstrom.
        keep_existing: keep the finite O atoms of a ``(L, 4, 3)`` input; only NaN ones are
            placed. ``False`` places all of them.
        bond: C=O bond length (Angstrom). angle: CA-C-O angle (degrees).
        last_psi: psi (degrees) assumed for the last residue.

    Returns:
        ``(L, 4, 3)`` tensor of the input's floating dtype (float32 for integer input).

    Raises:
        ValueError: wrong shape or non-finite N/CA/C.
    """
    x = torch.as_tensor(coords)
    if x.ndim != 3 or x.shape[1] not in (3, 4) or x.shape[2] != 3 or x.shape[0] < 1:
        raise ValueError(f"complete_oxygens: coords have shape {tuple(x.shape)}; expected "
                         "(L, 3|4, 3) with L >= 1")
    if not torch.isfinite(x[:, :3]).all():
        bad = int(torch.nonzero(~torch.isfinite(x[:, :3]).all(-1).all(-1))[0])
        raise ValueError(f"complete_oxygens: residue {bad} has non-finite N/CA/C coordinates")
    dtype = x.dtype if x.is_floating_point() else torch.float32
    xd = x.double()
    n, ca, c = xd[:, 0], xd[:, 1], xd[:, 2]  # (L, 3) each
    o = torch.empty_like(ca)  # (L, 3)
    ang = math.radians(angle)
    if len(xd) > 1:
        o[:-1] = se3.place_atom(n[1:], ca[:-1], c[:-1], bond, ang, math.pi)
    o[-1] = se3.place_atom(n[-1], ca[-1], c[-1], bond, ang, math.radians(last_psi) + math.pi)
    if keep_existing and xd.shape[1] == 4:
        old = xd[:, 3]
        o = torch.where(torch.isfinite(old).all(-1, keepdim=True), old, o)
    return torch.cat((xd[:, :3], o[:, None]), 1).to(dtype)


def _backbone_array(coords: Tensor | np.ndarray, what: str) -> np.ndarray:
    """``(L, 3|4, 3)`` float64 numpy copy of torch/numpy coordinates, shape-checked."""
    if isinstance(coords, Tensor):
        coords = coords.detach().cpu().double().numpy()
    x = np.asarray(coords, dtype=np.float64)
    if x.ndim != 3 or x.shape[1] not in (3, 4) or x.shape[2] != 3 or x.shape[0] < 1:
        raise ValueError(f"{what}: coords have shape {x.shape}; expected (L, 3|4, 3), L >= 1")
    return x


def _pdb_model_lines(coords: Tensor | np.ndarray, seq: str | None, chain: str,
                     what: str) -> list[str]:
    """ATOM and TER records (wwPDB format v3.3, section 9) of one backbone chain."""
    x = _backbone_array(coords, what)
    L = x.shape[0]
    if len(chain) != 1 or not chain.isprintable() or chain == " ":
        raise ValueError(f"{what}: chain must be one printable non-blank character, got "
                         f"{chain!r}")
    if L > 9999:
        raise ValueError(f"{what}: {L} residues do not fit the PDB residue-number column")
    seq = "G" * L if seq is None else seq
    if len(seq) != L:
        raise ValueError(f"{what}: sequence length {len(seq)} != {L} residues")
    one_to_three = {v: k for k, v in THREE_TO_ONE.items() if k != "MSE"}
    bad = [(i, a) for i, a in enumerate(seq) if a not in one_to_three]
    if bad:
        raise ValueError(f"{what}: residue {bad[0][0] + 1} has unknown one-letter code "
                         f"{bad[0][1]!r}")
    finite = np.isfinite(x).all(-1)  # (L, A)
    if not finite.all():
        r, a = map(int, np.argwhere(~finite)[0])
        raise ValueError(f"{what}: residue {r + 1} ({one_to_three[seq[r]]}) has non-finite "
                         f"{BACKBONE_ATOMS[a]} coordinates")
    if np.abs(x).max() >= 999.9995:
        raise ValueError(f"{what}: coordinates beyond +-999.999 A do not fit the PDB columns")
    lines, serial = [], 1
    for r in range(L):
        res = one_to_three[seq[r]]
        for a in range(x.shape[1]):
            name = BACKBONE_ATOMS[a]
            px, py, pz = x[r, a]
            # cols 1-6 record, 7-11 serial, 13-16 name, 18-20 residue, 22 chain, 23-26 resSeq,
            # 31-54 xyz (8.3f), 55-60 occupancy, 61-66 B-factor, 77-78 element
            lines.append(f"ATOM  {serial:5d}  {name:<3s} {res:3s} {chain}{r + 1:4d}    "
                         f"{px:8.3f}{py:8.3f}{pz:8.3f}{1.0:6.2f}{0.0:6.2f}          "
                         f"{name[0]:>2s}  ")
            serial += 1
    lines.append(f"TER   {serial:5d}      {one_to_three[seq[-1]]:3s} {chain}{L:4d}")
    return lines


def _header(name: str) -> str:
    return f"HEADER    {name[:40]:<40s}"


def write_pdb(path: str | Path, coords: Tensor | np.ndarray, seq: str | None = None,
              chain: str = "A", name: str | None = None) -> Path:
    """Write one backbone chain as a PDB file (atomically).

    Args:
        path: output file. coords: ``(L, 3, 3)`` N, CA, C or ``(L, 4, 3)`` N, CA, C, O in
            Angstrom (torch or numpy). Complete missing O with :func:`complete_oxygens` or
            drop the column first: NaN coordinates are an error.
        seq: one-letter sequence (default poly-GLY). chain: chain identifier.
        name: HEADER text (default: the file stem).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: bad shape, sequence, chain id, non-finite or out-of-range coordinates.
    """
    path = Path(path)
    lines = [_header(path.stem if name is None else name)]
    lines += _pdb_model_lines(coords, seq, chain, f"write_pdb({path.name})")
    text = "\n".join(lines + ["END"]) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_pdb_models(path: str | Path, models: Sequence[Tensor | np.ndarray],
                     seqs: Sequence[str | None] | None = None, chain: str = "A",
                     name: str | None = None) -> Path:
    """Write several backbones as MODEL/ENDMDL blocks of one PDB file (atomically).

    :func:`read_pdb` reads the first model. Arguments as :func:`write_pdb`; ``seqs`` holds
    one sequence (or None) per model.
    """
    path = Path(path)
    if len(models) == 0:
        raise ValueError(f"write_pdb_models({path.name}): no models")
    seqs = [None] * len(models) if seqs is None else list(seqs)
    if len(seqs) != len(models):
        raise ValueError(f"write_pdb_models({path.name}): {len(seqs)} sequences for "
                         f"{len(models)} models")
    lines = [_header(path.stem if name is None else name)]
    for k, (xyz, s) in enumerate(zip(models, seqs), 1):
        lines.append(f"MODEL     {k:4d}")
        lines += _pdb_model_lines(xyz, s, chain, f"write_pdb_models({path.name}) model {k}")
        lines.append("ENDMDL")
    text = "\n".join(lines + ["END"]) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def load_chains(source: str | Path = "ts50", min_length: int = 8) -> list[Backbone]:
    """Chains from ``"ts50"`` (the shipped set), a folder of ``*.pdb`` files, or a TS50-style
    ``.json`` / ``.json.gz`` file."""
    if str(source).lower() == "ts50":
        return load_ts50()
    p = Path(source)
    if p.is_dir():
        return read_pdb_folder(p, min_length)
    if p.is_file() and (p.name.endswith(".json") or p.name.endswith(".json.gz")):
        return load_ts50(p)
    if p.is_file() and p.suffix.lower() == ".pdb":
        return [read_pdb(p)]
    raise FileNotFoundError(f"backbone source {str(source)!r} is neither 'ts50', a folder of "
                            "*.pdb files, a .pdb file nor a TS50-style .json(.gz) file")


def backbone_dataset(source: str | Path = "ts50", crop: int = 128, min_length: int | None = 60,
                     repeats: int = 64, seed: int = 0) -> BackboneCrops:
    """Training crops of :func:`load_chains` ``(source)`` (the ``protein_backbones`` recipe
    data group); chains shorter than ``min_length`` are kept as whole-chain items."""
    return BackboneCrops(load_chains(source), crop=crop, min_length=min_length,
                         repeats=repeats, seed=seed)
