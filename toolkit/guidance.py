"""Guidance as model wrappers usable by every solver.

Each wrapper is itself a model ``(x_t, t, **cond) -> Tensor`` of the same prediction kind as
the wrapped one, so it plugs into :func:`toolkit.sample` with any solver. NFE accounting:
a wrapper exposes ``nfe_per_call`` (cost of a fully guided call) and ``last_nfe`` (cost of
its latest call, read by :class:`toolkit.field.Denoiser`); one concatenated batch = 1 NFE.

Classifier-free guidance (Ho & Salimans 2022) ``e_u + w (e_c - e_u)`` is the same in every
parameterization: at fixed ``(x_t, t)`` the maps between data/noise/velocity/score/v are
affine with coefficients that do not depend on the condition (:mod:`toolkit.param`), and an
affine map commutes with the affine combination (guiding noise then converting to velocity
equals guiding velocities). CFG rescale is not affine: it acts on the output as returned.
Classifier guidance and DPS shift the score (:func:`score_shift` maps it to any kind).

Conditions. ``cond``/``uncond`` dicts hold the branch-specific keyword arguments of the
model (e.g. ``cond={"y": labels}, uncond={"y": null_labels}``); keyword arguments given at
call time (``toolkit.sample(cond=...)``) are shared by all branches and overridden by them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from toolkit.field import Model, nfe_per_call
from toolkit.param import check_prediction, convert
from toolkit.paths import GaussianPath
from toolkit.paths import get as get_path
from toolkit.paths.base import expand_like
from toolkit.registry import unknown_name_error

__all__ = [
    "ClassifierFreeGuidance", "MultiConditionGuidance", "ClassifierGuidance", "DPS", "cfg",
    "multi_cfg", "classifier_guidance", "dps", "score_shift", "cfg_rescale",
]


def _combine_kwargs(branches: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    """Concatenate per-branch keyword arguments along the batch for one network call."""
    keys = set().union(*branches)
    out: dict[str, Any] = {}
    for key in keys:
        if any(key not in b for b in branches):
            raise ValueError(
                f"guidance: keyword {key!r} is given in some branches only; pass it in all "
                "branches (e.g. a null value in uncond) or use batched=False"
            )
        vals = [b[key] for b in branches]
        if all(isinstance(v, Tensor) and v.ndim > 0 for v in vals):
            parts = []
            for v in vals:
                if v.shape[0] not in (1, batch):
                    raise ValueError(
                        f"guidance: keyword {key!r} has batch {v.shape[0]}, expected {batch} "
                        "or 1; use batched=False for other layouts"
                    )
                parts.append(v.expand(batch, *v.shape[1:]))
            out[key] = torch.cat(parts, 0)
        elif all(hasattr(type(v), "cat") and hasattr(v, "pooled") for v in vals):
            # structured conditions (conditioners.base.Condition): batch-concatenate,
            # padding token sequences to the longest with a False mask
            out[key] = type(vals[0]).cat(list(vals))
        elif all(v is vals[0] or _equal(v, vals[0]) for v in vals):
            out[key] = vals[0]
        else:
            raise ValueError(
                f"guidance: keyword {key!r} differs between branches but is not a batched "
                "Tensor, so the branches cannot share one batch; use batched=False"
            )
    return out


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and torch.equal(a, b)
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - objects without a usable ==
        return False


def _mask_like(mask: Tensor, x: Tensor) -> Tensor:
    """A boolean ``(B,)``/``(B, L)`` mask with trailing singleton dims to broadcast on ``x``."""
    return mask.reshape(*mask.shape, *([1] * (x.ndim - mask.ndim)))


def _mix(e_u: Tensor, e_c: Tensor, w: float | Tensor) -> Tensor:
    """``e_u + w (e_c - e_u)``, written so that w = 0 and w = 1 are exact."""
    if isinstance(w, Tensor):
        w = expand_like(w, e_c)
        return torch.where(w <= 0.5, e_u + w * (e_c - e_u), e_c + (w - 1) * (e_c - e_u))
    return e_u + w * (e_c - e_u) if w <= 0.5 else e_c + (w - 1.0) * (e_c - e_u)


def cfg_rescale(guided: Tensor, cond_out: Tensor, phi: float) -> Tensor:
    """CFG rescale, Lin et al. 2024 ("Common diffusion noise schedules ..."), eqs. 15-16.

    ``x_rescaled = x_cfg * std(x_pos) / std(x_cfg)``, ``x_final = phi x_rescaled +
    (1 - phi) x_cfg``; standard deviations are per sample over all non-batch dims.
    """
    dims = tuple(range(1, guided.ndim))
    std_pos = cond_out.std(dim=dims, keepdim=True)  # (B, 1, ...)
    std_cfg = guided.std(dim=dims, keepdim=True).clamp_min(torch.finfo(guided.dtype).tiny)
    return phi * guided * (std_pos / std_cfg) + (1.0 - phi) * guided


class _PerThreadNFE:
    """``last_nfe`` kept per thread, so one wrapper shared by threads counts correctly."""

    @property
    def last_nfe(self) -> int | None:
        tls = self.__dict__.get("_tls")
        return getattr(tls, "value", None) if tls is not None else None

    @last_nfe.setter
    def last_nfe(self, value: int | None) -> None:
        if "_tls" not in self.__dict__:
            self.__dict__["_tls"] = threading.local()
        self.__dict__["_tls"].value = value


class _Guided(_PerThreadNFE):
    """Shared machinery: branch evaluation (batched or not), interval test, NFE counting."""

    def __init__(self, model: Model, batched: bool, interval: tuple[float, float] | None):
        if not callable(model):
            raise TypeError(f"guidance: model must be callable, got {type(model).__name__}")
        self.model, self.batched = model, bool(batched)
        if interval is not None:
            lo, hi = (float(v) for v in interval)
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(
                    f"guidance interval must satisfy 0 <= t_lo <= t_hi <= 1, got {interval}"
                )
            interval = (lo, hi)
        self.interval = interval
        self.last_nfe: int | None = None
        self.nfe = 0

    def _inside(self, t: Tensor) -> Tensor | None:
        """Mask of times inside the guidance interval (None: guide everywhere)."""
        if self.interval is None:
            return None
        return (t >= self.interval[0]) & (t <= self.interval[1])

    def _evaluate(
        self, x: Tensor, t: Tensor, branches: list[dict[str, Any]], accumulate: bool = False
    ) -> list[Tensor]:
        """Model outputs for each branch's kwargs; sets (or adds to) ``last_nfe``."""
        n = len(branches)
        if self.batched and n > 1:
            b = x.shape[0]
            kw = _combine_kwargs(branches, b)
            out = self.model(torch.cat([x] * n, 0), torch.cat([t] * n, 0), **kw)
            cost = nfe_per_call(self.model)
            outs = list(out.chunk(n, 0))
        else:
            outs, cost = [], 0
            for kw in branches:
                outs.append(self.model(x, t, **kw))
                cost += nfe_per_call(self.model)
        self.last_nfe = cost + ((self.last_nfe or 0) if accumulate else 0)
        self.nfe += cost
        return outs

    @staticmethod
    def _time(x: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return t.expand(x.shape[0]) if t.ndim == 0 else t


class ClassifierFreeGuidance(_Guided):
    """Classifier-free guidance, Ho & Salimans 2022, eq. 6: ``e_u + w (e_c - e_u)``.

    ``w = 1`` is the conditional model, ``w = 0`` the unconditional one (both exactly; the
    branch not needed is not evaluated). With ``interval=(t_lo, t_hi)`` guidance acts only
    for ``t_lo <= t <= t_hi`` (Kynkäänniemi et al. 2024, "Applying guidance in a limited
    interval"; convert their EDM noise levels with ``path.t_from_sigma_ratio``); outside it
    the conditional output is returned and, when no sample of the batch is inside, the
    unconditional branch is not evaluated. ``rescale = phi > 0`` applies :func:`cfg_rescale`.

    Cost: ``nfe_per_call`` = 1 if ``batched`` (cond and uncond in one doubled batch), else 2.

    Args:
        model: ``model(x, t, **kw)``. scale: ``w``, a float or per-sample ``(B,)`` Tensor.
        cond / uncond: branch keyword arguments (override call-time ones).
        batched: evaluate both branches in one concatenated batch.
        interval: ``(t_lo, t_hi)`` in toolkit time, or None. rescale: ``phi`` in [0, 1].

    Example:
        >>> guided = cfg(net, 4.0, cond={"y": labels}, uncond={"y": null_labels})
        >>> x = toolkit.sample(guided, noise, path="linear", solver="heun", steps=20)
    """

    def __init__(
        self, model: Model, scale: float | Tensor, *, cond: dict[str, Any] | None = None,
        uncond: dict[str, Any] | None = None, batched: bool = True,
        interval: tuple[float, float] | None = None, rescale: float = 0.0,
    ) -> None:
        super().__init__(model, batched, interval)
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"cfg rescale (phi) must be in [0, 1], got {rescale}")
        self.scale, self.rescale = scale, float(rescale)
        self.cond, self.uncond = dict(cond or {}), dict(uncond or {})
        self.nfe_per_call = 1 if self.batched else 2

    def __call__(self, x: Tensor, t: Tensor, **shared: Any) -> Tensor:
        t = self._time(x, t)
        c, u = {**shared, **self.cond}, {**shared, **self.uncond}
        inside = self._inside(t)
        w = self.scale
        if (inside is not None and not bool(inside.any())) or (
            not isinstance(w, Tensor) and w == 1.0
        ):
            return self._evaluate(x, t, [c])[0]
        if inside is None and not isinstance(w, Tensor) and w == 0.0 and self.rescale == 0.0:
            return self._evaluate(x, t, [u])[0]
        e_c, e_u = self._evaluate(x, t, [c, u])
        out = _mix(e_u, e_c, w)
        if self.rescale > 0.0:
            out = cfg_rescale(out, e_c, self.rescale)
        if inside is not None:
            out = torch.where(_mask_like(inside, x), out, e_c)
        return out


class MultiConditionGuidance(_Guided):
    """Guidance with several conditions, each with its own scale.

    ``mode="nested"`` (Brooks et al. 2023, InstructPix2Pix, eq. 3, chained over n conditions):
    ``e(∅) + sum_k s_k [e(c_1..c_k) - e(c_1..c_{k-1})]``; the order of ``conds`` matters and
    all scales 1 give the fully conditional model.
    ``mode="sum"`` (Liu et al. 2022, "Compositional visual generation with composable
    diffusion models", eq. 10): ``e(∅) + sum_k s_k [e(c_k) - e(∅)]``.
    With one condition both are classifier-free guidance. Outside ``interval`` the fully
    conditional model ``e(c_1..c_n)`` is returned (one evaluation). In nested mode leading
    scales equal to 1 telescope exactly (``e(∅) + 1 [e(c_1) - e(∅)] = e(c_1)``), so those
    branches are not evaluated: two conditions with ``s_1 = 1`` cost two branches, not three.

    Cost: ``nfe_per_call`` = 1 if ``batched``, else the number of branches evaluated
    (``n + 1``, less the leading unit scales in nested mode).

    Example:
        >>> g = multi_cfg(net, [{"image": img}, {"text": txt}], [1.5, 7.5],
        ...               uncond={"image": null_img, "text": null_txt})
    """

    MODES = ("nested", "sum")

    def __init__(
        self, model: Model, conds: Sequence[dict[str, Any]], scales: Sequence[float], *,
        uncond: dict[str, Any], mode: str = "nested", batched: bool = True,
        interval: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(model, batched, interval)
        if mode not in self.MODES:
            raise unknown_name_error("multi-condition guidance mode", mode, self.MODES)
        if len(conds) == 0 or len(conds) != len(scales):
            raise ValueError(
                f"multi_cfg: need one scale per condition, got {len(conds)} conds and "
                f"{len(scales)} scales"
            )
        self.conds, self.scales = [dict(c) for c in conds], [float(s) for s in scales]
        self.uncond, self.mode = dict(uncond), mode
        # nested: e(∅) + sum_k s_k [e_k - e_{k-1}] with s_1..s_j = 1 is e_j + sum_{k>j} ...
        lead = 0
        if mode == "nested":
            while lead < len(self.scales) - 1 and self.scales[lead] == 1.0:
                lead += 1
        self._skip = lead
        self.nfe_per_call = 1 if self.batched else len(conds) + 1 - lead

    def _branches(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
        base = {**shared, **self.uncond}
        if self.mode == "sum":
            return [base] + [{**base, **c} for c in self.conds]
        out = [base]
        for c in self.conds:
            out.append({**out[-1], **c})
        return out[self._skip:]

    def __call__(self, x: Tensor, t: Tensor, **shared: Any) -> Tensor:
        t = self._time(x, t)
        branches = self._branches(shared)
        full = dict(branches[0])
        for c in self.conds:
            full.update(c)
        inside = self._inside(t)
        if inside is not None and not bool(inside.any()):
            return self._evaluate(x, t, [full])[0]
        outs = self._evaluate(x, t, branches)
        out = outs[0]
        for k, s in enumerate(self.scales[self._skip:], start=1):
            prev = outs[k - 1] if self.mode == "nested" else outs[0]
            out = out + s * (outs[k] - prev)
        if inside is not None:
            # the fully conditional output is already a branch in nested mode
            if self.mode == "nested":
                e_full = outs[-1]
            else:  # a batch straddling the interval edge needs one more evaluation
                e_full = self._evaluate(x, t, [full], accumulate=True)[0]
            out = torch.where(_mask_like(inside, x), out, e_full)
        return out


def score_shift(
    delta_score: Tensor, x: Tensor, t: Tensor, path: GaussianPath, prediction: str
) -> Tensor:
    """Change of a ``prediction``-kind output when the score changes by ``delta_score``.

    From ``eps = -sigma score`` and ``x1 = (x - sigma eps) / alpha`` (param.py):
    score ``d``; noise ``-sigma d``; data ``(sigma^2 / alpha) d``; velocity
    ``(alpha' sigma^2 / alpha - sigma sigma') d = (g^2 / 2) d`` (the probability-flow drift,
    Song et al. 2021, eq. 13); v ``-(sigma / alpha)(alpha^2 + sigma^2) d``. Where
    ``alpha = 0`` (the prior end of flow paths) the data/velocity/v shifts are set to 0.
    """
    kind = check_prediction(prediction)
    tt = t.to(torch.float64)
    a, s = path.alpha(tt), path.sigma(tt)
    if kind == "score":
        c = torch.ones_like(tt)
    elif kind == "noise":
        c = -s
    else:
        inv_a = torch.where(a > 0, 1.0 / torch.where(a > 0, a, torch.ones_like(a)), 0.0)
        if kind == "data":
            c = s * s * inv_a
        elif kind == "velocity":
            c = path.d_alpha(tt) * s * s * inv_a - s * path.d_sigma(tt)
        else:  # "v"
            c = -s * inv_a * (a * a + s * s)
    return expand_like(c.to(x.dtype), x) * delta_score


class ClassifierGuidance(_PerThreadNFE):
    """Classifier guidance, Dhariwal & Nichol 2021, eq. 10 / Alg. 1 in score form:

    ``score_guided(x, t) = score(x, t) + scale * grad_x log p(y | x_t)``,

    returned as the wrapped model's prediction kind (via :func:`score_shift`). The gradient
    is taken under ``torch.enable_grad()``, so it works inside ``toolkit.sample``.

    Args:
        model: the (unconditional) model. log_likelihood: ``(x_t, t) -> (B,)`` giving
            ``log p(y | x_t)`` for the wanted ``y`` (close over the labels).
        scale: guidance scale (1 = the exact conditional score if the classifier is exact).
        path / prediction: the model's path and output kind.
    """

    def __init__(
        self, model: Model, log_likelihood: Callable[[Tensor, Tensor], Tensor], scale: float,
        *, path: str | GaussianPath, prediction: str,
    ) -> None:
        self.model, self.log_likelihood, self.scale = model, log_likelihood, float(scale)
        self.path, self.prediction = get_path(path), check_prediction(prediction)
        self.nfe_per_call = nfe_per_call(model)
        self.last_nfe: int | None = None

    def __call__(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        t = _Guided._time(x, t)
        out = self.model(x, t, **cond)
        self.last_nfe = nfe_per_call(self.model)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            ll = self.log_likelihood(xg, t)
            if ll.shape != (x.shape[0],):
                raise ValueError(
                    f"log_likelihood must return shape (B,) = ({x.shape[0]},), "
                    f"got {tuple(ll.shape)}"
                )
            (grad,) = torch.autograd.grad(ll.sum(), xg)
        return out + score_shift(self.scale * grad, x, t, self.path, self.prediction)


class DPS(_PerThreadNFE):
    """Diffusion posterior sampling (Chung et al. 2023) for ``y = A(x_1) + noise``.

    The intractable ``grad log p(y | x_t)`` is approximated through the data prediction
    ``x1_hat(x_t) = E[x_1 | x_t]`` (their Thm. 1); with their Alg. 1 step size
    ``zeta_i = zeta / ||y - A(x1_hat)||`` (``normalize=True``) the score is shifted by

        ``-zeta * grad_x ||y - A(x1_hat(x))||^2 / ||y - A(x1_hat(x))||``   (per sample),

    and by ``-zeta * grad_x ||y - A(x1_hat(x))||^2`` if ``normalize=False`` (``zeta =
    1 / (2 sigma_y^2)`` is the Gaussian-likelihood form). Note the shift is applied to the
    score (a model wrapper cannot see the solver's step), not as Alg. 1's per-step update.
    The gradient flows through the network (one forward with autograd plus one backward
    per call; counted as 1 NFE).
    """

    def __init__(
        self, model: Model, operator: Callable[[Tensor], Tensor], measurement: Tensor,
        zeta: float, *, path: str | GaussianPath, prediction: str, normalize: bool = True,
    ) -> None:
        self.model, self.operator, self.y = model, operator, measurement
        self.zeta, self.normalize = float(zeta), bool(normalize)
        self.path, self.prediction = get_path(path), check_prediction(prediction)
        self.nfe_per_call = nfe_per_call(model)
        self.last_nfe: int | None = None

    def residual(self, x1: Tensor) -> Tensor:
        """Per-sample measurement residual ``||y - A(x1)||``, shape ``(B,)``."""
        r = self.y - self.operator(x1)
        return r.flatten(1).norm(dim=1)

    def __call__(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        t = _Guided._time(x, t)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = self.model(xg, t, **cond)
            self.last_nfe = nfe_per_call(self.model)
            x1 = convert(out, xg, t, self.path, self.prediction, "data")
            sq = (self.y - self.operator(x1)).flatten(1).pow(2).sum(1)  # (B,)
            if self.normalize:
                sq = sq / sq.detach().sqrt().clamp_min(torch.finfo(sq.dtype).tiny)
            (grad,) = torch.autograd.grad(sq.sum(), xg)
        delta = score_shift(-self.zeta * grad, x, t, self.path, self.prediction)
        return out.detach() + delta


# Functional spellings: ``cfg(model, 4.0, cond=..., uncond=...)`` etc.
cfg = ClassifierFreeGuidance
multi_cfg = MultiConditionGuidance
classifier_guidance = ClassifierGuidance
dps = DPS
