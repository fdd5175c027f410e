"""Codec I/O: a local diffusers ``AutoencoderKL`` / ``VQModel`` behind the
:class:`~modalities.image.codec.Codec` interface, the codec registry, and atomic
save / load of codec folders (``codec.json`` + ``codec.safetensors``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from modalities.image.codec import (
    CONFIG_FILE,
    KLVAE,
    WEIGHTS_FILE,
    Codec,
    PixelCodec,
    check_latent_shape,
)
from toolkit.files import atomic_write
from toolkit.registry import Registry


# ---------------------------------------------------------------------------------------
# diffusers
# ---------------------------------------------------------------------------------------
def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("DiffusersCodec needs diffusers: pip install 'toolkit[ref]' "
                          "(or pip install diffusers)") from e
    return diffusers


class DiffusersCodec(Codec):
    """A diffusers ``AutoencoderKL`` or ``VQModel`` behind the :class:`Codec` interface.

    ``encode``: ``latent_dist.mean`` (KL) or the codebook-quantised latents (VQ);
    ``decode``: ``model.decode`` (VQ with ``force_not_quantize=True`` unless
    ``requantize``). ``scale`` / ``shift`` start at the config's ``scaling_factor`` /
    ``shift_factor`` (diffusers: ``x_1 = (z - shift_factor) * scaling_factor``) until
    :meth:`fit_scale` overrides them.
    """

    codec_name = "diffusers"

    def __init__(self, model: nn.Module, requantize: bool = False) -> None:
        cls = type(model).__name__
        if cls not in ("AutoencoderKL", "VQModel"):
            raise TypeError(f"DiffusersCodec wraps AutoencoderKL or VQModel, got {cls}")
        cfg = model.config
        is_vq = cls == "VQModel"
        c = cfg.latent_channels
        if is_vq and cfg.get("vq_embed_dim") is not None:
            c = cfg.vq_embed_dim
        super().__init__(cfg.in_channels, c, 2 ** (len(cfg.block_out_channels) - 1))
        self.model, self.is_vq, self.requantize = model, is_vq, bool(requantize)
        if getattr(model, "use_tiling", False) or getattr(model, "use_slicing", False):
            model.use_tiling = model.use_slicing = False
        self.scale.fill_(float(cfg.get("scaling_factor") or 1.0))
        self.shift.fill_(float(cfg.get("shift_factor") or 0.0))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, requantize: bool = False,
                        allow_pickle: bool = False, **kwargs: Any) -> DiffusersCodec:
        """Load a local diffusers folder (``config.json`` + weights; no downloads).
        Only safetensors weights are read unless ``allow_pickle`` (``.bin`` files unpickle)."""
        from toolkit.files import safetensors_only

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"DiffusersCodec: no config.json in {str(folder)!r}; "
                                    "expected a folder written by save_pretrained")
        kind = json.loads((folder / "config.json").read_text()).get("_class_name")
        if kind not in ("AutoencoderKL", "VQModel"):
            raise ValueError(f"DiffusersCodec: {str(folder)!r} holds a {kind!r}, "
                             "expected AutoencoderKL or VQModel")
        model_cls = getattr(_diffusers(), kind)
        kwargs = {**safetensors_only(allow_pickle), **kwargs}
        if not allow_pickle and not any(folder.glob("*.safetensors")) and any(
                folder.glob("*.bin")):
            raise ValueError(f"DiffusersCodec: {str(folder)!r} has only pickle-based .bin "
                             "weights; unpickling can run arbitrary code, so they are refused. "
                             "Re-save with safe_serialization=True, or pass allow_pickle=true "
                             "if you trust the source")
        model = model_cls.from_pretrained(str(folder), local_files_only=True, **kwargs)
        return cls(model.eval(), requantize=requantize)

    @classmethod
    def from_model_config(cls, class_name: str, model_config: dict[str, Any],
                          requantize: bool = False) -> DiffusersCodec:
        """Build an (untrained) model from its diffusers config dict."""
        model = getattr(_diffusers(), class_name).from_config(model_config)
        return cls(model.eval(), requantize=requantize)

    def get_config(self) -> dict[str, Any]:
        cfg = {k: v for k, v in json.loads(self.model.to_json_string()).items()
               if not k.startswith("_")}
        return {"class_name": type(self.model).__name__, "model_config": cfg,
                "requantize": self.requantize}

    def _encode(self, images: Tensor) -> Tensor:
        x = images.to(self.model.dtype)
        if self.is_vq:
            z = self.model.quantize(self.model.encode(x).latents)[0]
        else:
            z = self.model.encode(x).latent_dist.mean
        return z.to(images.dtype)

    def moments(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """AutoencoderKL: the ``latent_dist`` mean and std; VQModel: the codes, no std."""
        if self.is_vq:
            return super().moments(images)
        self._check_image_dims(tuple(images.shape), "(B, C, H, W)", 1)
        dist = self.model.encode(images.to(self.model.dtype)).latent_dist
        return dist.mean.to(images.dtype), dist.std.to(images.dtype)

    def _decode(self, z: Tensor) -> Tensor:
        h = z.to(self.model.dtype)
        if self.is_vq:
            return self.model.decode(h, force_not_quantize=not self.requantize).sample.to(z.dtype)
        return self.model.decode(h).sample.to(z.dtype)


# ---------------------------------------------------------------------------------------
# registry, save / load
# ---------------------------------------------------------------------------------------
def _vq(**kwargs: Any) -> Codec:
    from modalities.image.vq import VQVAE

    return VQVAE(**kwargs)


def _diffusers_codec(path: str | None = None, **kwargs: Any) -> Codec:
    if path is not None:
        return DiffusersCodec.from_pretrained(path, **kwargs)
    return DiffusersCodec.from_model_config(**kwargs)


CODECS = Registry("codec")
CODECS.register("pixel", PixelCodec, aliases=("identity",))
CODECS.register("kl_vae", KLVAE, aliases=("klvae", "vae", "kl"))
CODECS.register("vq", _vq, aliases=("vqvae", "vq_vae"))
CODECS.register("diffusers", _diffusers_codec)


def load_codec(spec: str | Mapping[str, Any] | Codec | os.PathLike, **kwargs: Any) -> Codec:
    """Build a codec from a registry name (+ kwargs), a mapping ``{"name": ..., **kwargs}``
    (or ``{"name": ..., "kwargs": {...}}``), a saved folder (:func:`load_codec_dir`) or a
    codec (returned as is). Names: "pixel", "kl_vae", "vq", "diffusers" (``path=...``)."""
    if isinstance(spec, Codec):
        return spec
    if isinstance(spec, Mapping):
        spec = dict(spec)
        if "name" not in spec:
            raise ValueError(f"load_codec: a codec mapping needs a 'name' (one of "
                             f"{', '.join(CODECS.names())}), got keys {sorted(spec)}")
        name = spec.pop("name")
        kwargs = {**dict(spec.pop("kwargs", None) or {}), **spec, **kwargs}
        return CODECS[str(name)](**kwargs)
    if isinstance(spec, os.PathLike) or (Path(str(spec)) / CONFIG_FILE).is_file():
        return load_codec_dir(spec, **kwargs)
    return CODECS[str(spec)](**kwargs)


def save_codec(codec: Codec, directory: str | os.PathLike) -> Path:
    """Write ``codec.safetensors`` (full state dict) and ``codec.json`` (name, config, shapes)
    into ``directory``, each atomically (temp file + ``os.replace``; weights first)."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in codec.state_dict().items()}
    meta = {"name": codec.codec_name, "config": codec.get_config(), "format": 1,
            "image_channels": codec.image_channels, "latent_channels": codec.latent_channels,
            "downsample": codec.downsample}
    atomic_write(out / WEIGHTS_FILE, lambda p: save_file(state, p))
    atomic_write(out / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=1)))
    return out


def load_codec_dir(
    directory: str | os.PathLike, *, image_shape: Sequence[int] | None = None,
    expected_latent_shape: Sequence[int] | None = None, map_location: str = "cpu",
) -> Codec:
    """Rebuild a codec saved by :func:`save_codec` (strict, bit-exact weights); with
    ``image_shape`` and ``expected_latent_shape`` refuse it via :func:`check_latent_shape`."""
    from safetensors.torch import load_file

    folder = Path(directory)
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {str(folder)!r} (not a saved codec)")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    codec = load_codec(meta["name"], **meta["config"])
    codec.load_state_dict(load_file(str(folder / WEIGHTS_FILE), device=map_location))
    if expected_latent_shape is not None:
        if image_shape is None:
            raise ValueError("load_codec_dir: expected_latent_shape needs image_shape")
        check_latent_shape(codec, image_shape, expected_latent_shape)
    return codec.eval()
