"""The ``toolkit`` command line.

Subcommands arrive with later work (``train``, ``sample``, ``eval``, ``recipes``); today:

- ``toolkit demo2d``: the embedded default main job: train a small flow-matching model on a
  2-D dataset, sample it, and write a plot.
- ``toolkit paths`` / ``toolkit solvers``: list the names the core accepts.
"""

from __future__ import annotations

import argparse
import sys


def _cmd_demo2d(args: argparse.Namespace) -> int:
    from toolkit.demo2d import run

    run(
        dataset=args.dataset,
        method=args.method,
        train_steps=args.train_steps,
        solver=args.solver,
        nfe_steps=args.sample_steps,
        out=args.out,
        seed=args.seed,
        n_samples=args.n,
    )
    return 0


def _cmd_paths(_: argparse.Namespace) -> int:
    from toolkit import paths

    for name in paths.available():
        print(name)
    return 0


def _cmd_solvers(_: argparse.Namespace) -> int:
    from toolkit import samplers
    from toolkit.samplers.registry import solver_options

    for name in samplers.available():
        opts = solver_options(samplers.get(name))
        print(f"{name:16s} options: {', '.join(opts) if opts else '-'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(
        prog="toolkit",
        description="Conditional generative modelling across modalities (t = 0 noise, t = 1 data).",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser("demo2d", help="train + sample a 2-D flow model and write a plot")
    d.add_argument("--dataset", default="8gaussians", help="moons | 8gaussians | checkerboard")
    d.add_argument("--method", default="ot_cfm", help="cfm | ot_cfm | vp_noise")
    d.add_argument("--train-steps", type=int, default=2000)
    d.add_argument("--solver", default="heun", help="any name from `toolkit solvers`")
    d.add_argument("--sample-steps", type=int, default=10)
    d.add_argument("--n", type=int, default=2000, help="number of samples")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="runs/demo2d", help="output directory")
    d.set_defaults(fn=_cmd_demo2d)
    sub.add_parser("paths", help="list probability paths").set_defaults(fn=_cmd_paths)
    sub.add_parser("solvers", help="list samplers and their options").set_defaults(fn=_cmd_solvers)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``toolkit`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
