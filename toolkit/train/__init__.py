"""Training system: recipes (Hydra), the accelerate-based :class:`Trainer`, tasks, EMA,
atomic checkpoints and logs.

Command line: ``toolkit train recipe=toy2d_cfm trainer.max_steps=500``; ``toolkit recipes``.
Python::

    from toolkit.train import compose_recipe, train_recipe
    cfg = compose_recipe("toy2d_cfm", ["trainer.max_steps=200", "run_dir=runs/try"])
    result = train_recipe(cfg)          # {"step", "history", "checkpoint", "run_dir"}
    model, task, cfg, ckpt = load_run("runs/try")   # EMA weights, ready to sample
"""

from toolkit.train.checkpoint import latest_checkpoint, list_checkpoints, load_run
from toolkit.train.config import (
    RecipeError,
    TrainerConfig,
    compose_recipe,
    list_recipes,
    recipes_dir,
)
from toolkit.train.ema import EMA, ema_decay_at
from toolkit.train.tasks import SamplerSpec, StepContext, Task, VectorCFMTask
from toolkit.train.trainer import NonFiniteLossError, Trainer, build, train_recipe

__all__ = [
    "RecipeError", "TrainerConfig", "compose_recipe", "list_recipes", "recipes_dir",
    "EMA", "ema_decay_at", "SamplerSpec", "StepContext", "Task", "VectorCFMTask",
    "NonFiniteLossError", "Trainer", "build", "train_recipe", "latest_checkpoint",
    "list_checkpoints", "load_run",
]
