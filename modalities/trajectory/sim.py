"""Torque-free rigid bodies: simulated SE(3) pose trajectories with a few inertia classes.

A pose is ``(R, x)``: ``R`` maps body coordinates to space coordinates (columns are the body
axes, the principal axes of inertia) and ``x`` is the centre of mass. ``omega`` is always the
*body-frame* angular velocity, ``dR/dt = R hat(omega)`` (the body-frame convention of
:func:`toolkit.geometry.so3.interpolate`). Time is physical time here (frame ``k`` at
``t = k * dt``); it has nothing to do with the generative-model time (t=0 noise, t=1 data).

Dynamics (Landau & Lifshitz, *Mechanics*, §36-37):

* Euler's equations, ``I domega/dt = (I omega) x omega`` with ``I = diag(I1, I2, I3)``, are
  integrated with classical RK4 in float64 (``substeps`` steps per frame). Kinetic energy
  ``0.5 omega.I omega`` and ``|I omega|`` are conserved to ~1e-10 relative at the defaults.
* Rotations use exact exponential-map updates ``R <- R exp(Omega)`` (so ``R`` stays on SO(3)
  to rounding), ``Omega`` the 4th-order Magnus term with two Gauss points (Blanes, Casas,
  Oteo & Ros 2009, Phys. Rep. 470, eq. 253), the Gauss-point omegas from cubic Hermite
  interpolation of the RK4 steps. For constant omega (a sphere) this is ``exp(h omega)``.
* The centre of mass is ballistic, ``x(t) = x0 + v0 t + g t^2 / 2`` (gravity exerts no torque
  about the centre of mass; ``g = 0`` by default).

Inertia classes (:data:`CLASSES`; principal moments, arbitrary units, ``I1 = 1``):

* ``"sphere"`` ``(1, 1, 1)``: omega constant, ``R(t) = R0 exp(t omega)``; no jitter.
* ``"prolate"`` ``(1, 1, 0.3)``: rod/cigar-like symmetric top; the body-frame omega precesses
  about axis 3 at ``(I3 - I1)/I1 * omega3``; ``I3`` jittered by +-5 %.
* ``"oblate"`` ``(1, 1, 1.8)``: disc-like symmetric top (thin disc: ``I3 = 2 I1``); ``I3``
  jittered by +-5 %.
* ``"asymmetric"`` ``(1, 2, 2.6)``: three distinct moments (a (1, 2, 3)-type body that keeps
  the triangle inequality ``I3 <= I1 + I2`` under jitter); rotation near the intermediate axis
  is unstable (tennis-racket / Dzhanibekov effect). ``I2`` and ``I3`` jittered by +-5 %.

Dataset splits are generated on first use and cached under ``toolkit.files.cache_root(
"trajectory")``; see :class:`TrajectoryDataset`.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from toolkit.files import atomic_write, cache_root, content_digest
from toolkit.geometry import so3
from toolkit.geometry.se3 import Rigid

__all__ = ["CLASSES", "CLASS_NAMES", "DEFAULT_N", "SPLITS", "InertiaClass", "TrajectoryDataset",
           "euler_rhs", "sample_inertia", "sample_trajectories", "simulate"]


@dataclass(frozen=True)
class InertiaClass:
    """Principal moments ``(I1, I2, I3)`` with a relative per-sample jitter.

    Attributes:
        moments: base principal moments.
        jitter: half-width of the uniform relative jitter of ``I2`` and ``I3`` (``I1`` stays 1,
            which fixes the overall scale). Symmetric tops jitter ``I3`` only (``I2 = I1``).
        symmetric: whether ``I1 == I2`` is kept.
    """

    moments: tuple[float, float, float]
    jitter: float
    symmetric: bool


CLASSES: dict[str, InertiaClass] = {
    "sphere": InertiaClass((1.0, 1.0, 1.0), 0.0, True),
    "prolate": InertiaClass((1.0, 1.0, 0.3), 0.05, True),
    "oblate": InertiaClass((1.0, 1.0, 1.8), 0.05, True),
    "asymmetric": InertiaClass((1.0, 2.0, 2.6), 0.05, False),
}
CLASS_NAMES: tuple[str, ...] = tuple(CLASSES)
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_N: dict[str, int] = {"train": 4096, "val": 512, "test": 512}
_VERSION = 2  # bump when the simulator, the sampler or the cache format changes (2: digest)
_GAUSS = (0.5 - math.sqrt(3) / 6, 0.5 + math.sqrt(3) / 6)  # 2-point Gauss-Legendre nodes


def euler_rhs(omega: Tensor, inertia: Tensor) -> Tensor:
    """Torque-free Euler equations ``domega/dt = I^-1 ((I omega) x omega)``.

    Landau & Lifshitz, Mechanics §36, eq. 36.5 with zero torque.

    Args:
        omega: ``(..., 3)`` body angular velocities.
        inertia: ``(..., 3)`` principal moments (broadcast).

    Returns:
        ``(..., 3)`` time derivatives.
    """
    return torch.linalg.cross(inertia * omega, omega, dim=-1) / inertia


def _rk4(omega: Tensor, inertia: Tensor, h: float) -> Tensor:
    k1 = euler_rhs(omega, inertia)
    k2 = euler_rhs(omega + 0.5 * h * k1, inertia)
    k3 = euler_rhs(omega + 0.5 * h * k2, inertia)
    k4 = euler_rhs(omega + h * k3, inertia)
    return omega + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def _hermite(w0: Tensor, f0: Tensor, w1: Tensor, f1: Tensor, h: float, s: float) -> Tensor:
    # cubic Hermite interpolant at fraction s of the step (error O(h^4))
    a, b = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
    c, d = -2 * s**3 + 3 * s**2, s**3 - s**2
    return a * w0 + b * h * f0 + c * w1 + d * h * f1


def _positive_int(value: int, name: str, fn: str, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{fn}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive_float(value: float, name: str, fn: str) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{fn}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def simulate(inertia: Tensor, R0: Tensor, omega0_body: Tensor, x0: Tensor, v0: Tensor,
             dt: float, n_steps: int, substeps: int = 20,
             gravity: Tensor | None = None) -> tuple[Rigid, Tensor]:
    """Simulate a torque-free rigid body (batched over leading dims; float64 internally).

    Args:
        inertia: ``(..., 3)`` principal moments, all > 0.
        R0: ``(..., 3, 3)`` initial orientation (body -> space).
        omega0_body: ``(..., 3)`` initial body-frame angular velocity (rad per time unit).
        x0: ``(..., 3)`` initial centre of mass.
        v0: ``(..., 3)`` centre-of-mass velocity.
        dt: time between frames, > 0.
        n_steps: number of frame steps; ``T = n_steps + 1`` frames including the initial one.
        substeps: integrator steps per frame, >= 1.
        gravity: optional ``(3,)`` or ``(..., 3)`` acceleration of the centre (default 0).

    Returns:
        ``(poses, omega)``: poses a :class:`Rigid` of batch shape ``(..., T)`` and ``omega``
        ``(..., T, 3)`` the true body angular velocity per frame, in the dtype of ``R0``.
    """
    fn = "simulate"
    dt = _positive_float(dt, "dt", fn)
    n_steps = _positive_int(n_steps, "n_steps", fn, 0)
    substeps = _positive_int(substeps, "substeps", fn, 1)
    for name, x, tail in (("inertia", inertia, (3,)), ("R0", R0, (3, 3)),
                          ("omega0_body", omega0_body, (3,)), ("x0", x0, (3,)), ("v0", v0, (3,))):
        if not isinstance(x, Tensor) or tuple(x.shape[x.dim() - len(tail):]) != tail:
            raise ValueError(f"{fn}: {name} must be a tensor (..., {', '.join(map(str, tail))})"
                             f", got {getattr(x, 'shape', type(x))}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{fn}: {name} must be finite")
    if not bool((inertia > 0).all()):
        raise ValueError(f"{fn}: inertia must be > 0, got {inertia.tolist()}")
    f64 = torch.float64
    g = torch.as_tensor(0.0 if gravity is None else gravity, dtype=f64)
    if gravity is not None and (g.shape[-1:] != (3,) or not bool(torch.isfinite(g).all())):
        raise ValueError(f"{fn}: gravity must be a finite (..., 3) tensor, got {tuple(g.shape)}")
    batch = torch.broadcast_shapes(inertia.shape[:-1], R0.shape[:-2], omega0_body.shape[:-1],
                                   x0.shape[:-1], v0.shape[:-1])
    I = inertia.to(f64).expand(*batch, 3)  # (..., 3)
    R = R0.to(f64).expand(*batch, 3, 3)  # (..., 3, 3)
    w = omega0_body.to(f64).expand(*batch, 3)  # (..., 3)
    f = euler_rhs(w, I)
    h = dt / substeps
    rots, omegas = [R], [w]
    for _ in range(n_steps):
        for _ in range(substeps):
            w1 = _rk4(w, I, h)
            f1 = euler_rhs(w1, I)
            wa, wb = (_hermite(w, f, w1, f1, h, s) for s in _GAUSS)
            # 4th-order Magnus for R' = R hat(w): R <- R exp(h (wa + wb)/2 + sqrt(3) h^2/12
            # wa x wb)  (Blanes et al. 2009, eq. 253, right-multiplied form)
            R = R @ so3.exp(0.5 * h * (wa + wb)
                            + math.sqrt(3) / 12 * h * h * torch.linalg.cross(wa, wb, dim=-1))
            w, f = w1, f1
        rots.append(R)
        omegas.append(w)
    t = dt * torch.arange(n_steps + 1, dtype=f64)[:, None]  # (T, 1)
    x = x0.to(f64).expand(*batch, 3)[..., None, :] + t * v0.to(f64).expand(*batch, 3)[..., None, :]
    if gravity is not None:
        x = x + 0.5 * t**2 * g[..., None, :]  # ballistic: x0 + v0 t + g t^2 / 2
    dtype = R0.dtype if R0.is_floating_point() else torch.get_default_dtype()
    poses = Rigid(torch.stack(rots, -3).to(dtype), x.to(dtype))  # (..., T, 3, 3), (..., T, 3)
    return poses, torch.stack(omegas, -2).to(dtype)  # (..., T, 3)


def _class_indices(classes: Sequence[str] | None, fn: str) -> list[int]:
    if classes is None:
        return list(range(len(CLASS_NAMES)))
    if isinstance(classes, str):
        classes = [classes]
    if len(classes) == 0:
        raise ValueError(f"{fn}: classes must be None or a non-empty list of {CLASS_NAMES}")
    bad = [c for c in classes if c not in CLASSES]
    if bad:
        raise ValueError(f"{fn}: unknown classes {bad}; valid: {list(CLASS_NAMES)}")
    return [CLASS_NAMES.index(c) for c in dict.fromkeys(classes)]


def sample_inertia(cls: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Principal moments ``(n, 3)`` (float64) for class indices ``cls (n,)`` with jitter."""
    base = torch.tensor([CLASSES[c].moments for c in CLASS_NAMES], dtype=torch.float64)
    jit = torch.tensor([CLASSES[c].jitter for c in CLASS_NAMES], dtype=torch.float64)
    sym = torch.tensor([CLASSES[c].symmetric for c in CLASS_NAMES])
    u = 2 * torch.rand(len(cls), 3, generator=generator, dtype=torch.float64) - 1  # (n, 3)
    u[:, 0] = 0  # I1 fixes the scale
    u[:, 1] = torch.where(sym[cls], 0.0, u[:, 1])  # symmetric tops keep I2 = I1
    return base[cls] * (1 + jit[cls, None] * u)


def sample_trajectories(n: int, n_frames: int = 64, dt: float = 0.05,
                        classes: Sequence[str] | None = None, seed: int = 0, *,
                        rot_per_frame: tuple[float, float] = (0.05, 0.2), pos_scale: float = 1.0,
                        vel_scale: float = 0.5, substeps: int = 20,
                        dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Random torque-free trajectories, deterministic given ``seed``.

    Classes are balanced (round-robin over ``classes``, then shuffled). Initial orientation is
    Haar-uniform; the body angular velocity has a uniform direction and magnitude such that the
    initial rotation per frame ``|omega0| dt`` is uniform in ``rot_per_frame`` rad (at most
    ``sqrt(I3/I1) * 0.2 < 0.33`` rad per frame later on, well below pi); ``x0 ~ N(0,
    pos_scale^2 I)`` and ``v0 ~ N(0, vel_scale^2 I)`` per time unit; no gravity.

    Args:
        n: number of trajectories, >= 1.
        n_frames: frames per trajectory, >= 2.
        dt: time between frames, > 0.
        classes: class names to draw from (default all of :data:`CLASS_NAMES`).
        seed: random seed.
        rot_per_frame: ``(low, high)`` initial rotation angle per frame, ``0 < low <= high < pi``.
        pos_scale: standard deviation of the initial position.
        vel_scale: standard deviation of the velocity.
        substeps: integrator steps per frame.
        dtype: dtype of the returned float tensors.

    Returns:
        ``rots (n, T, 3, 3)``, ``trans (n, T, 3)``, ``cls (n,)`` int64 (index into
        :data:`CLASS_NAMES`), ``inertia (n, 3)`` and ``omega (n, T, 3)`` (true body rates).
    """
    fn = "sample_trajectories"
    n = _positive_int(n, "n", fn, 1)
    n_frames = _positive_int(n_frames, "n_frames", fn, 2)
    dt = _positive_float(dt, "dt", fn)
    idx = _class_indices(classes, fn)
    lo, hi = rot_per_frame
    if not 0 < lo <= hi < math.pi:
        raise ValueError(f"{fn}: rot_per_frame must satisfy 0 < low <= high < pi, got "
                         f"{rot_per_frame}")
    if not (pos_scale >= 0 and vel_scale >= 0):
        raise ValueError(f"{fn}: pos_scale and vel_scale must be >= 0, got {pos_scale}, "
                         f"{vel_scale}")
    g = torch.Generator().manual_seed(int(seed))
    f64 = torch.float64
    cls = torch.tensor(idx)[torch.arange(n) % len(idx)][torch.randperm(n, generator=g)]  # (n,)
    inertia = sample_inertia(cls, g)  # (n, 3)
    R0 = so3.random_uniform((n,), generator=g, dtype=f64)  # (n, 3, 3) Haar
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=f64), dim=-1)
    angle = lo + (hi - lo) * torch.rand(n, 1, generator=g, dtype=f64)  # (n, 1) rad per frame
    x0 = pos_scale * torch.randn(n, 3, generator=g, dtype=f64)
    v0 = vel_scale * torch.randn(n, 3, generator=g, dtype=f64)
    poses, omega = simulate(inertia, R0, direction * angle / dt, x0, v0, dt, n_frames - 1,
                            substeps)
    return {"rots": poses.rots.to(dtype), "trans": poses.trans.to(dtype), "cls": cls,
            "inertia": inertia.to(dtype), "omega": omega.to(dtype)}


class TrajectoryDataset(Dataset):
    """A fixed split of simulated trajectories, generated on first use and cached.

    The split is :func:`sample_trajectories` with the seed derived from ``(seed, split)``
    (``numpy.random.SeedSequence``), so splits never share trajectories. It is stored as one
    ``.pt`` file under ``cache_dir`` (default ``toolkit.files.cache_root("trajectory")``),
    written atomically, its name holding a hash of every generation setting; the settings are
    also stored inside and checked on load (a mismatch or unreadable file regenerates).

    Items: ``rots (T, 3, 3)``, ``trans (T, 3)`` (centre of mass relative to the first frame's,
    in simulation length units: typical displacements ``vel_scale * T * dt ~ 1.6`` at the
    defaults; raw positions with ``center=False``), ``cls ()`` int64 index into
    :data:`CLASS_NAMES` and ``inertia (3,)``. The whole split is also exposed as tensors
    ``rots``, ``trans``, ``cls``, ``inertia`` and ``omega`` (true body rates, ``(N, T, 3)``).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        n: number of trajectories (default :data:`DEFAULT_N` of the split).
        n_frames: frames per trajectory, >= 2.
        dt: time between frames, > 0.
        classes: inertia classes drawn (default all).
        seed: base seed.
        cache_dir: cache folder.
        center: subtract the first frame's position from ``trans``.
    """

    def __init__(self, split: str = "train", n: int | None = None, n_frames: int = 64,
                 dt: float = 0.05, classes: Sequence[str] | None = None, seed: int = 0,
                 cache_dir: str | Path | None = None, center: bool = True):
        fn = "TrajectoryDataset"
        if split not in SPLITS:
            raise ValueError(f"{fn}: split must be one of {SPLITS}, got {split!r}")
        n = _positive_int(DEFAULT_N[split] if n is None else n, "n", fn, 1)
        n_frames = _positive_int(n_frames, "n_frames", fn, 2)
        dt = _positive_float(dt, "dt", fn)
        names = [CLASS_NAMES[i] for i in _class_indices(classes, fn)]
        if isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise ValueError(f"{fn}: seed must be an integer >= 0, got {seed!r}")
        split_seed = int(np.random.SeedSequence([int(seed), SPLITS.index(split)])
                         .generate_state(1)[0])
        self.split, self.dt, self.center, self.classes = split, dt, bool(center), tuple(names)
        self.settings = {"split": split, "n": n, "n_frames": n_frames, "dt": dt,
                         "classes": names, "seed": int(seed), "split_seed": split_seed,
                         "version": _VERSION,
                         "inertia_classes": {c: [list(CLASSES[c].moments), CLASSES[c].jitter]
                                             for c in names}}
        key = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]
        folder = Path(cache_dir) if cache_dir is not None else cache_root("trajectory")
        self.path = folder / f"rigid-{split}-n{n}-T{n_frames}-{key}.pt"
        self.loaded_from_cache = False
        data = self._load()
        if data is None:
            data = sample_trajectories(n, n_frames, dt, names, split_seed)
            blob = {**data, "settings": json.dumps(self.settings, sort_keys=True),
                    "digest": content_digest(data)}
            atomic_write(self.path, lambda tmp: torch.save(blob, tmp))
        self.rots, self.trans = data["rots"], data["trans"]  # (N, T, 3, 3), (N, T, 3)
        self.cls, self.inertia, self.omega = data["cls"], data["inertia"], data["omega"]

    def _load(self) -> dict[str, Tensor] | None:
        if not self.path.exists():
            return None
        try:
            blob = torch.load(self.path, weights_only=True)
            if not isinstance(blob, dict):
                raise ValueError(f"holds a {type(blob).__name__}, not a dict")
            settings = blob.get("settings")
            if not isinstance(settings, str) or json.loads(settings) != self.settings:
                raise ValueError("settings differ")
            data = {k: blob[k] for k in ("rots", "trans", "cls", "inertia", "omega")}
            self._check(data)
            if blob.get("digest") != content_digest(data):  # bytes changed inside the tensors
                raise ValueError("checksum mismatch (corrupted tensor data, or a cache written "
                                 "before checksums)")
        except (OSError, RuntimeError, ValueError, KeyError, TypeError, AttributeError,
                EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
            msg = " ".join(str(err).split())[:300]
            warnings.warn(f"unusable trajectory cache {self.path} ({type(err).__name__}: "
                          f"{msg}); regenerating", stacklevel=3)
            return None
        self.loaded_from_cache = True
        return data

    def _check(self, data: dict[str, Tensor]) -> None:
        """Raise ``ValueError`` unless ``data`` is a split of these settings: shapes, dtypes,
        finite values, rotation matrices, allowed class indices and positive inertia."""
        n, t = self.settings["n"], self.settings["n_frames"]
        shapes = {"rots": (n, t, 3, 3), "trans": (n, t, 3), "cls": (n,), "inertia": (n, 3),
                  "omega": (n, t, 3)}
        for k, shape in shapes.items():
            v = data[k]
            if not isinstance(v, Tensor):
                raise ValueError(f"{k!r} is a {type(v).__name__}, not a tensor")
            if tuple(v.shape) != shape:
                raise ValueError(f"{k!r} has shape {tuple(v.shape)}, expected {shape}")
            if k == "cls":
                if v.dtype != torch.int64:
                    raise ValueError(f"'cls' has dtype {v.dtype}, expected torch.int64")
            elif not v.is_floating_point() or not bool(torch.isfinite(v).all()):
                raise ValueError(f"{k!r} is not a finite float tensor ({v.dtype})")
        allowed = torch.tensor([CLASS_NAMES.index(c) for c in self.settings["classes"]])
        if not bool(torch.isin(data["cls"], allowed).all()):
            raise ValueError(f"class indices outside {allowed.tolist()}")
        if not bool((data["inertia"] > 0).all()):
            raise ValueError("inertia must be > 0")
        r = data["rots"].double()
        err = (r @ r.transpose(-1, -2) - torch.eye(3, dtype=torch.float64)).abs().amax()
        if float(err) > 1e-4 or not bool((torch.linalg.det(r) > 0).all()):
            raise ValueError(f"'rots' are not rotation matrices (|R R^T - I| = {float(err):.2g})")

    def __len__(self) -> int:
        return self.rots.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        trans = self.trans[i]  # (T, 3)
        return {"rots": self.rots[i], "trans": trans - trans[:1] if self.center else trans,
                "cls": self.cls[i], "inertia": self.inertia[i]}
