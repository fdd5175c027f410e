"""Latent space: cached posterior moments, exact latents, self-contained latent runs."""

from __future__ import annotations

import shutil

import pytest
import torch

from modalities.image.codec import KLVAE, PixelCodec
from modalities.image.codec_io import load_codec_dir, save_codec
from modalities.image.latent import LatentDataset, LatentSpace, resolve_codec


class _Images(torch.utils.data.Dataset):
    def __init__(self, n: int = 12, channels: int = 1, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, channels, 16, 16, generator=g) * 2 - 1
        self.num_classes = 3

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], i % 3


@pytest.fixture
def vae_dir(tmp_path):
    torch.manual_seed(0)
    vae = KLVAE(1, 4, base_channels=8, channel_mults=(1, 2), groups=4)
    return save_codec(vae, tmp_path / "vae")


def test_prepare_caches_moments_and_latents_are_exact(vae_dir, tmp_path):
    data = _Images()
    space = LatentSpace(str(vae_dir), (1, 16, 16), latent_shape=(4, 8, 8),
                        cache_dir=tmp_path / "cache")
    ds = space.prepare(data, tmp_path / "run", log=lambda s: None)
    assert isinstance(ds, LatentDataset) and len(ds) == len(data)
    m, y = ds[5]
    assert m.shape == (8, 8, 8) and y == 2 and ds.num_classes == 3  # labels pass through
    assert (m[4:] > 0).all()  # posterior std of a KL-VAE
    # eps = 0 gives the codec's own deterministic encoding (posterior mean, scaled)
    moments = torch.stack([ds[i][0] for i in range(len(ds))])
    saved = load_codec_dir(tmp_path / "run" / "codec")
    assert torch.allclose(space.x1(moments, torch.zeros(12, 4, 8, 8)), saved.encode(data.x),
                          atol=1e-5)
    # the scale is fitted: the scaled posterior means have unit standard deviation
    assert space.x1(moments, torch.zeros(12, 4, 8, 8)).std().item() == pytest.approx(1, abs=1e-3)
    assert (tmp_path / "run" / "assets.json").read_text().count("task.codec") == 1
    # a second run reads the cache instead of encoding again
    other = LatentSpace(str(vae_dir), (1, 16, 16), cache_dir=tmp_path / "cache")
    other.encode_moments = None  # would raise if called
    again = other.prepare(data, tmp_path / "run2", log=lambda s: None)
    assert torch.equal(again.moments, ds.moments)


def test_x1_samples_the_posterior(vae_dir, tmp_path):
    space = LatentSpace(str(vae_dir), (1, 16, 16), cache_dir=False)
    ds = space.prepare(_Images(), tmp_path / "run", log=lambda s: None)
    eps = torch.randn(12, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    mean, std = ds.moments[:, :4], ds.moments[:, 4:]
    want = (mean + std * eps - space.codec.shift[:, None, None]) * space.codec.scale[:, None, None]
    assert torch.allclose(space.x1(ds.moments, eps), want)
    with pytest.raises(ValueError, match=r"expected cached moments \(B, 8, h, w\)"):
        space.x1(mean, eps)


def test_deterministic_codec_has_zero_std(tmp_path):
    space = LatentSpace({"name": "pixel", "image_channels": 1}, (1, 16, 16), cache_dir=False)
    ds = space.prepare(_Images(), tmp_path / "run", log=lambda s: None)
    assert ds.moments.shape == (12, 2, 16, 16) and (ds.moments[:, 1] == 0).all()
    assert isinstance(space.codec, PixelCodec)


def test_bad_codecs_are_refused_with_names(vae_dir, tmp_path):
    with pytest.raises(ValueError, match=r"\(4, 8, 8\).*\(8, 4, 4\)|\(8, 4, 4\).*\(4, 8, 8\)"):
        LatentSpace(str(vae_dir), (1, 16, 16), latent_shape=(8, 4, 4))
    with pytest.raises(FileNotFoundError, match="recipe=vae_train"):
        resolve_codec(str(tmp_path / "runs" / "missing_vae"))
    space = LatentSpace(str(vae_dir), (1, 16, 16), cache_dir=False)
    with pytest.raises(ValueError, match=r"\(1, 12, 12\)"):
        big = _Images()
        big.x = big.x[:, :, :12, :12]
        space.prepare(big, tmp_path / "run", log=lambda s: None)


def test_latent_class_run_samples_after_the_codec_is_gone(vae_dir, tmp_path):
    """A class2img_latent_cfm run holds its codec: load_run + generate work without the
    original folder, and a resumed run keeps the fitted scale."""
    from tests.toolkit.train.conftest import TINY, TINY_BY_RECIPE
    from toolkit.train import checkpoint as ck
    from toolkit.train.config import compose_recipe
    from toolkit.train.trainer import train_recipe

    torch.manual_seed(0)
    codec = tmp_path / "vae32"
    save_codec(KLVAE(1, 4, base_channels=8, channel_mults=(1, 2, 2), groups=4), codec)
    run = tmp_path / "run"
    over = [*TINY, *TINY_BY_RECIPE["class2img_latent_cfm"], f"task.codec={codec}",
            f"run_dir={run}"]
    train_recipe(compose_recipe("class2img_latent_cfm", over))
    scale = load_codec_dir(run / "codec").scale.clone()
    shutil.rmtree(codec)
    model, task, _, _ = ck.load_run(run)
    x = task.generate(model, 3, torch.Generator().manual_seed(0), steps=2)
    assert x.shape == (3, 1, 32, 32) and x.abs().max() <= 1
    assert torch.equal(task.latent.codec.scale, scale)
    over[0:1] = ["trainer.max_steps=3"]
    train_recipe(compose_recipe("class2img_latent_cfm",
                                [*over, "resume=latest", f"task.codec={run / 'codec'}"]))
    assert torch.equal(load_codec_dir(run / "codec").scale, scale)
