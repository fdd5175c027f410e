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

from toolkit.param import Coefs, check_prediction, convert, scalar_coefs, to_data_noise
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
    coefs: Coefs | None = None  # float64 path coefficients when t is one time for the batch

    def as_(self, kind: str) -> Tensor:
        """The prediction expressed as ``kind`` (``data | noise | velocity | score | v``)."""
        return convert(self.raw, self.x, self.t, self.path, self.kind, kind, coefs=self.coefs)

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
        if self.coefs is not None:
            return self.as_("data"), self.as_("noise")
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
        self._coef_cache: dict[float, Coefs] = {}

    def precompute(self, ts: Tensor) -> None:
        """Fill the coefficient cache for all grid times in one vectorised call."""
        tt = torch.as_tensor(ts, dtype=torch.float64).flatten()
        p = self.path
        cols = [f(tt).tolist() for f in (p.alpha, p.sigma, p.d_alpha, p.d_sigma)]
        for i, t in enumerate(tt.tolist()):
            self._coef_cache[t] = (cols[0][i], cols[1][i], cols[2][i], cols[3][i])

    def coefs(self, t: float) -> Coefs:
        """Cached float64 ``(alpha, sigma, alpha', sigma')`` at scalar time ``t``."""
        c = self._coef_cache.get(t)
        if c is None:
            c = self._coef_cache[t] = scalar_coefs(self.path, t)
        return c

    def __call__(self, x: Tensor, t: Tensor | float) -> Prediction:
        """Evaluate the model at ``x`` and scalar/per-sample/per-token time ``t``."""
        coefs = None
        if isinstance(t, float | int) or (isinstance(t, Tensor) and t.ndim == 0):
            coefs = self.coefs(float(t))
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
        return Prediction(out, self.prediction, x, t, self.path, coefs)

    def velocity(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Probability-flow velocity ``dx/dt``."""
        return self(x, t).velocity

    def data(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Data prediction ``E[x_1 | x_t]``."""
        return self(x, t).data

    def ends_at_data(self, t: float) -> bool:
        """Whether ``sigma_t`` is (numerically) zero, where only a data step is well posed."""
        a, s, _, _ = self.coefs(float(t))
        return s <= 1e-9 * max(a, 1e-300)
