"""MAR training and sampling: the task behind ``recipe=mar_mnist``.

Li et al. 2024, "Autoregressive Image Generation without Vector Quantization" (MAR), with the
network of :mod:`modalities.hybrid.mar`.

**Training** (their sec. 3.3-3.4 and code): every image gets its own random order of the ``L``
token positions and a masking ratio ``r`` from a normal ``N(1.0, 0.25^2)`` truncated to
``[0.7, 1.0]``; the first ``ceil(r L)`` positions of the order are masked. The backbone sees
the class (dropped to the learned null class with probability ``p_drop`` for classifier-free
guidance) and the visible tokens; the loss is the diffusion head's loss on the **masked tokens
only**, with ``batch_mul`` noise draws per token. ``order="raster"`` (the causal variant)
masks nothing and trains every token by teacher forcing. All draws come from ``ctx``.

**Sampling** (their sec. 3.4, "sample_tokens" of their code): start from all tokens masked and a
random order per sample; iteration ``k = 0..K-1`` runs the backbone on the known tokens, and
reveals the next positions of the order by sampling the head at them, so that
``floor(L cos(pi/2 (k+1)/K))`` tokens are still masked afterwards (cosine schedule), with at
least one token revealed per iteration and all revealed after the last
(:func:`unmask_schedule`; ``K > L`` runs ``L`` iterations). Classifier-free guidance uses the
linear schedule over known tokens, ``w_k = 1 + (w - 1) (L - m_k) / L`` with ``m_k`` the tokens
still masked after iteration ``k`` (their "cfg_schedule=linear"), applied by the head to ``z``
and ``z_uncond`` (the null class). The head integrates its ODE from ``N(0, tau^2 I)`` (the
temperature ``tau``). The causal variant reveals one token per step in raster order.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modalities.image.class_task import Class2ImgTask
from toolkit.train.tasks import SamplerSpec, StepContext, Task, unwrap

__all__ = ["MARTask", "truncated_normal", "unmask_schedule"]

CFG_SCHEDULES = ("linear", "constant")


def unmask_schedule(length: int, iterations: int) -> list[int]:
    """How many tokens each iteration reveals: positive integers that sum to ``length``.

    ``K = min(iterations, length)`` iterations (each reveals at least one token); after
    iteration ``k`` the number still masked is ``floor(L cos(pi/2 (k+1)/K))``, clamped to
    reveal at least one token per iteration and to leave at least one for each later one
    (0 after the last). ``K = 1`` reveals everything at once.
    """
    big_l, k_req = int(length), int(iterations)
    if big_l < 1 or k_req < 1:
        raise ValueError(f"unmask_schedule: length and iterations must be >= 1, got {length}, "
                         f"{iterations}")
    k = min(k_req, big_l)
    out, left = [], big_l
    for i in range(k):
        m = math.floor(big_l * math.cos(math.pi / 2 * (i + 1) / k) + 1e-9)
        m = max(min(m, left - 1), k - 1 - i)  # >= 1 revealed now, >= 1 left per later step
        out.append(left - m)
        left = m
    assert left == 0 and sum(out) == big_l and min(out) >= 1
    return out


def truncated_normal(u: Tensor, mean: float, std: float, lo: float, hi: float) -> Tensor:
    """Inverse-CDF draw from ``N(mean, std^2)`` truncated to ``[lo, hi]`` for uniforms ``u``."""
    a = torch.special.ndtr(torch.tensor((lo - mean) / std, dtype=torch.float64))
    b = torch.special.ndtr(torch.tensor((hi - mean) / std, dtype=torch.float64))
    p = (a + u.to(torch.float64) * (b - a)).clamp(1e-12, 1 - 1e-12)
    return (mean + std * torch.special.ndtri(p)).clamp(lo, hi)


class MARTask(Task):
    """Masked-autoregressive training with a per-token diffusion loss (module docstring).

    Batches are ``(images (B, C, H, W) in [-1, 1], labels (B,), ...)``; the model is a
    :class:`~modalities.hybrid.mar.MAR` (its ``order`` picks random-order masking or the
    causal raster variant).

    Args:
        num_classes: K. image_size / channels: the image shape (must match the model's).
        p_drop: CFG label dropout (to the null class).
        mask_ratio_mean / mask_ratio_std / mask_ratio_min / mask_ratio_max: the truncated
            normal of training masking ratios (MAR: 1.0, 0.25, 0.7, 1.0).
        iterations: K, autoregressive iterations at sampling (random order).
        temperature: tau, the std of the head's prior at sampling.
        cfg_schedule: ``linear`` (MAR) or ``constant`` guidance over iterations.
        val_per_class: rows of the validation grid.
        sampler: a :class:`SamplerSpec`: the head's ODE solver / steps and the CFG scale w.
    """

    def __init__(self, num_classes: int = 10, image_size: int = 32, channels: int = 1,
                 p_drop: float = 0.1, mask_ratio_mean: float = 1.0, mask_ratio_std: float = 0.25,
                 mask_ratio_min: float = 0.7, mask_ratio_max: float = 1.0, iterations: int = 16,
                 temperature: float = 1.0, cfg_schedule: str = "linear", val_per_class: int = 8,
                 sampler: SamplerSpec | None = None) -> None:
        if num_classes < 1 or not 0.0 <= p_drop <= 1.0:
            raise ValueError(f"task.num_classes must be >= 1 and task.p_drop in [0, 1], got "
                             f"{num_classes}, {p_drop}")
        if min(image_size, channels, val_per_class, iterations) < 1:
            raise ValueError("task.image_size, channels, val_per_class and iterations must be "
                             ">= 1")
        if not (0.0 < mask_ratio_min <= mask_ratio_max <= 1.0 and mask_ratio_std > 0):
            raise ValueError("task: need 0 < mask_ratio_min <= mask_ratio_max <= 1 and "
                             f"mask_ratio_std > 0, got [{mask_ratio_min}, {mask_ratio_max}], "
                             f"std {mask_ratio_std}")
        if temperature < 0:
            raise ValueError(f"task.temperature must be >= 0, got {temperature}")
        if cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"task.cfg_schedule must be one of {CFG_SCHEDULES}, got "
                             f"{cfg_schedule!r}")
        self.num_classes, self.p_drop = int(num_classes), float(p_drop)
        self.image_size, self.channels = int(image_size), int(channels)
        self.mask_ratio = (float(mask_ratio_mean), float(mask_ratio_std), float(mask_ratio_min),
                           float(mask_ratio_max))
        self.iterations, self.temperature = int(iterations), float(temperature)
        self.cfg_schedule, self.val_per_class = cfg_schedule, int(val_per_class)
        self.sampler = sampler or SamplerSpec(solver="heun", steps=8, guidance_scale=3.0)

    def wrap_model(self, net: nn.Module) -> nn.Module:
        """Checks that the network is a MAR of the task's classes and image shape."""
        for attr in ("patchify", "unpatchify", "head", "order", "seq_len"):
            if not hasattr(net, attr):
                raise ValueError(f"MARTask needs a MAR network (modalities.hybrid.mar.MAR), got "
                                 f"{type(net).__name__} without {attr!r}")
        if int(net.num_classes) != self.num_classes:
            raise ValueError(f"model.num_classes={net.num_classes} but task.num_classes="
                             f"{self.num_classes}")
        if (net.channels, net.image_size) != (self.channels, self.image_size):
            raise ValueError(f"model images ({net.channels}, {net.image_size}, "
                             f"{net.image_size}) != task images ({self.channels}, "
                             f"{self.image_size}, {self.image_size})")
        return net

    def setup(self, dataset: Any, run_dir: Path, model: nn.Module | None = None) -> None:
        """Checks that the data's labels fit ``num_classes``."""
        k = getattr(dataset, "num_classes", None)
        if k is not None and int(k) != self.num_classes:
            raise ValueError(f"the dataset has {k} classes but task.num_classes="
                             f"{self.num_classes}")

    # ---------------------------------------------------------------------------- training
    def _batch(self, batch: Any) -> tuple[Tensor, Tensor]:
        if not isinstance(batch, list | tuple) or len(batch) < 2:
            raise ValueError("MARTask expects batches (images, labels, ...)")
        x, y = batch[0], torch.as_tensor(batch[1])
        c, s = self.channels, self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"MARTask expects images (B, {c}, {s}, {s}), got {tuple(x.shape)}")
        if (y.shape != (x.shape[0],) or y.is_floating_point() or int(y.min()) < 0
                or int(y.max()) >= self.num_classes):
            raise ValueError(f"labels must be (B,) integers in [0, {self.num_classes}), got "
                             f"shape {tuple(y.shape)}, range [{int(y.min())}, {int(y.max())}]")
        return x, y.long()

    def masks(self, b: int, length: int, ctx: StepContext) -> Tensor:
        """``(B, L)`` bool training masks (True = masked): a random order per sample and
        ``ceil(r L)`` masked tokens, ``r`` from the truncated normal."""
        mean, std, lo, hi = self.mask_ratio
        r = truncated_normal(ctx.rand((b,), dtype=torch.float64), mean, std, lo, hi)  # (B,)
        n_mask = torch.ceil(r * length - 1e-9).long().clamp(1, length)  # (B,)
        order = torch.argsort(ctx.rand((b, length)), dim=1)  # (B, L) a random permutation
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(length, device=order.device).expand(b, -1))
        return rank < n_mask.to(rank.device)[:, None]  # first n_mask positions of the order

    def loss(self, model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Tensor]:
        """Head loss on the masked tokens (all tokens for the causal variant)."""
        x, y = self._batch(batch)
        dev = x.device
        net = unwrap(model)  # attributes; the forward call goes through DDP's wrapper
        tokens = net.patchify(x)  # (B, L, d)
        b, n, d = tokens.shape
        drop = ctx.bernoulli(self.p_drop, b).to(dev)  # (B,)
        y = torch.where(drop, torch.full_like(y, self.num_classes), y.to(dev))
        if net.order == "raster":
            mask = torch.ones(b, n, dtype=torch.bool, device=dev)
            z = model(tokens, None, y)  # (B, L, D)
        else:
            mask = self.masks(b, n, ctx).to(dev)
            z = model(tokens, mask, y)
        head = net.head
        m = head.batch_mul
        x0 = ctx.randn((b, m, n, d), dtype=tokens.dtype).to(dev)  # (B, m, L, d)
        t = ctx.sample_t(head.t_sampler, (b, m, n), dtype=tokens.dtype).to(dev)  # (B, m, L)
        x0 = x0.transpose(0, 1)[:, mask]  # (m, N, d): the masked tokens only
        t = t.transpose(0, 1)[:, mask]  # (m, N)
        loss = head.loss(tokens[mask], z[mask], x0=x0, t=t)  # mean over local masked tokens
        # processes hold different numbers of masked tokens: rescale the local mean to
        # sum_local / count_global (x world size, which DDP's gradient average undoes)
        loss = loss * ctx.masked_mean(torch.ones(mask.shape, dtype=loss.dtype, device=dev), mask)
        return {"loss": loss, "cfg_drop": drop.float().mean(), "mask_ratio": mask.float().mean()}

    # ---------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, model: nn.Module, labels: Tensor | int, generator: torch.Generator, *,
                 guidance_scale: float | None = None, solver: str | None = None,
                 steps: int | None = None, batch_size: int = 256, iterations: int | None = None,
                 temperature: float | None = None, info: dict[str, Any] | None = None
                 ) -> Tensor:
        """Images ``(n, C, H, W)`` in ``[-1, 1]`` for class ``labels (n,)`` (an int ``n``:
        classes ``0, 1, ..., K-1, 0, ...``).

        Args:
            guidance_scale: CFG w (default the sampler's). solver / steps: the head's ODE.
            iterations: K (default ``task.iterations``; the causal variant always takes L).
            temperature: tau (default ``task.temperature``).
            info: receives ``iterations`` (backbone passes per sample, CFG counted once),
                ``head_nfe`` (head evaluations per token, CFG counted once) and ``order``.
        """
        spec = self.sampler
        w = spec.guidance_scale if guidance_scale is None else float(guidance_scale)
        k = self.iterations if iterations is None else int(iterations)
        tau = self.temperature if temperature is None else float(temperature)
        if k < 1 or tau < 0 or batch_size < 1:
            raise ValueError(f"MARTask.generate: iterations and batch_size must be >= 1 and "
                             f"temperature >= 0, got {k}, {batch_size}, {tau}")
        if isinstance(labels, int):
            labels = torch.arange(labels) % self.num_classes
        labels = torch.as_tensor(labels)
        model.check_labels(labels, len(labels), allow_null=False)
        labels = labels.long()
        device = next(model.parameters()).device
        n_tok = model.seq_len
        orders = torch.argsort(torch.rand(len(labels), n_tok, generator=generator), dim=1)
        run: dict[str, Any] = {}
        head_kw = dict(solver=solver or spec.solver, steps=steps or spec.steps,
                       temperature=tau, generator=generator, info=run)
        out = []
        for s in range(0, len(labels), batch_size):
            y = labels[s:s + batch_size].to(device)
            if model.order == "raster":
                tok = self._sample_raster(model, y, w, head_kw)
            else:
                tok = self._sample_masked(model, y, orders[s:s + batch_size].to(device), k, w,
                                          head_kw)
            out.append(model.unpatchify(tok).clamp(-1, 1).cpu())
        if info is not None:
            info.update(order=model.order, head_nfe=run.get("nfe"),
                        iterations=n_tok if model.order == "raster" else min(k, n_tok))
        return torch.cat(out)

    def _w(self, w: float, length: int, masked_after: int) -> float:
        if self.cfg_schedule == "constant":
            return w
        return 1.0 + (w - 1.0) * (length - masked_after) / length

    def _z(self, model: nn.Module, tokens: Tensor, mask: Tensor | None, y: Tensor, guided: bool,
           n: int | None = None) -> tuple[Tensor, Tensor | None]:
        """``z`` (and ``z_uncond`` for CFG) in one batched backbone pass."""
        b = y.shape[0]
        if guided:
            tokens = torch.cat([tokens, tokens])
            mask = None if mask is None else torch.cat([mask, mask])
            y = torch.cat([y, model.null_labels(b).to(y.device)])
        z = (model.forward_causal(tokens, y, n) if model.order == "raster"
             else model(tokens, mask, y))
        return (z[:b], z[b:]) if guided else (z, None)

    def _sample_masked(self, model: nn.Module, y: Tensor, order: Tensor, k: int, w: float,
                       head_kw: dict[str, Any]) -> Tensor:
        b, n, d = y.shape[0], model.seq_len, model.token_dim
        dt = model.z_proj.weight.dtype
        tokens = torch.zeros(b, n, d, device=y.device, dtype=dt)
        mask = torch.ones(b, n, dtype=torch.bool, device=y.device)
        guided = w != 1.0
        start = 0
        for reveal in unmask_schedule(n, k):
            pos = order[:, start:start + reveal]  # (B, r) positions revealed now
            z, zu = self._z(model, tokens, mask, y, guided)
            idx = pos[..., None].expand(-1, -1, z.shape[-1])
            zc = torch.gather(z, 1, idx)  # (B, r, D)
            zu = None if zu is None else torch.gather(zu, 1, idx)
            start += reveal
            new = model.head.sample(zc, cfg=self._w(w, n, n - start), z_uncond=zu, **head_kw)
            tokens = tokens.scatter(1, pos[..., None].expand(-1, -1, d), new.to(dt))
            mask = mask.scatter(1, pos, False)
        return tokens

    def _sample_raster(self, model: nn.Module, y: Tensor, w: float, head_kw: dict[str, Any]
                       ) -> Tensor:
        b, n, d = y.shape[0], model.seq_len, model.token_dim
        tokens = torch.zeros(b, n, d, device=y.device, dtype=model.z_proj.weight.dtype)
        guided = w != 1.0
        for i in range(n):  # z_i sees tokens < i: recompute the prefix only
            z, zu = self._z(model, tokens, None, y, guided, n=i + 1)
            zc, zu = z[:, i], None if zu is None else zu[:, i]
            tokens[:, i] = model.head.sample(zc, cfg=self._w(w, n, n - i - 1), z_uncond=zu,
                                             **head_kw).to(tokens.dtype)
        return tokens

    #: ``out_dir/step_N.png``: one column per class (the class-conditional flow's grid)
    validate = Class2ImgTask.validate
