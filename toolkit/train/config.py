"""Recipes: Hydra compose over ``recipes/`` with validation and helpful errors.

A recipe is ``recipes/<name>.yaml`` with a defaults list over the groups ``run/``,
``trainer/``, ``model/``, ``data/``, ``task/``, ``sampler/`` (each option a ``_target_``
with explicit keyword arguments) and a one-line ``description:``. Overrides are
Hydra-style strings::

    compose_recipe("toy2d_cfm", ["trainer.max_steps=200", "data.name=moons", "model=..."])

Before Hydra sees them, every override is checked: an unknown recipe, group option or key
fails with a :class:`RecipeError` naming it and suggesting the closest valid one (difflib),
and a value whose type does not match the recipe's default (``trainer.max_steps=abc``)
fails likewise. ``+key=value`` adds a new key deliberately; ``~key`` deletes one.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from toolkit.registry import unknown_name_error

GROUPS = ("run", "trainer", "model", "data", "task", "sampler")
SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("adamw", "adam", "sgd")
PRECISIONS = ("auto", "no", "bf16", "fp16")
NONFINITE = ("stop", "skip", "reduce_lr")
STRATEGIES = ("ddp", "fsdp")


@dataclass
class TrainerConfig:
    """Trainer settings (the ``trainer`` recipe group; see ``recipes/trainer/default.yaml``)."""

    max_steps: int = 1000
    batch_size: int = 256
    grad_accum: int = 1
    optimizer: str = "adamw"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    mixed_precision: str = "auto"
    ema_decay: float = 0.999
    ema_warmup: bool = True
    ema_power: float = 2 / 3
    ema_start: int = 0
    checkpoint_every: int = 500
    keep_last: int = 3
    val_every: int = 500
    log_every: int = 10
    num_workers: int = 0
    progress: bool = True
    tensorboard: bool = True
    nonfinite: str = "stop"
    nonfinite_lr_factor: float = 0.5
    max_nonfinite: int = 10
    strategy: str = "ddp"

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "val_every", "num_workers", "ema_start"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"trainer.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "min_lr_ratio", "grad_clip", "ema_decay",
                     "ema_power", "nonfinite_lr_factor", *(f"betas[{i}]" for i in range(2))):
            v = (self.betas[int(name[-2])] if name.startswith("betas") else getattr(self, name))
            if v is not None and not math.isfinite(float(v)):
                raise ValueError(f"trainer.{name} must be a finite number, got {v}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"trainer.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr <= 0:
            raise ValueError(f"trainer.lr must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise unknown_name_error("trainer.schedule", self.schedule, SCHEDULES)
        if self.optimizer not in OPTIMIZERS:
            raise unknown_name_error("trainer.optimizer", self.optimizer, OPTIMIZERS)
        if self.mixed_precision not in PRECISIONS:
            raise unknown_name_error("trainer.mixed_precision", self.mixed_precision, PRECISIONS)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"trainer.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.nonfinite not in NONFINITE:
            raise unknown_name_error("trainer.nonfinite", self.nonfinite, NONFINITE)
        if not 0.0 < self.nonfinite_lr_factor < 1.0:
            raise ValueError("trainer.nonfinite_lr_factor must be in (0, 1), got "
                             f"{self.nonfinite_lr_factor}")
        if int(self.max_nonfinite) < 1:
            raise ValueError(f"trainer.max_nonfinite must be >= 1, got {self.max_nonfinite}")
        if self.strategy not in STRATEGIES:
            raise unknown_name_error("trainer.strategy", self.strategy, STRATEGIES)

    def lr_at(self, step: int) -> float:
        """Learning rate for the optimizer step taken after ``step`` steps.

        With ``W`` warm-up steps, ``T = max_steps``, ``p = (step - W) / (T - W)``,
        ``m = min_lr_ratio``: ``lr (step + 1) / W`` during warm-up, then ``cosine``
        ``lr (m + (1 - m)(1 + cos(pi p)) / 2)`` (Loshchilov & Hutter 2017, eq. 5),
        ``linear`` ``lr (1 - (1 - m) p)`` or ``constant`` ``lr``.
        """
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        p = min(1.0, (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        m = self.min_lr_ratio
        if self.schedule == "cosine":
            return self.lr * (m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * p)))
        if self.schedule == "linear":
            return self.lr * (1.0 - (1.0 - m) * p)
        return self.lr


def resolve_precision(mp: str) -> str:
    """``auto`` -> bf16 (or fp16) on CUDA, ``no`` on CPU; fp16 without CUDA is refused."""
    cuda = torch.cuda.is_available()
    if mp == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    if mp == "fp16" and not cuda:
        raise ValueError("trainer.mixed_precision=fp16 needs a CUDA device; use bf16 or no")
    return mp


class RecipeError(ValueError):
    """A recipe or override problem; the message says what and suggests a fix."""


def recipes_dir(path: str | Path | None = None) -> Path:
    """The recipe folder: ``path``, else ``$TOOLKIT_RECIPES``, else ``<repo>/recipes``."""
    p = Path(path or os.environ.get("TOOLKIT_RECIPES")
             or Path(__file__).resolve().parents[2] / "recipes")
    if not p.is_dir():
        raise RecipeError(f"recipe folder {str(p)!r} does not exist (set $TOOLKIT_RECIPES)")
    return p.resolve()


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def list_recipes(path: str | Path | None = None) -> dict[str, str]:
    """``{name: one-line description}`` of the recipes (top-level ``*.yaml`` files)."""
    out = {}
    for f in sorted(recipes_dir(path).glob("*.yaml")):
        desc = OmegaConf.load(f).get("description", "") or ""
        out[f.stem] = " ".join(str(desc).split())
    return out


def group_options(group: str, path: str | Path | None = None) -> list[str]:
    """Options of a config group (``recipes/<group>/*.yaml``)."""
    d = recipes_dir(path) / group
    return sorted(f.stem for f in d.glob("*.yaml")) if d.is_dir() else []


def _flat_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            node = cfg._get_node(k)
            if isinstance(node, DictConfig):
                keys += _flat_keys(node, full + ".")
    return keys


def _parse(overrides: list[str]) -> list[tuple[str, str, str]]:
    """``(prefix, key, raw value)`` per override; prefix is '', '+', '++' or '~'."""
    out = []
    for ov in overrides:
        if "=" not in ov and not ov.startswith("~"):
            raise RecipeError(f"override {ov!r} is not of the form key=value")
        key, _, val = ov.partition("=")
        prefix = ""
        for p in ("++", "+", "~"):
            if key.startswith(p):
                prefix, key = p, key[len(p):]
                break
        if not key:
            raise RecipeError(f"override {ov!r} has an empty key")
        out.append((prefix, key, val))
    return out


def _type_name(v: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(type(v), type(v).__name__)


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _check_type(key: str, default: Any, new: Any) -> None:
    if default is None or new is None or isinstance(default, DictConfig | ListConfig | dict | list):
        return
    ok = (
        isinstance(new, type(default))
        or (isinstance(default, float) and isinstance(new, int) and not isinstance(new, bool))
    )
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(new, bool):
        ok = False
    if isinstance(default, str):
        ok = True  # strings accept anything written on the command line
    if not ok:
        raise RecipeError(
            f"override {key}={new!r}: expected {_a(_type_name(default))} "
            f"(recipe default {default!r}), got {_a(_type_name(new))}"
        )


INT_LIMIT = 2**31 - 1


def _check_range(key: str, new: Any) -> None:
    """Refuse integers beyond 32 bits and non-finite floats in an override: no setting of
    this toolkit needs them, and sizes like ``model.depth=10**12`` would hang or exhaust
    memory long before failing."""
    items = list(new) if isinstance(new, ListConfig) else [new]
    for v in items:
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > INT_LIMIT:
            raise RecipeError(f"override {key}={v}: integer out of range (|value| > "
                              f"{INT_LIMIT})")
        if isinstance(v, float) and not math.isfinite(v):
            raise RecipeError(f"override {key}={v}: the value must be a finite number")


def compose_recipe(recipe: str, overrides: list[str] | tuple[str, ...] = (),
                   path: str | Path | None = None) -> DictConfig:
    """Compose, validate and resolve a recipe with overrides.

    Args:
        recipe: a name from :func:`list_recipes`. overrides: Hydra-style ``key=value``.
        path: the recipe folder (default :func:`recipes_dir`).

    Returns:
        The composed config in struct mode, with ``recipe`` set to the recipe name and all
        interpolations resolved.

    Raises:
        RecipeError: unknown recipe / group option / key, or a value of the wrong type.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    root = recipes_dir(path)
    names = list(list_recipes(root))
    if recipe not in names:
        raise RecipeError(f"unknown recipe {recipe!r}.{_suggest(recipe, names)} "
                          f"Available recipes: {', '.join(names)} (see `toolkit recipes`)")
    parsed = _parse(list(overrides))
    groups = {g for g in (p.name for p in root.iterdir() if p.is_dir())}
    group_ovs, value_ovs = [], []
    for (prefix, key, val), raw in zip(parsed, overrides):
        if key in groups and prefix != "~":
            opts = group_options(key, root)
            if val not in opts:
                raise RecipeError(f"unknown {key} option {val!r} in {raw!r}."
                                  f"{_suggest(val, opts)} Valid {key} options: {', '.join(opts)}")
            group_ovs.append(raw)
        else:
            value_ovs.append((prefix, key, val, raw))

    def _compose(ovs: list[str]) -> DictConfig:
        try:
            with initialize_config_dir(config_dir=str(root), version_base=None):
                return compose(config_name=recipe, overrides=ovs)
        except (HydraException, OmegaConfBaseException) as e:
            raise RecipeError(f"recipe {recipe!r} with overrides {ovs}: {e}") from e

    base = _compose(group_ovs)
    known = _flat_keys(base)
    for prefix, key, _val, raw in value_ovs:
        if prefix in ("", "~") and key not in known:
            parent = key.rpartition(".")[0]
            siblings = [k for k in known if k.rpartition(".")[0] == parent]
            hint = _suggest(key, siblings) or _suggest(key, known)
            where = f"under {parent!r}" if parent and parent in known else "in the recipe"
            valid = ", ".join(k.rpartition(".")[2] for k in siblings) if siblings else ""
            raise RecipeError(
                f"unknown key {key!r} in override {raw!r} (no such key {where}).{hint}"
                + (f" Valid keys here: {valid}." if valid else "")
                + " Use +key=value to add a new key on purpose."
            )
    cfg = _compose(group_ovs + [raw for *_, raw in value_ovs])
    for prefix, key, *_ in value_ovs:
        if prefix == "~":
            continue
        new = OmegaConf.select(cfg, key)
        _check_range(key, new)
        if prefix == "":
            _check_type(key, OmegaConf.select(base, key), new)
    OmegaConf.set_struct(cfg, False)
    cfg.recipe = recipe
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise RecipeError(f"recipe {recipe!r}: cannot resolve interpolations: {e}") from e
    missing = [g for g in ("trainer", "model", "data", "task") if g not in cfg]
    if missing:
        raise RecipeError(f"recipe {recipe!r} lacks the section(s) {missing}")
    OmegaConf.set_struct(cfg, True)
    return cfg


def split_recipe_arg(args: list[str]) -> tuple[str | None, list[str]]:
    """Pull ``recipe=NAME`` out of CLI overrides: ``(name or None, the other overrides)``."""
    recipe, rest = None, []
    for a in args:
        if a.startswith("recipe="):
            recipe = a.partition("=")[2]
        else:
            rest.append(a)
    return recipe, rest


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML text (written to ``config.yaml``)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


__all__ = [
    "TrainerConfig", "resolve_precision", "SCHEDULES", "OPTIMIZERS", "PRECISIONS", "STRATEGIES",
    "GROUPS", "RecipeError", "recipes_dir", "list_recipes", "group_options",
    "compose_recipe", "split_recipe_arg", "to_yaml",
]
