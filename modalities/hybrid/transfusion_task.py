"""Transfusion training and generation on captioned MNIST (``recipe=transfusion_mnist``).

One :class:`~modalities.hybrid.transfusion.TransfusionNet` is trained on mixed sequences
(Zhou et al. 2024, sec. 3.3, eq. 4):

    L = L_LM + lambda * L_flow,   lambda = 5 (their sec. 4.1),

``L_LM = E[-log p(w_j | w_<j, image)]`` over the text tokens the model emits (caption
words, ``<boi>`` and ``<eos>``; not the patches) and ``L_flow`` the rectified-flow loss on
the image patches (the paper uses DDPM eps-prediction; here the toolkit's linear path:
``x_t = t x1 + (1 - t) x0``, target ``u = x1 - x0``, Liu et al. 2023 / Lipman et al. 2023),
one ``t`` per image.

Per sample one order is drawn: caption -> image (generation) or image -> caption
(captioning). Caption -> image rows lose their caption with probability ``p_drop``
(classifier-free guidance, Ho & Salimans 2022; the paper drops it with 10 %).

**Noise limiting for captioning.** When the caption follows the image, the caption tokens
are predicted from ``x_t``; at high noise that image carries no information about the
digit and the LM loss only teaches the caption prior. Transfusion therefore caps the noise
at ``t <= 500`` of 1000 DDPM steps 80 % of the time in image -> caption data (sec. 4.1,
"noise limiting"). Under their cosine schedule step 500 has ``alpha_bar ~ 0.5``, i.e.
SNR = 1, which on the linear path is ``t = 0.5``; so with probability ``p_limit_noise`` an
image -> caption row draws ``t ~ U[caption_t_min, 1]`` (``caption_t_min = 0.5``) instead of
the training time sampler. The flow loss keeps counting those rows (they are ordinary, if
cleaner, training pairs for the image model too). Captions are decoded from clean images
(``t = 1``).

Generation switches from tokens to the flow loop at ``<boi>``: :meth:`generate_images`
integrates all N patch slots after ``<bos> caption <boi>`` with any toolkit solver and CFG
against ``<bos> <boi>`` (:func:`toolkit.guidance.cfg`); :meth:`generate_captions` decodes
greedily after ``<bos> <boi> patches <eoi>`` until ``<eos>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modalities.hybrid.transfusion import (
    EOS,
    PAD,
    SPECIALS,
    CaptionVocab,
    MixedBatch,
    build_sequences,
    caption_prefix,
    image_prefix,
    lm_targets,
    patchify,
    unpatchify,
)
from toolkit import timesteps as timesteps_mod
from toolkit.losses import cfm_loss
from toolkit.train.tasks import SamplerSpec, StepContext, Task

__all__ = ["TransfusionTask"]


class _JointField:
    """``(x_t, t) -> v`` for :func:`toolkit.losses.cfm_loss` / :func:`toolkit.sampling.sample`
    over a Transfusion network; keeps the logits of the last call (one forward pass serves
    both losses)."""

    def __init__(self, net: nn.Module) -> None:
        self.net, self.logits = net, None

    def __call__(self, x: Tensor, t: Tensor, ids: Tensor) -> Tensor:
        self.logits, v = self.net(ids, x, t)
        return v


class TransfusionTask(Task):
    """LM + lambda * flow training on captioned images (see the module docstring).

    Batches are ``(images (B, C, H, W) in [-1, 1], labels (B,), ...)``; captions are drawn
    from :class:`~modalities.hybrid.transfusion.CaptionVocab` templates.

    Args:
        patch_size / image_size / channels / num_classes: data layout (patches of p x p).
        flow_weight: lambda. p_image_first: probability of the image -> caption order.
        p_drop: caption dropout of caption -> image rows (CFG).
        path / t_sampler / t_sampler_kwargs: flow path and training times.
        caption_t_min / p_limit_noise: noise limiting of image -> caption rows.
        val_per_class: generated rows per digit at validation. val_captions: held-out
            images captioned at validation. sampler: a :class:`SamplerSpec` (CFG scale).
    """

    prediction = "velocity"

    def __init__(self, patch_size: int = 8, image_size: int = 32, channels: int = 1,
                 num_classes: int = 10, flow_weight: float = 5.0, p_image_first: float = 0.5,
                 p_drop: float = 0.1, path: str = "linear", t_sampler: str = "logit_normal",
                 t_sampler_kwargs: dict[str, Any] | None = None, caption_t_min: float = 0.5,
                 p_limit_noise: float = 0.8, val_per_class: int = 4, val_captions: int = 50,
                 sampler: SamplerSpec | None = None) -> None:
        from toolkit import paths

        if image_size % patch_size or min(patch_size, channels, val_per_class) < 1:
            raise ValueError(f"task.image_size={image_size} must be divisible by "
                             f"task.patch_size={patch_size} (both >= 1)")
        if num_classes != 10:
            raise ValueError(f"captions name digits: task.num_classes must be 10, got "
                             f"{num_classes}")
        for name, p in (("p_image_first", p_image_first), ("p_drop", p_drop),
                        ("p_limit_noise", p_limit_noise), ("caption_t_min", caption_t_min)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"task.{name} must be in [0, 1], got {p}")
        self.p, self.image_size, self.channels = int(patch_size), int(image_size), int(channels)
        self.num_classes, self.flow_weight = num_classes, float(flow_weight)
        self.p_image_first, self.p_drop = float(p_image_first), float(p_drop)
        self.caption_t_min, self.p_limit_noise = float(caption_t_min), float(p_limit_noise)
        self.path = paths.get(path)
        self.t_sampler = timesteps_mod.get(t_sampler, **dict(t_sampler_kwargs or {}))
        self.val_per_class, self.val_captions = int(val_per_class), int(val_captions)
        self.vocab = CaptionVocab()
        self.sampler = sampler or SamplerSpec(solver="heun", steps=12, guidance_scale=2.0)
        self.heldout: tuple[Tensor, Tensor] | None = None

    @property
    def n_patches(self) -> int:
        """N = (H / p)^2."""
        return (self.image_size // self.p) ** 2

    @property
    def patch_dim(self) -> int:
        """P = C p p."""
        return self.channels * self.p * self.p

    @property
    def max_seq_len(self) -> int:
        """Longest training sequence: ``<bos> caption <boi> N <eoi> <eos>``."""
        return self.vocab.max_caption_len + self.n_patches + 4

    def wrap_model(self, net: nn.Module) -> nn.Module:
        """Checks that the network matches the vocabulary, the patches and the sequence
        length (the network is trained as is)."""
        want = {"vocab_size": self.vocab.size, "patch_dim": self.patch_dim,
                "n_patches": self.n_patches}
        for key, val in want.items():
            if getattr(net, key, val) != val:
                raise ValueError(f"model.{key}={getattr(net, key)} but the task needs {val} "
                                 f"(set model.{key}={val})")
        if getattr(net, "max_len", self.max_seq_len) < self.max_seq_len:
            raise ValueError(f"model.max_len={net.max_len} is shorter than the longest "
                             f"sequence ({self.max_seq_len} tokens)")
        return net

    def setup(self, dataset: Any, run_dir: Path, model: nn.Module | None = None) -> None:
        """Keeps ``val_captions`` held-out images for validation captioning (MNIST's held-out
        split when the data is an MNISTDataset, else the last training images)."""
        from modalities.image.mnist import MNISTDataset

        k = getattr(dataset, "num_classes", self.num_classes)
        if int(k) != self.num_classes:
            raise ValueError(f"the dataset has {k} classes but captions name 10 digits")
        n = self.val_captions
        if isinstance(dataset, MNISTDataset):
            held = MNISTDataset("heldout", dataset.source, dataset.root, dataset.heldout_fraction,
                                dataset.seed, dataset.image_size, dataset.channels, n=n)
            self.heldout = held.tensors()
        elif n > 0:
            items = [dataset[i] for i in range(max(0, len(dataset) - n), len(dataset))]
            self.heldout = (torch.stack([x for x, *_ in items]),
                            torch.tensor([int(y) for _, y, *_ in items]))

    def captions(self, labels: Sequence[int], templates: Sequence[int]) -> list[list[int]]:
        """Word ids of the captions of ``labels`` with the given template numbers."""
        return [self.vocab.encode(self.vocab.caption(int(y), int(k)))
                for y, k in zip(labels, templates, strict=True)]

    def loss_terms(self, model: nn.Module, seq: MixedBatch, x0: Tensor, t: Tensor,
                   ctx: StepContext | None = None) -> dict[str, Tensor]:
        """``L = L_LM + lambda L_flow`` for given sequences, noise ``x0 (B, N, P)`` and
        times ``t (B,)`` (deterministic; :meth:`loss` draws them). With ``ctx`` the text
        tokens are averaged over the global batch (:meth:`StepContext.masked_mean`):
        processes hold different numbers of caption tokens."""
        field = _JointField(model)
        # L_flow = E || v(x_t, t) - (x1 - x0) ||^2, x_t = t x1 + (1 - t) x0 (Lipman et al. 2023)
        flow = cfm_loss(field, seq.patches, x0, path=self.path, t=t, cond={"ids": seq.ids}).loss
        logits = field.logits  # (B, L, V)
        # L_LM = -mean_j log p(ids_{j+1} | ids_<=j) over emitted text tokens (Zhou et al. eq. 1)
        targets = lm_targets(seq.ids).reshape(-1)  # (B L,) -100 = no target
        ce_tok = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets,
                                 ignore_index=-100, reduction="none")  # (B L,)
        valid = targets != -100
        ce = ctx.masked_mean(ce_tok, valid) if ctx is not None else \
            ce_tok.sum() / valid.sum().clamp_min(1)
        return {"loss": ce + self.flow_weight * flow, "ce": ce.detach(), "flow": flow.detach()}

    def loss(self, model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Tensor]:
        """One training step's loss; every random choice goes through ``ctx``."""
        if not isinstance(batch, list | tuple) or len(batch) < 2:
            raise ValueError("TransfusionTask expects batches (images, labels, ...)")
        x1, y = batch[0], torch.as_tensor(batch[1]).long()
        want = (self.channels, self.image_size, self.image_size)
        if x1.ndim != 4 or tuple(x1.shape[1:]) != want:
            raise ValueError(f"TransfusionTask expects images (B, {want[0]}, {want[1]}, "
                             f"{want[2]}), got {tuple(x1.shape)}")
        if y.shape != (x1.shape[0],) or int(y.min()) < 0 or int(y.max()) > 9:
            raise ValueError(f"labels must be (B,) digits in [0, 9], got {tuple(y.shape)}")
        b, dev = x1.shape[0], x1.device
        patches = patchify(x1, self.p)  # (B, N, P)
        first = ctx.bernoulli(self.p_image_first, b)  # (B,) image -> caption order
        drop = ctx.bernoulli(self.p_drop, b) & ~first  # CFG dropout of caption -> image
        tpl = (ctx.rand((b,)) * len(self.vocab.templates)).long()  # (B,) template numbers
        t = ctx.sample_t(self.t_sampler, b, dtype=x1.dtype)  # (B,)
        u = ctx.rand((b,), dtype=x1.dtype)
        limit = ctx.bernoulli(self.p_limit_noise, b) & first  # noise limiting (captioning)
        t = torch.where(limit, self.caption_t_min + (1.0 - self.caption_t_min) * u, t)
        x0 = ctx.randn(patches.shape, dtype=x1.dtype).to(dev)  # (B, N, P)
        seq = build_sequences(self.captions(y.tolist(), tpl.tolist()), patches, first, drop)
        out = self.loss_terms(model, seq, x0, t.to(dev), ctx)
        out["image_first"] = first.float().mean()
        return out

    def _labels_to_captions(self, captions: Any) -> list[list[int]]:
        if isinstance(captions, int):
            captions = torch.arange(captions) % self.num_classes
        if isinstance(captions, Tensor):
            captions = captions.tolist()
        if len(captions) == 0:
            raise ValueError("generate_images needs at least one caption or label")
        return [self.vocab.encode(c if isinstance(c, str) else self.vocab.caption(int(c)))
                for c in captions]

    @torch.no_grad()
    def generate_images(self, model: nn.Module, captions: Any, generator: torch.Generator, *,
                        steps: int | None = None, cfg: float | None = None,
                        solver: str | None = None, batch_size: int = 250,
                        info: dict[str, Any] | None = None) -> Tensor:
        """Images ``(n, C, H, W)`` in ``[-1, 1]`` from captions: strings and / or digit labels
        (template 0: "the digit seven"), or an int ``n`` (labels ``0..9, 0, ...``).

        The prompt ``<bos> caption <boi>`` is followed by the flow loop over all N patch
        slots (any toolkit solver; CFG ``v_u + w (v_c - v_u)`` against ``<bos> <boi>``).
        ``info["nfe"]`` receives the network evaluations.
        """
        from toolkit import guidance
        from toolkit.sampling import sample

        spec = self.sampler
        w = spec.guidance_scale if cfg is None else float(cfg)
        caps = self._labels_to_captions(captions)
        device = next(model.parameters()).device
        n_tok = self.vocab.max_caption_len + self.n_patches + 2
        x0 = torch.randn(len(caps), self.n_patches, self.patch_dim, generator=generator)
        field, out, nfe = _JointField(model), [], 0
        for s in range(0, len(caps), batch_size):
            part = caps[s:s + batch_size]
            ids_c = image_prefix(part, self.n_patches, n_tok).to(device)  # (b, L)
            ids_u = image_prefix([None] * len(part), self.n_patches, n_tok).to(device)
            run: dict[str, Any] = {}
            x = sample(guidance.cfg(field, w, cond={"ids": ids_c}, uncond={"ids": ids_u}),
                       x0[s:s + batch_size].to(device), path=self.path,
                       prediction=self.prediction, solver=solver or spec.solver,
                       steps=steps or spec.steps, grid=spec.grid, info=run, **dict(spec.options))
            nfe += run["nfe"]
            out.append(unpatchify(x, self.p, self.channels, self.image_size).clamp(-1, 1))
        if info is not None:
            info["nfe"] = nfe
        return torch.cat(out)

    def generate(self, model: nn.Module, labels: Any, generator: torch.Generator,
                 **kw: Any) -> Tensor:
        """Alias of :meth:`generate_images` (``toolkit sample`` / recipe tests)."""
        return self.generate_images(model, labels, generator, **kw)

    @torch.no_grad()
    def generate_captions(self, model: nn.Module, images: Tensor, *, max_len: int | None = None,
                          batch_size: int = 250) -> list[str]:
        """Greedy captions of clean images ``(n, C, H, W)``: after ``<bos> <boi> patches
        <eoi>`` take ``argmax`` over words and ``<eos>`` until every row has emitted
        ``<eos>`` or ``max_len`` tokens (default: longest caption + 1)."""
        want = (self.channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(f"generate_captions expects images (n, {want[0]}, {want[1]}, "
                             f"{want[2]}), got {tuple(images.shape)}")
        max_len = self.vocab.max_caption_len + 1 if max_len is None else int(max_len)
        device = next(model.parameters()).device
        allowed = torch.zeros(self.vocab.size, dtype=torch.bool, device=device)
        allowed[len(SPECIALS):] = True
        allowed[EOS] = True
        out: list[str] = []
        for s in range(0, len(images), batch_size):
            patches = patchify(images[s:s + batch_size].to(device), self.p)  # (b, N, P)
            b = patches.shape[0]
            ids = caption_prefix(b, self.n_patches).to(device)  # (b, N + 3)
            done = torch.zeros(b, dtype=torch.bool, device=device)
            for _ in range(max_len):
                logits = model(ids, patches, torch.ones(b, device=device))[0][:, -1]  # (b, V)
                nxt = logits.masked_fill(~allowed, float("-inf")).argmax(-1)  # (b,)
                nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
                ids = torch.cat([ids, nxt[:, None]], dim=1)
                done |= nxt == EOS
                if bool(done.all()):
                    break
            gen = ids[:, self.n_patches + 3:]
            out.extend(self.vocab.decode(row.tolist()) for row in gen)
        return out

    def caption_accuracy(self, model: nn.Module, images: Tensor, labels: Tensor
                         ) -> tuple[float, list[str]]:
        """Fraction of images whose greedy caption names their digit, and the captions."""
        caps = self.generate_captions(model, images)
        hits = [self.vocab.parse_digit(c) == int(y) for c, y in zip(caps, labels, strict=True)]
        return sum(hits) / max(1, len(hits)), caps

    def validate(self, model: nn.Module, step: int, out_dir: Path,
                 generator: torch.Generator) -> dict[str, float]:
        """``out_dir/step_N.png``: images from "the digit ..." captions, one column per digit;
        logs the caption accuracy on the held-out images."""
        from toolkit.train.logging import save_image_grid

        labels = torch.arange(self.num_classes).repeat(self.val_per_class)
        x = self.generate_images(model, labels, generator)
        save_image_grid(x, out_dir / f"step_{step:08d}.png", nrow=self.num_classes)
        if self.heldout is None or len(self.heldout[0]) == 0:
            return {}
        acc, _ = self.caption_accuracy(model, *self.heldout)
        return {"val/caption_accuracy": acc}
