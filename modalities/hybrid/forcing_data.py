"""Sequence data for Diffusion Forcing: rigid-body poses as Euclidean tokens, action sequences.

**Pose tokens.** A pose ``(R, x)`` becomes the 9-D token ``[x, r1, r2]`` with ``r1, r2`` the
first two columns of ``R`` (the continuous 6-D rotation representation, Zhou et al. 2019,
"On the Continuity of Rotation Representations in Neural Networks", Sec. 4.2); the map back
is Gram-Schmidt, ``b1 = N(a1)``, ``b2 = N(a2 - (b1.a2) b1)``, ``b3 = b1 x b2`` (their eq. 16).

**Canonical windows.** Torque-free motion is invariant under a rigid motion of space
(``R -> Q R``, ``x -> Q x + c``; Landau & Lifshitz, Mechanics §32), so a window of tokens is
expressed in the frame of its first token: ``x' = R_0^T (x - x_0)``, ``R' = R_0^T R`` (linear
in the 6-D columns). :func:`canonicalize` / :func:`decanonicalize` do this for a reference
token.

**Datasets.** :class:`SequenceDataset` serves every window of ``horizon`` consecutive tokens
(stride ``stride``) of a set of sequences (an ``(N, T, D)`` tensor, a ``.npy`` / ``.pt`` file
or a list of ``(T_i, D)`` sequences of different lengths) as ``{"x": (H, D)}`` (plus ``"y"``
with labels). :func:`rigid_windows` builds one from the simulator's trajectories
(:class:`~modalities.trajectory.sim.TrajectoryDataset`; labels = inertia class) and
:func:`action_sequences` from the episodes of a local LeRobotDataset (the robot demonstrations
of :mod:`modalities.actions`; tokens = the per-frame actions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.functional import normalize
from torch.utils.data import Dataset

__all__ = ["RIGID_DIM", "SequenceDataset", "action_sequences", "canonicalize", "decanonicalize",
           "project_tokens", "rigid_to_tokens", "rigid_windows", "tokens_to_rigid"]

RIGID_DIM = 9  # translation (3) + 6-D rotation (2 columns of R)


def rigid_to_tokens(rots: Tensor, trans: Tensor) -> Tensor:
    """``(..., 3, 3)`` rotations and ``(..., 3)`` positions -> ``(..., 9)`` tokens."""
    if rots.shape[-2:] != (3, 3) or trans.shape[-1:] != (3,) or rots.shape[:-2] != trans.shape[:-1]:
        raise ValueError(f"rigid_to_tokens: expected rots (..., 3, 3) and trans (..., 3), got "
                         f"{tuple(rots.shape)} and {tuple(trans.shape)}")
    return torch.cat([trans, rots[..., :, 0], rots[..., :, 1]], dim=-1)  # [x, r1, r2]


def _gram_schmidt(a1: Tensor, a2: Tensor) -> Tensor:
    b1 = normalize(a1, dim=-1, eps=1e-8)  # Zhou et al. 2019, eq. 16
    b2 = normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1, eps=1e-8)
    return torch.stack([b1, b2, torch.linalg.cross(b1, b2, dim=-1)], dim=-1)  # (..., 3, 3)


def _check_tokens(tokens: Tensor, fn: str) -> None:
    if not isinstance(tokens, Tensor) or tokens.ndim < 1 or tokens.shape[-1] != RIGID_DIM:
        raise ValueError(f"{fn}: pose tokens must be (..., {RIGID_DIM}), got "
                         f"{tuple(getattr(tokens, 'shape', ()))}")


def tokens_to_rigid(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """``(..., 9)`` tokens -> ``(rots (..., 3, 3), trans (..., 3))`` (Gram-Schmidt)."""
    _check_tokens(tokens, "tokens_to_rigid")
    return _gram_schmidt(tokens[..., 3:6], tokens[..., 6:9]), tokens[..., :3]


def project_tokens(tokens: Tensor) -> Tensor:
    """Tokens whose 6-D part is replaced by that of the nearest valid rotation (Gram-Schmidt)."""
    R, x = tokens_to_rigid(tokens)
    return rigid_to_tokens(R, x)


def canonicalize(tokens: Tensor, ref: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Express ``tokens (B, L, 9)`` in the frame of ``ref (B, 9)``: ``x' = R0^T (x - x0)``,
    ``r' = R0^T r``. Returns the new tokens and ``(R0 (B, 3, 3), x0 (B, 3))``."""
    _check_tokens(tokens, "canonicalize")
    R0, x0 = tokens_to_rigid(ref)  # (B, 3, 3), (B, 3)
    Rt = R0.transpose(-1, -2)[:, None]  # (B, 1, 3, 3)
    parts = [tokens[..., :3] - x0[:, None], tokens[..., 3:6], tokens[..., 6:9]]
    out = torch.cat([(Rt @ p[..., None])[..., 0] for p in parts], dim=-1)  # (B, L, 9)
    return out, (R0, x0)


def decanonicalize(tokens: Tensor, frame: tuple[Tensor, Tensor]) -> Tensor:
    """Inverse of :func:`canonicalize`: ``x = R0 x' + x0``, ``r = R0 r'``."""
    _check_tokens(tokens, "decanonicalize")
    R0, x0 = frame
    R = R0[:, None]  # (B, 1, 3, 3)
    x, r1, r2 = ((R @ tokens[..., i:i + 3, None])[..., 0] for i in (0, 3, 6))
    return torch.cat([x + x0[:, None], r1, r2], dim=-1)


class SequenceDataset(Dataset):
    """All windows of ``horizon`` consecutive tokens of a set of sequences.

    Args:
        sequences: ``(N, T, D)`` tensor / array, a path to a ``.npy`` or ``.pt`` file holding
            one, or a list of ``(T_i, D)`` sequences (lengths may differ).
        horizon: window length ``H`` (every sequence needs ``T_i >= H``).
        stride: offset between consecutive windows of one sequence.
        labels: optional ``(N,)`` integer labels (items then carry ``"y"``).
        token_dim: if given, the expected token width ``D`` (checked).
        meta: free-form description (e.g. ``{"representation": "rigid", "dt": 0.05}``).
    """

    def __init__(self, sequences: Any, horizon: int = 16, stride: int = 1,
                 labels: Any = None, token_dim: int | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        if isinstance(sequences, str | Path):
            p = Path(sequences)
            if not p.is_file():
                raise FileNotFoundError(f"SequenceDataset: no file {p}")
            sequences = np.load(p) if p.suffix == ".npy" else torch.load(p, weights_only=True)
        if isinstance(sequences, np.ndarray | Tensor):
            if sequences.ndim != 3:
                raise ValueError(f"SequenceDataset: sequences must be (N, T, D), got "
                                 f"{tuple(sequences.shape)}")
            sequences = list(sequences)
        seqs = [torch.as_tensor(np.asarray(s) if not isinstance(s, Tensor) else s,
                                dtype=torch.float32) for s in sequences]
        if not seqs or any(s.ndim != 2 for s in seqs) or len({s.shape[1] for s in seqs}) != 1:
            raise ValueError("SequenceDataset: need a non-empty list of (T_i, D) sequences with "
                             "one token width D")
        if isinstance(horizon, bool) or int(horizon) != horizon or horizon < 1 or stride < 1:
            raise ValueError(f"SequenceDataset: horizon and stride must be integers >= 1, got "
                             f"{horizon!r}, {stride!r}")
        self.horizon, self.stride, self.dim = int(horizon), int(stride), int(seqs[0].shape[1])
        if token_dim is not None and int(token_dim) != self.dim:
            raise ValueError(f"SequenceDataset: tokens have width {self.dim}, but token_dim="
                             f"{token_dim} (set model.in_dim / data.token_dim to {self.dim})")
        short = [i for i, s in enumerate(seqs) if s.shape[0] < self.horizon]
        if short:
            raise ValueError(f"SequenceDataset: {len(short)} sequence(s) shorter than the "
                             f"horizon {self.horizon} (e.g. index {short[0]} with "
                             f"{seqs[short[0]].shape[0]} tokens)")
        if any(not bool(torch.isfinite(s).all()) for s in seqs):
            raise ValueError("SequenceDataset: sequences contain NaN or inf")
        self.sequences = seqs
        self.labels = None if labels is None else torch.as_tensor(labels).long()
        if self.labels is not None and self.labels.shape != (len(seqs),):
            raise ValueError(f"SequenceDataset: labels must be ({len(seqs)},), got "
                             f"{tuple(self.labels.shape)}")
        self.meta = dict(meta or {})
        counts = torch.tensor([(s.shape[0] - self.horizon) // self.stride + 1 for s in seqs])
        self._ends = counts.cumsum(0)  # (N,) exclusive end index of each sequence's windows

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range 0..{len(self) - 1}")
        s = int(torch.searchsorted(self._ends, torch.tensor(i), right=True))
        start = (i - (int(self._ends[s - 1]) if s > 0 else 0)) * self.stride
        item = {"x": self.sequences[s][start:start + self.horizon]}  # (H, D)
        if self.labels is not None:
            item["y"] = self.labels[s]
        return item

    def long_sequences(self, n: int, min_length: int | None = None
                       ) -> tuple[Tensor, Tensor | None]:
        """The first ``n`` sequences with at least ``min_length`` tokens, cropped to a common
        length: ``(tokens (n', T, D), labels (n',) | None)`` (for rollout plots)."""
        need = self.horizon if min_length is None else int(min_length)
        idx = [i for i, s in enumerate(self.sequences) if s.shape[0] >= need][:max(1, int(n))]
        if not idx:
            idx = [int(torch.tensor([s.shape[0] for s in self.sequences]).argmax())]
        T = min(self.sequences[i].shape[0] for i in idx)
        x = torch.stack([self.sequences[i][:T] for i in idx])
        return x, (None if self.labels is None else self.labels[idx])


def rigid_windows(split: str = "train", n: int | None = None, n_frames: int = 64,
                  dt: float = 0.05, classes: list[str] | None = None, seed: int = 0,
                  horizon: int = 16, stride: int = 1, token_dim: int = RIGID_DIM,
                  cache_dir: str | None = None) -> SequenceDataset:
    """Windows of pose tokens from simulated torque-free rigid bodies.

    Args: as :class:`~modalities.trajectory.sim.TrajectoryDataset` (``n_frames`` frames per
        trajectory) plus ``horizon`` / ``stride`` of the windows; ``token_dim`` must be 9.

    Returns:
        A :class:`SequenceDataset` of world-frame ``(H, 9)`` tokens labelled by inertia class
        (``meta``: ``representation="rigid"``, ``dt``, ``classes``).
    """
    from modalities.trajectory.sim import TrajectoryDataset

    if int(token_dim) != RIGID_DIM:
        raise ValueError(f"rigid_windows: pose tokens have width {RIGID_DIM}, got token_dim="
                         f"{token_dim}")
    ds = TrajectoryDataset(split, n=n, n_frames=n_frames, dt=dt, classes=classes, seed=seed,
                           cache_dir=cache_dir)
    tokens = rigid_to_tokens(ds.rots, ds.trans)  # (N, T, 9)
    return SequenceDataset(tokens, horizon, stride, labels=ds.cls, token_dim=RIGID_DIM,
                           meta={"representation": "rigid", "dt": ds.dt,
                                 "classes": list(ds.classes)})


def action_sequences(root: str, horizon: int = 16, stride: int = 1,
                     episodes: list[int] | None = None, collect: dict[str, Any] | None = None,
                     token_dim: int | None = None) -> SequenceDataset:
    """Windows of the per-frame actions of every episode of a local LeRobotDataset.

    A missing dataset is recorded first with ``collect`` (as
    :class:`~modalities.actions.data.ChunkDataset` does); the ``action`` and
    ``episode_index`` columns are then read from ``data/*/*.parquet``. Episodes shorter than
    ``horizon`` are skipped.
    """
    import pyarrow.parquet as pq

    from modalities.actions.data import ChunkDataset, has_dataset

    if not has_dataset(root):  # records it (or raises a FileNotFoundError saying how)
        ChunkDataset(root, horizon=1, image_keys=[], collect=collect)
    files = sorted(Path(root).glob("data/*/*.parquet"))
    table = [pq.read_table(f, columns=["episode_index", "frame_index", "action"]).to_pydict()
             for f in files]
    ep = np.concatenate([np.asarray(t["episode_index"]) for t in table])
    frame = np.concatenate([np.asarray(t["frame_index"]) for t in table])
    act = np.concatenate([np.asarray(t["action"], dtype=np.float32) for t in table])
    keep = sorted(set(ep.tolist())) if episodes is None else [int(e) for e in episodes]
    seqs = []
    for e in keep:
        rows = np.flatnonzero(ep == e)
        if len(rows) == 0:
            raise ValueError(f"action_sequences: episode {e} not in {root}")
        rows = rows[np.argsort(frame[rows])]
        if len(rows) >= horizon:
            seqs.append(torch.from_numpy(act[rows]))
    if not seqs:
        raise ValueError(f"action_sequences: no episode of {root} has >= {horizon} frames")
    return SequenceDataset(seqs, horizon, stride, token_dim=token_dim,
                           meta={"representation": "vector", "root": str(root)})
