"""``toolkit sample`` / ``toolkit eval`` for backbone runs (``protein_backbone_*`` recipes).

``toolkit sample checkpoint=RUN lengths=[60,80,100,128] n=2 out=DIR`` writes one PDB file per
sample (N, CA, C and a peptide-plane O) and ``traces.png`` (CA traces); ``motif=FILE.pdb
motif_residues=10-25,40-44`` keeps those residues of the file's first chain (1-based, inclusive)
and generates the rest of a chain of the file's length around them.

``toolkit eval checkpoint=RUN n=64`` samples ``n`` chains with lengths spread evenly over
``[min_length, max_length]`` (default 60-128), compares them with the real chains of the run's
data source (:func:`~.metrics.backbone_report`: CA-CA distances, CA angle/dihedral W1,
Ramachandran regions, DSSP fractions, radius of gyration, clashes, TM diversity and novelty to
the training chains) and writes ``RUN/eval.json``, ``RUN/eval/*.pdb`` and
``RUN/eval/traces.png``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from toolkit.files import atomic_write

SAMPLE_KEYS = {"checkpoint": str, "lengths": str, "n": int, "steps": int, "seed": int,
               "out": str, "ckpt": str, "motif": str, "motif_residues": str,
               "grid_power": float, "rot_rate": float}
EVAL_KEYS = {"checkpoint": str, "n": int, "steps": int, "seed": int, "ckpt": str,
             "min_length": int, "max_length": int, "grid_power": float, "rot_rate": float,
             "max_pairs": int}


def parse_lengths(text: str | int) -> list[int]:
    """``"[60,80]"``, ``"60,80"`` or ``"100"`` -> list of ints >= 2 (ValueError otherwise)."""
    items = [s.strip() for s in str(text).strip().strip("[]").split(",") if s.strip()]
    try:
        out = [int(s) for s in items]
    except ValueError as e:
        raise ValueError(f"lengths must be integers, e.g. lengths=[60,80,100], got {text!r}"
                         ) from e
    if not out or any(n < 2 for n in out):
        raise ValueError(f"lengths must be integers >= 2, got {text!r}")
    return out


def parse_ranges(text: str, length: int) -> torch.Tensor:
    """``"10-25,40"`` (1-based, inclusive) -> ``(length,)`` bool mask."""
    mask = torch.zeros(length, dtype=torch.bool)
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError as e:
            raise ValueError(f"motif_residues: bad range {part!r} (use e.g. 10-25,40)") from e
        if not 1 <= a <= b <= length:
            raise ValueError(f"motif_residues: range {part!r} is outside residues 1..{length}")
        mask[a - 1:b] = True
    if not mask.any():
        raise ValueError("motif_residues selects no residue")
    return mask


def _options(kv: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if kv.get("steps") is not None:
        out["steps"] = int(kv["steps"])
    if kv.get("grid_power") is not None:
        out["grid_power"] = float(kv["grid_power"])
    if kv.get("rot_rate") is not None:
        out["rot_rate"] = None if float(kv["rot_rate"]) <= 0 else float(kv["rot_rate"])
    return out


def _load(run: str, ckpt: str = "latest") -> tuple[Any, Any, Any]:
    from toolkit.train.checkpoint import load_run

    model, task, cfg, _ = load_run(run, ckpt)
    if not hasattr(task, "kind") or not hasattr(task, "val_lengths"):
        raise ValueError(f"run {run!r} is not a backbone run (task {type(task).__name__})")
    return model, task, cfg


def _write(structs: list[torch.Tensor], out: Path, prefix: str) -> list[Path]:
    from modalities.structure.data import complete_oxygens, write_pdb

    paths = []
    for i, s in enumerate(structs):
        p = out / f"{prefix}_{i:03d}_L{len(s)}.pdb"
        write_pdb(p, complete_oxygens(s), name=f"{prefix} {i} (L={len(s)})")
        paths.append(p)
    return paths


def sample_run(kv: dict[str, Any]) -> dict[str, Any]:
    """Backbone samples of a run as PDB files + a CA-trace picture (module docstring)."""
    from modalities.structure.data import read_pdb
    from modalities.structure.sample import plot_ca_traces

    model, task, _ = _load(kv["checkpoint"], kv.get("ckpt", "latest"))
    n = int(kv.get("n", 1))
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    motif = motif_mask = None
    if kv.get("motif"):
        chain = read_pdb(kv["motif"])
        if not kv.get("motif_residues"):
            raise ValueError("motif=FILE needs motif_residues=A-B[,C-D] (1-based, inclusive)")
        motif, motif_mask = chain.coords, parse_ranges(kv["motif_residues"], len(chain))
        lengths = [len(chain)] * n
    else:
        lengths = [L for L in parse_lengths(kv.get("lengths", "100")) for _ in range(n)]
    gen = torch.Generator().manual_seed(int(kv.get("seed", 0)))
    t0 = time.perf_counter()
    structs = task.generate(model, lengths, generator=gen, motif=motif, motif_mask=motif_mask,
                            **_options(kv))
    seconds = time.perf_counter() - t0
    out = Path(kv.get("out") or Path(kv["checkpoint"]) / "samples" / f"seed{kv.get('seed', 0)}")
    paths = _write(structs, out, "sample")
    png = plot_ca_traces(structs, out / "traces.png")
    res: dict[str, Any] = {"pdb": [str(p) for p in paths], "png": str(png),
                           "seconds_per_structure": seconds / len(structs)}
    if motif is not None:
        ref = motif[motif_mask, :3].reshape(-1, 3).double()
        rms = []
        for s in structs:
            got = s[motif_mask].reshape(-1, 3).double()
            d_ref, d_got = torch.cdist(ref, ref), torch.cdist(got, got)
            rms.append(float(((d_ref - d_got) ** 2).mean().sqrt()))
        res["motif_distance_rmsd"] = rms  # internal-distance RMSD of the kept residues
    return res


def eval_run(kv: dict[str, Any]) -> dict[str, Any]:
    """Metrics of ``n`` generated chains vs the run's real chains (module docstring)."""
    from modalities.structure.data import load_chains
    from modalities.structure.metrics import backbone_report
    from modalities.structure.sample import plot_ca_traces

    run = Path(kv["checkpoint"])
    model, task, cfg = _load(str(run), kv.get("ckpt", "latest"))
    n = int(kv.get("n", 64))
    lo, hi = int(kv.get("min_length", 60)), int(kv.get("max_length", 128))
    if n < 2 or not 2 <= lo <= hi:
        raise ValueError(f"need n >= 2 and 2 <= min_length <= max_length, got n={n}, "
                         f"lengths {lo}..{hi}")
    lengths = [lo + ((hi - lo) * i) // max(1, n - 1) for i in range(n)]
    gen = torch.Generator().manual_seed(int(kv.get("seed", 0)))
    t0 = time.perf_counter()
    structs = task.generate(model, lengths, generator=gen, **_options(kv))
    seconds = time.perf_counter() - t0
    chains = load_chains(cfg.data.get("source", "ts50"))
    real = [c.coords for c in chains]
    rep = backbone_report(structs, real, train=real, max_pairs=int(kv.get("max_pairs", 200)))
    out = run / "eval"
    _write(structs[:8], out, "gen")
    plot_ca_traces(structs[:8], out / "traces.png",
                   title=f"{cfg.name}: generated backbones (CA traces, N->C)")
    res = {"run": str(run), "model": type(model).__name__, "n": n, "lengths": [lo, hi],
           "params": sum(p.numel() for p in model.parameters()),
           "seconds_per_structure": seconds / n, "report": rep}
    text = json.dumps(res, indent=1, default=float)
    atomic_write(run / "eval.json", lambda tmp: Path(tmp).write_text(text))
    return res


def format_eval(res: dict[str, Any]) -> str:
    """Human-readable table of :func:`eval_run`'s result."""
    from modalities.structure.metrics import format_backbone_report

    head = (f"{res['run']}: {res['n']} generated chains, lengths {res['lengths'][0]}-"
            f"{res['lengths'][1]}, {res['model']} ({res['params'] / 1e6:.2f} M parameters), "
            f"{res['seconds_per_structure']:.2f} s/structure")
    return head + "\n" + format_backbone_report(res["report"])
