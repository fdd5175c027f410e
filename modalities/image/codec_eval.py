"""``toolkit eval`` for tokenizer runs (``recipe=vae_train | vq_train | vae_shapes``).

Reconstructs the whole held-out split of the run's data with the EMA codec and reports
PSNR (aggregate ``10 log10(4 / MSE)`` over all pixels, and the mean of per-image PSNRs),
MSE and L1; for VQ tokenizers also codebook usage and perplexity on those images. When the
data has labels (MNIST), the reconstructions are also scored like samples: FD-local between
reconstructions and the real held-out images in the feature space of the cached local
classifier (:mod:`modalities.image.features`), i.e. how much the tokenizer alone costs a
latent generator (an "rFD-local", not rFID), next to the classifier's accuracy on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["evaluate_codec_run", "format_codec_report"]


@torch.no_grad()
def evaluate_codec_run(run_dir: str | Path, n: int | None = None, *, batch_size: int = 250,
                       checkpoint: str = "latest", features: bool = True,
                       write: bool = True) -> dict[str, Any]:
    """Held-out reconstruction report of a codec run (see the module docstring); written to
    ``RUN_DIR/eval.json``. ``n``: at most this many held-out images (None: all)."""
    from modalities.image.codec import Codec, psnr
    from modalities.image.codec_task import data_split
    from toolkit.train.checkpoint import load_run

    run = Path(run_dir)
    if not run.exists():
        raise FileNotFoundError(f"checkpoint directory {str(run)!r} does not exist")
    model, _, rcfg, ckpt = load_run(run, checkpoint)
    if not isinstance(model, Codec):
        raise ValueError(f"{str(run)!r} is not a codec (tokenizer) run")
    held = data_split(rcfg.data, "heldout")
    items = [held[i] for i in range(len(held) if n is None else min(n, len(held)))]
    if not items:
        raise ValueError(f"the held-out split of {str(run)!r} is empty")
    x = torch.stack([it[0] for it in items])  # (N, C, H, W)
    recon, codes = [], []
    for xb in x.split(batch_size):
        recon.append(model.decode(model.encode(xb)).clamp(-1, 1))
        if hasattr(model, "encode_indices"):
            codes.append(model.encode_indices(xb))
    r = torch.cat(recon)
    per_image = [psnr(a, b) for a, b in zip(r, x, strict=True)]
    c, h, w = model.latent_shape(tuple(x.shape[1:]))
    res: dict[str, Any] = {
        "psnr": psnr(r, x), "psnr_mean_per_image": sum(per_image) / len(per_image),
        "mse": float((r - x).double().square().mean()), "l1": float((r - x).abs().mean()),
        "n_heldout": len(x), "latent_shape": [c, h, w],
        "compression": x[0].numel() / (c * h * w), "checkpoint": str(ckpt),
    }
    if codes:
        res.update(model.codebook_stats(torch.cat(codes)))
    if features and isinstance(items[0], tuple | list) and len(items[0]) > 1 and \
            isinstance(items[0][1], int | torch.Tensor):
        res.update(_recon_features(rcfg, x, r, torch.as_tensor([it[1] for it in items])))
    if write:
        (run / "eval.json").write_text(json.dumps(res, indent=1, default=float))
    return res


def _recon_features(rcfg: Any, x: torch.Tensor, recon: torch.Tensor, labels: torch.Tensor
                    ) -> dict[str, float]:
    from modalities.image.class_eval import feature_net_for
    from modalities.image.features import extract_features
    from modalities.image.metrics import class_accuracy, frechet_distance

    net, _, _ = feature_net_for(rcfg.data)
    fr, fx = extract_features(net, recon), extract_features(net, x)
    return {"rfd_local": float(frechet_distance(fr, fx)),
            "recon_class_accuracy": float(class_accuracy(net, recon, labels)),
            "real_class_accuracy": float(class_accuracy(net, x, labels))}


def format_codec_report(res: dict[str, Any]) -> str:
    """A few readable lines of :func:`evaluate_codec_run`'s result."""
    lines = [f"held-out images: {res['n_heldout']}, latents {tuple(res['latent_shape'])} "
             f"({res['compression']:.1f}x fewer numbers)",
             f"PSNR {res['psnr']:.2f} dB (mean per image {res['psnr_mean_per_image']:.2f} dB), "
             f"MSE {res['mse']:.5f}, L1 {res['l1']:.4f}"]
    if "usage" in res:
        lines.append(f"codebook usage {100 * res['usage']:.1f}%, perplexity "
                     f"{res['perplexity']:.1f}")
    if "rfd_local" in res:
        lines.append(f"reconstructions vs real: FD-local {res['rfd_local']:.3f}, classifier "
                     f"accuracy {100 * res['recon_class_accuracy']:.1f}% (real "
                     f"{100 * res['real_class_accuracy']:.1f}%)")
    return "\n".join(lines)
