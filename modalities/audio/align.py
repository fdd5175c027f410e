"""Monotonic alignment search, length regulation and the alignment losses of Matcha-TTS.

* :func:`gaussian_log_likelihood`: ``log N(x_j; mu_i, I)`` for every token ``i`` and frame
  ``j`` (Glow-TTS, Kim et al. 2020, sec. 3.2, eq. 3 with unit variance as in Matcha-TTS,
  Mehta et al. 2024, sec. 3.2).
* :func:`monotonic_alignment_search`: the most likely monotonic, surjective alignment of
  frames to tokens by dynamic programming (Glow-TTS, sec. 3.2, eq. 8 / Algorithm 1),
  vectorised over the batch and the text axis (one loop over frames).
* :func:`length_regulate`: token features expanded to frames by integer durations
  (FastSpeech, Ren et al. 2019, sec. 3.2).
* :func:`prior_loss` (Matcha-TTS, sec. 3.2: the encoder loss of Glow-TTS) and
  :func:`duration_loss` (MSE on ``log(1 + d)``, durations from MAS).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def sequence_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """``(B,)`` lengths -> ``(B, max_len)`` bool mask, True on valid positions."""
    n = int(lengths.max()) if max_len is None else int(max_len)
    return torch.arange(n, device=lengths.device)[None] < lengths[:, None]


def gaussian_log_likelihood(mu: Tensor, x: Tensor) -> Tensor:
    """``log N(x_j; mu_i, I)`` per token and frame: ``(B, N, T)``.

    ``-0.5 ||x_j - mu_i||^2 - D/2 log(2 pi)`` expanded as ``-0.5 |x|^2 + mu.x - 0.5 |mu|^2``
    (Glow-TTS, Kim et al. 2020, sec. 3.2), for ``mu (B, D, N)`` and ``x (B, D, T)``.
    """
    d = mu.shape[1]
    const = -0.5 * d * math.log(2 * math.pi)
    xx = -0.5 * (x * x).sum(1)[:, None, :]  # (B, 1, T)
    mm = -0.5 * (mu * mu).sum(1)[:, :, None]  # (B, N, 1)
    return torch.einsum("bdn,bdt->bnt", mu, x) + xx + mm + const  # (B, N, T)


def monotonic_alignment_search(log_p: Tensor | np.ndarray, text_lengths: Tensor | np.ndarray,
                               mel_lengths: Tensor | np.ndarray) -> Tensor:
    """Most likely monotonic alignment ``A (B, N, T)`` (0/1) of frames to tokens.

    Maximises ``sum_j log_p[A(j), j]`` over maps ``A: frames -> tokens`` with ``A(0) = 0``,
    ``A(T - 1) = N - 1`` and ``A(j + 1) - A(j)`` in ``{0, 1}`` (each token gets >= 1 frame).
    Dynamic programme (Glow-TTS, Kim et al. 2020, sec. 3.2 / Algorithm 1):
    ``Q[i, j] = log_p[i, j] + max(Q[i, j - 1], Q[i - 1, j - 1])``, then backtracking from
    ``(N - 1, T - 1)``. Runs in float64 numpy, vectorised over batch and tokens.

    Args:
        log_p: ``(B, N, T)`` scores (e.g. :func:`gaussian_log_likelihood`).
        text_lengths: ``(B,)`` valid tokens. mel_lengths: ``(B,)`` valid frames (>= tokens).
    """
    dev = log_p.device if isinstance(log_p, Tensor) else torch.device("cpu")
    lp = (log_p.detach().cpu().double().numpy() if isinstance(log_p, Tensor)
          else np.asarray(log_p, dtype=np.float64))
    nt = np.asarray(torch.as_tensor(text_lengths).cpu(), dtype=np.int64)
    nm = np.asarray(torch.as_tensor(mel_lengths).cpu(), dtype=np.int64)
    b, n, t = lp.shape
    if nt.shape != (b,) or nm.shape != (b,) or (nt < 1).any() or (nt > n).any() or (
            nm > t).any():
        raise ValueError(f"lengths must be (B,) = ({b},) within (N, T) = ({n}, {t}), got "
                         f"text {nt.tolist()}, mel {nm.tolist()}")
    if (nm < nt).any():
        raise ValueError(f"monotonic alignment needs at least one frame per token; got "
                         f"{nm.tolist()} frames for {nt.tolist()} tokens")
    neg = -np.inf
    q = np.full((b, n, t), neg)  # Q[b, i, j]: best score of a path ending at (i, j)
    q[:, 0, 0] = lp[:, 0, 0]
    for j in range(1, t):
        prev = q[:, :, j - 1]  # (B, N)
        down = np.concatenate([np.full((b, 1), neg), prev[:, :-1]], axis=1)  # Q[i-1, j-1]
        q[:, :, j] = lp[:, :, j] + np.maximum(prev, down)
    path = np.zeros((b, n, t), dtype=np.float32)
    idx = nt - 1  # (B,) current token, start at (N_b - 1, T_b - 1)
    rows = np.arange(b)
    for j in range(t - 1, -1, -1):
        active = j < nm  # frames past a sample's length are padding
        path[rows[active], idx[active], j] = 1.0
        if j == 0:
            break
        can_move = active & (idx > 0)
        stay = q[rows, idx, j - 1]
        move = q[rows, np.maximum(idx - 1, 0), j - 1]
        go = can_move & ((idx == j) | (move > stay))  # i == j: must step down to stay valid
        idx = idx - go.astype(np.int64)
    return torch.from_numpy(path).to(dev)


def durations_to_alignment(durations: Tensor, max_len: int | None = None) -> Tensor:
    """Integer durations ``(B, N)`` -> hard alignment ``(B, N, T)``: frame ``j`` belongs to
    token ``i`` iff ``cum[i - 1] <= j < cum[i]`` (``cum`` the cumulative durations)."""
    d = durations.long().clamp_min(0)
    cum = d.cumsum(1)  # (B, N)
    t = int(cum[:, -1].max()) if max_len is None else int(max_len)
    frames = torch.arange(t, device=d.device)[None, None]  # (1, 1, T)
    return ((frames >= (cum - d)[..., None]) & (frames < cum[..., None])).float()


def length_regulate(h: Tensor, durations: Tensor, max_len: int | None = None
                    ) -> tuple[Tensor, Tensor]:
    """Repeat token features by their durations (FastSpeech, Ren et al. 2019, sec. 3.2).

    Args:
        h: ``(B, N, D)`` token features. durations: ``(B, N)`` integer frames per token
            (0 at padded tokens). max_len: output length (default: the longest total).

    Returns:
        ``(frames (B, T, D), mel_lengths (B,))``; frames past a sample's length are 0.
    """
    attn = durations_to_alignment(durations, max_len)  # (B, N, T)
    return torch.einsum("bnt,bnd->btd", attn.to(h.dtype), h), durations.long().sum(1)


def durations_from_log(log_dur: Tensor, mask: Tensor, length_scale: float = 1.0) -> Tensor:
    """Predicted ``log(1 + d)`` ``(B, N)`` -> integer durations ``(B, N)``.

    ``d = length_scale * max(exp(log_dur) - 1, 0)``; rounding is done on the cumulative sum
    (``round(cum d) - round(cum d_prev)``), so the total is the rounded total of the real
    durations (per-token ceil would add about half a frame per token). At least 1 frame.
    """
    d = (torch.expm1(log_dur).clamp_min(0.0) * float(length_scale)) * mask  # (B, N)
    cum = torch.round(d.cumsum(1))
    dur = torch.diff(cum, dim=1, prepend=torch.zeros_like(cum[:, :1])).long()
    total = dur.sum(1)
    if bool((total < 1).any()):  # degenerate (untrained) predictor: one frame per token
        dur = torch.where((total < 1)[:, None], mask.long(), dur)
    return dur * mask.long()


def prior_loss(mu_y: Tensor, x1: Tensor, mask: Tensor) -> Tensor:
    """``0.5 ||x1 - mu_aligned||^2`` averaged over valid frames and mel bins: the Gaussian
    NLL of the data under the aligned text prior, without its constant ``0.5 log 2 pi``
    (Matcha-TTS, Mehta et al. 2024, sec. 3.2; Glow-TTS eq. 3).

    Args: mu_y / x1: ``(B, D, T)``. mask: ``(B, T)`` valid frames.
    """
    m = mask[:, None].to(x1.dtype)  # (B, 1, T)
    return 0.5 * ((x1 - mu_y) ** 2 * m).sum() / (m.sum() * x1.shape[1]).clamp_min(1.0)


def duration_loss(log_dur_pred: Tensor, durations: Tensor, mask: Tensor) -> Tensor:
    """``mean (log_dur_pred - log(1 + d))^2`` over valid tokens, ``d`` the MAS durations
    (Matcha-TTS, Mehta et al. 2024, sec. 3.2; Glow-TTS sec. 3.3 duration predictor)."""
    target = torch.log1p(durations.to(log_dur_pred.dtype))  # (B, N)
    m = mask.to(log_dur_pred.dtype)
    return ((log_dur_pred - target) ** 2 * m).sum() / m.sum().clamp_min(1.0)


__all__ = ["duration_loss", "durations_from_log", "durations_to_alignment",
           "gaussian_log_likelihood", "length_regulate", "monotonic_alignment_search",
           "prior_loss", "sequence_mask"]
