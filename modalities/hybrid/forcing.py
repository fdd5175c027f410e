"""Diffusion Forcing sampling: scheduling matrices, a per-token Euler sampler, rollouts.

Chen et al. 2024, "Diffusion Forcing: Next-token Prediction Meets Full-Sequence Diffusion"
(NeurIPS 2024). A causal network is trained with an *independent* noise level per token, so
at sampling time every token may sit at its own time. A **scheduling matrix** ``K (M+1, n)``
(their Sec. 3.3 / Alg. 2; rows = sampling steps, columns = tokens) says where each token is
after ``m`` steps; in the toolkit's convention ``K[0] = 0`` (noise) and ``K[M] = 1`` (data),
non-decreasing down every column. Token ``j`` after ``m`` steps of the *pyramid* schedule
with ``s`` steps per token and a lag of ``d`` steps between neighbours is

    K[m, j] = clip((m - j d) / s, 0, 1),         M = s + (n - 1) d,

so ``d = s`` is **autoregressive** (one token after the other, next-token diffusion) and
``d = 0`` **full-sequence** (all tokens share one time).

One sampling step ``m -> m+1`` (:func:`denoise_window`) evaluates the network once on the
whole window at per-token times ``K[m]`` and moves every token by Euler,

    x_j <- x_j + (K[m+1, j] - K[m, j]) v_theta(x, K[m])_j,

(tokens whose time does not change stay put). Context tokens are clean data. With
**stabilisation** (Chen et al. 2024, Sec. 3.3, "stabilizing autoregressive generation")
every token at ``t = 1`` (context and finished tokens) is *shown* to the network as slightly
noisy, ``x_in = alpha(1-eps) x + sigma(1-eps) z`` at time ``1 - eps``, while its stored value
stays clean, so the network does not trust its own accumulated errors blindly. With
``context_mode="replace"`` (for full-sequence models, which never saw clean and noisy tokens
together; replacement method of Ho et al. 2022, "Video Diffusion Models", Sec. 3.1) context
tokens are instead noised to the time of the generated tokens, with one noise draw per
window (a deterministic sampler then conditions only weakly on the context).

:func:`rollout` produces sequences longer than the training horizon ``H`` with a sliding
window: keep the last ``H - chunk`` tokens as context, generate the next ``chunk`` tokens,
repeat. NFE per window = ``M`` (one network call per row transition).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from toolkit import paths as paths_mod
from toolkit.param import convert
from toolkit.paths.base import GaussianPath

__all__ = ["CONTEXT_MODES", "SCHEDULES", "autoregressive", "check_schedule", "denoise_window",
           "full_sequence", "make_schedule", "pyramid", "rollout"]

SCHEDULES = ("autoregressive", "pyramid", "full_sequence")
CONTEXT_MODES = ("clean", "replace")

Model = Callable[..., Tensor]
Encode = Callable[[Tensor], tuple[Tensor, Any]]
Decode = Callable[[Tensor, Any], Tensor]


def _pos_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value \
            or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def pyramid(n_tokens: int, steps: int, delay: int = 1) -> Tensor:
    """Pyramid scheduling matrix ``K (M+1, n)``, ``K[m, j] = clip((m - j d) / s, 0, 1)``.

    Args:
        n_tokens: number of generated tokens ``n``.
        steps: Euler steps per token ``s`` (each column goes 0 -> 1 in ``s`` rows).
        delay: lag ``d >= 0`` (rows) between neighbouring tokens; ``d = s`` is
            :func:`autoregressive`, ``d = 0`` :func:`full_sequence`.

    Returns:
        float64 ``(s + (n - 1) d + 1, n)`` times in [0, 1].
    """
    n = _pos_int(n_tokens, "n_tokens")
    s = _pos_int(steps, "steps")
    d = _pos_int(delay, "delay", 0)
    rows = s + (n - 1) * d
    m = torch.arange(rows + 1, dtype=torch.float64)[:, None]  # (M+1, 1)
    j = torch.arange(n, dtype=torch.float64)[None]  # (1, n)
    return ((m - j * d) / s).clamp(0.0, 1.0)  # Chen et al. 2024, Sec. 3.3 (pyramid)


def autoregressive(n_tokens: int, steps: int) -> Tensor:
    """One token after the other, ``steps`` rows each: ``(n s + 1, n)`` (next-token order)."""
    return pyramid(n_tokens, steps, delay=_pos_int(steps, "steps"))


def full_sequence(n_tokens: int, steps: int) -> Tensor:
    """All tokens at one shared time: ``(s + 1, n)`` (full-sequence diffusion)."""
    return pyramid(n_tokens, steps, delay=0)


def make_schedule(name: str, n_tokens: int, steps: int, delay: int | None = None) -> Tensor:
    """Scheduling matrix by name (:data:`SCHEDULES`); ``delay`` only for ``pyramid``
    (default 1)."""
    if name == "autoregressive":
        return autoregressive(n_tokens, steps)
    if name == "full_sequence":
        return full_sequence(n_tokens, steps)
    if name == "pyramid":
        return pyramid(n_tokens, steps, 1 if delay is None else delay)
    raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")


def check_schedule(K: Tensor, n_tokens: int | None = None) -> Tensor:
    """Validate a scheduling matrix: 2-D ``(M+1, n)`` with ``M >= 1``, finite, in [0, 1],
    first row 0, last row 1, non-decreasing down every column. Returns it as float64."""
    if not isinstance(K, Tensor) or K.ndim != 2 or K.shape[0] < 2 or K.shape[1] < 1:
        raise ValueError(f"a scheduling matrix must be a (M+1, n) tensor with M >= 1, got "
                         f"{tuple(getattr(K, 'shape', ()))}")
    if n_tokens is not None and K.shape[1] != n_tokens:
        raise ValueError(f"scheduling matrix has {K.shape[1]} columns but {n_tokens} tokens "
                         "are generated")
    K = K.to(torch.float64)
    if not bool(torch.isfinite(K).all()) or bool((K < 0).any()) or bool((K > 1).any()):
        raise ValueError("scheduling matrix entries must be finite times in [0, 1]")
    if bool((K[0] != 0).any()) or bool((K[-1] != 1).any()):
        raise ValueError("scheduling matrix must start at t = 0 (noise) and end at t = 1 (data)")
    if bool((K.diff(dim=0) < 0).any()):
        raise ValueError("scheduling matrix columns must be non-decreasing (t only grows)")
    return K


def _check_seq(x: Tensor, name: str, dim: int | None = None) -> None:
    if not isinstance(x, Tensor) or x.ndim != 3:
        raise ValueError(f"{name} must be a (B, L, D) tensor, got "
                         f"{tuple(getattr(x, 'shape', ())) or type(x).__name__}")
    if dim is not None and x.shape[-1] != dim:
        raise ValueError(f"{name} has token dim {x.shape[-1]}, expected {dim}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")


@torch.no_grad()
def denoise_window(model: Model, context: Tensor, n_new: int, schedule: Tensor, *,
                   path: str | GaussianPath = "linear", prediction: str = "velocity",
                   x0: Tensor | None = None, generator: torch.Generator | None = None,
                   stabilization: float = 0.0, context_mode: str = "clean",
                   cond: dict[str, Any] | None = None,
                   info: dict[str, Any] | None = None) -> Tensor:
    """Generate ``n_new`` tokens after ``context`` by walking the rows of ``schedule``.

    Args:
        model: ``model(x (B, L, D), t (B, L), **cond) -> (B, L, D)`` prediction of kind
            ``prediction`` (per-token times).
        context: ``(B, k, D)`` clean tokens (``k`` may be 0).
        n_new: tokens to generate.
        schedule: ``(M+1, n_new)`` scheduling matrix (:func:`check_schedule`).
        path / prediction: probability path and the network's output kind.
        x0: ``(B, n_new, D)`` prior noise (default drawn from ``generator``).
        generator: RNG for the prior and the stabilisation / replacement noise.
        stabilization: ``eps`` in [0, 1): tokens at ``t = 1`` are shown at ``1 - eps``.
        context_mode: ``"clean"`` (context at ``t = 1``, stabilised like finished tokens) or
            ``"replace"`` (context noised to the first generated token's time each step).
        cond: extra keyword arguments for ``model``.
        info: dict updated with ``"nfe"`` (network calls).

    Returns:
        ``(B, n_new, D)`` generated tokens.
    """
    _check_seq(context, "context")
    n = _pos_int(n_new, "n_new")
    K = check_schedule(schedule, n)
    if not 0.0 <= float(stabilization) < 1.0:
        raise ValueError(f"stabilization must be in [0, 1), got {stabilization!r}")
    if context_mode not in CONTEXT_MODES:
        raise ValueError(f"context_mode must be one of {CONTEXT_MODES}, got {context_mode!r}")
    path = paths_mod.get(path)
    b, k, d = context.shape
    dev, dt = context.device, context.dtype
    if x0 is None:
        x0 = torch.randn(b, n, d, generator=generator, dtype=dt).to(dev)
    if x0.shape != (b, n, d):
        raise ValueError(f"x0 must be ({b}, {n}, {d}), got {tuple(x0.shape)}")
    x = x0.clone()  # (B, n, D) generated tokens, t = K[0] = 0
    eps = float(stabilization)
    Kd = K.to(device=dev, dtype=dt)
    z = None  # one noise draw per window for the shown (noised) tokens
    for m in range(K.shape[0] - 1):
        t_gen = Kd[m].expand(b, n)  # (B, n)
        if context_mode == "replace":
            t_ctx = Kd[m, :1].expand(b, k)  # (B, k): the generated tokens' time
        else:
            t_ctx = torch.ones(b, k, device=dev, dtype=dt)
        seq = torch.cat([context, x], dim=1)  # (B, k+n, D) stored (clean) values
        t = torch.cat([t_ctx, t_gen], dim=1)  # (B, k+n)
        t_in = torch.where(t >= 1.0, torch.full_like(t, 1.0 - eps), t) if eps > 0 else t
        show = t_in < t  # stabilised tokens (t = 1 shown at 1 - eps)
        if context_mode == "replace" and k > 0:
            show = show.clone()
            show[:, :k] = True  # replacement: context noised to the generated tokens' time
        x_in = seq
        if bool(show.any()):
            if z is None:
                z = torch.randn(seq.shape, generator=generator, dtype=dt).to(dev)
            # x_t = alpha_t x1 + sigma_t z at the shown time (values themselves stay clean)
            x_in = torch.where(show[..., None], path.sample_xt(seq, z, t_in), seq)
        out = model(x_in, t_in, **(cond or {}))  # (B, k+n, D)
        v = convert(out, x_in, t_in, path, prediction, "velocity")[:, k:]  # (B, n, D)
        step = (Kd[m + 1] - Kd[m])[None, :, None]  # (1, n, 1)
        x = x + step * v  # per-token Euler: x_j += (K[m+1,j] - K[m,j]) v_j
        if info is not None:
            info["nfe"] = info.get("nfe", 0) + 1
    return x


@torch.no_grad()
def rollout(model: Model, context: Tensor, length: int, horizon: int, *, chunk: int | None = None,
            schedule: str | Tensor = "pyramid", steps: int = 10, delay: int | None = None,
            path: str | GaussianPath = "linear", prediction: str = "velocity",
            generator: torch.Generator | None = None, stabilization: float = 0.0,
            context_mode: str = "clean", encode: Encode | None = None,
            decode: Decode | None = None, cond: dict[str, Any] | None = None,
            info: dict[str, Any] | None = None) -> Tensor:
    """Sliding-window generation of ``length`` tokens after ``context`` (any length).

    Each window holds at most ``horizon`` tokens: the last ``min(done, horizon - chunk)``
    tokens so far as context and up to ``chunk`` new ones (:func:`denoise_window`).

    Args:
        model: per-token model (see :func:`denoise_window`); its ``max_len`` attribute, if
            any, bounds ``horizon``.
        context: ``(B, k, D)`` given tokens, ``0 <= k < horizon``.
        length: tokens to generate after the context (may exceed ``horizon`` many times).
        horizon: the training window ``H``.
        chunk: new tokens per window, ``1 <= chunk <= H`` (default ``H // 2``, at least 1).
        schedule: a name of :data:`SCHEDULES` or a ``(M+1, chunk)`` matrix (used for full
            chunks; a shorter last chunk uses the named schedule with fewer columns, or the
            matrix's first columns).
        steps / delay: rows per token and pyramid lag for named schedules.
        path / prediction / generator / stabilization / context_mode / cond: as
            :func:`denoise_window`.
        encode: ``encode(window_context (B, c, D)) -> (tokens, state)`` maps raw tokens to
            the network's space (e.g. canonical frame + normalisation); ``decode(tokens,
            state) -> raw`` maps generated tokens back. Default: identity.
        info: updated with ``"nfe"`` (network calls, all windows) and ``"windows"``.

    Returns:
        ``(B, k + length, D)``: the context followed by the generated tokens.
    """
    _check_seq(context, "context")
    H = _pos_int(horizon, "horizon")
    L = _pos_int(length, "length")
    max_len = getattr(model, "max_len", None)
    if max_len is not None and H > int(max_len):
        raise ValueError(f"horizon {H} exceeds the model's positional range max_len={max_len}")
    k = context.shape[1]
    if k >= H:
        raise ValueError(f"rollout context of {k} tokens is not shorter than the horizon {H}: "
                         f"give at most {H - 1} tokens (the window also holds new ones)")
    c = max(1, H // 2) if chunk is None else _pos_int(chunk, "chunk")
    if c > H:
        raise ValueError(f"chunk {c} exceeds the horizon {H}")
    if isinstance(schedule, str) and schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if isinstance(schedule, Tensor):
        check_schedule(schedule, c)
    encode = encode or (lambda w: (w, None))
    decode = decode or (lambda y, _s: y)
    seq = context
    if info is not None:
        info.setdefault("nfe", 0)
        info.setdefault("windows", 0)
    while seq.shape[1] < k + L:
        ctx_raw = seq[:, seq.shape[1] - min(seq.shape[1], H - c):]  # (B, <= H-c, D)
        n = min(c, k + L - seq.shape[1])
        K = (make_schedule(schedule, n, steps, delay) if isinstance(schedule, str)
             else schedule[:, :n])
        ctx_net, state = encode(ctx_raw)
        new = denoise_window(model, ctx_net, n, K, path=path, prediction=prediction,
                             generator=generator, stabilization=stabilization,
                             context_mode=context_mode, cond=cond, info=info)  # (B, n, D)
        new = decode(new, state)  # non-finite values propagate (evaluations count them)
        seq = torch.cat([seq, new.to(seq.dtype)], dim=1)
        if info is not None:
            info["windows"] += 1
    return seq
