"""Evaluation of a Transfusion run (``recipe=transfusion_mnist``) in both directions.

- **Image accuracy from captions**: ``n`` images generated from captions (digits balanced,
  the caption templates cycled) are classified by the cached local MNIST feature classifier
  (:func:`modalities.image.class_eval.feature_net_for`, trained once on the run's real
  training split); accuracy = share classified as the digit the caption names. FD-local,
  precision and recall in that classifier's feature space come alongside, next to the same
  numbers between two real sets (:func:`modalities.image.metrics.image_metrics`; FD-local is
  not FID).
- **Caption accuracy from images**: held-out real images are captioned greedily; accuracy =
  share of captions naming the right digit (:meth:`CaptionVocab.parse_digit`);
  ``caption_well_formed`` = share that is exactly one of the template captions.

Writes ``RUN_DIR/eval.json`` and ``RUN_DIR/eval_images.png`` (one column per digit).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["eval_run", "format_eval"]


def eval_run(run_dir: str | Path, n: int = 500, *, steps: int | None = None,
             cfg: float | None = None, solver: str | None = None, seed: int = 0,
             n_captions: int | None = None, checkpoint: str = "latest", batch_size: int = 250,
             write: bool = True) -> dict[str, Any]:
    """Image accuracy from captions and caption accuracy from images (module docstring).

    Args:
        run_dir: a ``transfusion_mnist`` run. n: images generated (>= 10).
        steps / cfg / solver: sampler overrides (default: the run's sampler).
        seed: noise and subsampling seed. n_captions: held-out images captioned (default
            ``min(n, held-out size)``). checkpoint: ``latest`` or a checkpoint path.
        batch_size: sequences per network call. write: write eval.json and the PNG.

    Returns:
        ``image_accuracy``, ``image_accuracy_by_template``, ``fd_local`` (+ ``_real``),
        ``precision`` / ``recall`` (+ ``_real``), ``caption_accuracy``,
        ``caption_well_formed``, ``caption_examples``, timings, sampler and checkpoint.
    """
    from modalities.hybrid.transfusion_task import TransfusionTask
    from modalities.image.class_eval import feature_net_for
    from modalities.image.codec_task import data_split
    from modalities.image.features import predict
    from modalities.image.metrics import image_metrics
    from toolkit.train.checkpoint import load_run
    from toolkit.train.logging import save_image_grid

    if n < 10:
        raise ValueError(f"transfusion eval: n must be >= 10 (one image per digit), got {n}")
    run = Path(run_dir)
    if not run.exists():
        raise FileNotFoundError(f"run directory {str(run)!r} does not exist")
    model, task, rcfg, ckpt = load_run(run, checkpoint)
    if not isinstance(task, TransfusionTask):
        raise ValueError(f"{str(run)!r} is not a Transfusion run (task "
                         f"{type(task).__name__})")
    net, info, train = feature_net_for(rcfg.data)
    x_train, _ = train.tensors()
    x_held, y_held = data_split(rcfg.data, "heldout").tensors()
    vocab = task.vocab
    labels = torch.arange(n) % 10  # (n,) balanced digits
    tpl = (torch.arange(n) // 10) % len(vocab.templates)  # (n,) templates cycled
    captions = [vocab.caption(int(y), int(k)) for y, k in zip(labels, tpl, strict=True)]
    gen = torch.Generator().manual_seed(int(seed))
    run_info: dict[str, Any] = {}
    t0 = time.perf_counter()
    fake = task.generate_images(model, captions, gen, steps=steps, cfg=cfg, solver=solver,
                                batch_size=batch_size, info=run_info)  # (n, C, H, W)
    sec_img = time.perf_counter() - t0
    pred = predict(net, fake)  # (n,)
    hit = (pred == labels).double()
    res: dict[str, Any] = {
        "image_accuracy": float(hit.mean()),
        "image_accuracy_by_template": {vocab.templates[k]: float(hit[tpl == k].mean())
                                       for k in range(len(vocab.templates)) if (tpl == k).any()},
    }
    m = min(n, len(x_held), len(x_train))
    if m > 3:
        im = image_metrics(net, x_train, fake, labels, real_reference=x_held,
                           reference_labels=y_held, n=m, seed=seed)
        res.update({k: im[k] for k in ("fd_local", "fd_local_real", "precision", "recall",
                                       "precision_real", "recall_real",
                                       "class_accuracy_real") if k in im}, metric_n=m)
    k = min(len(x_held), n if n_captions is None else int(n_captions))
    t0 = time.perf_counter()
    acc, caps = task.caption_accuracy(model, x_held[:k], y_held[:k])
    sec_cap = time.perf_counter() - t0
    valid = {vocab.caption(d, j) for d in range(10) for j in range(len(vocab.templates))}
    spec = task.sampler
    res.update(
        caption_accuracy=acc, caption_n=k,
        caption_well_formed=sum(c in valid for c in caps) / max(1, k),
        caption_examples=[{"label": int(y), "caption": c}
                          for y, c in zip(y_held[:10].tolist(), caps[:10], strict=False)],
        n_generated=n, seconds_per_image=sec_img / n, seconds_per_caption=sec_cap / max(1, k),
        nfe=run_info.get("nfe"), checkpoint=str(ckpt),
        feature_net_accuracy=info.get("metrics", {}).get("heldout_accuracy"),
        sampler={"solver": solver or spec.solver, "steps": steps or spec.steps,
                 "guidance_scale": spec.guidance_scale if cfg is None else float(cfg),
                 "threads": torch.get_num_threads()})
    if write:
        c = min(n, 80) // 10 * 10
        order = torch.argsort(labels[:c], stable=True)  # rows of 0..9
        grid = fake[:c][order].reshape(10, -1, *fake.shape[1:]).transpose(0, 1)
        save_image_grid(grid.reshape(-1, *fake.shape[1:]), run / "eval_images.png", nrow=10)
        (run / "eval.json").write_text(json.dumps(res, indent=1, default=float))
    return res


def format_eval(res: dict[str, Any]) -> str:
    """Plain-text summary of :func:`eval_run`'s result."""
    s = res.get("sampler", {})
    lines = [
        f"image accuracy from captions   {res['image_accuracy']:.4f}  (n = "
        f"{res.get('n_generated')}, {s.get('solver')} x {s.get('steps')}, cfg "
        f"{s.get('guidance_scale')})",
    ]
    for tpl, acc in res.get("image_accuracy_by_template", {}).items():
        lines.append(f"  {tpl!r:<34} {acc:.4f}")
    if "fd_local" in res:
        lines.append(f"FD-local                       {res['fd_local']:.4f}  (real vs real "
                     f"{res['fd_local_real']:.4f}, n = {res.get('metric_n')}; not FID)")
        lines.append(f"precision / recall             {res['precision']:.4f} / "
                     f"{res['recall']:.4f}  (real {res['precision_real']:.4f} / "
                     f"{res['recall_real']:.4f})")
    lines.append(f"caption accuracy from images   {res['caption_accuracy']:.4f}  (n = "
                 f"{res.get('caption_n')} held-out, well-formed "
                 f"{res.get('caption_well_formed', 0.0):.4f})")
    for ex in res.get("caption_examples", [])[:5]:
        lines.append(f"  {ex['label']}: {ex['caption']!r}")
    lines.append(f"{res.get('seconds_per_image', 0.0) * 1e3:.1f} ms/image, "
                 f"{res.get('seconds_per_caption', 0.0) * 1e3:.1f} ms/caption; classifier "
                 f"held-out accuracy {res.get('feature_net_accuracy')}")
    return "\n".join(lines)
