"""Sample-quality metrics for images in the feature space of a locally trained classifier.

All distances live in the penultimate features of a :class:`~modalities.image.features.
FeatureNet` trained on the dataset's real training split (not Inception-v3), so the Fréchet
distance here is called **FD-local**, never FID: it ranks models evaluated on the same data
with the same feature net, and is not comparable with published FID values. Every report
also carries the same metrics between two disjoint sets of *real* images at the same sample
count (what a perfect generator would score, with the same finite-``n`` bias as the
generated-sample numbers).

* :func:`frechet_distance` — Fréchet (2-Wasserstein) distance between Gaussians fitted to two
  feature sets (Fréchet 1957; Dowson & Landau 1982; as FID in Heusel et al. 2017):

      ``d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})``.

* :func:`precision_recall` — improved precision and recall (Kynkäänniemi et al. 2019,
  "Improved Precision and Recall Metric for Assessing Generative Models", sec. 3): each set
  spans a manifold, the union of balls around its points with radius the distance to the
  point's k-th nearest neighbour in the same set; precision is the fraction of generated
  points inside the real manifold, recall the fraction of real points inside the generated
  one.
* :func:`class_accuracy` — accuracy of the feature net's classifier on labelled images
  (class-conditional samples against their requested labels).
* :func:`image_metrics` / :func:`format_report` — all of it, generated and real-vs-real.
* :func:`pixel_bits_per_dim` — :func:`toolkit.bits_per_dim` for image tensors in the data
  pipeline's ``[-1, 1]`` convention.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from modalities.image.features import (
    FeatureNet,
    FeatureTrainConfig,
    cached_feature_net,
    embed,
    extract_features,
    predict,
    train_feature_net,
)
from toolkit.likelihood import bits_per_dim

__all__ = ["FeatureNet", "FeatureTrainConfig", "cached_feature_net", "class_accuracy", "embed",
           "extract_features", "format_report", "frechet_distance",
           "frechet_distance_gaussians", "gaussian_stats", "image_metrics", "pixel_bits_per_dim",
           "precision_recall", "train_feature_net"]

ArrayLike = Tensor | np.ndarray


def _feats(x: ArrayLike, name: str) -> Tensor:
    """Features as a float64 CPU tensor ``(N, D)``."""
    t = x.detach().cpu() if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"{name} must be (N, D) features, got shape {tuple(t.shape)}")
    return t.double()


def gaussian_stats(feats: ArrayLike) -> tuple[Tensor, Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (float64) of features ``(N, D)``."""
    f = _feats(feats, "feats")
    if len(f) < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {len(f)}")
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (len(f) - 1)


def _psd_sqrt(s: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues -> 0)."""
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp_min(0.0).sqrt()) @ v.T


def frechet_distance_gaussians(mu_a: ArrayLike, sigma_a: ArrayLike, mu_b: ArrayLike,
                               sigma_b: ArrayLike) -> float:
    """Squared Fréchet distance between ``N(mu_a, sigma_a)`` and ``N(mu_b, sigma_b)``.

    ``d^2 = ||mu_a - mu_b||^2 + Tr S_a + Tr S_b - 2 Tr (S_a S_b)^{1/2}`` (Dowson & Landau
    1982). ``S_a S_b`` is similar to the PSD matrix ``S_a^{1/2} S_b S_a^{1/2} = M M^T`` with
    ``M = S_a^{1/2} S_b^{1/2}``, so ``Tr (S_a S_b)^{1/2}`` is the nuclear norm of ``M`` (sum
    of its singular values): real and non-negative by construction, with no complex
    round-off to discard (which ``scipy.linalg.sqrtm(S_a @ S_b)`` produces), and exact for
    singular covariances. Float64 throughout (torch.linalg, so it honours
    ``torch.set_num_threads``).
    """
    mu_a, mu_b, sa, sb = (torch.as_tensor(np.asarray(m) if not isinstance(m, Tensor) else m)
                          .detach().cpu().double() for m in (mu_a, mu_b, sigma_a, sigma_b))
    d = mu_a.shape
    if mu_a.ndim != 1 or mu_b.shape != d or sa.shape != d * 2 or sb.shape != d * 2:
        raise ValueError(f"shape mismatch: mu {tuple(mu_a.shape)} / {tuple(mu_b.shape)}, "
                         f"sigma {tuple(sa.shape)} / {tuple(sb.shape)}")
    tr_sqrt = torch.linalg.svdvals(_psd_sqrt(sa) @ _psd_sqrt(sb)).sum()
    d2 = (mu_a - mu_b).pow(2).sum() + sa.trace() + sb.trace() - 2.0 * tr_sqrt
    return max(float(d2), 0.0)


def frechet_distance(feat_a: ArrayLike, feat_b: ArrayLike) -> float:
    """Squared Fréchet distance between Gaussians fitted to features ``(N_a, D)`` and
    ``(N_b, D)`` (means and unbiased covariances, float64), as in FID (Heusel et al. 2017)
    but in whatever feature space the caller used. 0 for identical sets.

    Matches ``torchmetrics.image.fid.FrechetInceptionDistance`` given the same features (a
    custom ``feature=`` module), which computes ``Tr (S_a S_b)^{1/2}`` from the eigenvalues of
    ``S_a S_b``.
    """
    a, b = _feats(feat_a, "feat_a"), _feats(feat_b, "feat_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimension mismatch: {a.shape[1]} vs {b.shape[1]}")
    return frechet_distance_gaussians(*gaussian_stats(a), *gaussian_stats(b))


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances ``(len(a), len(b))`` (float64, clamped at 0)."""
    d = a.pow(2).sum(1, keepdim=True) - 2.0 * a @ b.T + b.pow(2).sum(1)[None]
    return d.clamp_min_(0.0)


def _knn_radii(x: Tensor, k: int, batch_size: int) -> Tensor:
    """Squared distance ``(N,)`` of each point to its k-th nearest other point of ``x``."""
    out = []
    for start in range(0, len(x), batch_size):
        d = _sq_dists(x[start:start + batch_size], x)  # (b, N)
        rows = torch.arange(d.shape[0])
        d[rows, rows + start] = -1.0  # the point itself: ranked first
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _inside(query: Tensor, support: Tensor, radii: Tensor, batch_size: int) -> Tensor:
    """``(len(query),)`` bool: inside some ball ``||q - s|| <= r_s`` around the support."""
    out = []
    for qb in query.split(batch_size):
        out.append((_sq_dists(qb, support) <= radii[None]).any(1))
    return torch.cat(out)


def precision_recall(real_feats: ArrayLike, fake_feats: ArrayLike, k: int = 3,
                     batch_size: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, sec. 3).

    With ``NN_k(phi, Phi)`` the k-th nearest neighbour of ``phi`` in ``Phi \\ {phi}``,

        ``f(phi, Phi) = 1  if  ||phi - phi'|| <= ||phi' - NN_k(phi', Phi)||  for some phi'``,

    ``precision = mean_{fake} f(phi_g, Phi_real)`` (generated samples that look real) and
    ``recall = mean_{real} f(phi_r, Phi_fake)`` (real samples the generator covers). Distances
    are computed in float64, ``batch_size`` rows at a time (memory ``batch_size x N``).

    Args:
        real_feats / fake_feats: features ``(N_r, D)`` / ``(N_g, D)``.
        k: neighbourhood size (the paper uses 3); both sets need more than ``k`` points.

    Returns:
        ``(precision, recall)``, each in ``[0, 1]``.
    """
    r, g = _feats(real_feats, "real_feats"), _feats(fake_feats, "fake_feats")
    if r.shape[1] != g.shape[1]:
        raise ValueError(f"feature dimension mismatch: {r.shape[1]} vs {g.shape[1]}")
    if isinstance(k, bool) or int(k) != k or k < 1 or min(len(r), len(g)) <= k:
        raise ValueError(f"need an integer k >= 1 and more than k points per set; got k={k}, "
                         f"{len(r)} real and {len(g)} fake")
    precision = _inside(g, r, _knn_radii(r, int(k), batch_size), batch_size)
    recall = _inside(r, g, _knn_radii(g, int(k), batch_size), batch_size)
    return float(precision.double().mean()), float(recall.double().mean())


def class_accuracy(net: FeatureNet, images: ArrayLike, labels: ArrayLike,
                   batch_size: int = 500) -> float:
    """Fraction of images ``(N, C, H, W)`` (uint8 or ``[-1, 1]``) that the feature net's
    classifier assigns to their label ``(N,)`` (e.g. the class a conditional sample was
    generated for)."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if y.shape != (len(images),):
        raise ValueError(f"labels must be (N,) = ({len(images)},), got {tuple(y.shape)}")
    return float((predict(net, torch.as_tensor(images), batch_size) == y).double().mean())


def image_metrics(net: FeatureNet, real_images: ArrayLike, fake_images: ArrayLike,
                  fake_labels: ArrayLike | None = None, *,
                  real_reference: ArrayLike | None = None,
                  reference_labels: ArrayLike | None = None, n: int | None = None,
                  k: int = 3, repeats: int = 1, seed: int = 0,
                  batch_size: int = 500) -> dict[str, Any]:
    """FD-local, precision, recall (and class accuracy) of generated images, next to the
    same metrics between two disjoint real sets of the same size.

    Per draw, ``n`` images are taken (without replacement, seeded) from each set: ``A`` from
    ``real_images``, ``B`` from ``real_reference`` and ``G`` from ``fake_images``; the report
    compares ``A`` with ``G`` and, as the reference, ``A`` with ``B``. Without
    ``real_reference``, ``real_images`` is split at random into disjoint halves ``A`` and
    ``B``; with it, the caller must keep the two real sets disjoint (e.g. training split vs
    held-out split). All three metrics depend on ``n`` (FD is biased upward; the k-NN radii
    shrink as ``n`` grows), so only numbers at the same ``n`` compare; and FD-local
    fluctuates noticeably between draws at a few hundred samples: ``repeats > 1`` averages
    over independent draws and adds the standard deviations (``*_std``).

    Args:
        net: a trained :class:`FeatureNet` (e.g. from :func:`cached_feature_net`).
        real_images / fake_images / real_reference: ``(N, C, H, W)`` uint8 or ``[-1, 1]``.
        fake_labels: ``(N_g,)`` classes the samples were generated for -> ``class_accuracy``.
        reference_labels: ``(N_B,)`` labels of ``real_reference`` -> ``class_accuracy_real``.
        n: sample count per set (default: the largest the sets allow).
        k: precision/recall neighbourhood size. repeats: number of independent draws.
        seed: subsampling seed. batch_size: images per feature-net call.

    Returns:
        ``fd_local``, ``precision``, ``recall``, ``fd_local_real``, ``precision_real``,
        ``recall_real``, ``n``, ``k``, ``repeats``, ``feature_dim``; ``class_accuracy`` /
        ``class_accuracy_real`` when labels are given; ``<metric>_std`` when ``repeats > 1``.
    """
    if isinstance(repeats, bool) or int(repeats) != repeats or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    if real_reference is None and reference_labels is not None:
        raise ValueError("reference_labels needs real_reference")
    fr, _ = embed(net, real_images, batch_size)  # (N_r, D)
    fg, pg = embed(net, fake_images, batch_size)  # (N_g, D), (N_g,)
    fb, pb = (fr, None) if real_reference is None else embed(net, real_reference, batch_size)
    yg, yb = (None if y is None else torch.as_tensor(np.asarray(y), dtype=torch.int64)
              for y in (fake_labels, reference_labels))
    for y, m, name in ((yg, len(fg), "fake_labels"), (yb, len(fb), "reference_labels")):
        if y is not None and y.shape != (m,):
            raise ValueError(f"{name} must be ({m},), got {tuple(y.shape)}")
    n_max = min(len(fr) // 2, len(fg)) if real_reference is None else min(
        len(fr), len(fb), len(fg))
    n = n_max if n is None else int(n)
    if not k < n <= n_max:
        raise ValueError(f"n must be in ({k}, {n_max}] for these sets, got {n}")
    gen = torch.Generator().manual_seed(seed)
    draws: list[dict[str, float]] = []
    for _ in range(int(repeats)):
        perm = torch.randperm(len(fr), generator=gen)
        if real_reference is None:
            ia, ib = perm[:n], perm[n:2 * n]
        else:
            ia, ib = perm[:n], torch.randperm(len(fb), generator=gen)[:n]
        ig = torch.randperm(len(fg), generator=gen)[:n]
        d = {"fd_local": frechet_distance(fr[ia], fg[ig]),
             "fd_local_real": frechet_distance(fr[ia], fb[ib])}
        d["precision"], d["recall"] = precision_recall(fr[ia], fg[ig], k)
        d["precision_real"], d["recall_real"] = precision_recall(fr[ia], fb[ib], k)
        if yg is not None:
            d["class_accuracy"] = float((pg[ig] == yg[ig]).double().mean())
        if yb is not None and pb is not None:
            d["class_accuracy_real"] = float((pb[ib] == yb[ib]).double().mean())
        draws.append(d)
    out: dict[str, Any] = {}
    for key in draws[0]:
        vals = np.array([d[key] for d in draws])
        out[key] = float(vals.mean())
        if repeats > 1:
            out[f"{key}_std"] = float(vals.std(ddof=1))
    out.update(n=n, k=int(k), repeats=int(repeats), feature_dim=net.feature_dim)
    return out


_ROWS = (("fd_local", "FD-local (lower better)"), ("precision", "precision"),
         ("recall", "recall"), ("class_accuracy", "class accuracy"))


def format_report(d: dict[str, Any]) -> str:
    """Plain-text table of an :func:`image_metrics` result: generated vs real reference
    (``mean +- std`` over draws when the result has ``*_std`` entries)."""

    def cell(key: str) -> str:
        if key not in d:
            return f"{'-':>10}{'':13}"
        std = d.get(f"{key}_std")
        return f"{d[key]:>10.4f}" + (f" +- {std:<9.4f}" if std is not None else " " * 13)

    lines = [f"{'metric':<24}{'generated':>10}{'':13}  {'real ref':>10}"]
    for key, label in _ROWS:
        if key in d or f"{key}_real" in d:
            lines.append(f"{label:<24}{cell(key)}  {cell(f'{key}_real')}".rstrip())
    draws = f", mean of {d['repeats']} draws" if d.get("repeats", 1) > 1 else ""
    lines.append(f"n = {d.get('n')} per set{draws}, k = {d.get('k')}, features = "
                 f"{d.get('feature_dim')}-d local classifier (FD-local is not FID)")
    return "\n".join(lines)


def pixel_bits_per_dim(model: Any, images: ArrayLike, *, path: Any = "linear",
                       prediction: str = "velocity", **kwargs: Any) -> Tensor:
    """:func:`toolkit.bits_per_dim` for 8-bit images given as uint8 or as ``[-1, 1]`` floats.

    :func:`toolkit.bits_per_dim` needs the integer pixels (it adds the uniform
    dequantisation noise itself). Float images are taken to be in the data pipeline's
    convention ``x = v / 127.5 - 1`` (:func:`modalities.image.data.to_tensor`) and mapped back
    to ``v = round((x + 1) * 127.5)``; values that are not on that 8-bit grid (generated
    samples, already-dequantised data) are rejected, since a continuous density says nothing
    about them in bits per dimension. Note that the dequantised point is ``(v + u) / 128 - 1``
    (Theis et al. 2016), which differs from ``v / 127.5 - 1`` by at most ``1 / 128``.

    Args:
        model: the pixel-space model (data in ``[-1, 1]``).
        images: ``(B, ...)`` uint8, or floats on the grid ``v / 127.5 - 1``.
        path / prediction / kwargs: passed to :func:`toolkit.bits_per_dim`.

    Returns:
        ``(B,)`` bits per dimension (an upper bound; see :func:`toolkit.bits_per_dim`).
    """
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
    if torch.is_floating_point(x):
        v = (x.double() + 1.0) * 127.5
        vr = v.round()
        if x.numel() and ((v - vr).abs().max() > 1e-3 or vr.min() < 0 or vr.max() > 255):
            raise ValueError("float images must lie on the 8-bit grid v / 127.5 - 1 with v in "
                             "{0..255} (real data via to_tensor); continuous samples have no "
                             "bits-per-dim")
        x = vr.to(torch.uint8)
    elif x.dtype != torch.uint8 and (x.min() < 0 or x.max() > 255):
        raise ValueError("integer images must lie in {0, ..., 255}")
    return bits_per_dim(model, x, path=path, prediction=prediction, **kwargs)
