"""Training image codecs with the toolkit trainer: the task behind ``recipe=vae_train`` and
``recipe=vq_train``.

The loss is the codec's own (:meth:`KLVAE.loss <modalities.image.codec.KLVAE.loss>`: L1/L2
reconstruction + ``kl_weight`` KL (+ Laplacian-pyramid term); :meth:`VQVAE.loss
<modalities.image.vq.VQVAE.loss>`: reconstruction + commitment, EMA codebook updated from
each batch). Validation writes a PNG with originals on the top rows and reconstructions
below, and logs PSNR (and codebook usage / perplexity for VQ) on a fixed held-out batch.

The patch discriminator needs a second optimiser that alternates with the autoencoder's;
the trainer has one optimiser, so ``adv_weight > 0`` is refused here (train the adversarial
stage with :meth:`KLVAE.discriminator_loss` in your own loop).

The latent scale (``Codec.scale`` / ``shift``) is not trained: a generative recipe that
uses the codec estimates it on its own data (:meth:`Codec.fit_scale`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modalities.image.codec import Codec, psnr
from toolkit.train.tasks import StepContext, Task

__all__ = ["CodecTask", "data_split"]


def data_split(data: Any, split: str = "heldout", n: int | None = None) -> Any:
    """The ``split`` of the dataset described by the recipe's ``data`` config (any dataset
    ``_target_`` with ``split`` and ``n`` arguments), e.g. the held-out images of the data a
    codec or generator trains on."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    cfg = OmegaConf.to_container(data, resolve=True) if isinstance(data, DictConfig) \
        else dict(data)
    cfg.update(split=split, n=n)
    return instantiate(cfg, _convert_="all")


def _images(batch: Any) -> Tensor:
    x = batch[0] if isinstance(batch, list | tuple) else batch
    if not isinstance(x, Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"CodecTask expects image batches (B, C, H, W), got {got}")
    return x


class CodecTask(Task):
    """Train a :class:`~modalities.image.codec.Codec` (KL-VAE or VQ-VAE) on images.

    Args:
        kl_weight: KL weight of a KL-VAE (LDM uses 1e-6 with summed losses; ours are
            per-element, see :meth:`KLVAE.loss`). perceptual_weight: Laplacian-pyramid L1.
        adv_weight: must be 0 (see the module docstring).
        val_images: held-out images reconstructed at validation. heldout: a dataset to take
            them from (default: the last ``val_images`` of the training set).
    """

    def __init__(self, kl_weight: float = 1e-6, perceptual_weight: float = 0.0,
                 adv_weight: float = 0.0, val_images: int = 16, heldout: Any = None) -> None:
        if adv_weight != 0.0:
            raise ValueError("task.adv_weight > 0 needs an alternating discriminator optimiser, "
                             "which the trainer does not have; set task.adv_weight=0")
        if kl_weight < 0 or perceptual_weight < 0 or val_images < 1:
            raise ValueError("task.kl_weight and task.perceptual_weight must be >= 0 and "
                             "task.val_images >= 1")
        self.kl_weight, self.perceptual_weight = float(kl_weight), float(perceptual_weight)
        self.val_images, self.heldout = int(val_images), heldout
        self.val_batch: Tensor | None = None

    def wrap_model(self, net: nn.Module) -> nn.Module:
        """Checks that the model is a codec with a training loss."""
        if not isinstance(net, Codec) or not hasattr(net, "loss"):
            raise ValueError(f"recipe model must be a trainable Codec (KLVAE, VQVAE), got "
                             f"{type(net).__name__}")
        return net

    def setup(self, dataset: Any, run_dir: Path, model: nn.Module | None = None) -> None:
        """Fix the validation batch (held-out images, or the end of the training set)."""
        src = self.heldout if self.heldout is not None else dataset
        n = min(self.val_images, len(src))
        if n < 1:
            raise ValueError("CodecTask: the dataset is empty")
        start = 0 if self.heldout is not None else len(src) - n
        self.val_batch = torch.stack([src[i][0] for i in range(start, start + n)])  # (n,C,H,W)

    def loss(self, model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Tensor]:
        """The codec's loss; only scalar entries are returned (logged)."""
        images = _images(batch)
        codec = getattr(model, "module", model)
        # through model(...) (Codec.forward = loss): a DDP wrapper syncs gradients only then
        if hasattr(codec, "posterior"):  # KL-VAE; posterior noise drawn for the global batch
            out = model(images, kl_weight=self.kl_weight, perceptual_weight=self.perceptual_weight,
                        step=ctx.step, noise=ctx.randn)
        else:
            out = model(images, perceptual_weight=self.perceptual_weight)
        res: dict[str, Tensor] = {}
        for k, v in out.items():
            if isinstance(v, Tensor) and v.ndim == 0:
                res[k] = v if k == "loss" else v.detach()
            elif isinstance(v, float | int):
                res[k] = torch.tensor(float(v))
        return res

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int, out_dir: Path,
                 generator: torch.Generator) -> dict[str, float]:
        """``out_dir/step_N.png``: originals (top half) and reconstructions; PSNR (dB)."""
        from toolkit.train.logging import save_image_grid

        if self.val_batch is None:
            return {}
        x = self.val_batch.to(next(model.parameters()).device)
        z = model.encode(x)
        recon = model.decode(z).clamp(-1, 1)
        res = {"val_psnr": psnr(recon, x)}
        if hasattr(model, "encode_indices") and hasattr(model, "codebook_stats"):
            res.update({f"val_{k}": float(v) for k, v in
                        model.codebook_stats(model.encode_indices(x)).items()})
        nrow = min(8, len(x))
        save_image_grid(torch.cat([x, recon]).cpu(), out_dir / f"step_{step:08d}.png", nrow=nrow)
        return res
