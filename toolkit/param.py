"""Parameterizations and exact conversions between them, for any affine Gaussian path.

With ``x_t = alpha x_1 + sigma eps`` (t = 0 noise, t = 1 data) a network may predict

- ``"data"``      x_1-hat = E[x_1 | x_t]
- ``"noise"``     eps-hat = E[x_0 | x_t]                                 (Ho et al. 2020)
- ``"velocity"``  u = alpha' x_1-hat + sigma' eps-hat                     (Lipman et al. 2023)
- ``"score"``     grad log p_t(x_t) = -eps-hat / sigma                    (Tweedie; Vincent 2011)
- ``"v"``         v = alpha eps-hat - sigma x_1-hat                       (Salimans & Ho 2022)

All five are affine in one another for fixed (x_t, t), so each converts exactly through
the pair (x_1-hat, eps-hat). For non-variance-preserving paths ``"v"`` keeps the same
formula; its inverse divides by ``alpha^2 + sigma^2`` and is always well posed.

The ends of [0, 1]: where a coefficient we divide by vanishes (``sigma = 0`` at the data end,
``alpha = 0`` at the prior end) it is clamped to a dtype-dependent tiny number, so results
stay finite; the converted quantity is then only as accurate as the limit allows (for
example eps-hat from a data prediction at sigma = 0 is undetermined).
"""

from __future__ import annotations

import torch
from torch import Tensor

from toolkit.paths.base import GaussianPath, expand_like, tiny
from toolkit.registry import unknown_name_error

PREDICTIONS = ("data", "noise", "velocity", "score", "v")
_ALIASES = {
    "x1": "data",
    "x0": "noise",
    "eps": "noise",
    "epsilon": "noise",
    "sample": "data",
    "flow": "velocity",
    "vel": "velocity",
    "v_prediction": "v",
    "u": "velocity",
}


def check_prediction(name: str) -> str:
    """Canonical prediction name, or a ``ValueError`` listing the valid ones."""
    if name in PREDICTIONS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    raise unknown_name_error("prediction", name, PREDICTIONS + tuple(_ALIASES))


def _safe(den: Tensor) -> Tensor:
    """``den`` pushed away from zero, keeping its sign (0 counts as positive)."""
    eps = tiny(den.dtype)
    sign = torch.where(den < 0, -torch.ones_like(den), torch.ones_like(den))
    return sign * den.abs().clamp_min(eps)


def _coefs(path: GaussianPath, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    t = t.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    return tuple(expand_like(f(t), x) for f in (path.alpha, path.sigma, path.d_alpha, path.d_sigma))  # type: ignore[return-value]


def to_data_noise(
    pred: Tensor, x: Tensor, t: Tensor, path: GaussianPath, prediction: str
) -> tuple[Tensor, Tensor]:
    """Convert a prediction of kind ``prediction`` to ``(x1_hat, eps_hat)``.

    Args:
        pred: network output, same shape as ``x``.
        x: the noisy input ``x_t``, shape ``(B, ...)``.
        t: times, shape ``()``, ``(B,)`` or per-token ``(B, L)``.
        path: the Gaussian path.
        prediction: one of ``data | noise | velocity | score | v``.
    """
    kind = check_prediction(prediction)
    a, s, da, ds = _coefs(path, t, x)
    if kind == "data":
        return pred, (x - a * pred) / _safe(s)
    if kind == "noise":
        return (x - s * pred) / _safe(a), pred
    if kind == "score":
        eps = -s * pred
        return (x - s * eps) / _safe(a), eps
    if kind == "velocity":
        # x = a x1 + s e,  u = a' x1 + s' e   =>   2x2 solve, det = a s' - s a'
        det = _safe(a * ds - s * da)
        return (ds * x - s * pred) / det, (a * pred - da * x) / det
    # kind == "v":  v = a e - s x1  =>  x1 = (a x - s v)/(a^2+s^2),  e = (s x + a v)/(a^2+s^2)
    n = _safe(a * a + s * s)
    return (a * x - s * pred) / n, (s * x + a * pred) / n


def from_data_noise(
    x1: Tensor, eps: Tensor, x: Tensor, t: Tensor, path: GaussianPath, prediction: str
) -> Tensor:
    """Express ``(x1_hat, eps_hat)`` as a prediction of kind ``prediction``."""
    kind = check_prediction(prediction)
    if kind == "data":
        return x1
    if kind == "noise":
        return eps
    a, s, da, ds = _coefs(path, t, x)
    if kind == "velocity":
        return da * x1 + ds * eps
    if kind == "score":
        return -eps / _safe(s)
    return a * eps - s * x1


Coefs = tuple[float, float, float, float]


def scalar_coefs(path: GaussianPath, t: float) -> Coefs:
    """``(alpha, sigma, alpha', sigma')`` at one time ``t``, as float64-accurate floats."""
    tt = torch.tensor(float(t), dtype=torch.float64)
    return tuple(float(f(tt)) for f in (path.alpha, path.sigma, path.d_alpha, path.d_sigma))


def _row(kind: str, a: float, s: float, da: float, ds: float, eps: float) -> tuple[float, float]:
    """``(A, B)`` with ``kind = A x1_hat + B eps_hat`` (see the module docstring)."""
    if kind == "data":
        return 1.0, 0.0
    if kind == "noise":
        return 0.0, 1.0
    if kind == "velocity":
        return da, ds
    if kind == "score":
        return 0.0, -1.0 / max(s, eps)
    return -s, a  # "v"


def affine_coefs(
    coefs: Coefs, source: str, target: str, dtype: torch.dtype = torch.float64
) -> tuple[float, float]:
    """``(c_x, c_p)`` with ``target = c_x x_t + c_p pred_source`` at one time.

    Every kind is linear in ``(x1_hat, eps_hat)``: ``K = A_K x1 + B_K eps``; together with
    ``x_t = alpha x1 + sigma eps`` this is a 2x2 system, solved here once per time in float64
    so a conversion costs two elementwise tensor operations.
    """
    a, s, da, ds = coefs
    eps = tiny(dtype)
    a1, b1 = _row(source, a, s, da, ds, eps)
    a2, b2 = _row(target, a, s, da, ds, eps)
    det = a * b1 - s * a1  # det [[a, s], [A1, B1]]
    if abs(det) < eps:
        det = eps if det >= 0 else -eps
    return (a2 * b1 - b2 * a1) / det, (b2 * a - a2 * s) / det


def apply_affine(pred: Tensor, x: Tensor, c_x: float, c_p: float) -> Tensor:
    """``c_x x + c_p pred`` with as few kernels as possible."""
    if c_x == 0.0:
        return pred if c_p == 1.0 else pred * c_p
    return torch.add(pred * c_p if c_p != 1.0 else pred, x, alpha=c_x)


def _convert_scalar(pred: Tensor, x: Tensor, coefs: Coefs, source: str, target: str) -> Tensor:
    a, s, da, ds = coefs
    eps = tiny(x.dtype)
    a1, b1 = _row(source, a, s, da, ds, eps)
    if abs(a * b1 - s * a1) > 1e-8:
        return apply_affine(pred, x, *affine_coefs(coefs, source, target, x.dtype))
    # (Near-)singular end (alpha = 0 or sigma = 0): form the residual first, as the tensor
    # path does, so an exact prediction there (e.g. eps_hat = x_0 at t = 0) stays exact.
    det = a * b1 - s * a1
    det = det if abs(det) >= eps else (eps if det >= 0 else -eps)
    a2, b2 = _row(target, a, s, da, ds, eps)
    x1 = (b1 * x - s * pred) / det
    e = (a * pred - a1 * x) / det
    return a2 * x1 + b2 * e


def convert(
    pred: Tensor, x: Tensor, t: Tensor, path: GaussianPath, source: str, target: str,
    coefs: Coefs | None = None,
) -> Tensor:
    """Convert a ``source``-kind prediction into a ``target``-kind one (exact, affine).

    Args:
        coefs: optional precomputed :func:`scalar_coefs` when ``t`` is one time for the
            whole batch (the fast path solvers use).

    Example:
        >>> v = convert(eps_hat, x_t, t, paths.get("vp"), "noise", "velocity")
    """
    source, target = check_prediction(source), check_prediction(target)
    if source == target:
        return pred
    if coefs is not None:
        return _convert_scalar(pred, x, coefs, source, target)
    a, s, da, ds = _coefs(path, t, x)
    # Direct formulas for the pairs solvers use most (one division instead of two).
    if source == "velocity" and target == "data":
        return (ds * x - s * pred) / _safe(a * ds - s * da)
    if source == "data" and target == "velocity":
        # u = a' x1 + s' (x - a x1)/s
        return da * pred + ds * (x - a * pred) / _safe(s)
    x1, eps = to_data_noise(pred, x, t, path, source)
    return from_data_noise(x1, eps, x, t, path, target)
