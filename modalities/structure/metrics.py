"""Offline backbone metrics for generated protein structures, side by side with the data.

Every metric takes a list of backbones (``(L, 3, 3)`` N, CA, C or ``(L, 4, 3)`` N, CA, C, O;
numpy, torch or :class:`~modalities.structure.data.Backbone`; Angstrom; lengths may differ)
and returns plain floats/arrays, so the same call measures generated samples and the
reference chains. :func:`backbone_report` gathers them all and :func:`format_backbone_report`
prints a markdown table "metric | generated | data".

Local geometry: consecutive CA-CA distances (3.80 A for trans peptides), CA virtual bond
angles and dihedrals (Wasserstein-1 to the data; circular W1 for dihedrals), phi/psi
Ramachandran regions, DSSP secondary structure (pydssp, Minami et al. 2023). Global shape:
radius-of-gyration scaling ``Rg = R0 L^nu`` and CA-CA clashes. Diversity and novelty:
TM-scores from TM-align (Zhang & Skolnick 2005) on CA atoms with poly-G sequences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from modalities.structure.data import complete_oxygens
from toolkit.geometry import se3

__all__ = ["angle_w1", "backbone_report", "ca_bond_angles", "ca_ca_distances", "ca_ca_stats",
           "ca_clashes", "ca_dihedrals", "circular_w1", "format_backbone_report", "phi_psi",
           "radius_of_gyration", "ramachandran_regions", "rg_fit", "secondary_structure",
           "tm_diversity", "tm_novelty", "tm_score"]

# Coarse rectangles (degrees, phi x psi) approximating the broad favoured regions of the
# general-case Ramachandran plot of Lovell et al. 2003 (Proteins 50:437, Fig. 4); beta's psi
# range wraps through +-180. Everything else (incl. disallowed and Gly-only areas) is "other".
RAMA_REGIONS = {
    "alpha_R": (((-160.0, -20.0), (-120.0, 50.0)),),
    "beta": (((-180.0, -45.0), (50.0, 180.0)), ((-180.0, -45.0), (-180.0, -150.0))),
    "alpha_L": (((20.0, 110.0), (-20.0, 90.0)),),
}
MIN_DSSP_LENGTH = 6  # pydssp's turn/bridge windows fail on shorter chains

Structs = Sequence[Any] | np.ndarray | torch.Tensor


def _structs(structs: Structs, what: str) -> list[np.ndarray]:
    """Validated float64 ``(L, 3|4, 3)`` arrays from a list of structures."""
    if isinstance(structs, (np.ndarray, torch.Tensor)) and structs.ndim != 4:
        raise ValueError(f"{what}: got one array of shape {tuple(structs.shape)}; expected a "
                         "list of (L, 3|4, 3) structures (or a (B, L, 3|4, 3) array)")
    out = []
    for k, s in enumerate(structs):
        s = getattr(s, "coords", s)  # Backbone
        if isinstance(s, torch.Tensor):
            s = s.detach().cpu().double().numpy()
        x = np.asarray(s, dtype=np.float64)
        if x.ndim != 3 or x.shape[1] not in (3, 4) or x.shape[2] != 3 or x.shape[0] < 1:
            raise ValueError(f"{what}: structure {k} has shape {x.shape}; expected "
                             "(L, 3|4, 3)")
        bad = ~np.isfinite(x[:, :3]).all((1, 2))
        if bad.any():
            raise ValueError(f"{what}: structure {k} residue {int(np.argmax(bad))} has "
                             "non-finite N/CA/C coordinates")
        out.append(x)
    if not out:
        raise ValueError(f"{what}: no structures")
    return out


def _dihedral(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """IUPAC dihedral (degrees) of ``(n, 3)`` point rows, via :func:`se3.dihedral`."""
    t = [torch.from_numpy(np.ascontiguousarray(p)) for p in (a, b, c, d)]
    return np.degrees(se3.dihedral(*t).numpy())


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)


def ca_ca_distances(structs: Structs) -> np.ndarray:
    """All consecutive CA_i-CA_{i+1} distances (Angstrom), pooled: ``(sum(L - 1),)``."""
    xs = _structs(structs, "ca_ca_distances")
    return _cat([np.linalg.norm(np.diff(x[:, 1], axis=0), axis=-1) for x in xs])


def ca_ca_stats(structs: Structs, target: float = 3.80, tol: float = 0.10) -> dict[str, float]:
    """Mean, std and fraction within ``target +- tol`` of consecutive CA-CA distances
    (3.80 A: trans peptide, Engh & Huber 1991 geometry)."""
    d = ca_ca_distances(structs)
    if d.size == 0:
        return {"mean": math.nan, "std": math.nan, "frac_within": math.nan}
    return {"mean": float(d.mean()), "std": float(d.std()),
            "frac_within": float((np.abs(d - target) <= tol).mean())}


def ca_bond_angles(structs: Structs) -> np.ndarray:
    """Virtual bond angles CA_{i-1}-CA_i-CA_{i+1} (degrees), pooled: ``(sum(L - 2),)``."""
    out = []
    for x in _structs(structs, "ca_bond_angles"):
        ca = x[:, 1]  # (L, 3)
        u, v = ca[:-2] - ca[1:-1], ca[2:] - ca[1:-1]  # (L - 2, 3)
        cos = (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
        out.append(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return _cat(out)


def ca_dihedrals(structs: Structs) -> np.ndarray:
    """Virtual dihedrals CA_{i-1}-CA_i-CA_{i+1}-CA_{i+2} in (-180, 180], pooled."""
    out = []
    for x in _structs(structs, "ca_dihedrals"):
        ca = x[:, 1]
        if len(ca) >= 4:
            out.append(_dihedral(ca[:-3], ca[1:-2], ca[2:-1], ca[3:]))
    return _cat(out)


def circular_w1(a: np.ndarray, b: np.ndarray, period: float = 360.0) -> float:
    """Exact Wasserstein-1 between two empirical distributions on a circle (arc length).

    ``W1 = min_alpha int_0^P |F(t) - G(t) - alpha| dt``, minimised by the weighted median of
    ``F - G`` (Rabin, Delon & Gousseau 2011, J. Math. Imaging Vis. 41:147, Thm. 3.7).
    """
    a = np.mod(np.asarray(a, dtype=np.float64).ravel(), period)
    b = np.mod(np.asarray(b, dtype=np.float64).ravel(), period)
    if a.size == 0 or b.size == 0:
        raise ValueError(f"circular_w1: empty sample ({a.size} and {b.size} values)")
    z = np.sort(np.concatenate((a, b)))  # (K,)
    # F - G on [z_k, z_{k+1}); the wrap-around interval [z_{K-1}, z_0 + P) has F - G = 0
    diff = (np.searchsorted(np.sort(a), z[:-1], side="right") / a.size
            - np.searchsorted(np.sort(b), z[:-1], side="right") / b.size)
    diff = np.append(diff, 0.0)
    w = np.append(np.diff(z), z[0] + period - z[-1])
    order = np.argsort(diff)
    cw = np.cumsum(w[order])
    alpha = diff[order][np.searchsorted(cw, 0.5 * cw[-1])]
    return float((w * np.abs(diff - alpha)).sum())


def angle_w1(gen: Structs, ref: Structs) -> dict[str, float]:
    """W1 between generated and reference CA bond angles (linear, scipy) and CA dihedrals
    (:func:`circular_w1`), both in degrees."""
    ga, ra = ca_bond_angles(gen), ca_bond_angles(ref)
    gd, rd = ca_dihedrals(gen), ca_dihedrals(ref)
    if min(ga.size, ra.size, gd.size, rd.size) == 0:
        raise ValueError("angle_w1: structures need >= 4 residues for angles and dihedrals")
    return {"ca_angle_w1": float(wasserstein_distance(ga, ra)),
            "ca_dihedral_w1": circular_w1(gd, rd)}


def phi_psi(struct: Any) -> np.ndarray:
    """Backbone dihedrals ``(L, 2)`` in degrees: phi_i = C_{i-1}-N_i-CA_i-C_i and
    psi_i = N_i-CA_i-C_i-N_{i+1} (IUPAC-IUB 1970); phi_0 and psi_{L-1} are NaN."""
    (x,) = _structs([struct], "phi_psi")
    n, ca, c = x[:, 0], x[:, 1], x[:, 2]
    out = np.full((len(x), 2), np.nan)
    if len(x) >= 2:
        out[1:, 0] = _dihedral(c[:-1], n[1:], ca[1:], c[1:])
        out[:-1, 1] = _dihedral(n[:-1], ca[:-1], c[:-1], n[1:])
    return out


def ramachandran_regions(structs: Structs) -> dict[str, float]:
    """Fractions of residues (with both phi and psi defined) in the :data:`RAMA_REGIONS`
    rectangles ``alpha_R``, ``beta``, ``alpha_L`` and ``other``."""
    xs = _structs(structs, "ramachandran_regions")
    pp = np.concatenate([phi_psi(x) for x in xs])
    pp = pp[np.isfinite(pp).all(-1)]  # (n, 2)
    if len(pp) == 0:
        return dict.fromkeys((*RAMA_REGIONS, "other"), math.nan)
    out, taken = {}, np.zeros(len(pp), dtype=bool)
    for name, boxes in RAMA_REGIONS.items():
        hit = np.zeros(len(pp), dtype=bool)
        for (p0, p1), (s0, s1) in boxes:
            hit |= (pp[:, 0] >= p0) & (pp[:, 0] < p1) & (pp[:, 1] >= s0) & (pp[:, 1] <= s1)
        hit &= ~taken
        taken |= hit
        out[name] = float(hit.mean())
    out["other"] = float((~taken).mean())
    return out


def secondary_structure(structs: Structs) -> dict[str, float]:
    """Helix / strand / loop fractions of all residues from 3-state DSSP (pydssp; Kabsch &
    Sander 1983 H-bond energy). Missing or NaN O atoms are placed by
    :func:`complete_oxygens`; chains shorter than 6 residues are skipped."""
    import pydssp

    counts = {"H": 0, "E": 0, "-": 0}
    for x in _structs(structs, "secondary_structure"):
        if len(x) < MIN_DSSP_LENGTH:
            continue
        full = complete_oxygens(torch.from_numpy(x)).numpy()  # (L, 4, 3)
        ss = pydssp.assign(full, out_type="c3")
        for k in counts:
            counts[k] += int((ss == k).sum())
    tot = sum(counts.values())
    if tot == 0:
        return {"helix": math.nan, "strand": math.nan, "loop": math.nan}
    return {"helix": counts["H"] / tot, "strand": counts["E"] / tot, "loop": counts["-"] / tot}


def radius_of_gyration(struct: Any) -> float:
    """CA radius of gyration ``sqrt(mean_i |CA_i - mean CA|^2)`` (Angstrom)."""
    (x,) = _structs([struct], "radius_of_gyration")
    ca = x[:, 1]
    return float(np.sqrt(((ca - ca.mean(0)) ** 2).sum(-1).mean()))


def rg_fit(structs: Structs) -> dict[str, float]:
    """Fit ``Rg = R0 L^nu`` by least squares in log-log space (Flory scaling; compact
    globular proteins give nu ~ 0.38, R0 ~ 2.2 A: Hong & Lei 2009, J. Phys. Cond. Mat.
    21:034102). Also the mean Rg and mean ``Rg / L^0.4``. R0 and nu are NaN unless at least
    two distinct lengths are present."""
    xs = _structs(structs, "rg_fit")
    L = np.array([len(x) for x in xs], dtype=np.float64)
    rg = np.array([radius_of_gyration(x) for x in xs])
    out = {"R0": math.nan, "nu": math.nan, "mean_rg": float(rg.mean()),
           "rg_over_L04": float((rg / L**0.4).mean())}
    ok = (L >= 2) & (rg > 0)
    if len(np.unique(L[ok])) >= 2:
        nu, log_r0 = np.polyfit(np.log(L[ok]), np.log(rg[ok]), 1)
        out["R0"], out["nu"] = float(np.exp(log_r0)), float(nu)
    return out


def ca_clashes(structs: Structs, threshold: float = 3.0, min_sep: int = 3) -> dict[str, float]:
    """CA-CA clashes: pairs with ``|i - j| >= min_sep`` closer than ``threshold`` Angstrom.

    Returns:
        ``pair_rate`` (clashing / eligible pairs, pooled), ``structure_rate`` (fraction of
        structures with any clash) and ``n_clashes``.
    """
    if min_sep < 1:
        raise ValueError(f"ca_clashes: min_sep must be >= 1, got {min_sep}")
    xs = _structs(structs, "ca_clashes")
    n_pairs = n_clash = n_struct = 0
    for x in xs:
        i, j = np.triu_indices(len(x), k=min_sep)
        c = int((np.linalg.norm(x[i, 1] - x[j, 1], axis=-1) < threshold).sum())
        n_pairs, n_clash, n_struct = n_pairs + len(i), n_clash + c, n_struct + (c > 0)
    return {"pair_rate": n_clash / n_pairs if n_pairs else math.nan,
            "structure_rate": n_struct / len(xs), "n_clashes": float(n_clash)}


def _tm(a: np.ndarray, b: np.ndarray) -> Any:
    from tmtools import tm_align

    ca, cb = np.ascontiguousarray(a[:, 1]), np.ascontiguousarray(b[:, 1])
    return tm_align(ca, cb, "G" * len(ca), "G" * len(cb))


def _pick(n: int, k: int | None, seed: int) -> np.ndarray:
    """Sorted deterministic subsample of ``range(n)`` of size ``min(n, k)``."""
    if k is None or k >= n:
        return np.arange(n)
    if k < 1:
        raise ValueError(f"subsample size must be >= 1, got {k}")
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def tm_score(a: Any, b: Any) -> dict[str, float]:
    """TM-align of two backbones' CA atoms: ``tm_a`` / ``tm_b`` normalised by the length of
    ``a`` / ``b``, their mean ``tm`` and the aligned ``rmsd`` (Zhang & Skolnick 2005)."""
    x, y = _structs([a, b], "tm_score")
    r = _tm(x, y)
    t1, t2 = float(r.tm_norm_chain1), float(r.tm_norm_chain2)
    return {"tm_a": t1, "tm_b": t2, "tm": 0.5 * (t1 + t2), "rmsd": float(r.rmsd)}


def tm_diversity(structs: Structs, max_pairs: int | None = None, seed: int = 0) -> float:
    """Mean pairwise TM-score (lower = more diverse). Each pair's score is the mean of the two
    length normalisations (symmetric in the pair). ``max_pairs`` evaluates a deterministic
    random subset (``seed``) of the ``n (n - 1) / 2`` pairs."""
    xs = _structs(structs, "tm_diversity")
    if len(xs) < 2:
        raise ValueError(f"tm_diversity: needs >= 2 structures, got {len(xs)}")
    i, j = np.triu_indices(len(xs), k=1)
    sel = _pick(len(i), max_pairs, seed)
    scores = []
    for p, q in zip(i[sel], j[sel]):
        r = _tm(xs[p], xs[q])
        scores.append(0.5 * (r.tm_norm_chain1 + r.tm_norm_chain2))
    return float(np.mean(scores))


def tm_novelty(structs: Structs, train: Structs, max_structs: int | None = None,
               max_train: int | None = None, seed: int = 0) -> float:
    """Mean over structures of the max TM-score to any training chain, normalised by the
    structure's own length (lower = more novel). ``max_structs`` / ``max_train`` take
    deterministic random subsets (``seed``) of each list."""
    xs, ts = _structs(structs, "tm_novelty"), _structs(train, "tm_novelty (train)")
    best = []
    for k in _pick(len(xs), max_structs, seed):
        best.append(max(_tm(xs[k], ts[t]).tm_norm_chain1
                        for t in _pick(len(ts), max_train, seed + 1)))
    return float(np.mean(best))


METRIC_LABELS = {
    "n_structures": "structures", "mean_length": "mean length (residues)",
    "ca_ca_mean": "CA-CA distance mean (A)", "ca_ca_std": "CA-CA distance std (A)",
    "ca_ca_frac_within": "CA-CA within 3.80 +- 0.10 A",
    "ca_angle_mean": "CA angle mean (deg)", "ca_angle_std": "CA angle std (deg)",
    "ca_angle_w1": "CA angle W1 to data (deg)", "ca_dihedral_w1": "CA dihedral W1 to data (deg)",
    "rama_alpha_R": "Ramachandran alpha-R", "rama_beta": "Ramachandran beta",
    "rama_alpha_L": "Ramachandran alpha-L", "rama_other": "Ramachandran other",
    "ss_helix": "DSSP helix", "ss_strand": "DSSP strand", "ss_loop": "DSSP loop",
    "rg_R0": "Rg fit R0 (A)", "rg_nu": "Rg fit nu", "rg_over_L04": "mean Rg / L^0.4 (A)",
    "clash_pair_rate": "CA clash pair rate", "clash_structure_rate": "structures with clash",
    "tm_diversity": "pairwise TM (diversity)", "tm_novelty": "max TM to train (novelty)",
}


def _side(xs: list[np.ndarray], max_pairs: int | None, seed: int) -> dict[str, float]:
    ang = ca_bond_angles(xs)
    out = {"n_structures": len(xs), "mean_length": float(np.mean([len(x) for x in xs]))}
    out.update({f"ca_ca_{k}": v for k, v in ca_ca_stats(xs).items()})
    out["ca_angle_mean"] = float(ang.mean()) if ang.size else math.nan
    out["ca_angle_std"] = float(ang.std()) if ang.size else math.nan
    out.update({f"rama_{k}": v for k, v in ramachandran_regions(xs).items()})
    out.update({f"ss_{k}": v for k, v in secondary_structure(xs).items()})
    rg = rg_fit(xs)
    out.update({"rg_R0": rg["R0"], "rg_nu": rg["nu"], "rg_over_L04": rg["rg_over_L04"]})
    cl = ca_clashes(xs)
    out.update({"clash_pair_rate": cl["pair_rate"], "clash_structure_rate": cl["structure_rate"]})
    out["tm_diversity"] = tm_diversity(xs, max_pairs, seed) if len(xs) >= 2 else math.nan
    return out


def backbone_report(gen: Structs, ref: Structs, train: Structs | None = None,
                    max_pairs: int | None = 200, max_train: int | None = None,
                    seed: int = 0) -> dict[str, dict[str, float]]:
    """All metrics for the generated and the reference structures.

    The W1 rows compare generated to reference angles; the data column holds the W1 between
    the two halves of the reference (even / odd structures), a sampling noise floor. Novelty
    (max TM to ``train``) is computed for both sides when ``train`` is given; the data side
    is NaN when ``ref`` is ``train`` itself (it would be 1 by construction).

    Args:
        gen, ref: lists of structures. train: optional training chains for novelty.
        max_pairs: TM-align pair budget for diversity (and generated structures for novelty).
        max_train: training chains per novelty search. seed: subsampling seed.

    Returns:
        ``{"generated": {metric: value}, "data": {metric: value}}`` (keys in
        :data:`METRIC_LABELS` order).
    """
    g, r = _structs(gen, "backbone_report (gen)"), _structs(ref, "backbone_report (ref)")
    rep = {"generated": _side(g, max_pairs, seed), "data": _side(r, max_pairs, seed)}
    rep["generated"].update(angle_w1(g, r))
    half = ({"ca_angle_w1": math.nan, "ca_dihedral_w1": math.nan} if len(r) < 2
            else angle_w1(r[0::2], r[1::2]))
    rep["data"].update(half)
    nan = math.nan
    rep["generated"]["tm_novelty"] = nan if train is None else tm_novelty(
        g, train, max_pairs, max_train, seed)
    rep["data"]["tm_novelty"] = nan if train is None or train is ref else tm_novelty(
        r, train, max_pairs, max_train, seed)
    for side in rep:
        rep[side] = {k: rep[side][k] for k in METRIC_LABELS if k in rep[side]}
    return rep


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.4g}"


def format_backbone_report(rep: dict[str, dict[str, float]]) -> str:
    """Markdown table ``metric | generated | data`` of a :func:`backbone_report` result."""
    if set(rep) != {"generated", "data"}:
        raise ValueError(f"format_backbone_report: expected keys 'generated' and 'data', got "
                         f"{sorted(rep)}")
    keys = list(dict.fromkeys([*rep["generated"], *rep["data"]]))
    lines = ["| metric | generated | data |", "|---|---|---|"]
    for k in keys:
        lines.append(f"| {METRIC_LABELS.get(k, k)} | {_fmt(rep['generated'].get(k))} | "
                     f"{_fmt(rep['data'].get(k))} |")
    return "\n".join(lines)
