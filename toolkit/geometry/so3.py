"""Rotations: the Lie group SO(3), its algebra so(3) and the isotropic Gaussian IGSO(3).

Conventions: matrices act on column vectors (``y = R @ x``); rotation vectors (axis * angle,
angle in [0, pi]) are the so(3) coordinates; quaternions are unit ``(w, x, y, z)``, ``w >= 0``.
Functions are batched over leading dims, work in float32/float64 and are differentiable where
the map is smooth (``exp`` everywhere, including exactly 0; ``log`` away from angle pi).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Device = torch.device | str | None

_SMALL = 1e-2  # below this angle (or sin of it) the Taylor branches are used
_NEAR_PI = -0.9  # cos(theta) below this: log recovers the axis from the symmetric part


def _check(x: Tensor, tail: tuple[int, ...], fn: str) -> None:
    if x.dim() < len(tail) or tuple(x.shape[x.dim() - len(tail):]) != tail:
        want = "(..., " + ", ".join(map(str, tail)) + ")"
        raise ValueError(f"{fn}: expected {want}, got {tuple(x.shape)}")


def hat(v: Tensor) -> Tensor:
    """Skew-symmetric matrix of a vector: ``hat(v) @ u == cross(v, u)``.

    Args:
        v: ``(..., 3)`` vectors.

    Returns:
        ``(..., 3, 3)`` skew-symmetric matrices.
    """
    _check(v, (3,), "hat")
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack((o, -z, y, z, o, -x, -y, x, o), -1).unflatten(-1, (3, 3))  # (..., 3, 3)


def vee(M: Tensor) -> Tensor:
    """Inverse of :func:`hat` on the skew part: ``vee(M) = vee((M - M^T) / 2)``.

    Args:
        M: ``(..., 3, 3)`` matrices.

    Returns:
        ``(..., 3)`` vectors.
    """
    _check(M, (3, 3), "vee")
    A = 0.5 * (M - M.transpose(-1, -2))
    return torch.stack((A[..., 2, 1], A[..., 0, 2], A[..., 1, 0]), -1)  # (..., 3)


def exp(v: Tensor) -> Tensor:
    """Exponential map so(3) -> SO(3) (Rodrigues' formula).

    Args:
        v: ``(..., 3)`` rotation vectors (any norm).

    Returns:
        ``(..., 3, 3)`` rotation matrices. Stable near 0 with finite gradients at exactly 0.
    """
    _check(v, (3,), "exp")
    th2 = (v * v).sum(-1)  # (...,) theta^2, smooth at 0
    small = th2 < _SMALL**2
    th2s = torch.where(small, torch.ones_like(th2), th2)  # safe: no sqrt(0) / 0/0 gradients
    th = torch.sqrt(th2s)
    # Rodrigues: R = I + A K + B K^2, A = sin(th)/th, B = (1 - cos th)/th^2 = 2 sin^2(th/2)/th^2
    # (Murray, Li & Sastry 1994, ch. 2); Taylor below _SMALL (error O(th^6)).
    A = torch.where(small, 1 - th2 / 6 + th2 * th2 / 120, torch.sin(th) / th)
    B = torch.where(small, 0.5 - th2 / 24 + th2 * th2 / 720, 2 * torch.sin(th / 2) ** 2 / th2s)
    K = hat(v)  # (..., 3, 3)
    eye = torch.eye(3, dtype=v.dtype, device=v.device)
    return eye + A[..., None, None] * K + B[..., None, None] * (K @ K)


def angle(R: Tensor) -> Tensor:
    """Rotation angle in [0, pi]: ``atan2(|vee(R)|, (tr R - 1) / 2)`` (accurate at 0 and pi).

    Args:
        R: ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(...,)`` angles.
    """
    _check(R, (3, 3), "angle")
    s2 = (vee(R) ** 2).sum(-1)  # sin^2(theta), since vee(R) = sin(theta) * axis
    c = 0.5 * (R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1)  # cos(theta) = (tr R - 1)/2
    return torch.atan2(torch.sqrt(s2.clamp_min(torch.finfo(R.dtype).tiny)), c)


def log(R: Tensor) -> Tensor:
    """Logarithm map SO(3) -> so(3), inverse of :func:`exp` with angle in [0, pi].

    Near pi the axis is taken from the symmetric part (no division by sin(theta)); at exactly
    pi the sign of the rotation vector is arbitrary (both give the same rotation).

    Args:
        R: ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(..., 3)`` rotation vectors with norm in [0, pi].
    """
    _check(R, (3, 3), "log")
    w = vee(R)  # (..., 3) = sin(theta) * axis
    s2 = (w * w).sum(-1)  # (...,)
    c = 0.5 * (R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1)  # cos(theta)
    th = torch.atan2(torch.sqrt(s2.clamp_min(torch.finfo(R.dtype).tiny)), c)  # (...,)
    small = (s2 < _SMALL**2) & (c > 0)
    near_pi = c < _NEAR_PI
    one = torch.ones_like(s2)
    # generic: v = theta / sin(theta) * vee(R); small: theta/sin(theta) = asin(s)/s Taylor in s
    s = torch.sqrt(torch.where(small | near_pi, one, s2))
    fac = torch.where(small, 1 + s2 / 6 + 3 * s2 * s2 / 40, th / s)
    v_gen = fac[..., None] * w  # (..., 3)
    # near pi: (R + R^T)/2 = cos(theta) I + (1 - cos theta) a a^T  =>  a a^T = (S - c I)/(1 - c)
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    S = 0.5 * (R + R.transpose(-1, -2)) - c[..., None, None] * eye
    S = S / torch.where(near_pi, 1 - c, one)[..., None, None]  # (..., 3, 3) ~ a a^T
    i = S.diagonal(dim1=-2, dim2=-1).argmax(-1)  # largest a_i^2 >= 1/3: well conditioned
    col = torch.gather(S, -1, i[..., None, None].expand(*S.shape[:-1], 1))[..., 0]  # a_i * a
    a = col / col.norm(dim=-1, keepdim=True).clamp_min(1e-6)  # (..., 3), up to sign
    sign = torch.where((a * w).sum(-1) < 0, -one, one)  # skew part fixes sign: w = sin(th) a
    v_pi = (sign * th)[..., None] * a
    return torch.where(near_pi[..., None], v_pi, v_gen)


def geodesic_distance(R1: Tensor, R2: Tensor) -> Tensor:
    """Riemannian distance ``|log(R1^T R2)|`` (the relative rotation angle, in [0, pi]).

    Args:
        R1: ``(..., 3, 3)`` rotations.
        R2: ``(..., 3, 3)`` rotations (broadcast against ``R1``).

    Returns:
        ``(...,)`` distances.
    """
    _check(R1, (3, 3), "geodesic_distance")
    _check(R2, (3, 3), "geodesic_distance")
    return angle(R1.transpose(-1, -2) @ R2)


def interpolate(R0: Tensor, R1: Tensor, t: Tensor | float) -> Tensor:
    """Geodesic interpolation ``R_t = R0 exp(t log(R0^T R1))`` (Yim et al. 2023, FrameFlow).

    Args:
        R0: ``(..., 3, 3)`` start rotations (t = 0).
        R1: ``(..., 3, 3)`` end rotations (t = 1).
        t: float or ``(...,)`` times, broadcast against the batch shape of ``R0``/``R1``.

    Returns:
        ``(..., 3, 3)`` rotations at distance ``t * d(R0, R1)`` from ``R0``.
    """
    _check(R0, (3, 3), "interpolate")
    _check(R1, (3, 3), "interpolate")
    t = torch.as_tensor(t, dtype=R0.dtype, device=R0.device)
    v = log(R0.transpose(-1, -2) @ R1)  # (..., 3) in the tangent space at R0 (body frame)
    return R0 @ exp(t[..., None] * v)


def quat_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrix of a quaternion ``(w, x, y, z)`` (normalised first).

    Args:
        q: ``(..., 4)`` quaternions, any non-zero norm.

    Returns:
        ``(..., 3, 3)`` rotation matrices.
    """
    _check(q, (4,), "quat_to_matrix")
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    # Hamilton convention: R(q) v = q v q^* (Shoemake 1985)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(r, -1) for r in rows], -2)  # (..., 3, 3)


def _canonical(q: Tensor) -> Tensor:
    return torch.where(q[..., :1] < 0, -q, q)


def matrix_to_quat(R: Tensor) -> Tensor:
    """Unit quaternion ``(w, x, y, z)`` with ``w >= 0`` of a rotation matrix (Shepperd 1978).

    The largest of ``4w^2 = 1 + tr R`` and ``4x^2 = 1 + 2 R_xx - tr R`` (and y, z) is taken as
    the pivot (always >= 1), so no division by a small number happens for any rotation.

    Args:
        R: ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(..., 4)`` quaternions.
    """
    _check(R, (3, 3), "matrix_to_quat")
    r = R.reshape(*R.shape[:-2], 9).unbind(-1)
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = r
    tr = r00 + r11 + r22
    d = torch.stack((1 + tr, 1 + 2 * r00 - tr, 1 + 2 * r11 - tr, 1 + 2 * r22 - tr), -1)  # 4 q_k^2
    k = d.argmax(-1)  # (...,) Shepperd pivot
    d = d.clamp_min(0.1)  # only touches unused candidates: the pivot has d >= 1
    p = 2 * torch.sqrt(d)  # 4 |q_k|
    a, b, c = r21 - r12, r02 - r20, r10 - r01  # 4 w x, 4 w y, 4 w z
    e, f, g = r01 + r10, r02 + r20, r12 + r21  # 4 x y, 4 x z, 4 y z
    cand = torch.stack((
        torch.stack((d[..., 0], a, b, c), -1) / p[..., :1],
        torch.stack((a, d[..., 1], e, f), -1) / p[..., 1:2],
        torch.stack((b, e, d[..., 2], g), -1) / p[..., 2:3],
        torch.stack((c, f, g, d[..., 3]), -1) / p[..., 3:4],
    ), -2)  # (..., 4 candidates, 4); candidate k = (4 q_k q) / (4 q_k)
    q = torch.gather(cand, -2, k[..., None, None].expand(*k.shape, 1, 4))[..., 0, :]
    return _canonical(q / q.norm(dim=-1, keepdim=True))


def rotvec_to_quat(v: Tensor) -> Tensor:
    """Quaternion ``(cos(th/2), sin(th/2) v/th)`` of a rotation vector, canonical ``w >= 0``.

    Args:
        v: ``(..., 3)`` rotation vectors.

    Returns:
        ``(..., 4)`` unit quaternions.
    """
    _check(v, (3,), "rotvec_to_quat")
    th2 = (v * v).sum(-1)
    small = th2 < _SMALL**2
    th = torch.sqrt(torch.where(small, torch.ones_like(th2), th2))
    # sin(th/2)/th = 1/2 - th^2/48 + th^4/3840 - ...
    k = torch.where(small, 0.5 - th2 / 48 + th2 * th2 / 3840, torch.sin(th / 2) / th)
    w = torch.where(small, 1 - th2 / 8 + th2 * th2 / 384, torch.cos(th / 2))
    return _canonical(torch.cat((w[..., None], k[..., None] * v), -1))


def quat_to_rotvec(q: Tensor) -> Tensor:
    """Rotation vector (angle in [0, pi]) of a quaternion ``(w, x, y, z)``.

    Args:
        q: ``(..., 4)`` quaternions, any non-zero norm.

    Returns:
        ``(..., 3)`` rotation vectors.
    """
    _check(q, (4,), "quat_to_rotvec")
    q = _canonical(q / q.norm(dim=-1, keepdim=True))
    w, u = q[..., 0], q[..., 1:]
    n2 = (u * u).sum(-1)  # sin^2(th/2)
    small = n2 < _SMALL**2
    n = torch.sqrt(torch.where(small, torch.ones_like(n2), n2))
    # th = 2 atan2(n, w); th/n = 2 asin(n)/n = 2 (1 + n^2/6 + 3 n^4/40 + ...) when w ~ 1
    fac = torch.where(small, 2 * (1 + n2 / 6 + 3 * n2 * n2 / 40), 2 * torch.atan2(n, w) / n)
    return fac[..., None] * u


def project(M: Tensor) -> Tensor:
    """Nearest rotation (Frobenius norm) to ``M (..., 3, 3)``: ``U diag(1, 1, det(U V^T)) V^T``
    from the SVD ``M = U S V^T`` (the orthogonal Procrustes solution; Higham 1988)."""
    _check(M, (3, 3), "project")
    U, _, Vh = torch.linalg.svd(M)
    d = torch.linalg.det(U @ Vh)  # (...,) +-1
    D = torch.ones(*M.shape[:-2], 3, dtype=M.dtype, device=M.device)
    D[..., 2] = d
    return U @ (D[..., None] * Vh)


def validate(R: Tensor, mode: str = "error", atol: float = 1e-4, what: str = "rotations"
             ) -> Tensor:
    """Check that ``R (..., 3, 3)`` are rotations (finite, ``R^T R = I``, ``det R = +1``).

    Args:
        R: matrices. mode: ``"error"`` raises ValueError; ``"fix"`` re-orthogonalises the bad
            ones with :func:`project` (reflections and singular matrices are still refused) and
            warns with the count and the worst deviation. atol: tolerance on ``|R^T R - I|``
            and ``|det R - 1|``. what: name used in messages.

    Returns:
        ``R`` (``"fix"``: with the bad matrices projected).
    """
    import warnings

    _check(R, (3, 3), "validate")
    if mode not in ("error", "fix"):
        raise ValueError(f"validate: mode must be 'error' or 'fix', got {mode!r}")
    if not torch.isfinite(R).all():
        raise ValueError(f"{what}: contain NaN or inf")
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    orth = (R.transpose(-1, -2) @ R - eye).abs().amax((-1, -2))  # (...,)
    det = torch.linalg.det(R)
    bad = (orth > atol) | ((det - 1).abs() > atol)
    if not bad.any():
        return R
    n, worst = int(bad.sum()), float(torch.maximum(orth, (det - 1).abs()).max())
    first = tuple(int(i) for i in bad.nonzero()[0])
    msg = (f"{what}: {n} of {bad.numel()} matrices are not rotations (first at index {first}: "
           f"|R^T R - I| = {float(orth[first]):.2e}, det = {float(det[first]):.4f}; worst "
           f"deviation {worst:.2e} > atol {atol:g})")
    if mode == "error":
        raise ValueError(msg + "; pass mode='fix' to re-orthogonalise them")
    if (det[bad] <= 0.1).any():
        raise ValueError(msg + "; reflections or singular matrices cannot be re-orthogonalised")
    warnings.warn(msg + "; re-orthogonalised (nearest rotation)", stacklevel=2)
    return torch.where(bad[..., None, None], project(R), R)


def random_uniform(shape: Sequence[int] | int = (), generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float32, device: Device = None) -> Tensor:
    """Haar-uniform rotations: normalised standard Gaussian quaternions (Shoemake 1992).

    Args:
        shape: batch shape.
        generator: optional torch generator.
        dtype: floating dtype of the result.
        device: device of the result.

    Returns:
        ``(*shape, 3, 3)`` rotation matrices.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    q = torch.randn(*shape, 4, generator=generator, dtype=dtype, device=device)
    return quat_to_matrix(q)


# IGSO(3). Convention (FrameDiff, Yim et al. 2023): eps is the Brownian-motion scale, i.e.
# IGSO3(eps) is the law at time t = eps^2 of Brownian motion on SO(3) started at I, so for small
# eps the rotation vector is ~ N(0, eps^2 I_3) and the angle is Maxwell(eps). Leach et al. (2022)
# write exp(-l(l+1) eps_L^2): eps_L^2 = eps^2 / 2.


def _igso3_series(omega: Tensor, eps: Tensor, L: int) -> Tensor:
    # f(w) = sum_l (2l+1) exp(-l(l+1) eps^2/2) sin((l+1/2) w) / sin(w/2)  (Leach et al. 2022)
    # returned times sin(w/2): the marginal needs (1 - cos w) f = 2 sin(w/2) [f sin(w/2)].
    ls = torch.arange(L, dtype=omega.dtype, device=omega.device)
    o, e2 = omega[..., None], eps[..., None] ** 2
    return ((2 * ls + 1) * torch.exp(-ls * (ls + 1) * e2 / 2) * torch.sin((ls + 0.5) * o)).sum(-1)


def _igso3_closed(omega: Tensor, eps: Tensor) -> Tensor:
    # Poisson summation of the series, a = eps^2/2 (Leach et al. 2022 small-eps form, |m| <= 1):
    # f(w) sin(w/2) = e^{a/4} sqrt(pi) a^{-3/2} / 2 sum_m (-1)^m (w + 2pi m) e^{-(w+2pi m)^2/(4a)}
    # truncated at |m| <= 2 (relative error ~ exp(-9 pi^2 / (2 eps^2))).
    a = eps * eps / 2
    total = torch.zeros_like(omega + a)
    for m in (-2, -1, 0, 1, 2):
        wm = omega + 2 * math.pi * m
        total = total + (-1) ** m * wm * torch.exp(-wm * wm / (4 * a))
    return torch.exp(a / 4) * math.sqrt(math.pi) * a.pow(-1.5) / 2 * total


def igso3_density(omega: Tensor, eps: Tensor | float, L: int = 200, method: str = "auto") -> Tensor:
    """IGSO(3) density f(omega) with respect to the normalised Haar measure on SO(3).

    ``f(w) = sum_l (2l+1) exp(-l(l+1) eps^2 / 2) sin((l+1/2) w) / sin(w/2)`` with ``eps`` the
    Brownian scale (FrameDiff's sigma; Leach et al.'s eps_L^2 = eps^2 / 2). ``eps -> inf``
    gives f = 1 (Haar); small ``eps`` gives a rotation vector ~ N(0, eps^2 I).

    Args:
        omega: ``(...)`` rotation angles in [0, pi].
        eps: float or tensor broadcastable to ``omega``, > 0.
        L: number of series terms (``method="series"``).
        method: ``"series"``, ``"closed"`` (small-eps Poisson-summed form) or ``"auto"``
            (closed form for eps < 1, where the series needs many terms; otherwise the
            series with ``min(L, 32)`` terms, exact to float64 there).

    Returns:
        Densities, shape of ``omega`` broadcast with ``eps``.
    """
    w = torch.as_tensor(omega).clamp_min(1e-6)  # f = [f sin(w/2)] / sin(w/2): keep w > 0
    return _igso3_sin_f(w, eps, L, method) / torch.sin(w / 2)


def igso3_angle_density(omega: Tensor, eps: Tensor | float, L: int = 200,
                        method: str = "auto") -> Tensor:
    """Marginal density of the rotation angle, ``p(w) = (1 - cos w) / pi * f(w)`` on [0, pi].

    Integrates to 1; for large ``eps`` tends to the Haar angle density ``(1 - cos w) / pi``.
    Arguments as in :func:`igso3_density`.
    """
    w = torch.as_tensor(omega)
    # (1 - cos w) f(w) / pi = 2 sin(w/2) [f(w) sin(w/2)] / pi: no division, exact 0 at w = 0
    return 2 * torch.sin(w / 2) * _igso3_sin_f(w, eps, L, method) / math.pi


def _igso3_sin_f(omega: Tensor, eps: Tensor | float, L: int, method: str) -> Tensor:
    if not omega.is_floating_point():
        omega = omega.to(torch.get_default_dtype())
    eps = torch.as_tensor(eps, dtype=omega.dtype, device=omega.device)
    if bool((eps <= 0).any()):
        raise ValueError("igso3: eps must be > 0")
    if method == "series":
        return _igso3_series(omega, eps, L)
    if method == "closed":
        return _igso3_closed(omega, eps)
    if method != "auto":
        raise ValueError(f"igso3: method must be 'auto', 'series' or 'closed', got {method!r}")
    # auto: closed form for eps < 1; for eps >= 1, 32 series terms are exact in float64
    # (the first dropped term is below exp(-32 * 33 / 2)).
    omega, eps = torch.broadcast_tensors(omega, eps)
    small = eps < 1.0
    out = torch.zeros_like(omega)
    out = out.masked_scatter(small, _igso3_closed(omega[small], eps[small]))
    return out.masked_scatter(~small, _igso3_series(omega[~small], eps[~small], min(L, 32)))


def igso3_sample(shape: Sequence[int] | int, eps: Tensor | float,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: Device = None, n_grid: int = 4096) -> Tensor:
    """Sample IGSO(3)(eps) rotations: angle by inverse CDF on a grid, axis uniform on S^2.

    The CDF of :func:`igso3_angle_density` is tabulated (float64, trapezoid rule) on
    ``n_grid`` points of ``[0, min(pi, 12 eps)]`` per distinct eps value and inverted by
    linear interpolation.

    Args:
        shape: batch shape.
        eps: float, or tensor broadcastable to ``shape`` (e.g. one eps per batch row).
        generator: optional torch generator.
        dtype: dtype of the result.
        device: device of the result.
        n_grid: number of grid points of the CDF table.

    Returns:
        ``(*shape, 3, 3)`` rotation matrices.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    f64 = dict(dtype=torch.float64, device=device)
    eps_t = torch.as_tensor(eps, **f64).broadcast_to(shape)
    uniq, inv = torch.unique(eps_t.reshape(-1), return_inverse=True)  # (U,), (n,)
    wmax = (12 * uniq).clamp_max(math.pi)  # mass beyond 12 eps is < 1e-28 (Maxwell tail)
    grid = torch.linspace(0, 1, n_grid, **f64) * wmax[:, None]  # (U, G)
    pdf = igso3_angle_density(grid, uniq[:, None])  # (U, G)
    cdf = F.pad(torch.cumsum((pdf[:, 1:] + pdf[:, :-1]) / 2 * grid.diff(dim=-1), -1), (1, 0))
    cdf = cdf / cdf[:, -1:]  # (U, G), normalised against quadrature error
    # Invert all tables in one searchsorted: row r is shifted by 2r, which keeps the
    # concatenated CDFs sorted (each lies in [0, 1]).
    shift = 2 * torch.arange(len(uniq), **f64)
    flat = (cdf + shift[:, None]).reshape(-1)  # (U * G,)
    u = torch.rand(inv.shape[0], generator=generator, **f64)  # (n,)
    j = torch.searchsorted(flat, u + shift[inv])  # (n,) index into flat
    j = torch.maximum(j, inv * n_grid + 1).clamp_max(inv * n_grid + n_grid - 1)  # same row
    gflat, c0, c1 = grid.reshape(-1), flat[j - 1] - shift[inv], flat[j] - shift[inv]
    omega = gflat[j - 1] + (gflat[j] - gflat[j - 1]) * ((u - c0) / (c1 - c0).clamp_min(1e-300))
    axis = F.normalize(torch.randn(inv.shape[0], 3, generator=generator, **f64), dim=-1)
    return exp(omega[:, None] * axis).to(dtype).reshape(*shape, 3, 3)
