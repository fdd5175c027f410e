"""The ``toolkit`` command line.

- ``toolkit train recipe=NAME [key=value ...]``: train a recipe (Hydra-style overrides,
  e.g. ``trainer.max_steps=2000 data.root=/my/images resume=latest``).
- ``toolkit recipes``: list the recipes with one-line descriptions.
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


def _cmd_recipes(_: argparse.Namespace) -> int:
    from toolkit.train.config import list_recipes

    recipes = list_recipes()
    width = max((len(n) for n in recipes), default=0)
    for name, desc in recipes.items():
        print(f"{name:{width}s}  {desc}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from toolkit.train.config import RecipeError, compose_recipe, list_recipes, split_recipe_arg

    recipe, overrides = split_recipe_arg(args.overrides)
    try:
        if recipe is None:
            raise RecipeError("missing recipe=NAME; available recipes: "
                              + ", ".join(list_recipes()))
        cfg = compose_recipe(recipe, overrides)
    except RecipeError as e:
        print(f"toolkit train: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from toolkit.train.trainer import NonFiniteLossError, train_recipe

    try:
        result = train_recipe(cfg)
    except (NonFiniteLossError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"toolkit train: error: {e}", file=sys.stderr)
        return 1
    print(f"done: step {result['step']}, checkpoint {result['checkpoint']}")
    return 0


_TRAIN_EPILOG = """examples:
  toolkit train recipe=toy2d_cfm
  toolkit train recipe=toy2d_cfm trainer.max_steps=500 data.name=moons run_dir=runs/moons
  toolkit train recipe=toy2d_cfm run_dir=runs/moons resume=latest
  toolkit train recipe=toy2d_cfm init_from=runs/moons run_dir=runs/ft trainer.lr=1e-4
  torchrun --nproc_per_node 2 -m toolkit.cli train recipe=toy2d_cfm
top-level keys: seed, run_dir, resume (latest | checkpoint dir), init_from (run dir);
groups: trainer.*, model.*, data.*, task.*, sampler.* (see `toolkit recipes`)."""


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
    tr = sub.add_parser(
        "train", help="train a recipe: toolkit train recipe=NAME [key=value ...]",
        description="Train a recipe with Hydra-style key=value overrides.",
        epilog=_TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("overrides", nargs="*", metavar="key=value",
                    help="recipe=NAME plus overrides such as trainer.max_steps=100")
    tr.add_argument("--dry-run", action="store_true",
                    help="print the composed, resolved config and exit")
    tr.set_defaults(fn=_cmd_train)
    sub.add_parser("recipes", help="list recipes with one-line descriptions").set_defaults(
        fn=_cmd_recipes)
    # `sample` and `eval` subcommands arrive with the image modality; they will build on
    # toolkit.train.checkpoint.load_run(RUN_DIR) -> (model, task, cfg, checkpoint).
    sub.add_parser("paths", help="list probability paths").set_defaults(fn=_cmd_paths)
    sub.add_parser("solvers", help="list samplers and their options").set_defaults(fn=_cmd_solvers)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``toolkit`` console script."""
    import warnings

    # third-party modules (POT) compiled without a bytecode cache warn about escape sequences
    warnings.filterwarnings("ignore", category=SyntaxWarning)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides given after an option (`train --dry-run a=1 b=2`)
        if getattr(args, "command", None) != "train" or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
