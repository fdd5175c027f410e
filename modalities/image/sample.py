"""Sampling and evaluation of text-to-image runs: ``toolkit sample`` and ``toolkit eval``.

- :func:`save_captioned_grid`: one block of samples per caption, the caption written above
  it (PIL's built-in font), saved as one PNG.
- :func:`sample_run`: ``toolkit sample checkpoint=RUN_DIR prompt="..." n=16``.
- :func:`evaluate_run`: ``toolkit eval checkpoint=RUN_DIR``: samples one image per held-out
  caption (colour-shape compositions never seen in training), scores them with the attribute
  classifier of :mod:`modalities.image.attributes` next to the real images of the same
  captions (the ceiling), and writes ``RUN_DIR/eval.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = ["save_captioned_grid", "grid_size", "load_text2img_run", "sample_run",
           "evaluate_run"]

CAPTION_HEIGHT = 12  # pixels of the caption band above each block
PADDING = 2


def grid_size(n: int, image_size: int, scale: int = 2, prompts: int = 1,
              nrow: int | None = None) -> tuple[int, int]:
    """``(width, height)`` in pixels of :func:`save_captioned_grid` for ``prompts`` blocks of
    ``n`` square images of side ``image_size`` (``nrow`` per row, default ``ceil(sqrt n)``)."""
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    w = (min(n, nrow) * (image_size + PADDING) + PADDING) * scale
    h = (rows * (image_size + PADDING) + PADDING) * scale + CAPTION_HEIGHT
    return w, h * prompts


def _wrap(text: str, width_px: int, font: Any, draw: ImageDraw.ImageDraw) -> str:
    """Shorten ``text`` with an ellipsis until it fits ``width_px``."""
    if draw.textlength(text, font=font) <= width_px:
        return text
    while text and draw.textlength(text + "...", font=font) > width_px:
        text = text[:-1]
    return text + "..."


def _grid(x: Tensor, nrow: int) -> Tensor:
    """``(n, 3, H, W)`` -> ``(3, H', W')`` with ``PADDING`` white pixels around every image."""
    n, c, h, w = x.shape
    rows = math.ceil(n / nrow)
    g = torch.ones(c, rows * (h + PADDING) + PADDING, nrow * (w + PADDING) + PADDING)
    for i in range(n):
        r, k = divmod(i, nrow)
        y0, x0 = PADDING + r * (h + PADDING), PADDING + k * (w + PADDING)
        g[:, y0:y0 + h, x0:x0 + w] = x[i]
    return g


def save_captioned_grid(blocks: Sequence[Tensor], captions: Sequence[str], path: str | Path,
                        scale: int = 2, nrow: int | None = None) -> Path:
    """Save blocks of images ``(n_i, C, H, W)`` in ``[-1, 1]``, each under its caption.

    Blocks are stacked vertically; inside a block images form a grid of ``nrow`` columns,
    upscaled ``scale`` times (nearest). Long captions are shortened to the block width.
    """
    if len(blocks) != len(captions) or not blocks:
        raise ValueError(f"save_captioned_grid: {len(blocks)} blocks vs {len(captions)} captions")
    n = max(len(b) for b in blocks)
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    font = ImageFont.load_default()
    parts = []
    for imgs, cap in zip(blocks, captions):
        if imgs.ndim != 4 or imgs.shape[1] not in (1, 3):
            raise ValueError(f"save_captioned_grid expects (n, 1|3, H, W), got "
                             f"{tuple(imgs.shape)}")
        x = ((imgs.detach().float().cpu() + 1) / 2).clamp(0, 1).expand(-1, 3, -1, -1)
        g = _grid(x, min(nrow, len(x)))  # (3, H', W')
        arr = (g.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        im = Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale),
                                         Image.Resampling.NEAREST)
        band = Image.new("RGB", (im.width, im.height + CAPTION_HEIGHT), (255, 255, 255))
        band.paste(im, (0, CAPTION_HEIGHT))
        draw = ImageDraw.Draw(band)
        draw.text((2, 0), _wrap(cap, im.width - 4, font, draw), fill=(0, 0, 0), font=font)
        parts.append(band)
    width = max(p.width for p in parts)
    out = Image.new("RGB", (width, sum(p.height for p in parts)), (255, 255, 255))
    y = 0
    for p in parts:
        out.paste(p, (0, y))
        y += p.height
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path


def load_text2img_run(run_dir: str | Path, checkpoint: str = "latest") -> tuple[Any, Any, Any,
                                                                                 Path]:
    """:func:`toolkit.train.load_run` with clear errors for a missing or non-image run."""
    from modalities.image.task import Text2ImgTask
    from toolkit.train.checkpoint import load_run

    run = Path(run_dir)
    if not run.exists():
        raise FileNotFoundError(f"checkpoint directory {str(run)!r} does not exist")
    model, task, cfg, ckpt = load_run(run, checkpoint)
    if not isinstance(task, Text2ImgTask):
        raise ValueError(f"{str(run)!r} is a run of recipe {cfg.get('recipe')!r} (task "
                         f"{type(task).__name__}), not a text-to-image run")
    return model, task, cfg, ckpt


def sample_run(run_dir: str | Path, prompts: Sequence[str], n: int = 16, *,
               steps: int | None = None, cfg: float | None = None, solver: str | None = None,
               out: str | Path | None = None, seed: int = 0,
               checkpoint: str = "latest") -> tuple[Path, dict[str, float]]:
    """Draw ``n`` samples per prompt from a run and save one captioned PNG grid.

    Returns:
        ``(png path, {"seconds", "seconds_per_image"})``; default path
        ``RUN_DIR/samples/sample_<seed>.png``.
    """
    if not prompts:
        raise ValueError("toolkit sample: give at least one prompt=\"...\"")
    if n < 1:
        raise ValueError(f"toolkit sample: n must be >= 1, got {n}")
    model, task, _, _ = load_text2img_run(run_dir, checkpoint)
    gen = torch.Generator().manual_seed(int(seed))
    t0 = time.perf_counter()
    x = task.generate(model, n * len(prompts), gen, [p for p in prompts for _ in range(n)],
                      guidance_scale=cfg, solver=solver, steps=steps)
    sec = time.perf_counter() - t0
    path = Path(out) if out else Path(run_dir) / "samples" / f"sample_{seed}.png"
    save_captioned_grid(list(x.split(n)), list(prompts), path)
    return path, {"seconds": sec, "seconds_per_image": sec / len(x)}


def evaluate_run(run_dir: str | Path, n: int = 500, *, steps: int | None = None,
                 cfg: float | None = None, solver: str | None = None, seed: int = 0,
                 batch_size: int = 64, checkpoint: str = "latest",
                 write: bool = True) -> dict[str, Any]:
    """Prompt-following accuracy of a run on ``n`` held-out captions vs the real ceiling.

    Returns (and writes to ``RUN_DIR/eval.json``) ``{"generated": {"single": {...}, "two":
    {...}}, "real": {...}, "n", "seconds_per_image", "sampler": {...}, "checkpoint"}`` where
    each group holds per-attribute accuracies (colour, shape, size, position, count, all).
    """
    from modalities.image import attributes
    from modalities.image.data import heldout_prompts

    if n < 1:
        raise ValueError(f"toolkit eval: n must be >= 1, got {n}")
    model, task, _, ckpt = load_text2img_run(run_dir, checkpoint)
    prompts, gt, real = heldout_prompts(n)
    clf = attributes.load_or_train_classifier(log=print)
    gen = torch.Generator().manual_seed(int(seed))
    t0 = time.perf_counter()
    x = task.generate(model, len(prompts), gen, prompts, guidance_scale=cfg, solver=solver,
                      steps=steps, batch_size=batch_size)
    sec = time.perf_counter() - t0
    spec = task.sampler
    res = {
        "checkpoint": str(ckpt), "n": len(prompts),
        "generated": attributes.evaluate(x, gt, clf),
        "real": attributes.evaluate(real, gt, clf),
        "seconds_per_image": sec / len(prompts),
        "sampler": {"solver": solver or spec.solver, "steps": steps or spec.steps,
                    "guidance_scale": spec.guidance_scale if cfg is None else cfg,
                    "threads": torch.get_num_threads()},
    }
    if write:
        (Path(run_dir) / "eval.json").write_text(json.dumps(res, indent=1))
    return res


def format_eval(res: dict[str, Any]) -> str:
    """A small text table of :func:`evaluate_run`'s result."""
    cols = ("colour", "shape", "size", "position", "count", "all")
    lines = [f"{'group':8s} {'':9s} n    " + " ".join(f"{c:>8s}" for c in cols)]
    for grp in ("single", "two"):
        for who in ("generated", "real"):
            r = res[who][grp]
            vals = " ".join(f"{100 * r[c]:7.1f}%" if c in r else f"{'-':>8s}" for c in cols)
            lines.append(f"{grp:8s} {who:9s} {r['n']:<4d} {vals}")
    s = res["sampler"]
    lines.append(f"sampling: {res['seconds_per_image'] * 1000:.1f} ms/image ({s['solver']}, "
                 f"{s['steps']} steps, cfg {s['guidance_scale']}, {s['threads']} threads)")
    return "\n".join(lines)
