"""Solver benchmark on the exact Gaussian-mixture oracle: ours vs diffusers and flow_matching.

Every method integrates the probability-flow ODE of its own path from the same standard
normal noise with the *exact* network (:mod:`toolkit.testing.gmm`), so the only error left
is the solver's truncation error. We report

    RMSE = sqrt( (1/N) sum_n || x_n - x_n^ref ||_2^2 ),      x in R^2,

where ``x^ref`` is the exact PF-ODE solution from the same starting point. The reference is
path independent once written in variance-normalised coordinates: with
``c = sqrt(alpha^2 + sigma^2)`` the state ``x / c`` follows the PF-ODE of the trigonometric
path at angle ``phi = atan2(alpha, sigma)`` (Karras et al. 2022, eq. 4: the trajectory of
``x / alpha`` against ``sigma / alpha`` does not depend on the schedule), which is smooth on
all of [0, 1]; we integrate it with scipy's DOP853 (rtol = atol = 1e-10, float64) and check
it against rtol = 1e-8.

Run ``python -m bench.solvers_gmm [--n 3000] [--quick] [--no-write]``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

import toolkit
from toolkit import paths
from toolkit.testing.gmm import GaussianMixture, ring_gmm

NFES = (5, 10, 20, 50)
TARGETS = {"thin": dict(radial_std=0.03, tangential_std=0.15), "smooth": dict(radial_std=0.15)}
GRIDS = ("uniform", "karras", "logsnr", "shifted")
# ours: (path name, prediction the oracle emits); vp_discrete uses diffusers' betas
# (vp_discrete with diffusers' betas gives the same numbers as vp to 3 digits; see the doc)
OUR_PATHS = (("linear", "velocity"), ("vp", "noise"))
# option variants benchmarked besides each solver's defaults
VARIANTS = {
    "unipc": ({}, {"order": 3}),
    "ipndm": (
        {}, {"order": 3}, {"weights": "variable"}, {"weights": "variable", "space": "velocity"}
    ),
}
STOCHASTIC = {"ddpm", "euler_maruyama", "edm", "pc", "langevin", "dopri5"}
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
FULL = DOC.with_name("benchmarks_solvers_gmm.md")


# -- reference ---------------------------------------------------------------------------
def reference(gmm: GaussianMixture, path, t0: float, x: Tensor, tol: float = 1e-10) -> Tensor:
    """Exact PF-ODE solution at t = 1 from ``x`` at ``t0`` on ``path`` (see module doc)."""
    t = torch.tensor(t0, dtype=torch.float64)
    a, s = float(path.alpha(t)), float(path.sigma(t))
    trig = paths.TrigPath()
    y0 = (x / math.hypot(a, s)).numpy().ravel()
    shape = x.shape

    def f(tt: float, y: np.ndarray) -> np.ndarray:
        yt = torch.from_numpy(y).view(shape)
        tt = torch.tensor(tt, dtype=torch.float64)
        return gmm.predict(yt, tt, trig, "velocity").numpy().ravel()

    span = (2 * math.atan2(a, s) / math.pi, 1.0)
    sol = solve_ivp(f, span, y0, method="DOP853", rtol=tol, atol=tol)
    if not sol.success:
        raise RuntimeError(f"reference solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).view(shape)  # alpha = 1, sigma = 0 at t = 1


def rmse(x: Tensor, ref: Tensor) -> float:
    return float(((x - ref) ** 2).sum(-1).mean().sqrt())


class Counter:
    """Wraps an oracle ``(x, t) -> Tensor`` and counts its calls (the NFE)."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.fn, self.n = fn, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.n += 1
        return self.fn(x, t)


@dataclass
class Result:
    family: str  # "ours" | "diffusers" | "flow_matching"
    name: str
    target: str
    budget: int
    nfe: int
    err: float


# -- ours ----------------------------------------------------------------------------------
def deterministic_solvers() -> list[str]:
    return [s for s in toolkit.samplers.available() if s not in STOCHASTIC]


def make_path(name: str, betas: Tensor):
    return paths.DiscreteVPPath(betas=betas) if name == "vp_discrete" else paths.get(name)


def run_ours(gmm, path, pred, solver, grid, budget, noise, nfe_of, **opts) -> tuple[Tensor, int]:
    """Largest step count whose honest NFE fits the budget, then the full run."""
    model = gmm.model(path, pred)
    steps = budget
    while steps >= 1:
        key = (solver, str(opts), path.name, grid, steps)
        if key not in nfe_of:
            info: dict = {}
            toolkit.sample(model, noise[:1], path=path, prediction=pred, solver=solver,
                           steps=steps, grid=grid, info=info, **opts)
            nfe_of[key] = info["nfe"]
        if nfe_of[key] <= budget:
            break
        steps -= 1
    if steps < 1:
        raise ValueError("budget below one step")
    info = {}
    x = toolkit.sample(model, noise, path=path, prediction=pred, solver=solver, steps=steps,
                       grid=grid, info=info, **opts)
    return x, info["nfe"]


# -- anchors: diffusers (noise at t = 1, integer timestep k <-> t = 1 - (k + 1) / N) ----------
def diffusers_anchors() -> dict[str, Callable[[], object]]:
    import diffusers as d

    trail = dict(timestep_spacing="trailing")
    return {
        "DDIM": lambda: d.DDIMScheduler(**trail),
        "EulerDiscrete": lambda: d.EulerDiscreteScheduler(**trail),
        "EulerDiscrete karras": lambda: d.EulerDiscreteScheduler(use_karras_sigmas=True),
        "DPM++ 2M": lambda: d.DPMSolverMultistepScheduler(**trail),
        "DPM++ 2M karras": lambda: d.DPMSolverMultistepScheduler(use_karras_sigmas=True),
        "DPM++ 3M karras": lambda: d.DPMSolverMultistepScheduler(
            solver_order=3, use_karras_sigmas=True
        ),
        "UniPC-2": lambda: d.UniPCMultistepScheduler(**trail),
        "UniPC-3": lambda: d.UniPCMultistepScheduler(solver_order=3, **trail),
        "UniPC-2 karras": lambda: d.UniPCMultistepScheduler(use_karras_sigmas=True),
    }


def run_diffusers(gmm, make, steps, noise) -> tuple[Tensor, int, object, float]:
    """Drive a diffusers VP scheduler with the exact eps oracle on its own betas."""
    sched = make()
    sched.set_timesteps(steps)
    path = paths.DiscreteVPPath(betas=sched.betas.double())
    sigmas = getattr(sched, "sigmas", None)

    def t_of(i: int, k) -> float:
        # the noise level the scheduler assumes x is at: its sigma if it keeps one (karras
        # sigmas are not at integer timesteps), else the integer timestep's alphas_cumprod
        if sigmas is not None:
            return float(path.t_from_sigma_ratio(sigmas[i].double()))
        return float(path.t_from_timestep(k))

    oracle = Counter(lambda x, t: gmm.predict(x, t, path, "noise"))
    x = noise * float(sched.init_noise_sigma)
    for i, k in enumerate(sched.timesteps):
        inp = sched.scale_model_input(x, k)
        eps = oracle(inp, torch.full((len(x),), t_of(i, k), dtype=torch.float64))
        x = sched.step(eps, k, x).prev_sample
    return x.double(), oracle.n, path, t_of(0, sched.timesteps[0])


def run_fm_euler(gmm, steps, noise) -> tuple[Tensor, int]:
    """diffusers' FlowMatchEulerDiscrete: sigma = 1 - t, its model predicts noise - data = -v."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched, lin = FlowMatchEulerDiscreteScheduler(), paths.LinearPath()
    sched.set_timesteps(steps)
    oracle = Counter(lambda x, t: -gmm.predict(x, t, lin, "velocity"))
    x = noise.clone()
    for i, k in enumerate(sched.timesteps):
        t = torch.full((len(x),), 1.0 - float(sched.sigmas[i]), dtype=torch.float64)
        x = sched.step(oracle(x, t), k, x).prev_sample
    return x.double(), oracle.n


FM_COST = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}


def run_flow_matching(gmm, method, budget, noise) -> tuple[Tensor, int]:
    """facebookresearch/flow_matching ODESolver (t = 0 noise, t = 1 data, like ours)."""
    from flow_matching.solver import ODESolver
    from flow_matching.utils import ModelWrapper

    lin = paths.LinearPath()
    oracle = Counter(lambda x, t: gmm.predict(x, t, lin, "velocity"))

    class Velocity(ModelWrapper):
        def forward(self, x: Tensor, t: Tensor, **extras) -> Tensor:
            return oracle(x, t.to(x.dtype).expand(len(x)))

    steps = budget // FM_COST[method]
    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    x = ODESolver(velocity_model=Velocity(None)).sample(noise, None, method=method, time_grid=grid)
    return x, oracle.n


# -- driver --------------------------------------------------------------------------------
def benchmark(n: int, nfes=NFES, log=print) -> tuple[list[Result], dict]:
    """All methods on both targets; returns the results and reference-accuracy checks."""
    from diffusers import DDIMScheduler

    betas = DDIMScheduler().betas.double()  # diffusers' default DDPM betas (linear, 1e-4..0.02)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(n, 2, dtype=torch.float64, generator=gen)
    results: list[Result] = []
    checks: dict[str, float] = {}
    solvers = deterministic_solvers()
    nfe_of: dict = {}
    for target, kw in TARGETS.items():
        gmm = ring_gmm(k=8, radius=1.0, **kw)
        refs: dict[float, Tensor] = {}

        def ref(path, t0: float, gmm=gmm, refs=refs, target=target) -> Tensor:
            t = torch.tensor(t0, dtype=torch.float64)
            key = round(math.atan2(float(path.alpha(t)), float(path.sigma(t))), 12)
            if key not in refs:
                refs[key] = reference(gmm, path, t0, noise)
                if not checks.get(f"{target} checked"):
                    coarse = reference(gmm, path, t0, noise, tol=1e-8)
                    checks[target] = rmse(coarse, refs[key])
                    checks[f"{target} checked"] = 1.0
            return refs[key]

        def add(family, name, budget, x, nfe, path, t0, target=target, ref=ref):
            results.append(Result(family, name, target, budget, nfe, rmse(x, ref(path, t0))))

        for budget in nfes:
            for pname, pred in OUR_PATHS:
                path = make_path(pname, betas)
                for solver, opts in [(s, o) for s in solvers for o in VARIANTS.get(s, ({},))]:
                    for grid in GRIDS:
                        tag = ",".join(f"{k}={v}" for k, v in opts.items())
                        name = f"{solver}{f'({tag})' if tag else ''} / {pname} / {grid}"
                        try:
                            x, nfe = run_ours(gmm, path, pred, solver, grid, budget, noise,
                                              nfe_of, **opts)
                        except Exception as e:  # noqa: BLE001  (report, keep benchmarking)
                            log(f"  [skip] {name} @ {budget}: {type(e).__name__}: {e}")
                            continue
                        add("ours", name, budget, x, nfe, path, path.t_min)
            for name, make in diffusers_anchors().items():
                x, nfe, path, t0 = run_diffusers(gmm, make, budget, noise)
                add("diffusers", name, budget, x, nfe, path, t0)
            lin = paths.LinearPath()
            x, nfe = run_fm_euler(gmm, budget, noise)
            add("diffusers", "FlowMatchEuler", budget, x, nfe, lin, 0.0)
            for method in FM_COST:
                if budget // FM_COST[method] >= 1:
                    x, nfe = run_flow_matching(gmm, method, budget, noise)
                    add("flow_matching", f"ODESolver {method}", budget, x, nfe, lin, 0.0)
            log(f"{target}: NFE {budget} done ({len(results)} results)")
    return results, {k: v for k, v in checks.items() if "checked" not in k}


# -- overhead ------------------------------------------------------------------------------
def overhead(
    steps: int = 50, shape=(64, 4, 32, 32), repeat: int = 3
) -> list[tuple[str, float, float]]:
    """Per-step wall time (us) with a zero-cost model: (pair, ours, diffusers)."""
    import diffusers as d

    torch.manual_seed(0)
    x0, out = torch.randn(shape), torch.randn(shape)
    model = lambda x, t, **_: out  # noqa: E731

    def ours(solver: str, path: str, pred: str) -> float:
        def go():
            toolkit.sample(model, x0, path=path, prediction=pred, solver=solver, steps=steps)
        return _best_time(go, repeat) / steps

    def theirs(make, flow: bool = False) -> float:
        def go():
            sched = make()
            sched.set_timesteps(steps)
            x = x0 * float(getattr(sched, "init_noise_sigma", 1.0))
            for k in sched.timesteps:
                x = sched.step(out, k, sched.scale_model_input(x, k) if not flow else x).prev_sample
        return _best_time(go, repeat) / steps

    trail = dict(timestep_spacing="trailing")
    have = set(toolkit.samplers.available())
    if not {"ddim", "dpmpp_2m", "unipc"} <= have:
        return []
    pairs = [
        ("ddim vs DDIMScheduler", ours("ddim", "vp_discrete", "noise"),
         theirs(lambda: d.DDIMScheduler(**trail))),
        ("dpmpp_2m vs DPMSolverMultistep", ours("dpmpp_2m", "vp_discrete", "noise"),
         theirs(lambda: d.DPMSolverMultistepScheduler(**trail))),
        ("unipc vs UniPCMultistep", ours("unipc", "vp_discrete", "noise"),
         theirs(lambda: d.UniPCMultistepScheduler(**trail))),
        ("euler (vp_discrete) vs EulerDiscrete", ours("euler", "vp_discrete", "noise"),
         theirs(lambda: d.EulerDiscreteScheduler(**trail))),
        ("euler (linear) vs FlowMatchEuler", ours("euler", "linear", "velocity"),
         theirs(d.FlowMatchEulerDiscreteScheduler, flow=True)),
    ]
    return [(n, a * 1e6, b * 1e6) for n, a, b in pairs]


def _best_time(fn, repeat: int) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
        best = min(best, time.perf_counter() - t0)
    return best


# -- likelihood ------------------------------------------------------------------------------
def likelihood_errors(n: int = 256, nfes=NFES) -> list[tuple[str, str, int, int, float]]:
    """|log p_model(x) - log p_data(x)| (RMS over data points) vs NFE, linear path, exact div."""
    try:
        from toolkit.likelihood import log_likelihood
    except ImportError:  # pragma: no cover
        return []
    out = []
    cost = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
    for target, kw in TARGETS.items():
        gmm = ring_gmm(k=8, radius=1.0, **kw)
        lin = paths.LinearPath()
        x1 = gmm.sample(n, generator=torch.Generator().manual_seed(1))
        exact = gmm.log_prob(x1)
        for method, c in cost.items():
            for budget in nfes:
                info: dict = {}
                lp = log_likelihood(gmm.model(lin, "velocity"), x1, path=lin, method=method,
                                    steps=max(budget // c, 1), info=info)
                out.append((target, method, budget, info.get("nfe", -1),
                            float(((lp - exact) ** 2).mean().sqrt())))
    return out


# -- report --------------------------------------------------------------------------------
def _best(results: list[Result], fams: tuple[str, ...], target: str, budget: int) -> Result:
    pool = [r for r in results if r.family in fams and r.target == target and r.budget == budget]
    return min(pool, key=lambda r: r.err if math.isfinite(r.err) else math.inf)


def summary_table(results: list[Result], nfes=NFES) -> str:
    """Best of ours vs best anchor at each NFE, per target, with the ratio."""
    lines = ["| target | NFE | best ours (solver / path / grid) | RMSE | best anchor | RMSE "
             "| ours/anchor | <= 0.5? |", "|---|---|---|---|---|---|---|---|"]
    for target in TARGETS:
        for b in nfes:
            o = _best(results, ("ours",), target, b)
            a = _best(results, ("diffusers", "flow_matching"), target, b)
            ratio = o.err / a.err
            lines.append(f"| {target} | {b} | {o.name} (NFE {o.nfe}) | {o.err:.2e} | "
                         f"{a.family}: {a.name} (NFE {a.nfe}) | {a.err:.2e} | {ratio:.2f} | "
                         f"{'yes' if ratio <= 0.5 else 'no'} |")
    return "\n".join(lines)


def method_table(results: list[Result], fams: tuple[str, ...], nfes=NFES, best_only=False) -> str:
    """RMSE per method (rows) and NFE budget (columns), both targets side by side."""
    head = " | ".join(f"{t} {b}" for t in TARGETS for b in nfes)
    lines = [f"| method | {head} |", "|---" * (1 + len(TARGETS) * len(nfes)) + "|"]
    rows: dict[str, dict] = {}
    for r in results:
        if r.family in fams:
            key = r.name.split(" / ")[0] if best_only else f"{r.family}: {r.name}"
            cell = rows.setdefault(key, {})
            old = cell.get((r.target, r.budget))
            if old is None or r.err < old.err:
                cell[(r.target, r.budget)] = r
    for key, cell in rows.items():
        vals = []
        for t in TARGETS:
            for b in nfes:
                r = cell.get((t, b))
                extra = "" if r is None or r.nfe == b else f" ({r.nfe})"
                vals.append("-" if r is None else f"{r.err:.2e}{extra}")
        lines.append(f"| {key} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def write_doc(text: str, path: Path = DOC) -> None:
    """Replace the block between the RESULTS markers of ``path`` with ``text``."""
    begin, end = "<!-- BEGIN RESULTS -->", "<!-- END RESULTS -->"
    doc = path.read_text() if path.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in doc:
        doc += f"\n{begin}\n{end}\n"
    head, rest = doc.split(begin, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="noise samples (same for every method)")
    ap.add_argument("--quick", action="store_true", help="n=300, NFE 5 and 10, no overhead/nll")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ untouched")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, nfes = (300, (5, 10)) if args.quick else (args.n, NFES)
    start = time.perf_counter()
    results, checks = benchmark(n, nfes)
    parts = [
        f"Samples N = {n}; reference self-check (RMSE between DOP853 at rtol 1e-10 and 1e-8): "
        + ", ".join(f"{k} {v:.1e}" for k, v in checks.items()) + ".",
        "### Best of ours vs best anchor\n\n" + summary_table(results, nfes),
        "### Anchors (RMSE; NFE in brackets where it differs from the budget)\n\n"
        + method_table(results, ("diffusers", "flow_matching"), nfes),
        "### Ours: best over path and grid per solver variant\n\n"
        + method_table(results, ("ours",), nfes, best_only=True),
    ]
    if not args.quick:
        rows = overhead()
        head = "| pair | ours us/step | diffusers us/step | ours/diffusers |\n|---|---|---|---|\n"
        parts.append("### Per-step overhead (zero-cost model, batch 64x4x32x32 float32, 50 steps)"
                     "\n\n" + head
                     + "\n".join(f"| {p} | {a:.0f} | {b:.0f} | {a / b:.2f} |" for p, a, b in rows))
        nll = likelihood_errors(nfes=nfes)
        if nll:
            parts.append("### Exact log-likelihood error vs NFE (linear path, exact divergence, "
                         "256 data points; RMS of log p_model - log p_data in nats)\n\n"
                         "| target | method | NFE budget | NFE used | RMS error |\n"
                         "|---|---|---|---|---|\n"
                         + "\n".join(f"| {t} | {m} | {b} | {u} | {e:.2e} |"
                                      for t, m, b, u, e in nll))
    parts.append(f"Wall time: {time.perf_counter() - start:.0f} s.")
    text = "\n\n".join(parts)
    print(text)
    if not args.no_write and not args.quick:
        write_doc(text)
        FULL.write_text("# Solver benchmark: every configuration\n\nGenerated by "
                        "`python -m bench.solvers_gmm`; see [benchmarks.md](benchmarks.md).\n\n"
                        + method_table(results, ("ours", "diffusers", "flow_matching"), nfes)
                        + "\n")


if __name__ == "__main__":
    main()
