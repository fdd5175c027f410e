"""Transfusion-style shared transformer over mixed text / image-patch sequences.

Transfusion (Zhou et al. 2024, "Transfusion: Predict the Next Token and Diffuse Images with
One Multi-Modal Model") trains *one* transformer on sequences that mix discrete text tokens
and continuous image patches: next-token cross-entropy on text and a diffusion / flow loss
on the patches (sec. 3). This module holds the pieces that do not depend on training:

- :class:`CaptionVocab`: a word-level vocabulary of MNIST captions ("the digit seven",
  "a handwritten seven", "an image of the digit 7", ...) with the special tokens
  ``<pad> <bos> <eos> <boi> <eoi>`` and ``<img>``, a placeholder that marks the sequence
  slots filled by image patches;
- :func:`patchify` / :func:`unpatchify`: ``(B, C, H, W) <-> (B, N, C p p)`` row-major patches;
- :func:`build_sequences`: the two orders of sec. 3 / 4.1, caption -> image
  ``<bos> caption <boi> patches <eoi> <eos>`` and image -> caption
  ``<bos> <boi> patches <eoi> caption <eos>``; :func:`image_prefix` / :func:`caption_prefix`
  are the generation prompts;
- :func:`transfusion_mask`: causal attention over the whole sequence plus bidirectional
  attention among the patches of each image (sec. 3.2, fig. 4);
- :class:`TransfusionNet`: token embedding and a linear patch projection in (sec. 3.2,
  "linear patchification"), with a timestep embedding added to every patch vector; one
  stack of AdaLN transformer blocks (:class:`~toolkit.nn.layers.TransformerBlock`, per-token
  time, text tokens at the clean time t = 1); an LM head and a patch (velocity) head out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from toolkit.nn.layers import (
    FinalLayer,
    TimestepEmbedding,
    TransformerBlock,
    init_transformer_weights,
    sincos_1d,
    sincos_2d,
)

__all__ = ["PAD", "BOS", "EOS", "BOI", "EOI", "IMG", "SPECIALS", "DIGIT_WORDS", "TEMPLATES",
           "CaptionVocab", "MixedBatch", "patchify", "unpatchify", "build_sequences",
           "image_prefix", "caption_prefix", "lm_targets", "image_index", "transfusion_mask",
           "TransfusionNet"]

SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<img>")
PAD, BOS, EOS, BOI, EOI, IMG = range(len(SPECIALS))  # fixed ids of the special tokens
DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven",
                                "eight", "nine")
#: caption templates; ``{word}`` is the digit's name, ``{num}`` its numeral
TEMPLATES: tuple[str, ...] = ("the digit {word}", "a handwritten {word}",
                              "an image of the digit {num}", "a drawing of the number {word}",
                              "the number {num}")


class CaptionVocab:
    """Word-level vocabulary of the caption templates (special tokens first, ids 0..5).

    Args:
        templates: caption templates with ``{word}`` / ``{num}`` placeholders.
    """

    def __init__(self, templates: Sequence[str] = TEMPLATES) -> None:
        if not templates:
            raise ValueError("CaptionVocab needs at least one caption template")
        self.templates = tuple(templates)
        words = {w for tpl in self.templates for w in tpl.split() if "{" not in w}
        words |= set(DIGIT_WORDS) | {str(d) for d in range(10)}
        self.itos: tuple[str, ...] = SPECIALS + tuple(sorted(words))
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    @property
    def size(self) -> int:
        """Number of token ids V."""
        return len(self.itos)

    @property
    def max_caption_len(self) -> int:
        """Longest caption in words."""
        return max(len(tpl.split()) for tpl in self.templates)

    def caption(self, label: int, template: int = 0) -> str:
        """Caption of digit ``label`` with template number ``template``."""
        if not 0 <= int(label) < 10 or not 0 <= int(template) < len(self.templates):
            raise ValueError(f"label must be in [0, 10) and template in [0, "
                             f"{len(self.templates)}), got {label}, {template}")
        return self.templates[int(template)].format(word=DIGIT_WORDS[int(label)], num=int(label))

    def encode(self, text: str) -> list[int]:
        """Word ids of a caption (no special tokens); unknown words are refused."""
        words = text.lower().split()
        bad = [w for w in words if w not in self.stoi or self.stoi[w] < len(SPECIALS)]
        if bad:
            raise ValueError(f"caption {text!r} has words outside the vocabulary: {bad}; "
                             f"known words: {list(self.itos[len(SPECIALS):])}")
        return [self.stoi[w] for w in words]

    def decode(self, ids: Sequence[int]) -> str:
        """Words up to the first ``<eos>`` (other special tokens skipped)."""
        out = []
        for i in ids:
            if int(i) == EOS:
                break
            if int(i) >= len(SPECIALS):
                out.append(self.itos[int(i)])
        return " ".join(out)

    @staticmethod
    def parse_digit(text: str) -> int:
        """The digit a caption names (a digit word or numeral); -1 if none or several."""
        found = {DIGIT_WORDS.index(w) if w in DIGIT_WORDS else int(w)
                 for w in text.lower().split() if w in DIGIT_WORDS or (w.isdigit() and len(w) == 1)}
        return found.pop() if len(found) == 1 else -1


def patchify(images: Tensor, p: int) -> Tensor:
    """``(B, C, H, W) -> (B, (H/p)(W/p), C p p)``, patches in row-major order."""
    if images.ndim != 4 or images.shape[-1] % p or images.shape[-2] % p:
        raise ValueError(f"patchify expects (B, C, H, W) with H, W divisible by p={p}, got "
                         f"{tuple(images.shape)}")
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # (B,h,w,C,p,p)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(patches: Tensor, p: int, channels: int, size: int) -> Tensor:
    """Inverse of :func:`patchify` for square ``size x size`` images: ``(B, C, H, W)``."""
    g = size // p
    if patches.ndim != 3 or patches.shape[1:] != (g * g, channels * p * p):
        raise ValueError(f"unpatchify expects (B, {g * g}, {channels * p * p}), got "
                         f"{tuple(patches.shape)}")
    x = patches.reshape(-1, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5)  # (B,C,g,p,g,p)
    return x.reshape(-1, channels, size, size)


@dataclass
class MixedBatch:
    """A batch of mixed sequences: ``ids (B, L)`` (``<img>`` at patch slots, right-padded
    with ``<pad>``), ``patches (B, N, P)``, ``img_start (B,)`` (position of the first patch)
    and ``image_first (B,)`` bool (image -> caption order)."""

    ids: Tensor
    patches: Tensor
    img_start: Tensor
    image_first: Tensor


def _pad_rows(rows: list[list[int]], length: int | None) -> Tensor:
    n = max(len(r) for r in rows) if length is None else int(length)
    if any(len(r) > n for r in rows):
        raise ValueError(f"a sequence of {max(len(r) for r in rows)} tokens does not fit the "
                         f"requested length {n}")
    return torch.tensor([r + [PAD] * (n - len(r)) for r in rows], dtype=torch.long)


def build_sequences(captions: Sequence[Sequence[int]], patches: Tensor,
                    image_first: Tensor | Sequence[bool], drop_caption: Tensor | None = None,
                    length: int | None = None) -> MixedBatch:
    """Lay out caption / image pairs in either order (Transfusion sec. 4.1).

    caption -> image: ``<bos> caption <boi> <img>*N <eoi> <eos>``;
    image -> caption: ``<bos> <boi> <img>*N <eoi> caption <eos>``.
    ``drop_caption (B,)`` removes the caption of caption -> image rows (classifier-free
    guidance, Ho & Salimans 2022: ``<bos> <boi> ... <eoi> <eos>``); it is ignored for
    image -> caption rows, whose caption is the target.

    Args:
        captions: B word-id lists. patches: ``(B, N, P)``. image_first: ``(B,)`` bools.
        drop_caption: ``(B,)`` bools or None. length: pad to this length (default: longest).
    """
    b = len(captions)
    if patches.ndim != 3 or patches.shape[0] != b:
        raise ValueError(f"patches must be (B={b}, N, P), got {tuple(patches.shape)}")
    first = torch.as_tensor(image_first, dtype=torch.bool).reshape(-1)
    drop = torch.zeros(b, dtype=torch.bool) if drop_caption is None else \
        torch.as_tensor(drop_caption, dtype=torch.bool).reshape(-1).cpu()
    if first.shape != (b,) or drop.shape != (b,):
        raise ValueError(f"image_first and drop_caption must be ({b},)")
    img = [IMG] * patches.shape[1]
    rows, starts = [], []
    for cap, f, d in zip(captions, first.tolist(), drop.tolist(), strict=True):
        cap = [int(i) for i in cap]
        if f:
            rows.append([BOS, BOI, *img, EOI, *cap, EOS])
            starts.append(2)
        else:
            cap = [] if d else cap
            rows.append([BOS, *cap, BOI, *img, EOI, EOS])
            starts.append(2 + len(cap))
    return MixedBatch(_pad_rows(rows, length).to(patches.device), patches,
                      torch.tensor(starts, device=patches.device), first.to(patches.device))


def image_prefix(captions: Sequence[Sequence[int] | None], n_patches: int,
                 length: int | None = None) -> Tensor:
    """Prompts ``<bos> caption <boi> <img>*N`` (``None``: no caption) right-padded to one
    length: ``(B, L)``. The flow loop fills the ``<img>`` slots."""
    rows = [[BOS, *([] if c is None else [int(i) for i in c]), BOI, *[IMG] * n_patches]
            for c in captions]
    return _pad_rows(rows, length)


def caption_prefix(batch: int, n_patches: int) -> Tensor:
    """Captioning prompts ``<bos> <boi> <img>*N <eoi>``: ``(B, N + 3)``."""
    return torch.tensor([BOS, BOI, *[IMG] * n_patches, EOI]).expand(batch, -1).clone()


def lm_targets(ids: Tensor) -> Tensor:
    """Next-token targets ``(B, L)``: ``ids[:, j + 1]`` where that is a text token the LM
    emits (caption words, ``<boi>``, ``<eos>``), else -100 (ignored): no loss on patch slots,
    on ``<eoi>`` (appended after the N patches) or on padding."""
    nxt = ids[:, 1:]
    keep = (nxt != PAD) & (nxt != IMG) & (nxt != EOI) & (nxt != BOS)
    tgt = torch.where(keep, nxt, torch.full_like(nxt, -100))
    return torch.cat([tgt, torch.full_like(ids[:, :1], -100)], dim=1)


def image_index(ids: Tensor) -> Tensor:
    """``(B, L)`` long: k for tokens in the k-th image span (runs of ``<img>``), -1 for text."""
    is_img = ids == IMG
    begins = is_img & ~torch.cat([torch.zeros_like(is_img[:, :1]), is_img[:, :-1]], dim=1)
    k = begins.long().cumsum(1) - 1
    return torch.where(is_img, k, torch.full_like(k, -1))


def transfusion_mask(img_index: Tensor) -> Tensor:
    """Transfusion attention mask (Zhou et al. 2024, sec. 3.2, fig. 4): ``(B, L, L)`` bool,
    True where query i may attend key j.

    ``M_ij = [j <= i] or [img(i) = img(j) >= 0]``: causal over everything, plus
    bidirectional among the patches of one image (text after an image sees all of it;
    patches never see later text or later images).

    Args:
        img_index: ``(B, L)`` long, the image a position belongs to or -1 (:func:`image_index`).
    """
    if img_index.ndim != 2:
        raise ValueError(f"transfusion_mask expects (B, L) image indices, got "
                         f"{tuple(img_index.shape)}")
    n = img_index.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=img_index.device).tril()  # (L, L)
    same = (img_index[:, :, None] == img_index[:, None, :]) & (img_index[:, :, None] >= 0)
    return causal[None] | same  # (B, L, L)


class TransfusionNet(nn.Module):
    """``forward(ids (B, L), patches (B, N, P), t (B,)) -> (logits (B, L, V), v (B, N, P))``.

    Each sequence holds exactly one image: a ``<boi>`` followed by ``N`` ``<img>`` slots that
    receive the (noisy) patches ``x_t``. Inputs ``h = E[ids]`` at text positions and
    ``h = W_in x_t + e_pos2d + emb(t)`` at patch slots (Transfusion adds the timestep
    embedding to every patch vector, sec. 3.2), plus a learned 1-D position embedding (at
    most ``max_len`` positions). Blocks are modulated per token by ``emb(t_i)`` with
    ``t_i = 1`` (clean) for text. ``logits[:, j]`` predict token ``j + 1``; ``v`` is the
    velocity of the flow at the patch slots.

    Args:
        vocab_size: V (default: :class:`CaptionVocab`'s). patch_dim: P = C p p.
        n_patches: N patches per image (a square grid). hidden_dim / depth / num_heads /
        mlp_ratio: transformer size (hidden_dim % 4 == 0 for the
        2-D sin-cos patch position). max_len: positional range. qk_norm: RMS q/k norm.
        zero_init: AdaLN-Zero gates and a zero patch head.
    """

    def __init__(self, vocab_size: int | None = None, patch_dim: int = 64,
                 n_patches: int = 16, hidden_dim: int = 128, depth: int = 6,
                 num_heads: int = 4, mlp_ratio: float = 4.0, max_len: int = 32,
                 qk_norm: bool = False, zero_init: bool = True) -> None:
        super().__init__()
        self.vocab_size = int(vocab_size or CaptionVocab().size)
        g = int(round(n_patches ** 0.5))
        if g * g != n_patches or min(patch_dim, hidden_dim, depth, num_heads, max_len) < 1:
            raise ValueError(f"TransfusionNet: n_patches must be a square and sizes >= 1, got "
                             f"n_patches={n_patches}, patch_dim={patch_dim}")
        if self.vocab_size <= IMG:
            raise ValueError(f"TransfusionNet: vocab_size must exceed {IMG}, got {vocab_size}")
        self.patch_dim, self.n_patches, self.max_len = int(patch_dim), int(n_patches), int(max_len)
        d = self.hidden_dim = int(hidden_dim)
        self.tok_embed = nn.Embedding(self.vocab_size, d)
        self.patch_in = nn.Linear(self.patch_dim, d)
        self.pos_embed = nn.Parameter(sincos_1d(self.max_len, d)[None])  # (1, max_len, D)
        self.register_buffer("patch_pos", sincos_2d(g, g, d)[None], persistent=False)  # (1,N,D)
        self.t_embed = TimestepEmbedding(d)
        self.blocks = nn.ModuleList(TransformerBlock(d, num_heads, mlp_ratio, qk_norm=qk_norm,
                                                     zero_init=zero_init) for _ in range(depth))
        self.lm_norm = nn.LayerNorm(d, eps=1e-6)
        self.lm_head = nn.Linear(d, self.vocab_size)
        self.patch_out = FinalLayer(d, self.patch_dim, zero_init)
        init_transformer_weights(self, zero_init)
        nn.init.normal_(self.tok_embed.weight, std=0.02)

    def image_start(self, ids: Tensor) -> Tensor:
        """Position ``(B,)`` of each row's first patch slot; refuses a ``<boi>`` that is not
        followed by ``N`` ``<img>`` slots, or ``<img>`` slots outside that span."""
        b, n = ids.shape
        nb = (ids == BOI).sum(1)  # (B,)
        if (nb != 1).any():
            r = int((nb != 1).nonzero()[0])
            raise ValueError(f"TransfusionNet: row {r} has {int(nb[r])} begin-of-image tokens; "
                             "each sequence must hold exactly one <boi> followed by an image")
        start = (ids == BOI).long().argmax(1) + 1  # (B,)
        idx = start[:, None] + torch.arange(self.n_patches, device=ids.device)  # (B, N)
        ok = (idx < n).all(1)
        ok &= (ids.gather(1, idx.clamp(max=n - 1)) == IMG).all(1)
        ok &= (ids == IMG).sum(1) == self.n_patches
        if not ok.all():
            r = int((~ok).nonzero()[0])
            raise ValueError(f"TransfusionNet: the begin-of-image token at position "
                             f"{int(start[r]) - 1} of row {r} is not followed by an image: "
                             f"expected exactly {self.n_patches} <img> patch slots after it")
        return start

    def forward(self, ids: Tensor, patches: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Logits ``(B, L, V)`` and patch velocities ``(B, N, P)`` (see the class docstring)."""
        if ids.ndim != 2 or ids.dtype != torch.long:
            raise ValueError(f"TransfusionNet: ids must be (B, L) long, got {tuple(ids.shape)} "
                             f"{ids.dtype}")
        b, n = ids.shape
        if n > self.max_len:
            raise ValueError(f"TransfusionNet: sequence length {n} exceeds the positional range "
                             f"max_len={self.max_len}")
        if patches.shape != (b, self.n_patches, self.patch_dim):
            raise ValueError(f"TransfusionNet: patches must be (B={b}, N={self.n_patches}, "
                             f"P={self.patch_dim}) (patch dim = channels * p * p), got "
                             f"{tuple(patches.shape)}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise ValueError(f"TransfusionNet: token ids must be in [0, {self.vocab_size})")
        dev, dt = self.patch_in.weight.device, self.patch_in.weight.dtype
        ids = ids.to(dev)
        t = torch.as_tensor(t, device=dev, dtype=dt)
        t = t.expand(b) if t.ndim == 0 else t.reshape(b)  # (B,)
        start = self.image_start(ids)  # (B,)
        idx = (start[:, None] + torch.arange(self.n_patches, device=dev))[..., None]  # (B,N,1)
        slot = ids == IMG  # (B, L)
        t_tok = torch.where(slot, t[:, None], torch.ones_like(t)[:, None])  # (B, L): text t=1
        c = self.t_embed(t_tok)  # (B, L, D)
        hp = self.patch_in(patches.to(dev, dt)) + self.patch_pos.to(dt)  # (B, N, D)
        h = self.tok_embed(ids).scatter(1, idx.expand(-1, -1, self.hidden_dim), hp)  # (B,L,D)
        h = h + self.pos_embed[:, :n] + torch.where(slot[..., None], c, torch.zeros_like(c))
        mask = transfusion_mask(image_index(ids))  # (B, L, L)
        for block in self.blocks:
            h = block(h, c, attn_mask=mask)
        logits = self.lm_head(self.lm_norm(h))  # (B, L, V)
        g = idx.expand(-1, -1, self.hidden_dim)
        v = self.patch_out(h.gather(1, g), c.gather(1, g))  # (B, N, P)
        return logits, v.to(patches.dtype)
