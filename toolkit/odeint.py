"""A small, stateless ODE integrator over tensors or tuples of tensors.

``odeint(f, y0, t0, t1)`` integrates ``dy/dt = f(t, y)`` from ``t0`` to ``t1`` (forward or
backward in time) and returns ``y(t1)``. ``y`` is a Tensor or a tuple of Tensors (for
augmented states such as ``(x, log_det)``); ``f`` returns the same structure.

Methods:

- ``dopri5``: Dormand & Prince (1980) 5(4) pair with FSAL, local extrapolation (the
  5th-order solution is propagated), embedded error estimate and step-size control
  (Hairer, Norsett & Wanner, "Solving ODEs I", sec. II.4 and II.5). ``rtol``/``atol``
  enter the error norm ``err = ||(y_5 - y_4) / (atol + rtol max(|y_n|, |y_{n+1}|))||``
  (RMS or max over all elements); a step is accepted when ``err <= 1``. With ``steps``
  given, dopri5 takes that many equal 5th-order steps without control.
- ``euler`` (order 1), ``heun`` (2), ``midpoint`` (2), ``rk4`` (4): fixed ``steps``.

Pass ``info={}`` to receive ``nfe`` (calls of ``f``), ``steps`` (accepted), ``rejected``
and, for dopri5, ``f_end`` (the FSAL derivative at ``t1``, free of charge).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from toolkit.registry import unknown_name_error

State = Tensor | tuple[Tensor, ...]
Func = Callable[[float, State], State]

METHODS = ("dopri5", "rk4", "heun", "midpoint", "euler")

# Dormand & Prince (1980), RK5(4)7M; Hairer, Norsett & Wanner I, Table II.5.2.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = _A[6] + (0.0,)  # 5th-order weights = last stage row (FSAL)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4, strict=True))  # y_5 - y_4 weights

# -- tuple-of-tensor arithmetic --------------------------------------------------------


def _as_tuple(y: State) -> tuple[tuple[Tensor, ...], bool]:
    if isinstance(y, Tensor):
        return (y,), True
    if isinstance(y, tuple | list) and all(isinstance(v, Tensor) for v in y) and len(y) > 0:
        return tuple(y), False
    raise TypeError(f"odeint state must be a Tensor or a tuple of Tensors, got {type(y).__name__}")


def _lincomb(y: tuple[Tensor, ...], h: float, coefs, ks) -> tuple[Tensor, ...]:
    """``y + h * sum_j coefs[j] * ks[j]`` for tuples (zero coefficients skipped)."""
    out = []
    for i, yi in enumerate(y):
        acc = yi
        for c, k in zip(coefs, ks, strict=False):
            if c != 0.0:
                acc = acc + (h * c) * k[i]
        out.append(acc)
    return tuple(out)


def _error_norm(err, y0, y1, rtol: float, atol: float, norm: str) -> float:
    """Hairer I, eq. (4.11): scaled error, ``sc_i = atol + rtol max(|y0_i|, |y1_i|)``."""
    sq, n, mx = 0.0, 0, 0.0
    for e, a, b in zip(err, y0, y1, strict=True):
        scaled = (e / (atol + rtol * torch.maximum(a.abs(), b.abs()))).double()
        if norm == "max":
            mx = max(mx, float(scaled.abs().max()))
        else:
            sq += float((scaled * scaled).sum())
            n += scaled.numel()
    return mx if norm == "max" else math.sqrt(sq / max(n, 1))


def _rms(y, scale) -> float:
    sq = sum(float(((a / s).double() ** 2).sum()) for a, s in zip(y, scale, strict=True))
    return math.sqrt(sq / max(sum(a.numel() for a in y), 1))


# -- fixed-step Runge-Kutta ------------------------------------------------------------


def _fixed(count, y, t0: float, t1: float, steps: int, method: str, callback):
    h = (t1 - t0) / steps
    for i in range(steps):
        t = t0 + i * h
        if method == "euler":
            y = _lincomb(y, h, (1.0,), (count(t, y),))
        elif method == "midpoint":
            k1 = count(t, y)
            y = _lincomb(y, h, (1.0,), (count(t + 0.5 * h, _lincomb(y, h, (0.5,), (k1,))),))
        elif method == "heun":
            k1 = count(t, y)
            k2 = count(t + h, _lincomb(y, h, (1.0,), (k1,)))
            y = _lincomb(y, h, (0.5, 0.5), (k1, k2))
        elif method == "rk4":
            k1 = count(t, y)
            k2 = count(t + 0.5 * h, _lincomb(y, h, (0.5,), (k1,)))
            k3 = count(t + 0.5 * h, _lincomb(y, h, (0.5,), (k2,)))
            k4 = count(t + h, _lincomb(y, h, (1.0,), (k3,)))
            y = _lincomb(y, h, (1 / 6, 1 / 3, 1 / 3, 1 / 6), (k1, k2, k3, k4))
        else:  # dopri5 without control
            y, _, _ = _dopri_step(count, y, t, h, count(t, y))
        if callback is not None:
            callback(t0 + (i + 1) * h, y)
    return y


# -- Dormand-Prince 5(4) ---------------------------------------------------------------


def _dopri_step(f, y, t: float, h: float, k1):
    """One DOPRI5 step: returns ``(y_5, err = y_5 - y_4, k7 = f(t + h, y_5))``."""
    ks = [k1]
    for i in range(1, 7):
        yi = _lincomb(y, h, _A[i], ks)
        ks.append(f(t + _C[i] * h, yi))
    y5 = yi  # stage 7 is evaluated at the 5th-order solution (FSAL)
    err = tuple(
        sum(h * e * k[j] for e, k in zip(_E, ks, strict=True) if e != 0.0) for j in range(len(y))
    )
    return y5, err, ks[6]


def _initial_step(f, y0, f0, t0: float, direction: float, rtol: float, atol: float) -> float:
    """Starting step size, Hairer I, sec. II.4 ("Automatic step size control", a-f)."""
    scale = tuple(atol + rtol * a.abs() for a in y0)
    d0, d1 = _rms(y0, scale), _rms(f0, scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    y1 = _lincomb(y0, direction * h0, (1.0,), (f0,))
    f1 = f(t0 + direction * h0, y1)
    d2 = _rms(tuple(b - a for a, b in zip(f0, f1, strict=True)), scale) / h0
    dmax = max(d1, d2)
    h1 = max(1e-6, h0 * 1e-3) if dmax <= 1e-15 else (0.01 / dmax) ** (1 / 5)
    return min(100 * h0, h1)


def _dopri5(f, y, t0, t1, rtol, atol, max_steps, first_step, controller, norm, info, callback):
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    k1 = f(t0, y)
    h = first_step if first_step is not None else _initial_step(
        f, y, k1, t0, direction, rtol, atol
    )
    h = min(abs(h), span)
    safety, fac_min, fac_max = 0.9, 0.2, 10.0
    beta = 0.04 if controller == "pi" else 0.0  # PI control, Hairer II, sec. IV.2 (2.43c)
    alpha = 0.2 - 0.75 * beta
    err_old, t, accepted, rejected, last_rejected = 1e-4, t0, 0, 0, False
    while direction * (t1 - t) > 0:
        if accepted + rejected >= max_steps:
            raise RuntimeError(
                f"odeint(dopri5): max_steps={max_steps} reached at t={t:.6g} (target {t1}); "
                "loosen rtol/atol or raise max_steps"
            )
        remaining = abs(t1 - t)
        if h >= remaining or remaining - h <= 1e-12 * max(1.0, abs(t1)):
            h = remaining  # land exactly on t1
        t_new = t1 if h == remaining else t + direction * h
        y_new, err, k7 = _dopri_step(f, y, t, direction * h, k1)
        e = _error_norm(err, y, y_new, rtol, atol, norm)
        if not math.isfinite(e):
            h *= fac_min
            rejected += 1
            last_rejected = True
        elif e <= 1.0:
            # Hairer I, eq. (4.13) with the PI correction err_old^beta
            fac = safety * max(e, 1e-10) ** (-alpha) * err_old**beta
            fac = min(1.0 if last_rejected else fac_max, max(fac_min, fac))
            err_old = max(e, 1e-4)
            t, y, k1 = t_new, y_new, k7
            accepted += 1
            last_rejected = False
            if callback is not None:
                callback(t, y)
            h *= fac
        else:
            h *= min(1.0, max(fac_min, safety * e ** (-alpha)))
            rejected += 1
            last_rejected = True
        if h < 1e-14 * max(1.0, abs(t)) and direction * (t1 - t) > 0:
            raise RuntimeError(f"odeint(dopri5): step size underflow at t={t:.6g}")
    if info is not None:
        info.update(steps=accepted, rejected=rejected, f_end=k1)
    return y


def odeint(
    f: Func,
    y0: State,
    t0: float,
    t1: float,
    *,
    method: str = "dopri5",
    steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10_000,
    first_step: float | None = None,
    controller: str = "pi",
    norm: str = "rms",
    callback: Callable[[float, State], None] | None = None,
    info: dict[str, Any] | None = None,
) -> State:
    """Integrate ``dy/dt = f(t, y)`` from ``t0`` to ``t1`` (``t1 < t0`` integrates backward).

    Args:
        f: ``f(t: float, y) -> dy/dt`` with ``y`` a Tensor or tuple of Tensors.
        y0: state at ``t0``.
        t0 / t1: start and end times (Python floats).
        method: ``dopri5 | rk4 | heun | midpoint | euler``.
        steps: number of equal steps (required by the fixed-step methods; for dopri5 it
            disables step-size control).
        rtol / atol: relative / absolute tolerance of dopri5's local error.
        max_steps: dopri5 raises ``RuntimeError`` after this many attempted steps.
        first_step: initial |h| for dopri5 (default: Hairer's starting-step heuristic).
        controller: ``"pi"`` (PI step-size control, beta = 0.04) or ``"standard"``
            (``h_new = h * 0.9 * err^(-1/5)``).
        norm: ``"rms"`` (Hairer's eq. 4.11) or ``"max"`` over all elements of the error.
        callback: called as ``callback(t, y)`` after every accepted step.
        info: if a dict, receives ``nfe``, ``steps``, ``rejected`` (and ``f_end`` for dopri5).

    Returns:
        ``y(t1)`` with the structure of ``y0``.

    Raises:
        ValueError: unknown method/controller/norm, bad tolerances or steps.
        RuntimeError: dopri5 exceeded ``max_steps`` or its step size underflowed.
    """
    if method not in METHODS:
        raise unknown_name_error("odeint method", method, METHODS)
    if controller not in ("pi", "standard"):
        raise unknown_name_error("step-size controller", controller, ("pi", "standard"))
    if norm not in ("rms", "max"):
        raise unknown_name_error("error norm", norm, ("rms", "max"))
    if not (rtol >= 0 and atol >= 0 and rtol + atol > 0):
        raise ValueError(f"need rtol >= 0, atol >= 0, rtol + atol > 0; got {rtol}, {atol}")
    if steps is not None and (isinstance(steps, bool) or int(steps) != steps or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if method != "dopri5" and steps is None:
        raise ValueError(f"odeint method {method!r} is fixed-step and needs steps=")
    t0, t1 = float(t0), float(t1)
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise ValueError(f"t0 and t1 must be finite, got {t0}, {t1}")
    y, single = _as_tuple(y0)
    nfe = 0

    def count(t: float, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        nonlocal nfe
        nfe += 1
        out, _ = _as_tuple(f(t, state[0] if single else state))
        if len(out) != len(state):
            raise ValueError(f"f returned {len(out)} tensors for a state of {len(state)}")
        return out

    wrapped_cb = None
    if callback is not None:

        def wrapped_cb(t: float, state: tuple[Tensor, ...]) -> None:
            callback(t, state[0] if single else state)

    if t0 == t1:
        out = y
        if info is not None:
            info.update(steps=0, rejected=0)
    elif method == "dopri5" and steps is None:
        out = _dopri5(
            count, y, t0, t1, rtol, atol, max_steps, first_step, controller, norm, info,
            wrapped_cb,
        )
    else:
        out = _fixed(count, y, t0, t1, int(steps), method, wrapped_cb)
        if info is not None:
            info.update(steps=int(steps), rejected=0)
    if info is not None:
        info["nfe"] = nfe
        if single and isinstance(info.get("f_end"), tuple):
            info["f_end"] = info["f_end"][0]
    return out[0] if single else out


__all__ = ["odeint", "METHODS"]
