"""Latent space for the generative image tasks: a frozen codec and cached posterior moments.

Latent diffusion (Rombach et al. 2022, sec. 3): a frozen autoencoder maps images to
``z ~ q(z | x)`` and the flow learns the distribution of ``x_1 = (z - shift) * scale``, with
``scale = 1 / std(z)`` estimated from the training data (their sec. 4.3.2 / appendix G).
Encoding every image every epoch wastes most of a CPU step, so :class:`LatentSpace` encodes
the training set once, caches the posterior moments ``(mean, std)`` of every image on disk
(``$TOOLKIT_CACHE/latents/<key>.safetensors``; the key hashes the codec weights and the
images) and the task draws ``z = mean + std * eps`` with the trainer's generator, so resume
and multi-process training stay exact.

The codec, with its fitted scale, is saved into the run directory (``RUN_DIR/codec``) and
registered as a run asset, so ``toolkit sample`` / ``toolkit eval`` decode with exactly the
codec the flow was trained on even after the original folder is gone.

``codec`` specs: a ``vae_train`` / ``vq_train`` run directory, a folder written by
:func:`~modalities.image.codec_io.save_codec`, a diffusers ``AutoencoderKL`` / ``VQModel``
folder (``{"name": "diffusers", "path": DIR}``) or a registry name (``"pixel"``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from modalities.image.codec import Codec, check_latent_shape
from toolkit.files import cache_root

__all__ = ["LatentDataset", "LatentSpace", "default_cache_dir", "resolve_codec", "to_images"]

CODEC_DIR = "codec"


def default_cache_dir() -> Path:
    """``$TOOLKIT_CACHE/latents`` if set, else ``~/.cache/toolkit/latents``."""
    return cache_root("latents")


def resolve_codec(spec: Any) -> Codec:
    """A frozen codec (eval mode, no gradients) from any ``codec`` spec (module docstring)."""
    from modalities.image.codec_io import CONFIG_FILE, load_codec

    if isinstance(spec, str | os.PathLike) and not isinstance(spec, Mapping):
        folder = Path(spec)
        if (folder / "config.yaml").is_file() or (folder / "checkpoints").is_dir():
            codec = _codec_from_run(folder)
        elif folder.is_dir() and not (folder / CONFIG_FILE).is_file() and \
                (folder / "config.json").is_file():
            codec = load_codec({"name": "diffusers", "path": str(folder)})
        elif not folder.exists() and (os.sep in str(spec) or str(spec).startswith(".")):
            raise FileNotFoundError(
                f"task.codec: {str(spec)!r} does not exist; train a tokenizer first, e.g. "
                f"`toolkit train recipe=vae_train run_dir={spec}`, or point task.codec at a "
                f"saved codec / diffusers AutoencoderKL folder")
        else:
            codec = load_codec(spec)
    else:
        codec = load_codec(spec)
    codec.eval().requires_grad_(False)
    return codec


def _codec_from_run(run: Path) -> Codec:
    from toolkit.train.checkpoint import load_run

    model, _, _, _ = load_run(run)  # EMA weights of the codec task
    if not isinstance(model, Codec):
        raise ValueError(f"task.codec: run {str(run)!r} did not train a codec "
                         f"(its model is {type(model).__name__}); use a vae_train / vq_train run")
    return model


class LatentDataset(Dataset):
    """The items of ``base`` with the image replaced by its cached moments ``(2c, h, w)``
    (mean, then std; std = 0 for deterministic codecs). Tuple items swap element 0,
    dict items the ``"image"`` key; everything else (labels, captions) passes through."""

    def __init__(self, base: Any, moments: Tensor) -> None:
        if len(base) != moments.shape[0]:
            raise ValueError(f"{len(base)} items but {moments.shape[0]} cached latents")
        self.base, self.moments = base, moments

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Any:
        item = self.base[i]
        if isinstance(item, Mapping):
            return {**item, "image": self.moments[i]}
        if isinstance(item, tuple | list):
            return (self.moments[i], *item[1:])
        return self.moments[i]

    def __getattr__(self, name: str) -> Any:  # num_classes, captions, ... of the base
        if name in ("base", "moments"):
            raise AttributeError(name)
        return getattr(self.base, name)


def _image(item: Any) -> Tensor:
    if isinstance(item, Mapping):
        return item["image"]
    return item[0] if isinstance(item, tuple | list) else item


class LatentSpace:
    """A frozen codec between the task and its images (see the module docstring).

    Args:
        codec: codec spec. image_shape: ``(C, H, W)`` of the data.
        latent_shape: expected ``(c, h, w)``; a codec that does not produce it is refused
            with both shapes named (None: whatever the codec gives).
        cache_dir: moment cache folder (None: :func:`default_cache_dir`; False: no cache).
        batch_size: encoding batch size.
    """

    def __init__(self, codec: Any, image_shape: tuple[int, int, int],
                 latent_shape: tuple[int, int, int] | None = None,
                 cache_dir: str | Path | bool | None = None, batch_size: int = 256) -> None:
        self.spec, self.image_shape = codec, tuple(int(s) for s in image_shape)
        self.codec = resolve_codec(codec)
        if latent_shape is not None:
            check_latent_shape(self.codec, self.image_shape, latent_shape)
        self.shape = self.codec.latent_shape(self.image_shape)  # (c, h, w)
        self.cache_dir = cache_dir
        self.batch_size = int(batch_size)

    # -- training ------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, dataset: Any, run_dir: str | Path, log: Callable[[str], None] = print
                ) -> LatentDataset:
        """Encode (or load cached) moments of ``dataset``; fit the latent scale on a fresh
        run (a resumed run reloads ``RUN_DIR/codec`` with its scale); save the codec there."""
        from modalities.image.codec_io import CONFIG_FILE, load_codec_dir, save_codec
        from toolkit.train.tasks import register_run_asset

        run_dir = Path(run_dir)
        saved = run_dir / CODEC_DIR
        if (saved / CONFIG_FILE).is_file():
            self.codec = load_codec_dir(saved).requires_grad_(False)
        images = torch.stack([_image(dataset[i]) for i in range(len(dataset))])  # (N, C, H, W)
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"the data's images are {tuple(images.shape[1:])} but the task "
                             f"expects {self.image_shape} (task.image_size / channels)")
        moments = self._cached_moments(images, log)  # (N, 2c, h, w)
        if not (saved / CONFIG_FILE).is_file():
            self.codec.fit_scale_latents(moments[:, :self.shape[0]])
            save_codec(self.codec, saved)
            register_run_asset(run_dir, "task.codec", CODEC_DIR)
            log(f"latents {tuple(moments.shape[1:])} -> x1 {self.shape}; scale "
                f"{[round(float(v), 4) for v in self.codec.scale]} (codec saved in {saved})")
        return LatentDataset(dataset, moments)

    def _cached_moments(self, images: Tensor, log: Callable[[str], None]) -> Tensor:
        key = self._key(images)
        path = None
        if self.cache_dir is not False:
            path = Path(self.cache_dir or default_cache_dir()) / f"{key}.safetensors"
            if path.is_file():
                from safetensors.torch import load_file

                return load_file(str(path))["moments"]
        moments = self.encode_moments(images, log)
        if path is not None:
            from safetensors.torch import save_file

            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            save_file({"moments": moments.contiguous()}, str(tmp))
            os.replace(tmp, path)
        return moments

    @torch.no_grad()
    def encode_moments(self, images: Tensor, log: Callable[[str], None] = print) -> Tensor:
        """``(N, C, H, W)`` images -> ``(N, 2c, h, w)`` unscaled posterior (mean, std)."""
        from tqdm.auto import tqdm

        out = []
        chunks = images.split(self.batch_size)
        for x in tqdm(chunks, desc="encoding latents", leave=False,
                      disable=len(chunks) < 4):
            mean, std = self.codec.moments(x)
            out.append(torch.cat([mean, torch.zeros_like(mean) if std is None else std], 1))
        log(f"encoded {len(images)} images to latents {tuple(out[0].shape[1:])} (cached)")
        return torch.cat(out).float()

    def _key(self, images: Tensor) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"codec": type(self.codec).__name__, "image": self.image_shape},
                            sort_keys=True).encode())
        for name, v in sorted(self.codec.state_dict().items()):
            if name in ("scale", "shift"):  # refitted per run; moments are unscaled
                continue
            h.update(name.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
        h.update(images.float().contiguous().numpy().tobytes())
        return h.hexdigest()[:24]

    def x1(self, moments: Tensor, eps: Tensor) -> Tensor:
        """Scaled latents ``x_1 = (mean + std * eps - shift) * scale``, ``(B, c, h, w)``."""
        c = self.shape[0]
        if moments.ndim != 4 or moments.shape[1] != 2 * c:
            raise ValueError(f"expected cached moments (B, {2 * c}, h, w), got "
                             f"{tuple(moments.shape)}")
        z = moments[:, :c] + moments[:, c:] * eps  # (B, c, h, w)
        codec = self.codec
        return (z - codec.shift.to(z)[:, None, None]) * codec.scale.to(z)[:, None, None]

    # -- sampling ------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: Tensor, batch_size: int = 256) -> Tensor:
        """Scaled latents -> images in ``[-1, 1]`` on the CPU."""
        device = latents.device
        self.codec.to(device)
        return torch.cat([self.codec.decode(z).clamp(-1, 1).cpu()
                          for z in latents.split(batch_size)])


def to_images(x: Tensor, latent: LatentSpace | None) -> Tensor:
    """Solver output -> images in ``[-1, 1]`` on the CPU (decoded first when the flow runs
    on a codec's latents)."""
    if latent is not None:
        x = latent.decode(x)
    return x.clamp(-1, 1).cpu()
