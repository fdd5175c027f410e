"""Shared helpers for the trainer tests: tiny models, datasets and trainer settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from toolkit.nn.mlp import TimeMLP
from toolkit.train.config import TrainerConfig
from toolkit.train.tasks import SamplerSpec, Task, VectorCFMTask, toy2d_dataset
from toolkit.train.trainer import Trainer

#: overrides that make any recipe tiny (2 steps, small batches, no TensorBoard/progress)
TINY = [
    "trainer.max_steps=2", "trainer.batch_size=4", "trainer.checkpoint_every=2",
    "trainer.val_every=2", "trainer.log_every=1", "trainer.progress=false",
    "trainer.tensorboard=false", "trainer.warmup_steps=0",
]
#: per-recipe extra tiny overrides (recipes not listed get only TINY)
TINY_BY_RECIPE = {
    "toy2d_cfm": ["model.hidden=16", "model.depth=1", "data.n=64", "task.val_samples=16",
                  "sampler.steps=2"],
    "text2img_cfm": ["model.base_channels=8", "model.channel_mults=[1,2]", "model.num_heads=2",
                     "data.n=16",
                     "task.val_prompts=2", "task.val_per_prompt=1", "sampler.steps=2"],
    "class2img_cfm": ["model.base_channels=8", "model.channel_mults=[1,2]", "model.num_heads=2",
                      "model.pooled_dim=16", "data.n=16", "task.val_per_class=1",
                      "sampler.steps=2"],
    "vae_train": ["model.base_channels=8", "model.channel_mults=[1,2]", "model.groups=4",
                  "data.n=16", "task.val_images=2"],
    "vq_train": ["model.base_channels=8", "model.channel_mults=[1,2]", "model.groups=4",
                 "model.codebook_size=16", "data.n=16", "task.val_images=2"],
}
TINY_BY_RECIPE["class2img_edm"] = TINY_BY_RECIPE["class2img_cfm"]
TINY_BY_RECIPE["vae_shapes"] = [*TINY_BY_RECIPE["vae_train"], "data.n=8"]
TINY_BY_RECIPE["class2img_latent_cfm"] = [
    "model.base_channels=8", "model.num_heads=2", "model.pooled_dim=16", "model.num_res_blocks=1",
    "data.n=16", "task.val_per_class=1", "sampler.steps=2"]
TINY_BY_RECIPE["text2img_latent_cfm"] = [
    "model.base_channels=8", "model.num_heads=2", "model.num_res_blocks=1", "data.n=16",
    "task.val_prompts=2", "task.val_per_prompt=1", "sampler.steps=2"]
TINY_BY_RECIPE["text2speech_cfm"] = [
    "model.enc_dim=16", "model.enc_depth=1", "model.prenet_layers=1", "model.spk_dim=8",
    "model.dp_channels=8", "model.dec_channels=[8,16]", "model.dec_heads=2",
    "model.ref_hidden=8", "data.n_utterances=8", "data.n_sentences=8", "data.n_speakers=3",
    "data.heldout_fraction=0.125", "task.segment_frames=32", "task.val_samples=1",
    "task.griffin_lim_iters=2", "sampler.steps=2"]


_POLICY = ["model.width=32", "model.depth=1", "model.heads=2", "data.collect.episodes=1",
           "task.val_batch=4", "sampler.steps=2"]
TINY_BY_RECIPE["metaworld_flow_policy"] = _POLICY
TINY_BY_RECIPE["metaworld_mt10_flow_policy"] = _POLICY
TINY_BY_RECIPE["metaworld_diffusion_policy"] = [
    "model.down_dims=[16,32]", "model.obs_dim=16", "model.step_dim=16",
    "data.collect.episodes=1", "task.val_batch=4", "sampler.steps=2"]

_FRAMES = ["model.width=16", "model.pair_width=8", "model.depth=1", "model.heads=2",
           "task.steps=2"]
TINY_BY_RECIPE["protein_backbone_se3fm"] = [*_FRAMES, "data.crop=24", "data.min_length=16",
                                            "data.repeats=1", "task.val_lengths=[12]"]
TINY_BY_RECIPE["protein_backbone_euclid"] = [
    "model.width=16", "model.depth=1", "model.heads=2", "task.steps=2", "data.crop=24",
    "data.min_length=16", "data.repeats=1", "task.val_lengths=[12]"]
TINY_BY_RECIPE["rigid_trajectory_se3fm"] = [*_FRAMES, "data.n=8", "data.n_frames=10",
                                            "task.max_context=3"]
TINY_BY_RECIPE["diffusion_forcing_traj"] = [
    "model.hidden_dim=16", "model.depth=1", "model.num_heads=2", "model.pooled_dim=8",
    "data.n=4", "data.n_frames=12", "data.horizon=8", "task.chunk=4", "task.steps=2",
    "task.val_n=2", "task.val_length=4", "task.stats_items=16"]
TINY_BY_RECIPE["transfusion_mnist"] = [
    "model.hidden_dim=16", "model.depth=1", "model.num_heads=2", "data.n=16",
    "task.val_per_class=1", "task.val_captions=4", "sampler.steps=2"]
TINY_BY_RECIPE["mar_mnist"] = [
    "model.dim=16", "model.encoder_depth=1", "model.decoder_depth=1", "model.num_heads=2",
    "model.head_width=16", "model.head_depth=1", "data.n=16", "task.val_per_class=1",
    "task.iterations=2", "sampler.steps=2"]


def tiny_data_overrides(recipe: str, root: Path) -> list[str]:
    """Per-test data locations: Meta-World demonstrations are collected under ``root``;
    the speech recipes need espeak-ng and flite (skipped without them)."""
    if recipe.startswith("text2speech"):
        import shutil

        if shutil.which("espeak-ng") is None or shutil.which("flite") is None:
            pytest.skip("espeak-ng and flite not installed (apt-get install espeak-ng flite)")
        return []
    if recipe.startswith("metaworld"):
        pytest.importorskip("metaworld", reason="the robot extra (uv sync --extra robot)")
        pytest.importorskip("lerobot", reason="the robot extra (uv sync --extra robot)")
        return [f"data.root={Path(root) / ('mw_' + recipe)}"]
    return []


def tiny_codec_overrides(recipe: str, root: Path) -> list[str]:
    """``task.codec=DIR`` for latent recipes: an untrained tiny KL-VAE (f = 4, 4 channels,
    the image channels of the recipe's data) saved under ``root``; [] for other recipes."""
    from modalities.image.codec import KLVAE
    from modalities.image.codec_io import save_codec
    from toolkit.train.config import compose_recipe

    cfg = compose_recipe(recipe, [])
    if cfg.task.get("codec") is None:
        return tiny_data_overrides(recipe, root)
    channels = int(cfg.task.channels)
    folder = Path(root) / f"tiny_codec_{channels}"
    if not folder.is_dir():
        torch.manual_seed(0)
        save_codec(KLVAE(channels, 4, base_channels=8, channel_mults=(1, 2, 2), groups=4),
                   folder)
    return [f"task.codec={folder}"]


def tiny_trainer(run_dir: Path, task: Task | None = None, resume: str | None = None,
                 n: int = 24, seed: int = 0, **cfg) -> Trainer:
    """A Trainer on 2-D data with a 16-wide MLP; ``cfg`` overrides TrainerConfig fields."""
    kw = dict(max_steps=4, batch_size=8, checkpoint_every=2, val_every=0, log_every=1,
              progress=False, tensorboard=False, lr=1e-2, warmup_steps=1, ema_decay=0.9)
    kw.update(cfg)
    torch.manual_seed(seed)
    model = TimeMLP(dim=2, hidden=16, depth=1)
    task = task or VectorCFMTask(val_samples=16, sampler=SamplerSpec(steps=2))
    data = toy2d_dataset("moons", n=n, seed=seed)
    return Trainer(model, task, data, TrainerConfig(**kw), run_dir, seed=seed, resume=resume,
                   recipe="tiny", config_yaml="recipe: tiny\n")


@pytest.fixture
def tiny():
    """The :func:`tiny_trainer` factory."""
    return tiny_trainer
