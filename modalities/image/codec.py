"""Image codecs (tokenizers) for latent generation: ``images (B, C, H, W) <-> latents x_1``.

Every codec maps images in ``[-1, 1]`` to latents ``x_1 = (z - shift) * scale`` of shape
``(B, c, H/f, W/f)``, where ``z`` is the codec's raw latent and ``scale``/``shift`` are
per-channel buffers chosen so that ``x_1`` has about unit variance; the generative model is
trained on ``x_1`` and :meth:`Codec.decode` undoes the scaling before decoding.
:meth:`Codec.fit_scale` estimates them from data as in Latent Diffusion (Rombach et al. 2022,
sec. 4.3.2 and app. D.1: ``scale = 1 / std(z)`` over a batch of training latents), with an
optional ``shift = mean(z)`` (as in SD3 / FLUX ``shift_factor``).

- :class:`PixelCodec`: identity with per-channel normalisation, ``f = 1``.
- :class:`KLVAE`: the LDM convolutional VAE ("AutoencoderKL"; Kingma & Welling 2014, Rombach
  et al. 2022): ResNet blocks with GroupNorm/SiLU, optional mid self-attention, a diagonal
  Gaussian posterior, L1/L2 reconstruction + ``kl_weight * KL(q(z|x) || N(0, I))``, an
  optional Laplacian-pyramid L1 term and an optional PatchGAN discriminator (Isola et al.
  2017) with the hinge loss and the adaptive weight of VQGAN (Esser et al. 2021, eq. 7).
- :class:`~modalities.image.vq.VQVAE` (in :mod:`modalities.image.vq`): VQ-VAE with an EMA
  codebook or finite scalar quantisation.
- :class:`~modalities.image.codec_io.DiffusersCodec`: a local diffusers ``AutoencoderKL`` /
  ``VQModel`` folder.

:func:`~modalities.image.codec_io.load_codec` builds a codec from a registry name / mapping /
saved folder; :func:`~modalities.image.codec_io.save_codec` / ``load_codec_dir`` store
``codec.json`` + ``codec.safetensors`` (each written to a temporary file and moved in place
with ``os.replace``); :func:`check_latent_shape` refuses a codec whose latents do not have
the expected shape. Networks and losses: :mod:`modalities.image.codec_nets`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modalities.image.codec_nets import (
    ConvDecoder,
    ConvEncoder,
    PatchDiscriminator,
    laplacian_pyramid_loss,
)
from toolkit.nn.layers import as_int_tuple

CONFIG_FILE, WEIGHTS_FILE = "codec.json", "codec.safetensors"


def _images_of(batch: Any) -> Tensor:
    """The image tensor of a batch: a tensor, ``(images, ...)`` or ``{"image": images}``."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping):
        for key in ("image", "images", "x", "pixel_values"):
            if key in batch:
                return batch[key]
    elif isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(f"cannot find images in a batch of type {type(batch).__name__}")


class Codec(nn.Module):
    """Base class: ``encode`` / ``decode`` with latent scaling and shape checks.

    Subclasses implement ``_encode(images) -> z`` (unscaled, deterministic) and
    ``_decode(z) -> images``, set ``codec_name`` and return their constructor kwargs from
    :meth:`get_config` (used by :func:`save_codec`).

    Attributes:
        image_channels / latent_channels: C and c. downsample: spatial factor f.
        scale / shift: buffers ``(c,)``; ``x_1 = (z - shift) * scale``.
    """

    codec_name: ClassVar[str] = "codec"
    fit_use_shift: ClassVar[bool] = False  # fit_scale defaults
    fit_per_channel: ClassVar[bool] = False

    def forward(self, images: Tensor, **loss_kw: Any) -> dict[str, Tensor]:
        """The training loss, ``self.loss(images, **loss_kw)``: the call a DDP / FSDP
        wrapper must see (it synchronises gradients only for its own forward)."""
        return self.loss(images, **loss_kw)

    def __init__(self, image_channels: int, latent_channels: int, downsample: int) -> None:
        super().__init__()
        if min(image_channels, latent_channels, downsample) < 1:
            raise ValueError("image_channels, latent_channels and downsample must be >= 1")
        self.image_channels, self.latent_channels = int(image_channels), int(latent_channels)
        self.downsample = int(downsample)
        self.register_buffer("scale", torch.ones(self.latent_channels))
        self.register_buffer("shift", torch.zeros(self.latent_channels))

    # -- to implement -------------------------------------------------------------------
    def _encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def _decode(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """JSON-able constructor kwargs."""
        raise NotImplementedError

    # -- shapes ---------------------------------------------------------------------------
    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int]:
        """``(C, H, W) -> (c, H / f, W / f)``; ValueError if C or the sizes do not fit."""
        self._check_image_dims(tuple(int(s) for s in image_shape), "(C, H, W)", 0)
        _, h, w = image_shape
        return self.latent_channels, int(h) // self.downsample, int(w) // self.downsample

    def _check_image_dims(self, shape: tuple[int, ...], layout: str, lead: int) -> None:
        f, c = self.downsample, self.image_channels
        want = f"{layout} with C = {c} and H, W divisible by {f}"
        name = type(self).__name__
        if len(shape) != 3 + lead or shape[lead] != c:
            raise ValueError(f"{name}: expected images of shape {want}, got {shape}")
        if shape[lead + 1] % f or shape[lead + 2] % f:
            raise ValueError(f"{name}: expected images of shape {want}, got {shape} "
                             f"(H, W = {shape[lead + 1:]} not divisible by {f})")

    def _check_latents(self, z: Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"{type(self).__name__}: expected latents of shape "
                             f"(B, {self.latent_channels}, h, w), got {tuple(z.shape)}")

    # -- public API -----------------------------------------------------------------------
    def encode(self, images: Tensor) -> Tensor:
        """``images (B, C, H, W)`` in [-1, 1] -> scaled latents ``x_1 (B, c, h, w)``."""
        self._check_image_dims(tuple(images.shape), "(B, C, H, W)", 1)
        z = self._encode(images)  # (B, c, h, w)
        return (z - self.shift.to(z)[:, None, None]) * self.scale.to(z)[:, None, None]

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents ``(B, c, h, w)`` -> images ``(B, C, h f, w f)`` in about [-1, 1]."""
        self._check_latents(latents)
        z = latents / self.scale.to(latents)[:, None, None] + self.shift.to(latents)[:, None, None]
        return self._decode(z)

    def moments(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Unscaled posterior ``(mean, std)`` of ``q(z | images)``, each ``(B, c, h, w)``;
        ``std`` is None for deterministic codecs (``z = mean``). Used to cache latents once
        and draw ``z = mean + std * eps`` per epoch (Rombach et al. 2022, sec. 3)."""
        self._check_image_dims(tuple(images.shape), "(B, C, H, W)", 1)
        return self._encode(images), None

    @torch.no_grad()
    def fit_scale(
        self, data: Tensor | Iterable[Any], max_batches: int | None = None, *,
        use_shift: bool | None = None, per_channel: bool | None = None, batch_size: int = 64,
    ) -> tuple[Tensor, Tensor]:
        """Set ``scale = 1 / std(z)`` (and ``shift = mean(z)`` with ``use_shift``) from data.

        Args:
            data: images ``(N, C, H, W)`` (split into ``batch_size`` chunks) or an iterable of
                batches (tensors, ``(images, ...)`` tuples or ``{"image": ...}`` dicts).
            max_batches: stop after this many batches (None: all).
            use_shift / per_channel: subtract the mean; one statistic per latent channel
                instead of one over all. None: the class default (pixels: both True).

        Returns:
            The new ``(scale, shift)`` buffers ``(c,)``.
        """
        use_shift = self.fit_use_shift if use_shift is None else use_shift
        per_channel = self.fit_per_channel if per_channel is None else per_channel
        batches: Iterable[Any] = data.split(batch_size) if isinstance(data, Tensor) else data
        c = self.latent_channels
        s1 = torch.zeros(c, dtype=torch.float64)
        s2, n = torch.zeros_like(s1), 0
        was_training = self.training
        self.eval()
        try:
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                images = _images_of(batch).to(self.scale.device)
                self._check_image_dims(tuple(images.shape), "(B, C, H, W)", 1)
                z = self._encode(images).double().transpose(0, 1).reshape(c, -1).cpu()
                s1, s2, n = s1 + z.sum(1), s2 + z.square().sum(1), n + z.shape[1]
        finally:
            self.train(was_training)
        return self._set_stats(s1, s2, n, use_shift, per_channel)

    @torch.no_grad()
    def fit_scale_latents(self, z: Tensor, *, use_shift: bool | None = None,
                          per_channel: bool | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`fit_scale` from unscaled latents ``z (N, c, h, w)`` already computed (e.g.
        cached posterior means), without running the encoder again."""
        use_shift = self.fit_use_shift if use_shift is None else use_shift
        per_channel = self.fit_per_channel if per_channel is None else per_channel
        self._check_latents(z)
        c = self.latent_channels
        z = z.double().transpose(0, 1).reshape(c, -1).cpu()  # (c, N h w)
        return self._set_stats(z.sum(1), z.square().sum(1), z.shape[1], use_shift, per_channel)

    def _set_stats(self, s1: Tensor, s2: Tensor, n: int, use_shift: bool, per_channel: bool
                   ) -> tuple[Tensor, Tensor]:
        c = self.latent_channels
        if n == 0:
            raise ValueError("fit_scale: no data")
        if not per_channel:
            s1, s2 = s1.sum().expand(c), s2.sum().expand(c)
            n = n * c
        mean = s1 / n
        std = (s2 / n - mean.square()).clamp_min(0).sqrt()
        if (std < 1e-12).any():
            raise ValueError(f"fit_scale: latents have zero variance (std {std.tolist()})")
        self.scale.copy_(1.0 / std)
        self.shift.copy_(mean if use_shift else torch.zeros_like(mean))
        return self.scale.clone(), self.shift.clone()


class PixelCodec(Codec):
    """Identity codec: ``x_1 = (x - mean) / std`` per channel (``f = 1``).

    ``mean`` / ``std`` are views of the ``shift`` / ``scale`` buffers (``std = 1 / scale``);
    :meth:`fit_scale` fits them per channel from data.
    """

    codec_name = "pixel"
    fit_use_shift = True
    fit_per_channel = True

    def __init__(self, image_channels: int = 3) -> None:
        super().__init__(image_channels, image_channels, 1)

    @property
    def mean(self) -> Tensor:
        """Per-channel mean ``(C,)``."""
        return self.shift

    @property
    def std(self) -> Tensor:
        """Per-channel standard deviation ``(C,)``."""
        return 1.0 / self.scale

    def _encode(self, images: Tensor) -> Tensor:
        return images

    def _decode(self, z: Tensor) -> Tensor:
        return z

    def get_config(self) -> dict[str, Any]:
        return {"image_channels": self.image_channels}


def _reconstruction(recon: Tensor, x: Tensor, kind: str) -> Tensor:
    if kind == "l1":
        return (recon - x).abs().mean()
    if kind == "l2":
        return (recon - x).square().mean()
    raise ValueError(f"rec_loss must be 'l1' or 'l2', got {kind!r}")


class KLVAE(Codec):
    """LDM-style convolutional VAE ("AutoencoderKL", Rombach et al. 2022).

    The encoder outputs ``(mu, log sigma^2)`` (log-variance clamped to ``[-30, 20]``);
    ``encode`` uses the posterior mean ``mu``; training samples ``z = mu + sigma * eps``.

    Args:
        image_channels: C. latent_channels: c. base_channels: width of the first level.
        channel_mults: width multipliers per level; ``downsample = 2^(len - 1)``.
        num_res_blocks: ResNet blocks per level. mid_attention: self-attention in the
            middle blocks. groups: max GroupNorm groups. dropout: in ResNet blocks.
        rec_loss: "l1" or "l2". discriminator: build a :class:`PatchDiscriminator`
            (needed for ``adv_weight > 0``). disc_channels / disc_layers: its size.
        adv_start: steps before the adversarial terms switch on.
        adaptive_adv: VQGAN's adaptive generator weight (else ``adv_weight`` as is).
    """

    codec_name = "kl_vae"

    def __init__(
        self, image_channels: int = 3, latent_channels: int = 4, base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1,
        mid_attention: bool = True, groups: int = 8, dropout: float = 0.0,
        rec_loss: str = "l1", discriminator: bool = False, disc_channels: int = 32,
        disc_layers: int = 2, adv_start: int = 0, adaptive_adv: bool = True,
    ) -> None:
        mults = as_int_tuple(channel_mults, None, "channel_mults")
        if not mults or min(mults) < 1:
            raise ValueError(f"KLVAE: channel_mults must be non-empty and >= 1, got {mults}")
        super().__init__(image_channels, latent_channels, 2 ** (len(mults) - 1))
        _reconstruction(torch.zeros(1), torch.zeros(1), rec_loss)  # validates rec_loss
        self._config = dict(
            image_channels=int(image_channels), latent_channels=int(latent_channels),
            base_channels=int(base_channels), channel_mults=list(mults),
            num_res_blocks=int(num_res_blocks), mid_attention=bool(mid_attention),
            groups=int(groups), dropout=float(dropout), rec_loss=rec_loss,
            discriminator=bool(discriminator), disc_channels=int(disc_channels),
            disc_layers=int(disc_layers), adv_start=int(adv_start),
            adaptive_adv=bool(adaptive_adv),
        )
        self.rec_loss, self.adv_start, self.adaptive_adv = rec_loss, adv_start, adaptive_adv
        net = (base_channels, mults, num_res_blocks, mid_attention, groups, dropout)
        c = self.latent_channels
        self.encoder = ConvEncoder(self.image_channels, 2 * c, *net)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1)
        self.post_quant_conv = nn.Conv2d(c, c, 1)
        self.decoder = ConvDecoder(c, self.image_channels, *net)
        self.discriminator = (PatchDiscriminator(self.image_channels, disc_channels, disc_layers,
                                                 groups) if discriminator else None)

    def get_config(self) -> dict[str, Any]:
        return dict(self._config)

    def autoencoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of everything but the discriminator (the generator optimiser's)."""
        for name, p in self.named_parameters():
            if not name.startswith("discriminator."):
                yield p

    def posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images (B, C, H, W) -> (mean, logvar)``, each ``(B, c, h, w)`` (unscaled)."""
        moments = self.quant_conv(self.encoder(images))  # (B, 2c, h, w)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def _encode(self, images: Tensor) -> Tensor:
        return self.posterior(images)[0]

    def moments(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(mean, std = exp(logvar / 2))`` of the diagonal Gaussian posterior."""
        self._check_image_dims(tuple(images.shape), "(B, C, H, W)", 1)
        mean, logvar = self.posterior(images)
        return mean, torch.exp(0.5 * logvar)

    def _decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))

    def loss(
        self, images: Tensor, *, kl_weight: float = 1e-6, perceptual_weight: float = 0.0,
        adv_weight: float = 0.0, step: int = 0, generator: torch.Generator | None = None,
        noise: Callable[[tuple[int, ...]], Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Generator (autoencoder) loss on a batch.

        ``loss = rec + kl_weight * KL / (C H W) + perceptual_weight * lap
        + lambda * (-mean D(x_hat))``, where ``rec`` is the per-element L1/L2 error,
        ``KL = 1/2 sum_{c,h,w} (mu^2 + sigma^2 - 1 - log sigma^2)`` per sample (batch mean),
        so the first two terms are LDM's per-sample summed objective divided by ``C H W``;
        ``lap`` is :func:`laplacian_pyramid_loss`; the generator hinge term is active from
        step ``adv_start`` with ``lambda = adv_weight * ||grad_w (rec + lap)|| /
        (||grad_w L_adv|| + 1e-4)`` (``w``: last decoder layer, clamped to [0, 1e4],
        detached; Esser et al. 2021, eq. 7) or ``lambda = adv_weight`` when not adaptive.
        The discriminator gets no gradient from this loss; train it with
        :meth:`discriminator_loss` on ``out["recon"]``.

        Returns:
            dict with ``loss``, ``rec``, ``kl``, ``perceptual``, ``adv``, ``adv_weight``
            (scalars) and ``recon (B, C, H, W)``.
        """
        self._check_image_dims(tuple(images.shape), "(B, C, H, W)", 1)
        mean, logvar = self.posterior(images)  # (B, c, h, w) each
        if noise is not None:  # e.g. a training step's process-consistent StepContext.randn
            eps = noise(tuple(mean.shape)).to(device=mean.device, dtype=mean.dtype)
        else:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device,
                              dtype=mean.dtype)
        recon = self._decode(mean + torch.exp(0.5 * logvar) * eps)  # (B, C, H, W)
        rec = _reconstruction(recon, images, self.rec_loss)
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()
        zero = rec.new_zeros(())
        perc = laplacian_pyramid_loss(recon, images) if perceptual_weight > 0 else zero
        nll = rec + perceptual_weight * perc
        loss = nll + kl_weight * kl / images[0].numel()
        adv, lam = zero, zero
        if adv_weight > 0 and step >= self.adv_start:
            if self.discriminator is None:
                raise ValueError("KLVAE: adv_weight > 0 needs KLVAE(discriminator=True)")
            params = list(self.discriminator.parameters())
            flags = [p.requires_grad for p in params]
            try:
                for p in params:
                    p.requires_grad_(False)
                adv = -self.discriminator(recon).mean()
            finally:
                for p, f in zip(params, flags):
                    p.requires_grad_(f)
            lam = torch.as_tensor(float(adv_weight), device=rec.device)
            if self.adaptive_adv and torch.is_grad_enabled() and adv.requires_grad:
                w = self.decoder.last_layer
                g_nll = torch.autograd.grad(nll, w, retain_graph=True)[0]
                g_adv = torch.autograd.grad(adv, w, retain_graph=True)[0]
                lam = adv_weight * (g_nll.norm() / (g_adv.norm() + 1e-4)).clamp(0, 1e4).detach()
            loss = loss + lam * adv
        return dict(loss=loss, rec=rec.detach(), kl=kl.detach(), perceptual=perc.detach(),
                    adv=adv.detach(), adv_weight=lam, recon=recon)

    def discriminator_loss(self, images: Tensor, recon: Tensor, step: int | None = None
                           ) -> dict[str, Tensor]:
        """Hinge loss (Lim & Ye 2017) ``1/2 [mean relu(1 - D(x)) + mean relu(1 + D(x_hat))]``
        on real ``images`` and detached ``recon``; multiplied by 0 before ``adv_start`` when
        ``step`` is given. Returns ``loss``, ``logits_real``, ``logits_fake`` (means)."""
        if self.discriminator is None:
            raise ValueError("KLVAE: discriminator_loss needs KLVAE(discriminator=True)")
        real, fake = self.discriminator(images), self.discriminator(recon.detach())
        loss = 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
        if step is not None and step < self.adv_start:
            loss = loss * 0.0
        return dict(loss=loss, logits_real=real.mean().detach(), logits_fake=fake.mean().detach())


def check_latent_shape(codec: Codec, image_shape: Sequence[int], expected: Sequence[int]
                       ) -> tuple[int, int, int]:
    """Return ``codec.latent_shape(image_shape)``; ValueError naming both shapes if it is
    not ``expected``."""
    got = codec.latent_shape(image_shape)
    want = tuple(int(s) for s in expected)
    if got != want:
        raise ValueError(f"{type(codec).__name__} maps images {tuple(image_shape)} to latents "
                         f"{got}, but {want} was expected")
    return got


def psnr(x: Tensor, y: Tensor) -> float:
    """PSNR in dB for images in [-1, 1] (peak-to-peak 2): ``10 log10(4 / MSE)``."""
    mse = float((x - y).double().square().mean())
    return math.inf if mse == 0 else 10.0 * math.log10(4.0 / mse)


_IO_NAMES = ("CODECS", "DiffusersCodec", "load_codec", "load_codec_dir", "save_codec")


def __getattr__(name: str) -> Any:
    """``CODECS``, ``DiffusersCodec``, ``load_codec``, ... live in :mod:`codec_io` (which
    imports this module); they are importable from here too."""
    if name in _IO_NAMES:
        from modalities.image import codec_io

        return getattr(codec_io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Codec", "ConvDecoder", "ConvEncoder", "KLVAE", "PatchDiscriminator", "PixelCodec",
    "check_latent_shape", "laplacian_pyramid_loss", "psnr",
]
