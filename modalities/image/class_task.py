"""Class-conditional image flow matching: the task behind ``recipe=class2img_cfm``.

Rectified flow (Liu et al. 2023; Lipman et al. 2023) in pixel space: ``x_t = t x1 +
(1 - t) x0`` and the network regresses ``u = x1 - x0``. The class label is embedded by a
:class:`~conditioners.class_label.ClassConditioner` owned by the model (its last row is the
learned null class of classifier-free guidance, Ho & Salimans 2022; DiT, Peebles & Xie 2023,
sec. 3.2) and reaches the backbone as ``Condition(pooled=(B, D))`` (FiLM / AdaLN).
Sampling: any toolkit solver on ``guidance.cfg(model, w, cond={"y": y}, uncond={"y": null})``.

``objective="edm"`` (``recipe=class2img_edm``) trains the same backbone with EDM's
preconditioning, log-normal noise levels and loss weight instead (Karras et al. 2022,
Table 1; :class:`toolkit.precond.EDMPrecond`), predicting data on the EDM path.
``codec=...`` (``recipe=class2img_latent_cfm``) runs the flow on a frozen tokenizer's latents
(:class:`~modalities.image.latent.LatentSpace`; Rombach et al. 2022) and decodes samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from conditioners.class_label import ClassConditioner
from modalities.image.latent import to_images
from toolkit import timesteps as timesteps_mod
from toolkit.losses import cfm_loss, regression_loss
from toolkit.train.tasks import SamplerSpec, StepContext, Task

__all__ = ["ClassImageModel", "Class2ImgTask"]


class ClassImageModel(nn.Module):
    """A backbone ``net(x, t, cond=Condition)`` plus its class embedding (null included).

    ``forward(x (B,C,H,W), t (B,), y (B,) long) -> (B,C,H,W)``; ``y == num_classes`` (or
    ``y=None``) selects the null class.
    """

    def __init__(self, net: nn.Module, num_classes: int, dim: int) -> None:
        super().__init__()
        self.net = net
        self.classes = ClassConditioner(num_classes, dim, p_drop=0.0)

    @property
    def num_classes(self) -> int:
        """Number of real classes K (label K is the null class)."""
        return self.classes.num_classes

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Velocity for noisy images ``x`` at times ``t`` given labels ``y``."""
        if y is None:
            y = self.classes.null_labels(x.shape[0])
        return self.net(x, t, cond=self.classes.encode(y.to(x.device)))


class Class2ImgTask(Task):
    """Class-conditional rectified-flow CFM on images (see the module docstring).

    Batches are ``(images (B,C,H,W) in [-1,1], labels (B,), ...)``.

    Args:
        num_classes: K. path / t_sampler / t_sampler_kwargs: probability path and time
            sampler. p_drop: CFG label dropout (to the null class).
        image_size / channels: image shape. val_per_class: samples per class at validation.
        objective: ``cfm`` (velocity regression) or ``edm`` (EDM-preconditioned data
            prediction with EDM's loss weight). sigma_data: EDM's sigma_d.
        codec: None (pixel space) or a tokenizer spec (:mod:`modalities.image.latent`).
        latent_shape: expected ``(c, h, w)`` of the codec (refused with both shapes if not).
        sampler: a :class:`SamplerSpec` (its ``guidance_scale`` is the CFG scale).
    """

    def __init__(self, num_classes: int = 10, path: str = "linear",
                 t_sampler: str = "logit_normal", t_sampler_kwargs: dict[str, Any] | None = None,
                 p_drop: float = 0.1, image_size: int = 32, channels: int = 1,
                 val_per_class: int = 8, objective: str = "cfm", sigma_data: float = 0.5,
                 codec: Any = None, latent_shape: list[int] | None = None,
                 sampler: SamplerSpec | None = None) -> None:
        from toolkit import paths

        if num_classes < 1 or not 0.0 <= p_drop <= 1.0:
            raise ValueError(f"task.num_classes must be >= 1 and task.p_drop in [0, 1], got "
                             f"{num_classes}, {p_drop}")
        if min(image_size, channels, val_per_class) < 1:
            raise ValueError("task.image_size, channels and val_per_class must be >= 1")
        if objective not in ("cfm", "edm"):
            raise ValueError(f"task.objective must be 'cfm' or 'edm', got {objective!r}")
        self.num_classes, self.p_drop = int(num_classes), float(p_drop)
        self.path = paths.get(path)
        self.t_sampler = timesteps_mod.get(t_sampler, **dict(t_sampler_kwargs or {}))
        self.image_size, self.channels = int(image_size), int(channels)
        self.val_per_class = int(val_per_class)
        self.objective, self.sigma_data = objective, float(sigma_data)
        self.prediction = "data" if objective == "edm" else "velocity"
        self.latent = None
        if codec is not None:
            from modalities.image.latent import LatentSpace

            self.latent = LatentSpace(codec, (self.channels, self.image_size, self.image_size),
                                      latent_shape=tuple(latent_shape) if latent_shape else None)
        self.sampler = sampler or SamplerSpec(solver="heun", steps=16, guidance_scale=2.0)

    @property
    def x_shape(self) -> tuple[int, int, int]:
        """Shape of what the flow generates: the image, or the codec's latent ``(c, h, w)``."""
        if self.latent is not None:
            return self.latent.shape
        return self.channels, self.image_size, self.image_size

    def wrap_model(self, net: nn.Module) -> nn.Module:
        """Backbone + class embedding of width ``net.pooled_dim`` (+ EDM preconditioning)."""
        dim = getattr(net, "pooled_dim", None)
        if not dim:
            raise ValueError("the model needs a pooled condition input for class labels; set "
                             "model.pooled_dim (e.g. 128)")
        c = self.x_shape[0]
        if getattr(net, "in_channels", c) != c:
            what = "codec latents" if self.latent is not None else "images"
            raise ValueError(f"model.in_channels={net.in_channels} but the {what} have {c} "
                             f"channels (set model.in_channels={c})")
        model = ClassImageModel(net, self.num_classes, int(dim))
        if self.objective == "edm":
            from toolkit.precond import EDMPrecond

            return EDMPrecond(model, self.path, sigma_data=self.sigma_data)
        return model

    def setup(self, dataset: Any, run_dir: Path, model: nn.Module | None = None) -> Any:
        """Checks that the data's labels fit ``num_classes``; with a codec, returns the
        dataset with images replaced by cached latent moments."""
        k = getattr(dataset, "num_classes", None)
        if k is not None and int(k) != self.num_classes:
            raise ValueError(f"the dataset has {k} classes but task.num_classes="
                             f"{self.num_classes}")
        if self.latent is not None:
            return self.latent.prepare(dataset, run_dir)
        return None

    def loss(self, model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Tensor]:
        """Flow-matching loss; labels dropped to the null class with probability ``p_drop``."""
        if not isinstance(batch, list | tuple) or len(batch) < 2:
            raise ValueError("Class2ImgTask expects batches (images, labels, ...)")
        x1, y = batch[0], torch.as_tensor(batch[1]).long()
        if self.latent is not None:  # cached moments (B, 2c, h, w) -> latents (B, c, h, w)
            x1 = self.latent.x1(x1, ctx.randn(x1[:, :self.x_shape[0]].shape,
                                              dtype=x1.dtype).to(x1.device))
        elif x1.ndim != 4 or x1.shape[1] != self.channels:
            raise ValueError(f"Class2ImgTask expects images (B, {self.channels}, H, W), got "
                             f"{tuple(x1.shape)}")
        if y.shape != (x1.shape[0],) or int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise ValueError(f"labels must be (B,) in [0, {self.num_classes}), got shape "
                             f"{tuple(y.shape)}, range [{int(y.min())}, {int(y.max())}]")
        b = x1.shape[0]
        drop = ctx.bernoulli(self.p_drop, b).to(y.device)  # (B,)
        y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        x0 = ctx.randn(x1.shape, dtype=x1.dtype).to(x1.device)  # (B, C, H, W)
        t = ctx.sample_t(self.t_sampler, b, dtype=x1.dtype).to(x1.device)  # (B,)
        if self.objective == "edm":  # lambda(sigma) ||D - x1||^2 = ||F - F_target||^2
            out = regression_loss(model, x1, self.path, "data", x0=x0, t=t, cond={"y": y},
                                  weighting="edm", sigma_data=self.sigma_data)
        else:
            out = cfm_loss(model, x1, x0, path=self.path, t=t, cond={"y": y})
        return {"loss": out.loss, "cfg_drop": drop.float().mean()}

    @torch.no_grad()
    def generate(self, model: nn.Module, labels: Tensor | int, generator: torch.Generator, *,
                 guidance_scale: float | None = None, solver: str | None = None,
                 steps: int | None = None, batch_size: int = 256) -> Tensor:
        """Images ``(n, C, H, W)`` in ``[-1, 1]`` for class ``labels (n,)`` (an int ``n``:
        classes ``0, 1, ..., K-1, 0, ...``)."""
        spec = self.sampler
        w = spec.guidance_scale if guidance_scale is None else float(guidance_scale)
        device = next(model.parameters()).device
        if isinstance(labels, int):
            labels = torch.arange(labels) % self.num_classes
        labels = torch.as_tensor(labels).long()
        x0 = torch.randn(len(labels), *self.x_shape, generator=generator)  # (n, C, H, W)
        out = []
        for s in range(0, len(labels), batch_size):
            y = labels[s:s + batch_size].to(device)
            out.append(to_images(spec.guided(
                model, x0[s:s + batch_size].to(device), self.path, self.prediction,
                {"y": y}, {"y": torch.full_like(y, self.num_classes)}, scale=w, solver=solver,
                steps=steps), self.latent))
        return torch.cat(out)

    def validate(self, model: nn.Module, step: int, out_dir: Path,
                 generator: torch.Generator) -> dict[str, float]:
        """``out_dir/step_N.png``: one column per class, ``val_per_class`` rows."""
        from toolkit.train.logging import save_image_grid

        labels = torch.arange(self.num_classes).repeat(self.val_per_class)
        x = self.generate(model, labels, generator)
        save_image_grid(x, out_dir / f"step_{step:08d}.png", nrow=self.num_classes)
        return {}
