"""The bridge between a network and the solvers.

A model is any callable ``model(x_t, t, **cond) -> Tensor`` with ``t`` of shape ``(B,)``
(or per-token ``(B, L)``). :class:`Denoiser` binds it to a path and a prediction kind, checks
its output, counts network function evaluations (NFE) honestly, and hands solvers whatever
quantity they integrate (velocity, data, noise or score), converted exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from toolkit.param import check_prediction, convert, to_data_noise
from toolkit.paths.base import GaussianPath

Model = Callable[..., Tensor]


@dataclass
class Prediction:
    """One network evaluation at ``(x, t)``, convertible to any parameterization."""

    raw: Tensor
    kind: str
    x: Tensor
    t: Tensor
    path: GaussianPath

    def as_(self, kind: str) -> Tensor:
        """The prediction expressed as ``kind`` (``data | noise | velocity | score | v``)."""
        return convert(self.raw, self.x, self.t, self.path, self.kind, kind)

    @property
    def velocity(self) -> Tensor:
        return self.as_("velocity")

    @property
    def data(self) -> Tensor:
        return self.as_("data")

    @property
    def noise(self) -> Tensor:
        return self.as_("noise")

    @property
    def score(self) -> Tensor:
        return self.as_("score")

    def data_noise(self) -> tuple[Tensor, Tensor]:
        """``(x1_hat, eps_hat)``."""
        return to_data_noise(self.raw, self.x, self.t, self.path, self.kind)


def nfe_per_call(model: Model) -> int:
    """Network evaluations the most recent call of ``model`` cost.

    Read right after a call. Wrappers whose cost varies from call to call (a guidance
    interval skips the unconditional branch) expose it as ``last_nfe``; otherwise the
    static ``nfe_per_call`` attribute is used (default 1; unbatched guidance reports 2).
    """
    last = getattr(model, "last_nfe", None)
    if last is not None:
        return int(last)
    return int(getattr(model, "nfe_per_call", 1))


@dataclass
class Denoiser:
    """A model bound to a path, a prediction kind and fixed conditioning.

    Args:
        model: ``model(x_t, t, **cond) -> Tensor`` of the same shape as ``x_t``.
        path: Gaussian path the model was trained on.
        prediction: what the model outputs (``data | noise | velocity | score | v``).
        cond: keyword arguments passed to every call.
    """

    model: Model
    path: GaussianPath
    prediction: str
    cond: dict[str, Any] = field(default_factory=dict)
    nfe: int = 0

    def __post_init__(self) -> None:
        self.prediction = check_prediction(self.prediction)
        self._lock = threading.Lock()

    def __call__(self, x: Tensor, t: Tensor | float) -> Prediction:
        """Evaluate the model at ``x`` and scalar/per-sample/per-token time ``t``."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape[0] != x.shape[0]:
            raise ValueError(f"time has batch {t.shape[0]} but x has batch {x.shape[0]}")
        out = self.model(x, t, **self.cond)
        if not isinstance(out, Tensor):
            raise TypeError(f"model returned {type(out).__name__}, expected a Tensor")
        if out.shape != x.shape:
            raise ValueError(
                f"model output shape {tuple(out.shape)} does not match x shape {tuple(x.shape)}"
            )
        if out.dtype != x.dtype:
            if not out.is_floating_point():
                raise TypeError(f"model output dtype {out.dtype} is not floating (x is {x.dtype})")
            out = out.to(x.dtype)
        with self._lock:
            self.nfe += nfe_per_call(self.model)
        return Prediction(out, self.prediction, x, t, self.path)

    def velocity(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Probability-flow velocity ``dx/dt``."""
        return self(x, t).velocity

    def data(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Data prediction ``E[x_1 | x_t]``."""
        return self(x, t).data

    def ends_at_data(self, t: float) -> bool:
        """Whether ``sigma_t`` is (numerically) zero, where only a data step is well posed."""
        tt = torch.tensor(float(t), dtype=torch.float64)
        return bool(self.path.sigma(tt) <= 1e-9 * self.path.alpha(tt).clamp_min(1e-300))
