"""The ``toolkit`` command line.

- ``toolkit train recipe=NAME [key=value ...]``: train a recipe (Hydra-style overrides,
  e.g. ``trainer.max_steps=2000 data.root=/my/images resume=latest``).
- ``toolkit sample checkpoint=RUN_DIR prompt="a red circle at the top left" n=16``: a PNG
  grid of samples (``prompt=`` may repeat; ``steps= cfg= solver= out= seed=``). For a
  text-to-speech run: ``text="..." speaker=NAME out=out.wav`` writes a WAV and a mel plot.
- ``toolkit eval checkpoint=RUN_DIR [n=500]``: what the run's kind calls for, next to a
  real-data reference; writes ``RUN_DIR/eval.json``. Text-to-image: prompt-following
  accuracy on held-out captions. Class-conditional: FD-local, precision/recall, class
  accuracy (``bpd=N``: bits/dim of N held-out images). Tokenizers: held-out PSNR.
  Text-to-speech: speaker accuracy, phoneme error rate, MCD-DTW, F0 RMSE, durations and
  real-time factor on held-out sentences (``n=50 steps= w_text= w_spk= gl_iters=``).
- ``toolkit recipes``: list the recipes with one-line descriptions.
- ``toolkit data collect env=metaworld task=push-v3 episodes=50 root=DIR``: scripted-expert
  demonstrations into a local LeRobotDataset v3.
- ``toolkit demo2d``: the embedded default main job: train a small flow-matching model on a
  2-D dataset, sample it, and write a plot.
- ``toolkit paths`` / ``toolkit solvers``: list the names the core accepts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


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
    pngs = sorted(Path(result["run_dir"]).glob("samples/step_*.png"))
    if pngs:
        print(f"samples: {pngs[-1]}")
    return 0


_SAMPLE_KEYS = {"checkpoint": str, "prompt": str, "n": int, "steps": int, "cfg": float,
                "solver": str, "out": str, "seed": int, "ckpt": str}
_EVAL_KEYS = {"checkpoint": str, "n": int, "steps": int, "cfg": float, "solver": str,
              "seed": int, "batch_size": int, "ckpt": str, "bpd": int, "env": str, "task": str,
              "episodes": int, "n_action_steps": int, "rtc": "bool", "delay": int,
              "seed_offset": int, "threads": int, "w_text": float, "w_spk": float,
              "gl_iters": int, "iters": int, "temperature": float}


def _parse_kv(args: list[str], spec: dict[str, Any], cmd: str) -> dict[str, object]:
    """``key=value`` arguments -> typed dict (:func:`toolkit.kv.parse_key_values`);
    ``prompt`` collects repeats and ``[a, b]``; ``checkpoint`` is required."""
    from toolkit.kv import parse_key_values

    out = parse_key_values(args, spec, cmd, lists=("prompt",), hidden=("ckpt",))
    if "checkpoint" not in out:
        raise ValueError("missing checkpoint=RUN_DIR (a run directory of `toolkit train`)")
    return out


_TTS_SAMPLE_KEYS = {"checkpoint": str, "text": str, "phonemes": str, "speaker": str, "ref": str,
                    "out": str, "steps": int, "solver": str, "seed": int, "length_scale": float,
                    "w_text": float, "w_spk": float, "temperature": float, "gl_iters": int,
                    "ckpt": str}


def _cmd_sample_tts(args: argparse.Namespace) -> int:
    """``toolkit sample`` for text-to-speech runs: one WAV plus its mel plot."""
    try:
        from toolkit.kv import parse_key_values

        kv = parse_key_values(args.args, _TTS_SAMPLE_KEYS, "sample", hidden=("ckpt",))
        from modalities.audio.synth import sample_tts_run

        wav, png, info = sample_tts_run(
            kv["checkpoint"], kv.get("text"), speaker=kv.get("speaker"),
            phonemes=kv.get("phonemes"), ref=kv.get("ref"), out=kv.get("out"),
            seed=int(kv.get("seed", 0)), checkpoint=kv.get("ckpt", "latest"),
            steps=kv.get("steps"), solver=kv.get("solver"),
            length_scale=kv.get("length_scale"), w_text=kv.get("w_text"),
            w_spk=kv.get("w_spk"), temperature=kv.get("temperature"),
            gl_iters=kv.get("gl_iters"))
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        print(f"toolkit sample: error: {e}", file=sys.stderr)
        return 2
    print(f"{info['seconds']:.2f} s of audio ({int(info['frames'])} frames) in "
          f"{info['synthesis_s']:.2f} s")
    print(png)
    print(wav)
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    run = next((a.partition("=")[2] for a in args.args if a.startswith("checkpoint=")), None)
    if run and _run_task(run).endswith("TextToSpeechTask"):
        return _cmd_sample_tts(args)
    if run and _run_task(run).endswith(("BackboneFlowTask", "RigidTrajectoryTask")):
        return _cmd_structure(args, "sample")
    try:
        kv = _parse_kv(args.args, _SAMPLE_KEYS, "sample")
        from modalities.image.sample import sample_run

        path, info = sample_run(
            kv["checkpoint"], kv.get("prompt", []), int(kv.get("n", 16)),
            steps=kv.get("steps"), cfg=kv.get("cfg"), solver=kv.get("solver"),
            out=kv.get("out"), seed=int(kv.get("seed", 0)), checkpoint=kv.get("ckpt", "latest"))
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"toolkit sample: error: {e}", file=sys.stderr)
        return 2
    print(f"{info['seconds_per_image'] * 1000:.1f} ms/image")
    print(path)
    return 0


def _cmd_structure(args: argparse.Namespace, cmd: str) -> int:
    """``toolkit sample`` / ``toolkit eval`` for backbone and rigid-trajectory runs
    (:mod:`modalities.structure.run`, :mod:`modalities.trajectory.run`)."""
    from toolkit.kv import parse_key_values

    run = next((a.partition("=")[2] for a in args.args if a.startswith("checkpoint=")), "")
    if _run_task(run).endswith("RigidTrajectoryTask"):
        from modalities.trajectory import run as srun
    else:
        from modalities.structure import run as srun
    try:
        spec = srun.SAMPLE_KEYS if cmd == "sample" else srun.EVAL_KEYS
        kv = parse_key_values(args.args, spec, cmd, hidden=("ckpt",))
        if cmd == "sample":
            res = srun.sample_run(kv)
        else:
            res = srun.eval_run(kv)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"toolkit {cmd}: error: {e}", file=sys.stderr)
        return 2
    if cmd == "sample" and "npz" in res:
        print(f"{res['seconds_per_trajectory'] * 1e3:.1f} ms/trajectory; median drift "
              + ", ".join(f"{k} {v:.2e}" for k, v in res["drift_median"].items()))
        print(res["png"])
        print(res["npz"])
    elif cmd == "sample":
        print(f"{res['seconds_per_structure']:.2f} s/structure")
        if "motif_distance_rmsd" in res:
            print("motif internal-distance RMSD (A): "
                  + ", ".join(f"{v:.3f}" for v in res["motif_distance_rmsd"]))
        print("\n".join(res["pdb"] + [res["png"]]))
    else:
        print(srun.format_eval(res))
        print(f"wrote {kv['checkpoint']}/eval.json (files in {Path(kv['checkpoint']) / 'eval'})")
    return 0


def _run_task(run_dir: str) -> str:
    """The ``task._target_`` of a run directory's ``config.yaml`` ("" when unreadable)."""
    try:
        from omegaconf import OmegaConf

        return str(OmegaConf.load(Path(run_dir) / "config.yaml").task._target_)
    except Exception:  # noqa: BLE001 - the evaluator reports missing/bad runs itself
        return ""


def _cmd_eval_tts(kv: dict[str, Any]) -> int:
    """``toolkit eval`` for text-to-speech runs: speaker accuracy, PER, MCD, F0, durations and
    the real-time factor on held-out sentences (:mod:`modalities.audio.tts_eval`)."""
    try:
        from modalities.audio.tts_eval import evaluate_tts_run, format_tts_report

        res = evaluate_tts_run(
            kv["checkpoint"], int(kv.get("n", 50)), steps=kv.get("steps"),
            solver=kv.get("solver"), w_text=kv.get("w_text"), w_spk=kv.get("w_spk"),
            seed=int(kv.get("seed", 0)),
            checkpoint=kv.get("ckpt", "latest"), gl_iters=int(kv.get("gl_iters", 32)),
            batch_size=int(kv.get("batch_size", 8)), threads=kv.get("threads"))
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        print(f"toolkit eval: error: {e}", file=sys.stderr)
        return 2
    print(format_tts_report(res))
    print(f"wrote {kv['checkpoint']}/eval.json (WAVs and mels.png in "
          f"{Path(kv['checkpoint']) / 'eval'})")
    return 0


_TRANSFUSION_EVAL_KEYS = {"checkpoint": str, "n": int, "steps": int, "cfg": float,
                          "solver": str, "seed": int, "n_captions": int, "ckpt": str,
                          "batch_size": int}


def _cmd_eval_hybrid(args: argparse.Namespace, target: str) -> int:
    """``toolkit eval`` for AR + diffusion hybrids: Diffusion Forcing rollouts
    (:mod:`modalities.hybrid.forcing_eval`) and Transfusion's two directions
    (:mod:`modalities.hybrid.transfusion_eval`)."""
    from toolkit.kv import parse_key_values

    forcing = target.endswith("DiffusionForcingTask")
    if forcing:
        from modalities.hybrid import forcing_eval as hev
        spec = hev.EVAL_KEYS
    else:
        from modalities.hybrid import transfusion_eval as hev
        spec = _TRANSFUSION_EVAL_KEYS
    try:
        kv = parse_key_values(args.args, spec, "eval", hidden=("ckpt",))
        run = kv.pop("checkpoint")
        if forcing:
            res = hev.eval_run(run, **kv)
        else:
            kv["checkpoint"] = kv.pop("ckpt", "latest")
            res = hev.eval_run(run, **kv)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        print(f"toolkit eval: error: {e}", file=sys.stderr)
        return 2
    print(hev.format_eval(res))
    print(f"wrote {run}/eval.json")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    run = next((a.partition("=")[2] for a in args.args if a.startswith("checkpoint=")), None)
    if run and _run_task(run).endswith(("BackboneFlowTask", "RigidTrajectoryTask")):
        return _cmd_structure(args, "eval")
    if run and _run_task(run).endswith(("DiffusionForcingTask", "TransfusionTask")):
        return _cmd_eval_hybrid(args, _run_task(run))
    try:
        kv = _parse_kv(args.args, _EVAL_KEYS, "eval")
        if "env" in kv or _run_task(kv["checkpoint"]).endswith("PolicyTask"):
            from modalities.actions.eval import evaluate_policy_run, format_policy_report

            res = evaluate_policy_run(
                kv["checkpoint"], kv.get("env", "metaworld"), kv.get("task"),
                int(kv.get("episodes", 50)), seed_offset=int(kv.get("seed_offset", 100_000)),
                n_action_steps=kv.get("n_action_steps"), steps=kv.get("steps"),
                solver=kv.get("solver"), rtc=bool(kv.get("rtc", False)),
                inference_delay=int(kv.get("delay", 0)), checkpoint=kv.get("ckpt", "latest"),
                threads=int(kv.get("threads", 1)))
            print(format_policy_report(res))
            return 0
        if _run_task(kv["checkpoint"]).endswith("TextToSpeechTask"):
            return _cmd_eval_tts(kv)
        if _run_task(kv["checkpoint"]).endswith("CodecTask"):
            from modalities.image.codec_eval import evaluate_codec_run, format_codec_report

            res = evaluate_codec_run(kv["checkpoint"], kv.get("n"),
                                     batch_size=int(kv.get("batch_size", 250)),
                                     checkpoint=kv.get("ckpt", "latest"))
            print(format_codec_report(res))
            print(f"wrote {kv['checkpoint']}/eval.json")
            return 0
        if _run_task(kv["checkpoint"]).endswith(("Class2ImgTask", "MARTask")):
            from modalities.image.class_eval import evaluate_class_run
            from modalities.image.metrics import format_report

            res = evaluate_class_run(
                kv["checkpoint"], int(kv.get("n", 1000)), steps=kv.get("steps"),
                cfg=kv.get("cfg"), solver=kv.get("solver"), seed=int(kv.get("seed", 0)),
                batch_size=int(kv.get("batch_size", 250)), checkpoint=kv.get("ckpt", "latest"),
                bpd=int(kv.get("bpd", 0)), iterations=kv.get("iters"),
                temperature=kv.get("temperature"))
            print(format_report(res))
            if "bpd_uncond" in res:
                print(f"bits/dim on {res['bpd_n']} held-out images: {res['bpd_uncond']:.3f} "
                      f"(p(x), null class), {res['bpd_cond']:.3f} (p(x | y))")
            print(f"sampling: {1e3 * res['seconds_per_image']:.1f} ms/image")
            print(f"wrote {kv['checkpoint']}/eval.json")
            return 0
        from modalities.image.sample import evaluate_run, format_eval

        res = evaluate_run(
            kv["checkpoint"], int(kv.get("n", 500)), steps=kv.get("steps"), cfg=kv.get("cfg"),
            solver=kv.get("solver"), seed=int(kv.get("seed", 0)),
            batch_size=int(kv.get("batch_size", 64)), checkpoint=kv.get("ckpt", "latest"))
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"toolkit eval: error: {e}", file=sys.stderr)
        return 2
    print(format_eval(res))
    print(f"wrote {kv['checkpoint']}/eval.json")
    return 0


_TRAIN_EPILOG = """examples:
  toolkit train recipe=toy2d_cfm
  toolkit train recipe=toy2d_cfm trainer.max_steps=500 data.name=moons run_dir=runs/moons
  toolkit train recipe=toy2d_cfm run_dir=runs/moons resume=latest
  toolkit train recipe=toy2d_cfm init_from=runs/moons run_dir=runs/ft trainer.lr=1e-4
  torchrun --nproc_per_node 2 -m toolkit.cli train recipe=toy2d_cfm
top-level keys: seed, run_dir, resume (latest | checkpoint dir), init_from (run dir);
groups: trainer.*, model.*, data.*, task.*, sampler.* (see `toolkit recipes`)."""


_SAMPLE_EPILOG = """keys: checkpoint=RUN_DIR (required), prompt=TEXT (repeatable, or a list),
  n=16 (samples per prompt), steps=, cfg= (guidance scale), solver=, seed=0,
  out=PATH (default RUN_DIR/samples/sample_SEED.png), ckpt=latest|CHECKPOINT_DIR
text-to-speech runs (text2speech_cfm): text=TEXT (or phonemes=IPA), speaker=NAME (default the
  first; a unique suffix such as f3 works), ref=WAV (reference-encoder runs), out=PATH.wav
  (a mel plot PATH.png is written beside it), steps=, solver=, seed=0, length_scale=1,
  w_text=, w_spk= (separate guidance scales), temperature=, gl_iters=32 (Griffin-Lim)
backbone runs (protein_backbone_*): lengths=[60,80,100] (chain lengths), n=1 (samples per
  length), steps=, seed=0, out=DIR (PDB files + traces.png), grid_power=, rot_rate= (0: geodesic),
  motif=FILE.pdb motif_residues=10-25,40-44 (keep those residues, generate the rest)
rigid-trajectory runs (rigid_trajectory_se3fm): cls=sphere|prolate|oblate|asymmetric, n=4,
  steps=, guidance=, seed=0, out=DIR (trajectories.png + trajectories.npz)
examples:
  toolkit sample checkpoint=runs/text2img_cfm prompt="a red circle at the top left" n=16
  toolkit sample checkpoint=runs/text2speech_cfm text="the quick brown fox" speaker=f3 \\
    out=fox.wav"""

_EVAL_EPILOG = """keys: checkpoint=RUN_DIR (required), n=500 (text2img: held-out captions;
  class2img: 1000 class-balanced samples; tokenizers: held-out images, default all), steps=,
  cfg=, solver=, seed=0, batch_size=, ckpt=latest|CHECKPOINT_DIR, bpd=0 (class2img pixel runs:
  bits/dim of that many held-out images); MAR runs (mar_mnist): iters= (K autoregressive
  iterations), temperature= (head prior std), steps=/solver= (the per-token head); policy
  runs: env=metaworld, task= (name, comma list or mt10; default: the training tasks),
  episodes=50, n_action_steps=, rtc=false, delay=0, seed_offset=100000, threads=1
text2img runs: per-attribute prompt-following accuracy vs real images;
class2img and MAR runs: FD-local, precision/recall, class accuracy vs real-vs-real (not FID);
tokenizer runs (vae_train, vq_train, vae_shapes): held-out PSNR, codebook use, rFD-local
text2speech runs: n=50 held-out utterances (same text + speaker as a real recording), steps=,
  solver=, w_text=, w_spk= (guidance), seed=0, gl_iters=32 (Griffin-Lim), threads= (the
  multi-thread real-time factor; default torch's); speaker accuracy and phoneme error rate
  of networks trained on the corpus (cached), MCD-DTW, F0 RMSE, duration errors, real-time
  factor, next to real audio and its Griffin-Lim resynthesis; WAVs + mels.png in RUN_DIR/eval/
backbone runs: n=64 generated chains over min_length=60..max_length=128, steps=, seed=0,
  max_pairs=200 (TM-score pairs); CA-CA, CA angle/dihedral W1, Ramachandran, DSSP, Rg,
  clashes, TM diversity / novelty vs the run's real chains; PDB files in RUN_DIR/eval/
rigid-trajectory runs: n=256 test trajectories, context=8 (given poses for forecasting),
  guidance=, steps=; invariant drift from poses vs real, forecast error vs constant velocity
examples:
  toolkit eval checkpoint=runs/text2img_cfm n=500
  toolkit eval checkpoint=runs/class2img_cfm n=1000 bpd=200
  toolkit eval checkpoint=runs/mar_mnist n=500 iters=8 steps=4
  toolkit eval checkpoint=runs/vae_train
  toolkit eval checkpoint=runs/text2speech_cfm n=50 steps=10
  toolkit eval checkpoint=runs/metaworld_flow_policy env=metaworld task=push-v3 episodes=50"""


_COLLECT_EPILOG = """keys: env=metaworld, task=push-v3 (a Meta-World v3 task, a comma list or
  mt10), episodes=50 (successful episodes kept per task), root=DIR (required), seed=0 (first
  collection seed), image_size= (also render the corner camera at that size), extra_frames=5
  (frames kept after the first success), action_noise=0 (DART: std of noise added to the
  executed motion actions; the recorded labels stay the expert's)
example:
  toolkit data collect env=metaworld task=push-v3 episodes=50 root=data/metaworld/push-v3"""


def _cmd_collect(args: argparse.Namespace) -> int:
    try:
        from modalities.actions.collect import collect_main
    except ImportError as e:  # the robot extra is optional
        print(f"toolkit data collect: error: {e} (install the robot extra: "
              f"uv sync --extra robot)", file=sys.stderr)
        return 2
    try:
        return collect_main(list(args.args))
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"toolkit data collect: error: {e}", file=sys.stderr)
        return 2


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
    sa = sub.add_parser(
        "sample", help='samples: toolkit sample checkpoint=RUN_DIR prompt="..." | text="..."',
        description="Sample a trained text-to-image run into one captioned PNG grid, or speak "
                    "a sentence with a text-to-speech run (WAV + mel plot).",
        epilog=_SAMPLE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sa.add_argument("args", nargs="*", metavar="key=value")
    sa.set_defaults(fn=_cmd_sample)
    ev = sub.add_parser(
        "eval", help="evaluate a run (prompt following, FD-local, PSNR, TTS): checkpoint=RUN_DIR",
        description="text2img runs: per-attribute accuracy of samples for held-out captions "
                    "(unseen compositions) next to real images of the same captions. "
                    "class2img runs: FD-local, precision/recall (k=3) and class accuracy "
                    "next to real-vs-real, bits/dim with bpd=N. Tokenizer runs: held-out "
                    "reconstruction PSNR. Text-to-speech runs: speaker accuracy, PER, MCD, "
                    "F0 RMSE, durations and real-time factor on held-out sentences next to "
                    "the real recordings. Writes RUN_DIR/eval.json.",
        epilog=_EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("args", nargs="*", metavar="key=value")
    ev.set_defaults(fn=_cmd_eval)
    da = sub.add_parser("data", help="datasets: toolkit data collect env=metaworld task=...",
                        description="Dataset tools.")
    dsub = da.add_subparsers(dest="data_command", metavar="ACTION")
    co = dsub.add_parser(
        "collect", help="scripted-expert demonstrations into a LeRobotDataset v3",
        description="Run Meta-World's scripted experts and write the successful episodes into "
                    "a local LeRobotDataset v3 (no hub access).",
        epilog=_COLLECT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    co.add_argument("args", nargs="*", metavar="key=value")
    co.set_defaults(fn=_cmd_collect)
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
        cmd = getattr(args, "command", None)
        if cmd not in ("train", "sample", "eval", "data") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if cmd == "train":
            args.overrides = list(args.overrides) + extra
        else:
            args.args = list(args.args) + extra
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
