"""Hostile protein-structure items (issue 9, category 4): malformed PDB files and TS50 JSON.

Every case must end in a clear ``ValueError`` / ``FileNotFoundError`` naming the file (and the
line for a bad ATOM record), a warning naming the file (non-standard residues, missing atoms,
chain breaks: the chain is still read), or a :class:`Backbone` with finite N/CA/C coordinates
inside the PDB range (see :mod:`tests.modalities.hostile`).
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modalities.structure.data import (
    PDB_MAX_COORD,
    Backbone,
    load_ts50,
    read_pdb,
    read_pdb_folder,
    write_pdb,
)
from tests.modalities.hostile import outcome, report
from toolkit.geometry import se3, so3

#: distinct hostile case kinds of this file (the issue's table counts them)
HOSTILE_CASES: dict[str, str] = {
    "truncated_file": "a valid PDB cut at a random character",
    "truncated_atom_line": "one ATOM line cut short at a random column",
    "non_numeric_coordinate": "a coordinate field replaced by random text",
    "nan_inf_coordinate": "nan / inf / -inf written in a coordinate field",
    "huge_coordinate": "1e30-style or out-of-column-range coordinates",
    "empty_file": "an empty or whitespace-only file",
    "no_ca_atoms": "every CA (or every N / C) record removed",
    "binary_garbage": "random bytes named .pdb",
    "shuffled_lines": "ATOM lines dropped or duplicated (missing atoms, chain breaks)",
    "bad_ts50_json": "TS50 JSON truncated, not JSON, wrong types, NaN / huge coords",
}
N_HOSTILE_CASES = len(HOSTILE_CASES)
EXAMPLES = 30  # hypothesis examples per test (fixed budget)

SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _print_tally():
    yield
    print(f"\n{report('structure.')}")


def _chain(n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    frames = se3.Rigid(so3.random_uniform((n,), generator=g, dtype=torch.float64),
                       torch.cumsum(torch.randn(n, 3, generator=g, dtype=torch.float64), 0))
    return se3.ideal_backbone(frames, psi=torch.zeros(n, dtype=torch.float64))  # (n, 4, 3)


with tempfile.TemporaryDirectory() as _d:
    GOOD = write_pdb(Path(_d) / "good.pdb", _chain(), seq="ACDEFGHI").read_text()
LINES = GOOD.splitlines()
ATOMS = [i for i, line in enumerate(LINES) if line.startswith("ATOM")]


def _check_backbone(b: Backbone) -> None:
    assert b.coords.ndim == 3 and b.coords.shape[1:] == (4, 3) and len(b.seq) == len(b) > 0
    xyz = b.coords[:, :3]
    assert bool(torch.isfinite(xyz).all()) and float(xyz.abs().max()) <= PDB_MAX_COORD


def _read(text: str | bytes, case: str, line: int | None = None) -> str:
    """``read_pdb`` (default and strict) and ``read_pdb_folder`` on one hostile file."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.pdb"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        kind, b = outcome(lambda: read_pdb(path), str(path), case=case)
        if kind == "error" and line is not None:
            assert f"{path}: line {line}:" in str(b)  # the bad record is named
        elif kind != "error":
            _check_backbone(b)
        strict, _ = outcome(lambda: read_pdb(path, strict=True), str(path))
        assert strict == ("accepted" if kind == "accepted" else "error")
        folder, chains = outcome(lambda: read_pdb_folder(d, min_length=1), str(path), d)
        assert folder == kind
        if kind != "error":
            assert len(chains) == 1
    return kind


@SETTINGS
@example(frac=0.0)
@given(frac=st.floats(0.0, 1.0))
def test_truncated_pdb_file(frac):
    _read(GOOD[: int(len(GOOD) * frac)], "structure.truncated_file")


@SETTINGS
@given(k=st.sampled_from(ATOMS), col=st.integers(0, 53))
def test_truncated_atom_line(k, col):
    lines = list(LINES)
    lines[k] = lines[k][:col]
    kind = _read("\n".join(lines), "structure.truncated_atom_line")
    assert kind == "error" or col < 4  # "ATOM" itself cut: no longer an ATOM record


@SETTINGS
@given(k=st.sampled_from(ATOMS), axis=st.integers(0, 2),
       text=st.one_of(st.text(min_size=1, max_size=8),
                      st.sampled_from(["xx.000", "1_000.0", "0x10", "1,5", "--1.0", "", "   .  ",
                                       "١٢٣", "1.0.0", "1e", "e5"])))
def test_non_numeric_coordinate(k, axis, text):
    field = f"{text:>8.8s}"
    if any(c in field for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
        return  # a line break in the field makes a truncated line (covered above)
    lines = list(LINES)
    a = 30 + 8 * axis
    lines[k] = lines[k][:a] + field + lines[k][a + 8:]
    kind = _read("\n".join(lines), "structure.non_numeric_coordinate", k + 1)
    numeric = re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", field, re.ASCII)
    assert kind == "error" or numeric


@SETTINGS
@given(k=st.sampled_from(ATOMS), axis=st.integers(0, 2),
       value=st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e30", "-1e300",
                              "99999.0", "-10000.", "1e4", "1e999"]))
def test_nan_inf_and_huge_coordinates(k, axis, value):
    lines = list(LINES)
    a = 30 + 8 * axis
    lines[k] = lines[k][:a] + f"{value:>8s}" + lines[k][a + 8:]
    case = ("structure.huge_coordinate" if any(c.isdigit() for c in value)
            and value != "1e999" else "structure.nan_inf_coordinate")
    assert _read("\n".join(lines), case, k + 1) == "error"


@SETTINGS
@example(text="")
@given(text=st.text(st.sampled_from(" \t\r\n"), max_size=10))
def test_empty_file(text):
    assert _read(text, "structure.empty_file") == "error"


@SETTINGS
@given(atom=st.sampled_from(["CA", "N", "C"]), keep=st.integers(0, 3))
def test_no_ca_atoms(atom, keep):
    drop = [i for i in ATOMS if LINES[i][12:16].strip() == atom][keep:]
    text = "\n".join(line for i, line in enumerate(LINES) if i not in drop)
    kind = _read(text, "structure.no_ca_atoms")
    assert kind == ("error" if keep == 0 else "warned")


@SETTINGS
@example(data=b"\x00" * 100)
@example(data=b"ATOM\xff\xfe" * 20)
@given(data=st.binary(max_size=400))
def test_binary_garbage(data):
    _read(data, "structure.binary_garbage")


@SETTINGS
@given(ops=st.lists(st.tuples(st.sampled_from(["drop", "dup", "swap"]), st.sampled_from(ATOMS),
                              st.sampled_from(ATOMS)), min_size=1, max_size=5))
def test_dropped_duplicated_or_swapped_atom_lines(ops):
    lines = list(LINES)
    for op, i, j in ops:
        if op == "drop":
            lines[i] = "REMARK dropped"
        elif op == "dup":
            lines.insert(i, lines[j])
        else:
            lines[i], lines[j] = lines[j], lines[i]
    _read("\n".join(lines), "structure.shuffled_lines")


TS50_ITEMS = st.one_of(
    st.sampled_from([None, 3, "x", [], {}, {"name": "a"}, {"name": "a", "seq": "A"},
                     {"name": "a", "seq": "A", "coords": None},
                     {"name": "a", "seq": "A", "coords": "abc"},
                     {"name": "a", "seq": "A", "coords": [[[0, 0, 0]] * 4] * 2},
                     {"name": "a", "seq": "AA", "coords": [[[0, 0]] * 4] * 2},
                     {"name": "a", "seq": "A", "coords": [[[float("nan")] * 3] * 4]},
                     {"name": "a", "seq": "A", "coords": [[[1e30] * 3] * 4]},
                     {"name": "a", "seq": "A", "coords": [[[0, 0, 0]] * 4]}]))


@SETTINGS
@given(items=st.one_of(st.lists(TS50_ITEMS, max_size=3), TS50_ITEMS),
       cut=st.one_of(st.none(), st.floats(0.0, 0.99)), zipped=st.booleans())
def test_bad_ts50_json(items, cut, zipped):
    raw = json.dumps(items).encode()
    if cut is not None:
        raw = raw[: int(len(raw) * cut)]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("x.json.gz" if zipped else "x.json")
        if zipped:
            z = gzip.compress(raw)
            path.write_bytes(z if cut is None else z[: max(1, int(len(z) * cut))])
        else:
            path.write_bytes(raw)
        kind, chains = outcome(lambda: load_ts50(path), str(path), case="structure.bad_ts50_json")
        if kind != "error":
            assert chains and all(_check_backbone(b) is None for b in chains)
