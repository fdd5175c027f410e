"""A per-token diffusion / flow head: model ``p(x | z)`` for continuous tokens.

MAR (Li et al. 2024, "Autoregressive Image Generation without Vector Quantization", sec. 3)
replaces the categorical softmax of an autoregressive model by a small denoising network
``eps_theta(x_t | t, z)`` conditioned on the backbone's per-token vector ``z``; its loss is
the diffusion loss ``L(z, x) = E_{eps, t} || eps - eps_theta(x_t | t, z) ||^2`` (their eq. 2)
and the backbone is trained through ``z``. Here the head works with any toolkit path and
parameterization (default: rectified flow, velocity prediction, ``x_t = t x + (1 - t) x0``):

- ``head.loss(target, z, mask)`` draws ``batch_mul`` independent ``(t, x0)`` per token
  (MAR's ``diffusion_batch_mul``: the head is cheap, the backbone pass that made ``z`` is
  not, so several noise draws per ``z`` lower the gradient variance for free);
- ``head.sample(z, temperature, cfg)`` integrates any toolkit solver from
  ``x0 ~ N(0, tau^2 I)``: the temperature ``tau`` scales the prior, the ODE analogue of
  MAR's temperature on the DDPM noise (tau < 1 trades diversity for fidelity); ``cfg`` is
  classifier-free guidance between ``z`` and ``z_uncond`` (Ho & Salimans 2022, eq. 6).

The network is MAR's residual MLP with AdaLN (its ``SimpleMLPAdaLN``): ``c = emb(t) + W z``
modulates every block's LayerNorm; gates and the output layer start at zero.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from toolkit.nn.layers import AdaLNModulation, TimestepEmbedding, modulate

__all__ = ["DiffusionHead"]


class _ResBlock(nn.Module):
    """``x + g * MLP(modulate(LN(x), shift, scale))`` with ``(shift, scale, g)`` from ``c``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = AdaLNModulation(width, width, 3)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale, gate = (m[:, 0] for m in self.ada(c))  # (N, W) each
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class DiffusionHead(nn.Module):
    """Conditional denoiser ``f(x_t, t, z)`` over ``token_dim``-vectors (module docstring).

    Args:
        token_dim: d, the width of a token ``x``. cond_dim: width of ``z``.
        width / depth: MLP width and number of residual AdaLN blocks (MAR: 1024 / 3).
        path: a :mod:`toolkit.paths` name or object. prediction: what the network outputs
            (``velocity | data | noise | v | score``; converted exactly by the toolkit).
        t_sampler / t_sampler_kwargs: training times (:mod:`toolkit.timesteps`).
        batch_mul: noise draws per token in :meth:`loss` (MAR uses 4).
        solver / steps: default sampler of :meth:`sample` (any ``toolkit solvers`` name).
    """

    def __init__(self, token_dim: int, cond_dim: int, width: int = 256, depth: int = 3,
                 path: Any = "linear", prediction: str = "velocity",
                 t_sampler: str = "logit_normal", t_sampler_kwargs: dict | None = None,
                 batch_mul: int = 4, solver: str = "heun", steps: int = 16) -> None:
        super().__init__()
        from toolkit import paths
        from toolkit import timesteps as timesteps_mod
        from toolkit.param import check_prediction

        if min(token_dim, cond_dim, width, depth, batch_mul, steps) < 1:
            raise ValueError("DiffusionHead: token_dim, cond_dim, width, depth, batch_mul and "
                             f"steps must be >= 1, got {token_dim}, {cond_dim}, {width}, "
                             f"{depth}, {batch_mul}, {steps}")
        self.token_dim, self.cond_dim = int(token_dim), int(cond_dim)
        self.path = paths.get(path)
        self.prediction = check_prediction(prediction)
        self.t_sampler = timesteps_mod.get(t_sampler, **dict(t_sampler_kwargs or {}))
        self.batch_mul, self.solver, self.steps = int(batch_mul), solver, int(steps)
        self.inp = nn.Linear(self.token_dim, width)
        self.t_embed = TimestepEmbedding(width)
        self.z_embed = nn.Linear(self.cond_dim, width)
        self.blocks = nn.ModuleList(_ResBlock(width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = AdaLNModulation(width, width, 2)
        self.out = nn.Linear(width, self.token_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _check(self, x: Tensor | None, z: Tensor, what: str) -> None:
        if z.ndim < 1 or z.shape[-1] != self.cond_dim:
            raise ValueError(f"DiffusionHead.{what}: z must be (..., {self.cond_dim}), got "
                             f"{tuple(z.shape)}")
        if x is not None and (x.shape[-1] != self.token_dim or x.shape[:-1] != z.shape[:-1]):
            raise ValueError(f"DiffusionHead.{what}: tokens must be (..., {self.token_dim}) "
                             f"with the same leading shape as z {tuple(z.shape[:-1])}, got "
                             f"{tuple(x.shape)}")

    def forward(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """The network's ``prediction`` for noisy tokens ``x (N, d)``, times ``t (N,)`` (or a
        scalar) and conditions ``z (N, c)``."""
        self._check(x, z, "forward")
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype).expand(x.shape[0])  # (N,)
        c = self.t_embed(t) + self.z_embed(z.to(self.inp.weight.dtype))  # (N, W)
        h = self.inp(x.to(self.inp.weight.dtype))  # (N, W)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = (m[:, 0] for m in self.final_ada(c))
        return self.out(modulate(self.final_norm(h), shift, scale)).to(x.dtype)  # (N, d)

    def loss(self, target: Tensor, z: Tensor, mask: Tensor | None = None, *,
             x0: Tensor | None = None, t: Tensor | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        """Mean denoising loss over the (masked) tokens, ``batch_mul`` draws each.

        Args:
            target: clean tokens ``(..., d)``. z: their conditions ``(..., c)`` (gradients
                flow into the backbone that produced them).
            mask: ``(...)`` weights / booleans (1 = token counts, e.g. MAR's masked tokens).
            x0 / t: optional noise ``(batch_mul, ..., d)`` and times ``(batch_mul, ...)``
                (e.g. from a training step's process-consistent draws); drawn otherwise.
            generator: RNG for the draws that are not given.
        """
        from toolkit.losses import regression_loss

        self._check(target, z, "loss")
        m, d = self.batch_mul, self.token_dim
        lead = tuple(target.shape[:-1])
        x1 = target.reshape(1, -1, d).expand(m, -1, d).reshape(-1, d)  # (m N, d)
        zz = z.reshape(1, -1, self.cond_dim).expand(m, -1, self.cond_dim).reshape(x1.shape[0], -1)
        if x0 is not None:
            if tuple(x0.shape) != (m, *lead, d):
                raise ValueError(f"DiffusionHead.loss: x0 must be {(m, *lead, d)}, got "
                                 f"{tuple(x0.shape)}")
            x0 = x0.reshape(-1, d).to(target)
        if t is None:
            t = self.t_sampler((m, *lead) if lead else m, generator=generator,
                               dtype=target.dtype)
        if tuple(t.shape) != (m, *lead):
            raise ValueError(f"DiffusionHead.loss: t must be {(m, *lead)}, got {tuple(t.shape)}")
        w = None
        if mask is not None:
            if tuple(mask.shape) != lead:
                raise ValueError(f"DiffusionHead.loss: mask must be {lead}, got "
                                 f"{tuple(mask.shape)}")
            w = mask.to(target.dtype).reshape(1, -1).expand(m, -1).reshape(-1, 1)
            w = w.expand(-1, d)  # (m N, d)
            if float(w.sum()) == 0.0:
                return target.sum() * 0.0 + z.sum() * 0.0
        out = regression_loss(self, x1, self.path, self.prediction, x0=x0,
                              t=t.reshape(-1).to(target.device), cond={"z": zz}, mask=w,
                              generator=generator)
        return out.loss

    @torch.no_grad()
    def sample(self, z: Tensor, temperature: float = 1.0, cfg: float | Tensor = 1.0,
               z_uncond: Tensor | None = None, *, steps: int | None = None,
               solver: str | None = None, generator: torch.Generator | None = None,
               info: dict[str, Any] | None = None) -> Tensor:
        """Tokens ``(..., d)`` drawn from ``p(x | z)``.

        Args:
            z: conditions ``(..., c)``. temperature: tau, the prior's std (``x0 ~ N(0,
                tau^2 I)``; 0 gives the deterministic flow from the mean).
            cfg: guidance scale ``w`` (float, or per-token ``(N,)`` tensor); needs
                ``z_uncond`` (same shape as ``z``) unless ``w == 1``.
            steps / solver: override the head's defaults. generator: RNG for ``x0``.
            info: receives ``nfe`` (head evaluations) when a dict is given.
        """
        from toolkit import guidance
        from toolkit.sampling import sample

        self._check(None, z, "sample")
        if temperature < 0:
            raise ValueError(f"DiffusionHead.sample: temperature must be >= 0, got {temperature}")
        lead = tuple(z.shape[:-1])
        zf = z.reshape(-1, self.cond_dim)  # (N, c)
        x0 = torch.randn(zf.shape[0], self.token_dim, generator=generator,
                         dtype=torch.float32).to(z.device, z.dtype) * float(temperature)
        field: Any = self
        cond: dict[str, Any] = {"z": zf}
        guided = isinstance(cfg, Tensor) or float(cfg) != 1.0
        if guided:
            if z_uncond is None or tuple(z_uncond.shape) != tuple(z.shape):
                raise ValueError("DiffusionHead.sample: cfg != 1 needs z_uncond shaped like z "
                                 f"{tuple(z.shape)}, got "
                                 f"{None if z_uncond is None else tuple(z_uncond.shape)}")
            w = cfg.reshape(-1).to(z) if isinstance(cfg, Tensor) else float(cfg)
            field = guidance.cfg(self, w, cond={"z": zf},
                                 uncond={"z": z_uncond.reshape(-1, self.cond_dim)})
            cond = {}
        x = sample(field, x0, path=self.path, prediction=self.prediction,
                   solver=solver or self.solver, steps=steps or self.steps, cond=cond,
                   info=info)
        return x.reshape(*lead, self.token_dim)
