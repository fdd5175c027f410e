"""Per-feature normalisation of robot states and actions, saved inside checkpoints.

Every feature ``x`` of shape ``(D,)`` is mapped by an affine map ``y = (x - loc) / scale``
(per dimension) fitted from the dataset's statistics:

- ``mean_std``: ``loc = mean``, ``scale = std`` (Diffusion Policy / lerobot's default).
- ``min_max``: ``loc = (max + min) / 2``, ``scale = (max - min) / 2``: the data range to
  ``[-1, 1]`` (as Diffusion Policy does, Chi et al. 2023).
- ``quantile``: as ``min_max`` with the 1 % / 99 % quantiles ``q01, q99`` instead of the
  range, robust to outliers (Black et al. 2024, pi0; openpi's ``use_quantile_norm``).
- ``identity``: ``loc = 0``, ``scale = 1``.

A dimension whose scale is below ``eps`` (a constant feature, e.g. an unused gripper) gets
``scale = 1``: it is only centred, never divided by ~0, and the map stays exactly invertible.
The statistics live in buffers (``<feature>.loc``, ``.scale``, ``.min``, ``.max``), so they
travel with the weights; loading a state dict or statistics of other features or shapes
fails with a message that names the feature and both shapes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MODES", "Normalizer", "shape_error"]

MODES = ("mean_std", "min_max", "quantile", "identity")
_NEEDS = {"mean_std": ("mean", "std"), "min_max": ("min", "max"), "quantile": ("q01", "q99"),
          "identity": ()}


def _key(name: str) -> str:
    """Module-safe name of a feature (``observation.state`` -> ``observation__state``)."""
    return name.replace(".", "__")


def shape_error(name: str, have: Sequence[int], where_have: str, want: Sequence[int],
                where_want: str) -> ValueError:
    """The error of a feature whose shape differs between two places."""
    return ValueError(f"feature {name!r} has shape {tuple(have)} in the {where_have} but "
                      f"{tuple(want)} in the {where_want}")


class _Stats(nn.Module):
    """The buffers of one feature: affine map (loc, scale) and the data range (min, max)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        for b, v in (("loc", 0.0), ("scale", 1.0), ("min", float("-inf")), ("max", float("inf"))):
            self.register_buffer(b, torch.full((dim,), v))


class Normalizer(nn.Module):
    """Affine per-feature normaliser (see the module docstring).

    Args:
        features: feature name -> shape, e.g. ``{"observation.state": (7,), "action": (7,)}``.
        modes: one mode for every feature, or feature name -> mode.
        eps: scales below this count as constant features (scale set to 1).
        clip_actions: :meth:`unnormalize` clamps features listed in ``clip`` to the data's
            ``[min, max]`` and counts the clipped values in :attr:`clipped`.
        clip: names of the features clipped when ``clip_actions`` (default ``("action",)``).

    Attributes:
        fitted: ``()`` bool buffer, True once :meth:`fit` ran (saved with the weights).
        clipped: feature name -> number of values clamped so far (reset by the user).
    """

    def __init__(self, features: Mapping[str, Sequence[int] | int],
                 modes: str | Mapping[str, str] = "mean_std", eps: float = 1e-6,
                 clip_actions: bool = False, clip: Sequence[str] = ("action",)) -> None:
        super().__init__()
        self.shapes = {n: (int(s),) if isinstance(s, int) else tuple(int(v) for v in s)
                       for n, s in features.items()}
        for n, s in self.shapes.items():
            if len(s) != 1 or s[0] < 1:
                raise ValueError(f"feature {n!r}: Normalizer supports vectors (D,), got {s}")
        if isinstance(modes, str):
            modes = {n: modes for n in self.shapes}
        unknown = sorted(set(modes) - set(self.shapes))
        if unknown:
            raise ValueError(f"Normalizer: modes given for unknown feature(s) {unknown}; "
                             f"features are {sorted(self.shapes)}")
        self.modes = {n: str(modes.get(n, "mean_std")) for n in self.shapes}
        for n, m in self.modes.items():
            if m not in MODES:
                raise ValueError(f"feature {n!r}: unknown normalisation mode {m!r}; valid: "
                                 f"{list(MODES)}")
        self.eps, self.clip_actions, self.clip = float(eps), bool(clip_actions), tuple(clip)
        self.stats = nn.ModuleDict({_key(n): _Stats(s[0]) for n, s in self.shapes.items()})
        self.register_buffer("fitted", torch.tensor(False))
        self.clipped: dict[str, int] = {n: 0 for n in self.clip}

    # ------------------------------------------------------------------ fitting
    def fit(self, stats: Mapping[str, Mapping[str, Any]]) -> Normalizer:
        """Set every feature's map from dataset statistics ``{name: {"mean", "std", ...}}``.

        Raises:
            KeyError: a feature or a statistic its mode needs is missing (both named).
            ValueError: a statistic's shape differs from the feature's, or is not finite.
        """
        missing = [n for n in self.shapes if n not in stats]
        if missing:
            raise KeyError(f"Normalizer.fit: no statistics for feature(s) {missing}; the "
                           f"dataset has statistics for {sorted(stats)}")
        for name, shape in self.shapes.items():
            st, mode = stats[name], self.modes[name]
            need = _NEEDS[mode] + (("min", "max") if name in self.clip and
                                   self.clip_actions else ())
            gone = [k for k in need if k not in st]
            if gone:
                raise KeyError(f"feature {name!r} (mode {mode!r}) needs statistics {list(need)}"
                               f" but {gone} are missing (have {sorted(st)})")
            v = {}
            for k in ("mean", "std", "min", "max", "q01", "q99"):
                if k in st:
                    v[k] = torch.as_tensor(st[k], dtype=torch.float64).reshape(-1)
                    if tuple(v[k].shape) != shape:
                        raise shape_error(name, tuple(v[k].shape), f"statistics ({k!r})",
                                          shape, "model")
                    if k in need and not torch.isfinite(v[k]).all():
                        raise ValueError(f"feature {name!r}: statistic {k!r} is not finite")
            if mode == "mean_std":
                loc, scale = v["mean"], v["std"]
            elif mode == "min_max":
                loc, scale = (v["max"] + v["min"]) / 2, (v["max"] - v["min"]) / 2
            elif mode == "quantile":
                loc, scale = (v["q99"] + v["q01"]) / 2, (v["q99"] - v["q01"]) / 2
            else:
                loc, scale = torch.zeros(shape, dtype=torch.float64), torch.ones(shape)
            scale = torch.where(scale.abs() < self.eps, torch.ones_like(scale), scale.abs())
            b = self.stats[_key(name)]
            b.loc.copy_(loc)
            b.scale.copy_(scale)
            b.min.copy_(v.get("min", torch.full(shape, float("-inf"))))
            b.max.copy_(v.get("max", torch.full(shape, float("inf"))))
        self.fitted.fill_(True)
        return self

    def _get(self, name: str, x: Tensor) -> _Stats:
        if name not in self.shapes:
            raise KeyError(f"Normalizer: unknown feature {name!r}; features are "
                           f"{sorted(self.shapes)}")
        if not bool(self.fitted):
            raise RuntimeError("Normalizer is not fitted: call fit(dataset.stats) (the task's "
                               "setup does this on a fresh run) or load a checkpoint")
        if x.shape[-1:] != self.shapes[name]:
            raise shape_error(name, tuple(x.shape[-1:]), "input", self.shapes[name], "model")
        return self.stats[_key(name)]

    # ------------------------------------------------------------------ maps
    def normalize(self, name: str, x: Tensor) -> Tensor:
        """``(x - loc) / scale`` over the last dim of ``x`` ``(..., D)``."""
        b = self._get(name, x)
        return (x - b.loc.to(x.dtype)) / b.scale.to(x.dtype)

    def unnormalize(self, name: str, y: Tensor) -> Tensor:
        """Inverse map ``y * scale + loc``; clamped to the data range for clipped features
        when ``clip_actions`` (the number of clamped values is added to :attr:`clipped`)."""
        b = self._get(name, y)
        x = y * b.scale.to(y.dtype) + b.loc.to(y.dtype)
        if self.clip_actions and name in self.clip:
            lo, hi = b.min.to(y.dtype), b.max.to(y.dtype)
            n = int(((x < lo) | (x > hi)).sum())
            if n and not self.clipped.get(name):
                warnings.warn(f"Normalizer: clipping {name!r} to the data range ({n} values "
                              f"now; the running count is in Normalizer.clipped)", stacklevel=2)
            self.clipped[name] = self.clipped.get(name, 0) + n
            x = torch.maximum(torch.minimum(x, hi), lo)
        return x

    # ------------------------------------------------------------------ checks
    def check_features(self, features: Mapping[str, Sequence[int]], where: str = "data",
                       ours: str = "model") -> None:
        """Raise if ``features`` (name -> shape) lacks one of ours or has another shape."""
        missing = [n for n in self.shapes if n not in features]
        if missing:
            raise KeyError(f"feature(s) {missing} of the {ours} are missing in the {where} "
                           f"(it has {sorted(features)})")
        for n, s in self.shapes.items():
            if tuple(features[n]) != s:
                raise shape_error(n, s, ours, tuple(features[n]), where)

    @staticmethod
    def features_in(state: Mapping[str, Tensor], prefix: str = "") -> dict[str, tuple[int]]:
        """Feature name -> shape of the normaliser entries of a state dict under ``prefix``."""
        out = {}
        head = f"{prefix}stats."
        for k, v in state.items():
            if k.startswith(head) and k.endswith(".loc"):
                out[k[len(head):-len(".loc")].replace("__", ".")] = tuple(v.shape)
        return out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        theirs = self.features_in(state_dict, prefix)
        if theirs.keys() != self.shapes.keys():
            raise KeyError(f"the checkpoint normalises features {sorted(theirs)} but the model "
                           f"expects {sorted(self.shapes)}")
        for n, s in self.shapes.items():
            if theirs[n] != s:
                raise shape_error(n, theirs[n], "checkpoint", s, "model")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return ", ".join(f"{n}{s}: {self.modes[n]}" for n, s in self.shapes.items())
