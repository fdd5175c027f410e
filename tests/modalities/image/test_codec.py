"""Image codecs: shapes, round-trips, latent scaling, short training runs (KL-VAE, EMA VQ,
FSQ), diffusers parity, save/load and shape refusal."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from modalities.image.codec import (
    KLVAE,
    Codec,
    DiffusersCodec,
    PixelCodec,
    check_latent_shape,
    laplacian_pyramid_loss,
    load_codec,
    load_codec_dir,
    save_codec,
)
from modalities.image.vq import FSQ, VQVAE, EMAQuantizer

SMALL = dict(image_channels=1, base_channels=8, channel_mults=(1, 2), groups=4,
             mid_attention=False)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits, bilinearly resized to 16x16, in [-1, 1]: (train, test)."""
    from sklearn.datasets import load_digits

    d = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16 * 2 - 1
    x = F.interpolate(d, size=16, mode="bilinear", align_corners=False)  # (1797, 1, 16, 16)
    return x[:1500], x[1500:]


def _rgb(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def _codecs() -> dict[str, Codec]:
    torch.manual_seed(0)
    return {
        "pixel": PixelCodec(3),
        "kl_vae": KLVAE(3, latent_channels=4, base_channels=8, channel_mults=(1, 2, 2), groups=4),
        "vq_ema": VQVAE(3, codebook_size=16, codebook_dim=3, base_channels=8,
                        channel_mults=(1, 2), groups=4),
        "vq_fsq": VQVAE(3, quantizer="fsq", levels=(5, 3, 3), base_channels=8,
                        channel_mults=(1, 2), groups=4),
    }


def _train(model: Codec, train: torch.Tensor, test: torch.Tensor, steps: int, lr: float,
           seed: int = 0) -> tuple[float, float]:
    """Adam on random batches of 16; test MSE of ``decode(encode(x))`` before and after."""
    g = torch.Generator().manual_seed(seed)

    def mse() -> float:
        model.eval()
        with torch.no_grad():
            return F.mse_loss(model.decode(model.encode(test)), test).item()

    before = mse()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        out = model.loss(train[torch.randint(0, len(train), (16,), generator=g)])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return before, mse()


# -- shapes and round-trips ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["pixel", "kl_vae", "vq_ema", "vq_fsq"])
def test_shapes_and_latent_shape(name):
    codec = _codecs()[name].eval()
    x = _rgb()
    with torch.no_grad():
        z = codec.encode(x)
        y = codec.decode(z)
    assert z.shape == (4, *codec.latent_shape((3, 16, 16)))
    assert z.shape[1] == codec.latent_channels and 16 // z.shape[-1] == codec.downsample
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert codec.scale.shape == codec.shift.shape == (codec.latent_channels,)


def test_pixel_codec_is_exact_and_fits_channel_stats():
    codec = PixelCodec(3)
    x = _rgb(8)
    assert codec.downsample == 1 and torch.equal(codec.encode(x), x)
    assert torch.equal(codec.decode(codec.encode(x)), x)
    data = x * torch.tensor([0.5, 2.0, 1.0])[:, None, None] + torch.tensor([0.3, -1.0, 0.0])[
        :, None, None]
    codec.fit_scale(data)
    z = codec.encode(data)
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-4)
    assert torch.allclose(codec.mean, data.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(codec.std, data.std((0, 2, 3), correction=0), atol=1e-5)
    assert torch.allclose(codec.decode(z), data, atol=1e-5)


def test_vq_round_trip_matches_code_decoding():
    codec = _codecs()["vq_ema"].eval()
    x = _rgb()
    with torch.no_grad():
        codec.loss(x)  # eval mode: no codebook update
        idx = codec.encode_indices(x)
        assert idx.shape == (4, 8, 8) and idx.dtype == torch.int64
        codec.scale.fill_(2.0)  # the scaling is undone exactly enough to re-snap to codes
        assert torch.allclose(codec.decode(codec.encode(x)), codec.decode_indices(idx),
                              atol=1e-6)


# -- latent scaling -------------------------------------------------------------------------
def test_fit_scale_gives_unit_std_latents(digits):
    train, _ = digits
    torch.manual_seed(0)
    vae = KLVAE(latent_channels=4, **SMALL).eval()
    data = train[:256]
    scale, shift = vae.fit_scale(data)
    assert torch.equal(shift, torch.zeros(4)) and float(scale[0]) != 1.0
    with torch.no_grad():
        z = vae.encode(data)
    assert abs(z.std().item() - 1.0) < 1e-3
    vae.fit_scale(data, use_shift=True, per_channel=True)
    with torch.no_grad():
        z = vae.encode(data)
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(z.std((0, 2, 3)), torch.ones(4), atol=1e-3)
    # a DataLoader of (images,) batches with max_batches == the first 128 images as a tensor
    loader = DataLoader(TensorDataset(data), batch_size=64)
    s_loader, _ = vae.fit_scale(loader, max_batches=2)
    s_tensor, _ = vae.fit_scale(data[:128])
    assert torch.allclose(s_loader, s_tensor, rtol=1e-6)
    assert vae.training is False  # fit_scale restores the mode


# -- training -----------------------------------------------------------------------------
def test_klvae_reconstruction_improves(digits):
    train, test = digits
    torch.manual_seed(0)
    vae = KLVAE(latent_channels=4, **SMALL)
    before, after = _train(vae, train, test, steps=150, lr=2e-3)
    print(f"KL-VAE test MSE {before:.4f} -> {after:.4f}")
    assert after < 0.05 * before and after < 0.02


def test_vq_ema_codebook_usage(digits):
    train, test = digits
    torch.manual_seed(0)
    vq = VQVAE(codebook_size=64, codebook_dim=4, **SMALL)
    before, after = _train(vq, train, test, steps=100, lr=2e-3)
    with torch.no_grad():
        stats = vq.codebook_stats(vq.encode_indices(test))
    print(f"VQ-EMA test MSE {before:.4f} -> {after:.4f}, {stats}")
    assert after < 0.1 * before
    assert stats["usage"] > 0.5 and stats["perplexity"] > 10


def test_fsq_codebook_usage(digits):
    train, test = digits
    torch.manual_seed(0)
    vq = VQVAE(quantizer="fsq", levels=(3, 3, 3), **SMALL)
    before, after = _train(vq, train, test, steps=150, lr=4e-3)
    with torch.no_grad():
        stats = vq.codebook_stats(vq.encode_indices(test))
    print(f"FSQ test MSE {before:.4f} -> {after:.4f}, {stats}")
    assert after < 0.1 * before
    assert stats["usage"] > 0.5


# -- quantisers and loss terms ------------------------------------------------------------
def test_ema_update_is_kmeans_step_without_decay_and_restarts_dead_codes():
    q = EMAQuantizer(2, 2, decay=0.0, eps=0.0, dead_threshold=0.0)
    q.initialised.fill_(True)
    q.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [9.0, 10.0], [11.0, 10.0], [10.0, 12.0]])
    zq, idx, commit = q(z.t()[None, :, :, None], update=True)  # (1, 2, 5, 1)
    assert idx.flatten().tolist() == [0, 0, 1, 1, 1]
    assert torch.allclose(q.codebook, torch.tensor([[0.0, 0.0], [10.0, 32 / 3]]))
    # a code far from the data gets no assignments and is restarted at an encoder output
    q = EMAQuantizer(3, 2, decay=0.99, dead_threshold=1.0)
    q.initialised.fill_(True)
    q.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [1e3, 1e3]]))
    q(z.t()[None, :, :, None], update=True)
    assert any(torch.equal(q.codebook[2], row) for row in z)


def test_fsq_grid_indices_and_straight_through():
    fsq = FSQ((8, 5, 5, 5))
    assert fsq.num_codes == 1000 and fsq.dim == 4
    z = (torch.randn(2, 4, 6, 6) * 3).requires_grad_()
    q, idx, _ = fsq(z)
    hw = torch.tensor([4.0, 2, 2, 2])[None, :, None, None]
    grid = q.detach() * hw
    assert torch.equal(grid, grid.round()) and grid.min() >= -4 and grid.max() <= 3
    assert idx.min() >= 0 and idx.max() < 1000 and torch.equal(fsq.lookup(idx), q.detach())
    all_codes = torch.arange(1000).reshape(1, 10, 100)
    assert torch.equal(fsq.latents_to_indices(fsq.lookup(all_codes)), all_codes)
    assert torch.equal(fsq.snap(q.detach() + 0.01), q.detach())
    q.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_laplacian_pyramid_loss_properties():
    x = _rgb()
    assert laplacian_pyramid_loss(x, x).item() == 0.0
    # a constant offset lives only in the coarsest level: 0.3 / 3 levels
    assert abs(laplacian_pyramid_loss(x + 0.3, x).item() - 0.1) < 1e-6
    assert laplacian_pyramid_loss(x, _rgb(seed=1)).item() > 0


def test_klvae_perceptual_and_adversarial_terms():
    torch.manual_seed(0)
    vae = KLVAE(3, latent_channels=4, base_channels=8, channel_mults=(1, 2), groups=4,
                discriminator=True, disc_channels=8, adv_start=2)
    x = _rgb()
    out = vae.loss(x, adv_weight=0.5, perceptual_weight=1.0, step=0)  # before adv_start
    assert out["adv"].item() == 0.0 and out["perceptual"].item() > 0
    out = vae.loss(x, adv_weight=0.5, perceptual_weight=1.0, step=2)
    assert out["adv"].item() != 0.0 and out["adv_weight"].item() > 0
    assert set(out) >= {"loss", "rec", "kl", "perceptual", "adv", "adv_weight", "recon"}
    out["loss"].backward()
    assert all(p.grad is None for p in vae.discriminator.parameters())
    assert vae.decoder.last_layer.grad is not None
    vae.zero_grad(set_to_none=True)
    d = vae.discriminator_loss(x, out["recon"], step=2)
    d["loss"].backward()
    assert all(p.grad is not None for p in vae.discriminator.parameters())
    assert all(p.grad is None for p in vae.autoencoder_parameters())
    assert vae.discriminator_loss(x, out["recon"], step=0)["loss"].item() == 0.0
    with pytest.raises(ValueError, match="discriminator=True"):
        KLVAE(3, base_channels=8, channel_mults=(1,), groups=4).loss(x, adv_weight=1.0)
    l2 = KLVAE(3, base_channels=8, channel_mults=(1,), groups=4, rec_loss="l2").loss(x)
    assert torch.isfinite(l2["loss"]) and l2["kl"] > 0


# -- diffusers ------------------------------------------------------------------------------
_TINY = dict(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
             latent_channels=4, norm_num_groups=4, sample_size=16,
             down_block_types=("DownEncoderBlock2D",) * 2,
             up_block_types=("UpDecoderBlock2D",) * 2)


def test_diffusers_autoencoder_kl_matches_direct_calls(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(**_TINY, scaling_factor=0.5, shift_factor=0.1)
    ref.save_pretrained(tmp_path / "vae")
    codec = load_codec("diffusers", path=str(tmp_path / "vae"))
    assert isinstance(codec, DiffusersCodec) and not codec.is_vq
    assert codec.latent_shape((3, 16, 16)) == (4, 8, 8)
    assert torch.allclose(codec.scale, torch.full((4,), 0.5))
    x = _rgb()
    with torch.no_grad():
        z = codec.encode(x)
        want = (codec.model.encode(x).latent_dist.mean - 0.1) * 0.5
        assert torch.allclose(z, want, atol=1e-6)
        assert torch.allclose(codec.decode(z), codec.model.decode(z / 0.5 + 0.1).sample,
                              atol=1e-6)
    with pytest.raises(FileNotFoundError, match="config.json"):
        DiffusersCodec.from_pretrained(tmp_path / "missing")


def test_diffusers_vqmodel_matches_direct_calls(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.VQModel(**_TINY, num_vq_embeddings=16, vq_embed_dim=3, scaling_factor=0.7)
    ref.save_pretrained(tmp_path / "vq")
    codec = DiffusersCodec.from_pretrained(tmp_path / "vq")
    assert codec.is_vq and codec.latent_channels == 3 and codec.downsample == 2
    x = _rgb()
    with torch.no_grad():
        z = codec.encode(x)
        m = codec.model
        want = m.quantize(m.encode(x).latents)[0] * 0.7
        assert torch.allclose(z, want, atol=1e-6)
        y = m.decode(z / 0.7, force_not_quantize=True).sample
        assert torch.allclose(codec.decode(z), y, atol=1e-6)


# -- save / load / refusal ----------------------------------------------------------------
def test_save_load_round_trip_is_bit_exact(tmp_path, digits):
    diffusers = pytest.importorskip("diffusers")
    train, _ = digits
    codecs = _codecs()
    torch.manual_seed(0)
    codecs["diffusers"] = DiffusersCodec(diffusers.AutoencoderKL(**_TINY))
    x = _rgb()
    for name, codec in codecs.items():
        if isinstance(codec, VQVAE):
            codec.train()
            codec.loss(x)  # moves the EMA buffers / initialises the codebook
        codec.eval()
        codec.fit_scale(x, use_shift=True)
        path = save_codec(codec, tmp_path / name)
        assert sorted(p.name for p in path.iterdir()) == ["codec.json", "codec.safetensors"]
        loaded = load_codec(str(path))
        assert type(loaded) is type(codec)
        a, b = codec.state_dict(), loaded.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        with torch.no_grad():
            assert torch.equal(codec.encode(x), loaded.encode(x)), name
            z = codec.encode(x)
            assert torch.equal(codec.decode(z), loaded.decode(z)), name
    meta = json.loads((tmp_path / "kl_vae" / "codec.json").read_text())
    assert meta["name"] == "kl_vae" and meta["downsample"] == 4


def test_bad_shapes_name_expected_and_got(tmp_path):
    vae = KLVAE(latent_channels=4, **SMALL)  # C = 1, f = 2
    with pytest.raises(ValueError, match=r"C = 1.*got \(2, 3, 16, 16\)"):
        vae.encode(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"divisible by 2.*got \(2, 1, 15, 16\)"):
        vae.encode(torch.zeros(2, 1, 15, 16))
    with pytest.raises(ValueError, match=r"divisible by 2.*got \(1, 16, 9\)"):
        vae.latent_shape((1, 16, 9))
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\), got \(2, 3, 8, 8\)"):
        vae.decode(torch.zeros(2, 3, 8, 8))
    assert check_latent_shape(vae, (1, 16, 16), (4, 8, 8)) == (4, 8, 8)
    with pytest.raises(ValueError, match=r"\(4, 8, 8\).*\(4, 4, 4\)"):
        check_latent_shape(vae, (1, 16, 16), (4, 4, 4))
    save_codec(vae, tmp_path / "vae")
    loaded = load_codec_dir(tmp_path / "vae", image_shape=(1, 16, 16),
                            expected_latent_shape=(4, 8, 8))
    assert isinstance(loaded, KLVAE)
    with pytest.raises(ValueError, match=r"\(4, 8, 8\).*\(8, 8, 8\)"):
        load_codec_dir(tmp_path / "vae", image_shape=(1, 16, 16), expected_latent_shape=(8, 8, 8))


def test_registry_names_and_errors():
    assert isinstance(load_codec("pixel"), PixelCodec)
    vae = load_codec("vae", **SMALL)
    assert isinstance(vae, KLVAE) and vae.downsample == 2
    vq = load_codec({"name": "vq", "quantizer": "fsq", "levels": [4, 4], **SMALL})
    assert isinstance(vq, VQVAE) and vq.latent_channels == 2 and vq.num_codes == 16
    assert load_codec(vq) is vq
    with pytest.raises(ValueError, match="Did you mean 'vq'"):
        load_codec("vqq")
    with pytest.raises(ValueError, match="quantizer"):
        VQVAE(quantizer="lfq")
    with pytest.raises(ValueError, match="rec_loss"):
        KLVAE(rec_loss="l3")
