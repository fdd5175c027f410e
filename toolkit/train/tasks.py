"""Tasks: the glue between a batch, a network and an objective (plus validation sampling).

A :class:`Task` turns a collated batch into a scalar loss, optionally wraps the backbone
(e.g. to own a conditioner's learned null token), and draws validation samples. The
:class:`~toolkit.train.trainer.Trainer` does everything else (optimisation, EMA,
checkpoints, logs, processes). A new modality is a dataset ``_target_`` plus a small task:

    class Text2ImgTask(Task):
        def loss(self, model, batch, ctx):
            cond = self.encode(batch["caption"], drop=ctx.bernoulli(0.1, len(batch["image"])))
            return cfm_loss(model, batch["image"], x0=ctx.randn(batch["image"].shape),
                            t=ctx.sample_t("logit_normal", len(batch["image"])),
                            cond={"cond": cond}).loss

**Randomness.** ``ctx`` draws noise for the *global* batch (all processes, same generator
state everywhere) and returns this process's slice, so ``N`` processes with per-process
batch ``B`` see exactly the noise one process with batch ``N * B`` sees: multi-process
training reproduces the single-process model, and resume is bit-exact (the generator
state is checkpointed).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from toolkit import timesteps as timesteps_mod
from toolkit.data import toy2d
from toolkit.losses import cfm_loss
from toolkit.sampling import sample


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP / ``torch.compile`` wrappers (``.module`` / ``._orig_mod``): for
    attribute access inside a task's loss (calls still go through the wrapper)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


@dataclass
class StepContext:
    """Per-micro-step information and process-consistent random draws.

    Attributes:
        step: optimizer steps done so far. micro: micro-batch index within the step.
        generator: shared ``torch.Generator`` (same state on every process).
        rank / world_size: this process and the number of processes. device: compute device.
    """

    step: int
    micro: int
    generator: torch.Generator
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def _shard(self, full: Tensor, local: int) -> Tensor:
        return full[self.rank * local:(self.rank + 1) * local].to(self.device)

    def _global(self, shape: tuple[int, ...] | torch.Size) -> tuple[int, tuple[int, ...]]:
        shape = tuple(int(s) for s in shape)
        if not shape or shape[0] < 1:
            raise ValueError(f"random draws need a leading batch dimension, got {shape}")
        return shape[0], (shape[0] * self.world_size, *shape[1:])

    def randn(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32
              ) -> Tensor:
        """Standard normal noise of local ``shape`` ``(B, ...)``."""
        b, g = self._global(shape)
        return self._shard(torch.randn(g, generator=self.generator, dtype=dtype), b)

    def rand(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32
             ) -> Tensor:
        """Uniform [0, 1) draws of local ``shape``."""
        b, g = self._global(shape)
        return self._shard(torch.rand(g, generator=self.generator, dtype=dtype), b)

    def bernoulli(self, p: float, n: int) -> Tensor:
        """``(n,)`` bool mask, True with probability ``p`` (e.g. CFG condition dropout)."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {p}")
        return self.rand((n,), dtype=torch.float64) < p

    def masked_mean(self, values: Tensor, mask: Tensor) -> Tensor:
        """Mean of ``values`` over the elements where ``mask`` is True across the *global*
        batch: ``sum_local / count_global * world_size``. DDP averages gradients over
        processes, so the result trains (and, averaged for the log, reads) exactly like one
        process's masked mean over the whole batch, even when processes hold different
        numbers of valid elements (variable-length sequences)."""
        m = mask.to(values.dtype)
        num, cnt = (values * m).sum(), m.sum().detach()
        if self.world_size > 1 and torch.distributed.is_available() and \
                torch.distributed.is_initialized():
            cnt = cnt.clone()
            torch.distributed.all_reduce(cnt)
            return num * self.world_size / cnt.clamp_min(1.0)
        return num / cnt.clamp_min(1.0)

    def coin(self, p: float) -> bool:
        """One decision for the whole global batch (e.g. "run a self-conditioning pass"),
        True with probability ``p``: the same on every process, and the same draw one process
        makes (so control flow, and the collectives inside it, agree across processes)."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {p}")
        return bool(torch.rand((1,), generator=self.generator, dtype=torch.float64)[0] < p)

    def sample_t(self, sampler: str | Callable, shape: int | tuple[int, ...],
                 dtype: torch.dtype = torch.float32, **kw: Any) -> Tensor:
        """Training times from a :mod:`toolkit.timesteps` sampler, local ``shape``."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        b, g = self._global(shape)
        draw = timesteps_mod.get(sampler, **kw) if isinstance(sampler, str) else sampler
        return self._shard(draw(g, generator=self.generator, dtype=dtype), b)


@dataclass
class SamplerSpec:
    """How validation / ``toolkit sample`` draws samples (the ``sampler`` recipe group).

    Args:
        solver: any name of ``toolkit solvers``. steps: solver steps. grid: time grid.
        guidance_scale: CFG scale (1 = no guidance; used by conditional tasks).
        options: extra solver keyword options (e.g. ``{"eta": 0.0}``).
    """

    solver: str = "heun"
    steps: int = 16
    grid: str = "uniform"
    guidance_scale: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"sampler.steps must be >= 1, got {self.steps}")
        from toolkit import samplers

        samplers.get(self.solver)  # fails early, naming the closest valid solver

    def guided(self, model: Callable[..., Tensor], x0: Tensor, path: Any, prediction: str,
               cond: dict[str, Any], uncond: dict[str, Any], *, scale: float | None = None,
               solver: str | None = None, steps: int | None = None) -> Tensor:
        """Integrate ``x0`` with classifier-free guidance (:func:`toolkit.guidance.cfg`,
        scale ``scale`` or this spec's ``guidance_scale``); ``solver`` / ``steps`` override."""
        from toolkit import guidance

        w = self.guidance_scale if scale is None else float(scale)
        with torch.no_grad():
            return sample(guidance.cfg(model, w, cond=cond, uncond=uncond), x0, path=path,
                          prediction=prediction, solver=solver or self.solver,
                          steps=steps or self.steps, grid=self.grid, **dict(self.options))

    def __call__(self, model: Callable[..., Tensor], x0: Tensor, path: Any, prediction: str,
                 cond: dict[str, Any] | None = None) -> Tensor:
        """Integrate ``x0`` (t = 0) to data (t = 1) with this spec."""
        with torch.no_grad():
            return sample(model, x0, path=path, prediction=prediction, solver=self.solver,
                          steps=self.steps, grid=self.grid, cond=cond, **dict(self.options))


class Task:
    """Base class of training tasks (see the module docstring).

    Subclasses implement :meth:`loss`; :meth:`validate` and :meth:`wrap_model` are optional.
    """

    #: sampling settings (the recipe's ``sampler`` group), set by :func:`~toolkit.train.build`
    sampler: SamplerSpec | None = None
    #: True when some steps leave parameters without gradients (e.g. a self-conditioning
    #: input used only in some steps): DDP then searches for unused parameters each step
    find_unused_parameters: bool = False

    def setup(self, dataset: Any, run_dir: Path, model: nn.Module | None = None) -> Any:
        """Called once before training with the training dataset, the run directory and the
        (wrapped, not yet resumed or ``init_from``-loaded) model, e.g. to fit input
        statistics kept in the model's buffers. May return a dataset that replaces the one
        iterated (e.g. images swapped for cached latents); None keeps ``dataset``. Files the
        run needs for sampling are registered with :func:`register_run_asset`."""
        return None

    def wrap_model(self, net: nn.Module) -> nn.Module:
        """The module that is trained, averaged (EMA) and checkpointed (default: ``net``)."""
        return net

    def loss(self, model: nn.Module, batch: Any, ctx: StepContext) -> Tensor | dict[str, Tensor]:
        """Scalar loss for one micro-batch, or a dict with ``"loss"`` and extra metrics."""
        raise NotImplementedError

    def validate(self, model: nn.Module, step: int, out_dir: Path,
                 generator: torch.Generator) -> dict[str, float]:
        """Draw samples with ``model`` (EMA weights), save them as PNG files directly under
        ``out_dir`` (e.g. ``out_dir/step_00000500.png``, a grid via
        :func:`toolkit.train.logging.save_image_grid`) and return metrics to log. Runs on
        the main process only, every ``trainer.val_every`` steps and at the end."""
        return {}


ASSETS_FILE = "assets.json"


def register_run_asset(run_dir: str | Path, key: str, relative: str) -> None:
    """Record that config ``key`` (e.g. ``"task.codec"``) points at ``run_dir/relative``.

    :func:`~toolkit.train.checkpoint.load_run` applies these overrides, so a run directory
    stays self-contained (sampling works after the original codec folder is gone).
    """
    import json

    path = Path(run_dir) / ASSETS_FILE
    assets = json.loads(path.read_text()) if path.is_file() else {}
    assets[str(key)] = str(relative)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(assets, indent=1))
    os.replace(tmp, path)


def toy2d_dataset(name: str = "8gaussians", n: int = 100_000, seed: int = 0,
                  **kw: Any) -> torch.utils.data.TensorDataset:
    """A fixed, seeded sample of ``n`` points ``(n, 2)`` from :mod:`toolkit.data.toy2d`."""
    if n < 1:
        raise ValueError(f"data.n must be >= 1, got {n}")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.TensorDataset(toy2d.sample(name, n, generator=gen, **kw))


class VectorCFMTask(Task):
    """Conditional flow matching on vector data ``(B, D)`` (Lipman et al. 2023).

    ``L = E || v(x_t, t) - (d_alpha x1 + d_sigma x0) ||^2`` with ``x_t = alpha x1 + sigma x0``.

    Args:
        path: probability path name (``linear``: rectified flow). t_sampler: a
            :mod:`toolkit.timesteps` name; t_sampler_kwargs: its options.
        val_samples: points drawn at validation. sampler: a :class:`SamplerSpec`.
    """

    prediction = "velocity"

    def __init__(self, path: str = "linear", t_sampler: str = "uniform",
                 t_sampler_kwargs: dict[str, Any] | None = None, val_samples: int = 1000,
                 sampler: SamplerSpec | None = None) -> None:
        from toolkit import paths

        self.path = paths.get(path)
        self.t_sampler = timesteps_mod.get(t_sampler, **dict(t_sampler_kwargs or {}))
        self.val_samples = int(val_samples)
        self.sampler = sampler or SamplerSpec()
        self.reference: Tensor | None = None

    def setup(self, dataset: Any, run_dir: Path, model: nn.Module | None = None) -> None:
        """Keep a reference subset of the data for validation plots and W2."""
        n = min(len(dataset), self.val_samples)
        self.reference = torch.stack([dataset[i][0] for i in range(n)])  # (n, D)

    @staticmethod
    def _x1(batch: Any) -> Tensor:
        x1 = batch[0] if isinstance(batch, list | tuple) else batch
        if not isinstance(x1, Tensor) or x1.ndim != 2:
            raise ValueError(f"VectorCFMTask expects (B, D) tensors, got {type(x1).__name__}"
                             f"{'' if not isinstance(x1, Tensor) else tuple(x1.shape)}")
        return x1

    def loss(self, model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Tensor]:
        """Flow-matching loss with process-consistent noise and times."""
        x1 = self._x1(batch)
        x0 = ctx.randn(x1.shape, dtype=x1.dtype)  # (B, D)
        t = ctx.sample_t(self.t_sampler, x1.shape[0], dtype=x1.dtype)  # (B,)
        out = cfm_loss(model, x1, x0, path=self.path, t=t)
        return {"loss": out.loss}

    def generate(self, model: nn.Module, n: int, generator: torch.Generator,
                 dim: int | None = None) -> Tensor:
        """``n`` samples ``(n, D)`` from noise with the task's sampler."""
        if dim is None:
            dim = (self.reference.shape[1] if self.reference is not None
                   else int(getattr(model, "dim", 2)))
        device = next(model.parameters()).device
        x0 = torch.randn(n, dim, generator=generator).to(device)
        return self.sampler(model, x0, self.path, self.prediction)

    def validate(self, model: nn.Module, step: int, out_dir: Path,
                 generator: torch.Generator) -> dict[str, float]:
        """Scatter plot of samples next to data (``out_dir/step_N.png``) and W2 to the data."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from toolkit import metrics

        ref = self.reference
        x = self.generate(model, self.val_samples, generator).float().cpu()  # (n, D)
        res: dict[str, float] = {}
        if ref is not None and ref.shape[1] == x.shape[1]:
            res["val/w2"] = float(metrics.w2(x.double(), ref.double()))
        out_dir.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(1, 2, figsize=(8, 4))
        lim = float(ref.abs().max()) * 1.15 if ref is not None else 4.0
        if ref is not None:
            ax[0].scatter(ref[:, 0], ref[:, 1], s=2, c="tab:blue")
        ax[0].set_title("data")
        ax[1].scatter(x[:, 0], x[:, 1], s=2, c="tab:orange")
        ax[1].set_title(f"EMA samples, step {step}")
        for a in ax:
            a.set_xlim(-lim, lim)
            a.set_ylim(-lim, lim)
            a.set_aspect("equal")
        fig.tight_layout()
        fig.savefig(out_dir / f"step_{step:08d}.png", dpi=80)
        plt.close(fig)
        return res


__all__ = ["ASSETS_FILE", "StepContext", "SamplerSpec", "Task", "VectorCFMTask",
           "register_run_asset", "toy2d_dataset", "unwrap"]
