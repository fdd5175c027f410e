"""Closed-form oracle: a Gaussian mixture pushed through any affine Gaussian path.

For data ``x_1 ~ sum_k w_k N(mu_k, S_k)`` and ``x_t = alpha x_1 + sigma x_0`` the marginal is
``p_t = sum_k w_k N(alpha mu_k, C_k)`` with ``C_k = alpha^2 S_k + sigma^2 I``, and given the
component the pair (x_1, x_0) is jointly Gaussian, so

    E[x_1 | x_t, k] = mu_k + alpha S_k C_k^{-1} (x_t - alpha mu_k),
    E[x_0 | x_t, k] = sigma C_k^{-1} (x_t - alpha mu_k),

averaged with the posterior responsibilities ``r_k(x_t)``. Both are finite on all of
[0, 1] when every ``S_k`` is positive definite, so the oracle's velocity
``alpha' E[x_1|x_t] + sigma' E[x_0|x_t]`` needs no division by sigma or alpha.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from toolkit.param import check_prediction, from_data_noise
from toolkit.paths.base import GaussianPath, expand_like


class GaussianMixture:
    """A Gaussian mixture in ``D`` dimensions with exact path quantities.

    Args:
        means: ``(K, D)``. covs: ``(K, D, D)`` positive definite. weights: ``(K,)``.
    """

    def __init__(self, means: Tensor, covs: Tensor, weights: Tensor | None = None) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        k, d = self.means.shape
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must be (K, D, D) = {(k, d, d)}, got {tuple(covs.shape)}")
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else weights
        self.weights = torch.as_tensor(w, dtype=torch.float64) / torch.as_tensor(w).sum()
        self.covs = 0.5 * (covs + covs.transpose(-1, -2))
        self.evals, self.evecs = torch.linalg.eigh(self.covs)  # (K, D), (K, D, D)
        if torch.any(self.evals <= 0):
            raise ValueError("GMM covariances must be positive definite")
        self.dim = d

    # -- sampling and densities ----------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` points ``(n, D)`` (float64)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        scale = self.evecs[k] * self.evals[k].sqrt().unsqueeze(-2)  # U sqrt(Lambda)
        return self.means[k] + torch.einsum("nij,nj->ni", scale, z)

    def _parts(self, x: Tensor, t: Tensor, path: GaussianPath):
        x = x.to(torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        a = path.alpha(t)[:, None, None]  # (B, 1, 1)
        s = path.sigma(t)[:, None, None]
        diff = x[:, None, :] - a * self.means[None]  # (B, K, D)
        z = torch.einsum("kdj,bkd->bkj", self.evecs, diff)  # U_k^T diff, (B, K, D)
        var = a * a * self.evals[None] + s * s  # (B, K, D): eigenvalues of C_k
        logn = -0.5 * ((z * z / var).sum(-1) + torch.log(2 * math.pi * var).sum(-1))  # (B, K)
        logits = logn + torch.log(self.weights)[None]
        return a, s, z, var, logits

    def log_prob(
        self, x: Tensor, t: Tensor | float = 1.0, path: GaussianPath | None = None
    ) -> Tensor:
        """``log p_t(x)`` under ``path`` (data density if ``path`` is None)."""
        if path is None:
            from toolkit.paths.flow import LinearPath

            path, t = LinearPath(), 1.0
        return torch.logsumexp(self._parts(x, t, path)[-1], dim=-1)

    def posterior_means(self, x: Tensor, t: Tensor, path: GaussianPath) -> tuple[Tensor, Tensor]:
        """``(E[x_1 | x_t], E[x_0 | x_t])``, each ``(B, D)`` in float64."""
        a, s, z, var, logits = self._parts(x, t, path)
        r = torch.softmax(logits, dim=-1)[..., None]  # (B, K, 1)
        cinv_diff = torch.einsum("kdj,bkj->bkd", self.evecs, z / var)  # C_k^{-1} diff
        sig_cinv = torch.einsum("kdj,bkj->bkd", self.evecs, self.evals[None] * z / var)
        e1 = self.means[None] + a * sig_cinv  # (B, K, D)
        e0 = s * cinv_diff
        return (r * e1).sum(1), (r * e0).sum(1)

    def predict(self, x: Tensor, t: Tensor, path: GaussianPath, prediction: str) -> Tensor:
        """Exact network output of kind ``prediction`` at ``(x, t)``, in ``x``'s dtype."""
        kind = check_prediction(prediction)
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        x64 = x.to(torch.float64)
        x1, x0 = self.posterior_means(x64, t, path)
        if kind == "velocity":
            out = expand_like(path.d_alpha(t), x64) * x1 + expand_like(path.d_sigma(t), x64) * x0
        else:
            out = from_data_noise(x1, x0, x64, t, path, kind)
        return out.to(x.dtype)

    def model(self, path: GaussianPath, prediction: str = "velocity"):
        """A model callable ``(x, t) -> prediction`` that is exact for this mixture."""

        def fn(x: Tensor, t: Tensor, **_: object) -> Tensor:
            return self.predict(x, t, path, prediction)

        return fn


def ring_gmm(
    k: int = 8, radius: float = 1.0, radial_std: float = 0.15, tangential_std: float = 0.15
) -> GaussianMixture:
    """``k`` equal-weight 2-D components on a ring, anisotropic in radial/tangential axes.

    The benchmark's "thin" variant is ``radial_std=0.03, tangential_std=0.15``; the
    "smooth" variant uses 0.15 for both.
    """
    ang = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    radial = torch.stack([torch.cos(ang), torch.sin(ang)], -1)  # (K, 2)
    tangential = torch.stack([-torch.sin(ang), torch.cos(ang)], -1)
    basis = torch.stack([radial, tangential], -1)  # (K, 2, 2), columns = axes
    lam = torch.tensor([radial_std**2, tangential_std**2], dtype=torch.float64)
    covs = basis @ torch.diag_embed(lam.expand(k, 2)) @ basis.transpose(-1, -2)
    return GaussianMixture(radius * radial, covs)
