"""Objective text-to-speech metrics against a ground-truth recording of the same text and
speaker: DTW, mel-cepstral distortion, a YIN pitch tracker and F0 errors, phoneme error rate
and duration errors. Pure numpy (inputs may be torch tensors); no training involved.

* :func:`dtw`: dynamic time warping (Sakoe & Chiba, 1978) with steps (1,1), (1,0), (0,1).
* :func:`mel_cepstrum` / :func:`mcd_dtw`: mel-cepstra ``c_1..c_K`` from a natural-log mel
  magnitude by a DCT, and ``MCD = 10 sqrt(2) / ln 10 * sqrt(sum_k (c_k - c'_k)^2)`` dB per
  frame pair, averaged along the DTW path (Kubichek, 1993).
* :func:`yin_f0`: YIN (de Cheveigne & Kawahara, 2002) on the mel front-end's frames;
  :func:`f0_errors` compares two F0 tracks along a frame path (RMSE in Hz and cents, V/UV).
* :func:`edit_distance` / :func:`phoneme_error_rate`: Levenshtein (1966) distance over symbols.
* :func:`duration_errors`: total-duration relative error and per-phone errors of reference
  phone durations mapped through the DTW path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MCD_CONST = 10.0 * math.sqrt(2.0) / math.log(10.0)  # dB per unit cepstral distance (Kubichek)


def _np(x) -> np.ndarray:
    """A float64 numpy copy of a tensor or array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def dtw(cost: np.ndarray) -> tuple[float, np.ndarray]:
    """Dynamic time warping of a local cost matrix ``(N, M)``.

    ``D[i, j] = C[i, j] + min(D[i-1, j-1], D[i-1, j], D[i, j-1])`` with ``D[0, 0] = C[0, 0]``
    (Sakoe & Chiba, 1978, symmetric steps without slope weights); ties prefer the diagonal.
    Computed one anti-diagonal at a time (each depends only on the previous two).

    Returns:
        ``(D[N-1, M-1], path)``: the accumulated cost and the path ``(P, 2)`` of ``(i, j)``
        pairs from ``(0, 0)`` to ``(N-1, M-1)``, both indices non-decreasing.
    """
    c = _np(cost)
    if c.ndim != 2 or min(c.shape) < 1:
        raise ValueError(f"dtw needs a non-empty cost matrix (N, M), got shape {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("dtw cost matrix has non-finite entries")
    n, m = c.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    move = np.zeros((n, m), dtype=np.int8)  # 0 diagonal, 1 from (i-1, j), 2 from (i, j-1)
    for k in range(n + m - 1):  # anti-diagonal i + j = k
        i = np.arange(max(0, k - m + 1), min(n, k + 1))
        j = k - i
        cand = np.stack([acc[i, j], acc[i, j + 1], acc[i + 1, j]])  # (3, len) in padded coords
        best = cand.argmin(0)
        acc[i + 1, j + 1] = c[i, j] + cand[best, np.arange(len(i))]
        move[i, j] = best
    path = [(n - 1, m - 1)]
    i, j = n - 1, m - 1
    while i > 0 or j > 0:
        step = move[i, j]
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
        path.append((i, j))
    return float(acc[n, m]), np.asarray(path[::-1], dtype=np.int64)


def mel_cepstrum(log_mel, n_coeffs: int = 24) -> np.ndarray:
    """Mel-cepstra ``(T, K)`` (``c_1..c_K``, energy term ``c_0`` dropped) of a natural-log
    mel magnitude ``(n_mels, T)``.

    ``c_k = (1 / N) sum_m ln M(m) cos(pi k (m + 1/2) / N)``: the DCT-II scaled so that
    ``ln M(m) = c_0 + 2 sum_k c_k cos(pi k (m + 1/2) / N)`` (cosine-series cepstrum on the mel
    axis, Davis & Mermelstein, 1980).
    """
    x = _np(log_mel)
    if x.ndim != 2 or not 1 <= n_coeffs < x.shape[0]:
        raise ValueError(f"need log-mels (n_mels, T) and 1 <= n_coeffs < n_mels, got shape "
                         f"{x.shape}, n_coeffs={n_coeffs}")
    nm = x.shape[0]
    k = np.arange(1, n_coeffs + 1)[:, None]
    basis = np.cos(np.pi * k * (np.arange(nm)[None] + 0.5) / nm) / nm  # (K, n_mels)
    return (basis @ x).T  # (T, K)


def speech_bounds(log_mel, top_db: float = 40.0) -> tuple[int, int]:
    """``[start, stop)`` frames between the first and last frame whose energy is within
    ``top_db`` dB of the loudest frame (leading / trailing silence trimmed)."""
    x = _np(log_mel)
    energy = np.log(np.exp(x).sum(0) + 1e-12)  # (T,) natural log of the frame's mel sum
    loud = np.nonzero(energy >= energy.max() - top_db * math.log(10.0) / 20.0)[0]
    return int(loud[0]), int(loud[-1]) + 1


def mcd_dtw(ref_mel, gen_mel, n_coeffs: int = 24, trim_db: float | None = 40.0
            ) -> tuple[float, np.ndarray]:
    """Mel-cepstral distortion (dB) between two log-mels ``(n_mels, T_ref)`` and ``(n_mels,
    T_gen)``, DTW-aligned on the Euclidean cepstral distance.

    ``MCD = mean over the path of 10 sqrt(2) / ln 10 * ||c_ref(i) - c_gen(j)||`` over
    ``c_1..c_K`` (Kubichek, 1993). With ``trim_db`` leading and trailing silence is dropped
    first (:func:`speech_bounds`).

    Returns:
        ``(mcd, path)``; the path ``(P, 2)`` indexes the *untrimmed* frames of both inputs.
    """
    a, b = _np(ref_mel), _np(gen_mel)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"mcd_dtw needs two log-mels (n_mels, T) with the same n_mels, got "
                         f"{a.shape} and {b.shape}")
    (s0, e0), (s1, e1) = ((0, a.shape[1]), (0, b.shape[1])) if trim_db is None else (
        speech_bounds(a, trim_db), speech_bounds(b, trim_db))
    ca, cb = mel_cepstrum(a[:, s0:e0], n_coeffs), mel_cepstrum(b[:, s1:e1], n_coeffs)
    dist = np.sqrt(((ca[:, None, :] - cb[None, :, :]) ** 2).sum(-1))  # (Ta, Tb)
    _, path = dtw(dist)
    mcd = MCD_CONST * float(dist[path[:, 0], path[:, 1]].mean())
    return mcd, path + np.array([s0, s1])


def yin_f0(wave, sample_rate: int, hop_length: int = 256, frame_offset: int = -128,
           n_frames: int | None = None, window: int = 512, fmin: float = 65.0,
           fmax: float = 500.0, threshold: float = 0.3, silence_db: float = 45.0
           ) -> tuple[np.ndarray, np.ndarray]:
    """F0 track by YIN (de Cheveigne & Kawahara, 2002), frames aligned with a mel front-end.

    Frame ``t`` integrates ``window`` samples from ``t * hop + frame_offset``, zero-padded
    outside (the default ``-128`` centres a 512-sample window on HiFi-GAN mel frame ``t``,
    whose 1024 samples start at ``t * hop - 384``). The defaults (23 ms window, threshold
    0.3) voice about 80% of the frames ``librosa.pyin`` voices on the speech corpus, with
    under 2% of the common frames differing by more than 20%.
    Difference function ``d(tau) = sum_j (x_j - x_{j+tau})^2`` (via FFT autocorrelation),
    cumulative-mean-normalised ``d'(tau) = d(tau) tau / sum_{k<=tau} d(k)`` (eq. 8); the
    period is the first local minimum of ``d'`` under ``threshold`` (step 4), refined by
    parabolic interpolation (step 5). Frames with no such dip, or more than ``silence_db``
    below the loudest frame, are unvoiced (F0 = 0).

    Returns:
        ``(f0 (T,) Hz, voiced (T,) bool)``.
    """
    x = _np(wave).reshape(-1)
    if not 0 < fmin < fmax < sample_rate / 2:
        raise ValueError(f"need 0 < fmin < fmax < sample_rate / 2, got {fmin}, {fmax}")
    t_min, t_max = int(sample_rate / fmax), int(math.ceil(sample_rate / fmin)) + 1
    if n_frames is None:
        n_frames = max(1, len(x) // hop_length)
    span = window + t_max + 1
    left = max(0, -frame_offset)
    right = max(0, (n_frames - 1) * hop_length + frame_offset + span - len(x))
    xp = np.pad(x, (left, right))
    starts = np.arange(n_frames) * hop_length + frame_offset + left
    frames = xp[starts[:, None] + np.arange(span)[None]]  # (T, span)
    nfft = 1 << int(math.ceil(math.log2(span + window)))
    spec_a = np.fft.rfft(frames[:, :window], nfft)
    spec_b = np.fft.rfft(frames, nfft)
    r = np.fft.irfft(np.conj(spec_a) * spec_b, nfft)[:, :t_max + 1]  # (T, t_max+1) r(tau)
    cs = np.concatenate([np.zeros((n_frames, 1)), np.cumsum(frames ** 2, 1)], 1)
    e0 = cs[:, window][:, None]  # energy of x_0..x_{W-1}
    tau = np.arange(t_max + 1)
    e_tau = cs[:, tau + window] - cs[:, tau]  # energy of x_tau..x_{tau+W-1}
    d = np.maximum(e0 + e_tau - 2.0 * r, 0.0)  # (T, t_max+1)
    cum = np.cumsum(d[:, 1:], 1)
    dn = np.ones_like(d)
    dn[:, 1:] = d[:, 1:] * tau[1:] / np.maximum(cum, 1e-12)  # eq. 8
    f0 = np.zeros(n_frames)
    below = dn[:, t_min:t_max] < threshold  # (T, lags)
    has = below.any(1)
    for t in np.nonzero(has)[0]:
        k = t_min + int(np.argmax(below[t]))
        while k + 1 < t_max and dn[t, k + 1] < dn[t, k]:
            k += 1  # descend to the local minimum of the dip
        a, b, c = dn[t, k - 1], dn[t, k], dn[t, k + 1]
        den = a - 2.0 * b + c
        shift = 0.5 * (a - c) / den if den > 1e-12 else 0.0
        f0[t] = sample_rate / (k + float(np.clip(shift, -0.5, 0.5)))
    level = 10.0 * np.log10(e0[:, 0] + 1e-12)
    voiced = has & (level >= level.max() - silence_db) & (f0 >= fmin) & (f0 <= fmax)
    return np.where(voiced, f0, 0.0), voiced


def f0_errors(f0_ref: np.ndarray, f0_gen: np.ndarray, path: np.ndarray) -> dict[str, float]:
    """F0 errors along a frame path ``(P, 2)`` of ``(ref, gen)`` frames (0 Hz = unvoiced).

    On pairs voiced in both: squared errors in Hz and in cents (``1200 log2(f / f')``), summed
    for pooling (``sq_hz``, ``sq_cents``, ``n_voiced``) and as RMSEs, and ``gpe``, the gross
    pitch error rate (deviation over 20%; Chu & Alwan, 2009; count ``n_gross``); ``vuv`` is
    the fraction of pairs whose voicing decisions differ, over ``n_pairs``.
    """
    a, b = _np(f0_ref)[path[:, 0]], _np(f0_gen)[path[:, 1]]
    both = (a > 0) & (b > 0)
    sq_hz = float(((a[both] - b[both]) ** 2).sum())
    sq_c = float(((1200.0 * np.log2(a[both] / b[both])) ** 2).sum())
    nv, gross = int(both.sum()), int((np.abs(b[both] / a[both] - 1.0) > 0.2).sum())
    return {"sq_hz": sq_hz, "sq_cents": sq_c, "n_voiced": nv, "n_pairs": int(len(path)),
            "vuv_diff": int(((a > 0) != (b > 0)).sum()), "n_gross": gross,
            "gpe": gross / nv if nv else float("nan"),
            "rmse_hz": math.sqrt(sq_hz / nv) if nv else float("nan"),
            "rmse_cents": math.sqrt(sq_c / nv) if nv else float("nan"),
            "vuv": float(((a > 0) != (b > 0)).mean()) if len(path) else float("nan")}


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions of cost 1; Levenshtein,
    1966) between two sequences (strings compare by character)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def phoneme_error_rate(refs: Sequence[Sequence], hyps: Sequence[Sequence]) -> float:
    """Corpus-level PER ``sum_i edit(ref_i, hyp_i) / sum_i len(ref_i)``."""
    if len(refs) != len(hyps) or not refs:
        raise ValueError(f"need equally many (>= 1) references and hypotheses, got {len(refs)} "
                         f"and {len(hyps)}")
    total = sum(len(r) for r in refs)
    if total == 0:
        raise ValueError("all reference phoneme sequences are empty")
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / total


def duration_errors(ref_seconds: float, gen_seconds: float,
                    phone_durations: Sequence[Sequence] | None = None,
                    path: np.ndarray | None = None, frame_seconds: float = 256 / 22050,
                    pause: str = "pau") -> dict[str, float]:
    """Duration errors of a generated utterance against its reference.

    ``total_rel = |T_gen - T_ref| / T_ref``. With the reference's ``phone_durations`` (flite's
    ``[[phone, seconds], ...]``) and a DTW ``path`` of ``(ref, gen)`` frames, each phone
    boundary ``b`` (in reference frames) maps to the first generated frame paired with a
    reference frame ``>= b``; the per-phone error is ``|d_gen - d_ref|`` in seconds over
    non-pause phones (``phone_abs_sum`` and ``n_phones`` for pooling, ``phone_mae_s``).
    """
    if ref_seconds <= 0:
        raise ValueError(f"reference duration must be > 0 s, got {ref_seconds}")
    out: dict[str, float] = {"total_rel": abs(gen_seconds - ref_seconds) / ref_seconds}
    if phone_durations is None or path is None:
        return out
    ends = np.cumsum([float(d) for _, d in phone_durations]) / frame_seconds
    bounds = np.concatenate([[0.0], ends])  # reference frame boundaries, (n_phones + 1,)
    idx = np.searchsorted(path[:, 0], np.ceil(bounds - 1e-9), side="left")
    mapped = np.where(idx < len(path), path[np.minimum(idx, len(path) - 1), 1],
                      path[-1, 1] + 1).astype(np.float64)
    gen_d, ref_d = np.diff(mapped), np.diff(bounds)
    keep = np.array([p != pause for p, _ in phone_durations])
    err = np.abs(gen_d - ref_d)[keep] * frame_seconds
    out.update(phone_abs_sum=float(err.sum()), n_phones=int(keep.sum()),
               phone_mae_s=float(err.mean()) if keep.any() else float("nan"))
    return out


__all__ = ["MCD_CONST", "dtw", "duration_errors", "edit_distance", "f0_errors", "mcd_dtw",
           "mel_cepstrum", "phoneme_error_rate", "speech_bounds", "yin_f0"]
