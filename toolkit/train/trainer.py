"""The trainer: accelerate-based optimisation with EMA, checkpoints, resume, logs, processes.

One optimizer step = ``grad_accum`` micro-batches of ``batch_size`` per process; with ``N``
processes the global batch is ``N * grad_accum * batch_size``. Micro-batch ``k`` of the run
is the global batch ``perm_e[k G : (k + 1) G]`` (``G = N * batch_size``, ``perm_e`` a seeded
permutation of epoch ``e``) and process ``r`` takes its ``r``-th slice; together with the
tasks' process-consistent noise (:class:`~toolkit.train.tasks.StepContext`) this makes a
2-process run reproduce the 1-process run with the same global batch, and makes the data
position a pure function of the step (bit-exact resume). Learning-rate schedules:
:meth:`~toolkit.train.config.TrainerConfig.lr_at`.

``trainer.strategy``: ``ddp`` (default) replicates the model in every process (accelerate's
DDP); ``fsdp`` shards parameters, gradients and optimizer state with FSDP2
(:mod:`toolkit.train.fsdp`; accelerate then only sets up the processes and does not wrap the
model). Both give the same global-batch semantics (gradient accumulation included:
FSDP skips the gradient reduce-scatter on all but the last micro-batch), clip by the global
gradient norm, keep a full EMA copy (under FSDP updated from the gathered weights) and write
full, unsharded checkpoints, loadable in one process and resumable under either strategy.
With one process ``fsdp`` behaves exactly like ``ddp`` (nothing is wrapped).

Entry point from a recipe: :func:`train_recipe` (what ``toolkit train`` calls).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from toolkit.train import checkpoint as ckpt_mod
from toolkit.train import fsdp as fsdp_mod
from toolkit.train.config import TrainerConfig, resolve_precision
from toolkit.train.ema import EMA
from toolkit.train.logging import MetricsLogger
from toolkit.train.tasks import StepContext, Task


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) became NaN/inf; training stopped without saving."""


class GlobalBatchSampler:
    """Infinite batch sampler over global micro-batches, sharded by process.

    Args:
        n: dataset size. batch_size: per process. world_size / rank: processes.
        seed: data-order seed. start: micro-batches already consumed (resume).
    """

    def __init__(self, n: int, batch_size: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0, start: int = 0) -> None:
        g = batch_size * world_size
        if n < g:
            raise ValueError(f"dataset has {n} samples, fewer than one global micro-batch "
                             f"({world_size} process(es) x batch_size {batch_size} = {g})")
        self.n, self.b, self.rank, self.seed, self.start = n, batch_size, rank, seed, start
        self.g, self.per_epoch = g, n // g

    def __iter__(self) -> Iterator[list[int]]:
        k, perm, epoch = self.start, None, -1
        while True:
            e, j = divmod(k, self.per_epoch)
            if e != epoch:
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
                perm, epoch = torch.randperm(self.n, generator=gen), e
            lo = j * self.g + self.rank * self.b
            yield perm[lo:lo + self.b].tolist()
            k += 1


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


class Trainer:
    """Train ``model`` on ``dataset`` with ``task``'s objective (see the module docstring).

    Args:
        model: the module to train (``task.wrap_model`` already applied).
        task: a :class:`~toolkit.train.tasks.Task`. dataset: a map-style dataset.
        config: :class:`TrainerConfig`. run_dir: output directory.
        seed: data order / noise seed. config_yaml: resolved recipe written with checkpoints.
        recipe: recipe name (checked by ``init_from``). model_cfg: the model section
            (checked by ``init_from`` / ``resume``). resume: ``latest`` or a checkpoint.
        init_from: a run directory whose (EMA) weights initialise the model.
    """

    def __init__(
        self, model: nn.Module, task: Task, dataset: Any, config: TrainerConfig,
        run_dir: str | Path, *, seed: int = 0, config_yaml: str = "", recipe: str | None = None,
        model_cfg: dict | None = None, resume: str | None = None, init_from: str | None = None,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        self.cfg, self.task, self.dataset = config, task, dataset
        self.run_dir, self.seed, self.config_yaml = Path(run_dir), int(seed), config_yaml
        self.recipe, self.model_cfg = recipe, model_cfg
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            AcceleratorState._reset_state()  # allow a new precision in the same process
        from accelerate.utils import DistributedDataParallelKwargs

        ddp = DistributedDataParallelKwargs(
            find_unused_parameters=bool(getattr(task, "find_unused_parameters", False)))
        self.acc = Accelerator(mixed_precision=resolve_precision(config.mixed_precision),
                               cpu=not torch.cuda.is_available(),  # cpu: gloo under torchrun
                               kwargs_handlers=[ddp])
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        if self.world != int(os.environ.get("WORLD_SIZE", "1")):
            raise RuntimeError(f"launched with WORLD_SIZE={os.environ['WORLD_SIZE']} but "
                               f"accelerate set up {self.world} process(es)")
        self.main = self.acc.is_main_process
        start_ckpt = ckpt_mod.resolve_checkpoint(resume, self.run_dir) if resume else None
        if resume is None and ckpt_mod.latest_checkpoint(self.run_dir, verify=False) is not None:
            raise FileExistsError(
                f"run_dir {str(self.run_dir)!r} already has checkpoints; pass resume=latest to "
                f"continue it, or choose another run_dir=...")
        prepared = task.setup(dataset, self.run_dir, model=model)
        if prepared is not None:  # e.g. images replaced by cached codec latents
            self.dataset = prepared
        if init_from:
            self._init_from(model, init_from)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        self.ema = EMA(model, config.ema_decay, config.ema_warmup, config.ema_power,
                       start_step=config.ema_start)  # a full copy, before any sharding
        self.fsdp = config.strategy == "fsdp" and self.world > 1
        if self.fsdp:  # shard first, then build the optimizer on the sharded parameters
            fsdp_mod.shard_model(model, self.acc.device, self.world, self.acc.mixed_precision)
            params = [p for p in model.parameters() if p.requires_grad]
            self.opt = self.acc.prepare(self._make_optimizer(params))  # no DDP around it
            self.model = model
        else:
            self.opt = self._make_optimizer(params)
            self.model, self.opt = self.acc.prepare(model, self.opt)
        self.ema.model.to(self.acc.device)
        self.exclude = tuple(getattr(model, "checkpoint_exclude", ()))
        self.generator = torch.Generator().manual_seed(self.seed + 1)
        torch.manual_seed(self.seed + 7919 * (self.rank + 1))
        self.step, self.history, self.last_ckpt = 0, [], start_ckpt
        self.lr_scale, self.bad_streak, self.bad_total = 1.0, 0, 0  # non-finite policy state
        if start_ckpt is not None:
            self._restore(start_ckpt)
        elif resume and self.main:
            print(f"resume={resume}: no checkpoint in {self.run_dir}, starting from scratch")
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if config_yaml:
                (self.run_dir / "config.yaml").write_text(config_yaml)
        self.logger = MetricsLogger(self.run_dir, self.main, config.tensorboard,
                                    resume_step=self.step if start_ckpt is not None else None)

    # ------------------------------------------------------------------ set-up helpers
    def _make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        c = self.cfg
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.betas[0],
                                   weight_decay=c.weight_decay)
        cls = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)

    def _check_source(self, ckpt: Path, what: str) -> None:
        from omegaconf import OmegaConf

        if self.model_cfg is None or not (ckpt / "config.yaml").is_file():
            return
        src = OmegaConf.to_container(OmegaConf.load(ckpt / "config.yaml"))
        if self.recipe is not None and src.get("recipe") not in (None, self.recipe):
            raise ValueError(f"{what} {str(ckpt)!r} comes from recipe {src.get('recipe')!r}, "
                             f"but this run is recipe {self.recipe!r}; refusing to load it")
        theirs = src.get("model", {})
        diff = sorted(k for k in set(theirs) | set(self.model_cfg)
                      if theirs.get(k) != self.model_cfg.get(k))
        if diff:
            pairs = ", ".join(f"model.{k}: {theirs.get(k)!r} there vs {self.model_cfg.get(k)!r}"
                              for k in diff[:5])
            raise ValueError(f"{what} {str(ckpt)!r} was trained with a different model "
                             f"({pairs}); refusing to load it")

    def _init_from(self, model: nn.Module, run: str) -> None:
        ckpt = ckpt_mod.resolve_checkpoint(run, run)
        self._check_source(ckpt, "init_from checkpoint")
        data = ckpt_mod.load_checkpoint(ckpt)
        weights = data["ema"] if data["ema"] is not None else data["model"]
        ckpt_mod.load_weights(model, weights, f"init_from checkpoint {str(ckpt)!r}",
                              self.exclude_of(model))
        if self.main:
            print(f"initialised weights from {ckpt}")

    @staticmethod
    def exclude_of(model: nn.Module) -> tuple[str, ...]:
        """State-dict prefixes not written to checkpoints (``model.checkpoint_exclude``)."""
        return tuple(getattr(model, "checkpoint_exclude", ()))

    def _restore(self, ckpt: Path) -> None:
        self._check_source(ckpt, "resume checkpoint")
        data = ckpt_mod.load_checkpoint(ckpt)
        st = data["state"]
        net = self.acc.unwrap_model(self.model)
        ckpt_mod.load_weights(net, data["model"], f"resume checkpoint {str(ckpt)!r}", self.exclude,
                              load=fsdp_mod.load_full_model_state if self.fsdp else None)
        if data["ema"] is not None:
            ckpt_mod.load_weights(self.ema.model, data["ema"], "EMA weights", self.exclude)
        self.ema.num_updates = int(st["ema"]["num_updates"])
        if data["optimizer"] is not None:
            if self.fsdp:  # full (1-process format) state, cut to this process's shards
                fsdp_mod.load_full_optimizer_state(self.opt, data["optimizer"])
            else:
                self.opt.load_state_dict(data["optimizer"])
        self.step = int(st["step"])
        nf = st.get("nonfinite", {})
        self.lr_scale = float(nf.get("lr_scale", 1.0))
        self.bad_streak, self.bad_total = int(nf.get("streak", 0)), int(nf.get("total", 0))
        ckpt_mod.set_generator_state(self.generator, st["generator"])
        rank_file = ckpt / f"rng_rank{self.rank}.json"
        if self.rank == 0:
            ckpt_mod.set_rng_state(st["rng"])
        elif rank_file.is_file():
            import json

            ckpt_mod.set_rng_state(json.loads(rank_file.read_text()))
        if self.main:
            print(f"resumed from {ckpt} at step {self.step}")

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """Write a checkpoint of the current step (all processes must call this)."""
        self.acc.wait_for_everyone()
        tmp = ckpt_mod.tmp_dir_path(self.run_dir, self.step)
        if self.main:
            ckpt_mod.make_tmp_dir(self.run_dir, self.step)
        self.acc.wait_for_everyone()
        if not self.main:
            import json

            (tmp / f"rng_rank{self.rank}.json").write_text(json.dumps(ckpt_mod.rng_state()))
        self.acc.wait_for_everyone()
        path = ckpt_mod.step_dir_name(self.step)
        if self.fsdp:  # collectives: every process gathers, rank 0 gets the full tensors
            model_sd = fsdp_mod.full_model_state(self.model, self.rank)
            opt_sd = fsdp_mod.full_optimizer_state(self.opt)
        elif self.main:
            model_sd = self.acc.unwrap_model(self.model).state_dict()
            opt_sd = self.opt.state_dict()
        if self.main:
            state = {
                "step": self.step, "recipe": self.recipe, "world_size": self.world,
                "strategy": "fsdp" if self.fsdp else "ddp",
                "batch_size": self.cfg.batch_size, "grad_accum": self.cfg.grad_accum,
                "micro_batches": self.step * self.cfg.grad_accum, "seed": self.seed,
                "generator": ckpt_mod.generator_state(self.generator),
                "rng": ckpt_mod.rng_state(), "ema": self.ema.meta(),
                "lr": self.cfg.lr_at(max(0, self.step - 1)),
                "last_loss": self.history[-1] if self.history else None,
                "nonfinite": {"lr_scale": self.lr_scale, "streak": self.bad_streak,
                              "total": self.bad_total},
                "torch_version": torch.__version__,
            }
            path = ckpt_mod.save_checkpoint(
                self.run_dir, self.step,
                model_state=ckpt_mod.filter_state(model_sd, self.exclude),
                ema_state=ckpt_mod.filter_state(self.ema.state_dict(), self.exclude),
                optimizer_state=opt_sd, state=state,
                config_yaml=self.config_yaml, tmp_dir=tmp)
            ckpt_mod.prune_checkpoints(self.run_dir, self.cfg.keep_last)
        self.acc.wait_for_everyone()
        self.last_ckpt = self.run_dir / ckpt_mod.CKPT_DIR / Path(path).name
        return self.last_ckpt

    # ------------------------------------------------------------------ loop
    def _data(self) -> Iterator[Any]:
        sampler = GlobalBatchSampler(len(self.dataset), self.cfg.batch_size, self.world,
                                     self.rank, self.seed, self.step * self.cfg.grad_accum)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=self.cfg.num_workers,
            collate_fn=getattr(self.dataset, "collate_fn", None),  # e.g. padding speech batches
            generator=torch.Generator().manual_seed(self.seed))  # keeps global RNG untouched
        return iter(loader)

    def _validate(self) -> None:
        if self.main:
            gen = torch.Generator().manual_seed(self.seed + 12345)
            with torch.no_grad():
                res = self.task.validate(self.ema.model, self.step, self.run_dir / "samples", gen)
            if res:
                self.logger.log(self.step, res)
        self.acc.wait_for_everyone()

    def _stop(self, what: str, value: float, why: str = "") -> None:
        last = str(self.last_ckpt) if self.last_ckpt else "none (no checkpoint was written yet)"
        raise NonFiniteLossError(
            f"{what} became {value} at step {self.step + 1}{why}; training stopped. Nothing "
            f"was saved after the last good checkpoint: {last}. Try a lower trainer.lr, "
            f"trainer.grad_clip, trainer.nonfinite=skip|reduce_lr, or check the data for "
            f"NaN/inf values.")

    def _nonfinite(self, what: str, value: float) -> bool:
        """Apply ``trainer.nonfinite`` to a NaN/inf loss or gradient norm: raise (stop) or
        drop this step's update (skip; reduce_lr also scales the learning rate down) and
        return True. Bad steps are logged (``nonfinite``, ``lr_scale``) and counted."""
        c = self.cfg
        self.bad_streak += 1
        self.bad_total += 1
        if c.nonfinite == "stop":
            self._stop(what, value)
        if self.bad_streak > c.max_nonfinite:
            self._stop(what, value, f" ({self.bad_streak} bad steps in a row, "
                       f"trainer.max_nonfinite={c.max_nonfinite})")
        if c.nonfinite == "reduce_lr":
            self.lr_scale *= c.nonfinite_lr_factor
        self.opt.zero_grad(set_to_none=True)
        if self.main:
            print(f"warning: {what} became {value} at step {self.step + 1}; update skipped "
                  f"(trainer.nonfinite={c.nonfinite}, lr scale {self.lr_scale:g}, "
                  f"{self.bad_streak} in a row)")
        self.logger.log(self.step + 1, {"nonfinite": float(self.bad_total),
                                        "lr_scale": self.lr_scale})
        return True

    def fit(self) -> dict[str, Any]:
        """Train to ``max_steps``; returns ``{"step", "history", "checkpoint", "run_dir"}``."""
        from tqdm import tqdm

        c, data = self.cfg, self._data()
        bar = tqdm(total=c.max_steps, initial=self.step, desc=f"train {self.recipe or ''}",
                   disable=not (c.progress and self.main), dynamic_ncols=True)
        t_last, s_last = time.perf_counter(), self.step
        try:
            while self.step < c.max_steps:
                lr = c.lr_at(self.step) * self.lr_scale
                for group in self.opt.param_groups:
                    group["lr"] = lr
                self.model.train()
                total, extras = torch.zeros((), device=self.acc.device), {}
                for micro in range(c.grad_accum):
                    batch = _to_device(next(data), self.acc.device)
                    ctx = StepContext(self.step, micro, self.generator, self.rank, self.world,
                                      self.acc.device)
                    last = micro == c.grad_accum - 1
                    if self.fsdp:  # reduce-scatter gradients only after the last micro-batch
                        self.model.set_requires_gradient_sync(last)
                        sync = self.acc.autocast()  # accelerate did not wrap forward
                    else:
                        sync = (contextlib.nullcontext() if last else self.acc.no_sync(self.model))
                    with sync:
                        out = self.task.loss(self.model, batch, ctx)
                        loss = out["loss"] if isinstance(out, dict) else out
                        if loss.ndim != 0:
                            raise ValueError(f"task.loss must return a scalar, got shape "
                                             f"{tuple(loss.shape)}")
                        self.acc.backward(loss / c.grad_accum)
                    total = total + loss.detach().float() / c.grad_accum
                    if isinstance(out, dict):
                        for k, v in out.items():
                            if k != "loss":
                                extras[k] = float(v) / c.grad_accum + extras.get(k, 0.0)
                g_loss = self.acc.reduce(total, "mean") if self.world > 1 else total
                if self.world > 1 and extras:  # logged parts: the mean over processes too
                    vals = self.acc.reduce(torch.tensor(list(extras.values()),
                                                        device=self.acc.device), "mean")
                    extras = dict(zip(extras, vals.tolist(), strict=True))
                loss_v = float(g_loss)
                bad = not math.isfinite(loss_v) and self._nonfinite("the loss", loss_v)
                gnorm = None
                if c.grad_clip and not bad:
                    gnorm = fsdp_mod.global_norm(  # DTensor norms (fsdp) are global too
                        self.acc.clip_grad_norm_(self.model.parameters(), c.grad_clip))
                    if not math.isfinite(gnorm) and self.acc.mixed_precision != "fp16":
                        bad = self._nonfinite("the gradient norm", gnorm)
                if not bad:
                    self.opt.step()
                    self.bad_streak = 0
                self.opt.zero_grad(set_to_none=True)
                self.step += 1  # a skipped step still consumes its batch and noise (resume)
                decay = self.ema.update(self.acc.unwrap_model(self.model)) if not bad else 0.0
                self.history.append(loss_v)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_v:.4f}", lr=f"{lr:.2e}")
                if self.step % c.log_every == 0 or self.step == c.max_steps:
                    now = time.perf_counter()
                    its = (self.step - s_last) / max(now - t_last, 1e-9)
                    t_last, s_last = now, self.step
                    rec = {"loss": loss_v, "lr": lr, "ema_decay": decay, "it_s": its,
                           "eta_s": (c.max_steps - self.step) / max(its, 1e-9), **extras}
                    if gnorm is not None:
                        rec["grad_norm"] = gnorm
                    self.logger.log(self.step, rec)
                if c.val_every and (self.step % c.val_every == 0 or self.step == c.max_steps):
                    self._validate()
                if self.step % c.checkpoint_every == 0 or self.step == c.max_steps:
                    self.save()
        finally:
            bar.close()
            self.logger.close()
            del data
        return {"step": self.step, "history": self.history, "checkpoint": self.last_ckpt,
                "run_dir": self.run_dir}


def instantiate(node: Any, **kw: Any) -> Any:
    """``hydra.utils.instantiate`` that re-raises the target's own ValueError / TypeError /
    OSError (e.g. "data.root is required") instead of Hydra's wrapper around it."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kw)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ValueError | TypeError | OSError):
            raise cause from None
        raise


def build(cfg: Any, with_data: bool = True) -> tuple[nn.Module, Task, Any]:
    """Instantiate ``(model, task, dataset)`` from a composed recipe (seeded by ``cfg.seed``).

    The model is ``task.wrap_model(instantiate(cfg.model))``, built right after
    ``torch.manual_seed(seed)`` so every process starts from the same weights.
    ``with_data=False`` skips the dataset (returns None for it), e.g. for sampling.
    """
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    dataset = _in_group("data", cfg, lambda: instantiate(cfg.data, _convert_="all")
                        ) if with_data else None
    sampler = _in_group("sampler", cfg, lambda: instantiate(cfg.sampler, _convert_="all")
                        ) if "sampler" in cfg else None
    kw = {"sampler": sampler} if sampler is not None else {}
    # _partial_: hydra would turn a dataclass kwarg into a config node
    task = _in_group("task", cfg, lambda: instantiate(cfg.task, _convert_="all",
                                                      _partial_=True)(**kw))
    torch.manual_seed(seed)
    net = _in_group("model", cfg, lambda: instantiate(cfg.model, _convert_="all"))
    model = _in_group("task", cfg, lambda: task.wrap_model(net), also="model")
    return model, task, dataset


def _in_group(group: str, cfg: Any, make: Any, also: str | None = None) -> Any:
    """Run ``make()``; an error is re-raised as a RecipeError that names the recipe group
    (and its ``_target_``) whose settings it comes from. Missing files stay OSErrors."""
    from toolkit.train.config import RecipeError

    try:
        return make()
    except (RecipeError, OSError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - any constructor failure becomes a recipe error
        target = cfg[group].get("_target_", "?") if group in cfg else "?"
        where = f"{group} ({target})" + (f" with this {also} ({cfg[also].get('_target_')})"
                                          if also and also in cfg else "")
        msg = " ".join(str(e).split()) or type(e).__name__
        raise RecipeError(f"{where} refused its settings: {msg}. Check the {group}.* "
                          + (f"and {also}.* " if also else "") + "values of the recipe "
                          "and your overrides (`toolkit train recipe=NAME --dry-run`)") from e


def train_recipe(cfg: Any) -> dict[str, Any]:
    """Train a composed recipe (:func:`toolkit.train.config.compose_recipe`) end to end."""
    from omegaconf import OmegaConf

    from toolkit.train.config import to_yaml

    tcfg = instantiate(cfg.trainer, _convert_="all")
    model, task, dataset = build(cfg)
    trainer = Trainer(
        model, task, dataset, tcfg, cfg.run_dir, seed=int(cfg.get("seed", 0)),
        config_yaml=to_yaml(cfg), recipe=cfg.get("recipe"),
        model_cfg=OmegaConf.to_container(cfg.model, resolve=True),
        resume=cfg.get("resume"), init_from=cfg.get("init_from"))
    return trainer.fit()


__all__ = ["build", "train_recipe", "Trainer", "TrainerConfig", "GlobalBatchSampler",
           "NonFiniteLossError", "resolve_precision"]
