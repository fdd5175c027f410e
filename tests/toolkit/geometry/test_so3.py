"""SO(3): exp/log, conversions, geodesics, Haar sampling and IGSO(3)."""

import math

import pytest
import torch

from toolkit.geometry import so3

F64, F32 = torch.float64, torch.float32
ANGLES = [0.0, 1e-8, 1e-4, 1e-2, 0.3, 1.0, 2.0, 2.7, 3.0, math.pi - 1e-3, math.pi - 1e-6]
TOL = {F64: 1e-10, F32: 1e-5}


def _axes(n, dtype, seed=0):
    a = torch.randn(n, 3, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    return a / a.norm(dim=-1, keepdim=True)


def _vecs(dtype, per_angle=64):
    """Rotation vectors at the listed angles plus uniform angles in [0, pi)."""
    th = torch.tensor(ANGLES, dtype=dtype).repeat_interleave(per_angle)
    th = torch.cat((th, torch.rand(512, dtype=dtype, generator=torch.Generator().manual_seed(1))
                    * math.pi))
    return _axes(len(th), dtype) * th[:, None]


@pytest.mark.parametrize("dtype", [F64, F32])
def test_exp_log_roundtrip(dtype):
    v = _vecs(dtype)
    R = so3.exp(v)
    v2 = so3.log(R)
    assert (v2 - v).abs().max() < TOL[dtype]
    assert (so3.exp(v2) - R).abs().max() < TOL[dtype]
    assert (v2.norm(dim=-1) <= math.pi + TOL[dtype]).all()
    # batched over several leading dims
    assert so3.log(so3.exp(v.reshape(-1, 4, 3))).shape == (v.shape[0] // 4, 4, 3)


@pytest.mark.parametrize("dtype", [F64, F32])
def test_log_at_pi_exactly(dtype):
    a = _axes(200, dtype, seed=3)
    R = so3.exp(math.pi * a)
    v = so3.log(R)
    assert (v.norm(dim=-1) - math.pi).abs().max() < TOL[dtype] * 10
    # sign ambiguity at pi: v = +-pi a, and exp(log(R)) == R either way
    err = torch.minimum((v - math.pi * a).norm(dim=-1), (v + math.pi * a).norm(dim=-1))
    assert err.max() < TOL[dtype] * 10
    assert (so3.exp(v) - R).abs().max() < TOL[dtype]
    assert torch.isfinite(v).all()


@pytest.mark.parametrize("dtype", [F64, F32])
def test_exp_is_rotation(dtype):
    v = _axes(500, dtype) * torch.linspace(0, 10, 500, dtype=dtype)[:, None]
    R = so3.exp(v)
    eye = torch.eye(3, dtype=dtype)
    assert (R.transpose(-1, -2) @ R - eye).abs().max() < TOL[dtype] * 10
    assert (torch.linalg.det(R) - 1).abs().max() < TOL[dtype] * 10
    # rotation about z by 90 deg maps x to y (right-hand rule)
    Rz = so3.exp(torch.tensor([0.0, 0.0, math.pi / 2], dtype=dtype))
    assert torch.allclose(Rz @ torch.tensor([1.0, 0, 0], dtype=dtype),
                          torch.tensor([0.0, 1, 0], dtype=dtype), atol=TOL[dtype])


def test_hat_vee():
    v, u = torch.randn(2, 10, 3, dtype=F64).unbind(0)
    assert torch.allclose(so3.hat(v) @ u[..., None], torch.linalg.cross(v, u)[..., None])
    assert torch.allclose(so3.vee(so3.hat(v)), v)


@pytest.mark.parametrize("v", [[0.3, -0.2, 0.5], [1.2, 2.4, -0.6], [1e-3, 0.0, -2e-3],
                               [2.9, 0.8, -0.5]])
def test_gradcheck_exp_log(v):
    x = torch.tensor(v, dtype=F64, requires_grad=True)  # last one has angle ~ 3.05 (near pi)
    assert torch.autograd.gradcheck(so3.exp, (x,))
    R = so3.exp(x.detach()).requires_grad_()
    assert torch.autograd.gradcheck(so3.log, (R,))


def test_gradients_finite_at_zero_and_near_pi():
    z = torch.zeros(3, dtype=F64, requires_grad=True)
    J = torch.autograd.functional.jacobian(so3.exp, z)  # (3, 3, 3): d exp / d v_i at 0 = hat(e_i)
    assert torch.allclose(J.permute(2, 0, 1), so3.hat(torch.eye(3, dtype=F64)))
    so3.log(so3.exp(z)).sum().backward()
    assert torch.allclose(z.grad, torch.ones(3, dtype=F64))  # log o exp = id near 0
    eye = torch.eye(3, dtype=F64, requires_grad=True)
    so3.log(eye).sum().backward()
    assert torch.isfinite(eye.grad).all()
    for dtype in (F64, F32):
        x = (_axes(8, dtype) * (math.pi - 1e-4)).requires_grad_()
        so3.log(so3.exp(x)).sum().backward()
        assert torch.isfinite(x.grad).all()
        assert torch.allclose(x.grad, torch.ones_like(x), atol=1e-2)


@pytest.mark.parametrize("dtype", [F64, F32])
def test_quaternions(dtype):
    v = _vecs(dtype)
    q = so3.rotvec_to_quat(v)
    assert (q[:, 0] >= 0).all() and torch.allclose(q.norm(dim=-1), torch.ones(len(q), dtype=dtype))
    assert (so3.quat_to_matrix(q) - so3.exp(v)).abs().max() < TOL[dtype]
    assert (so3.quat_to_rotvec(q) - v).abs().max() < TOL[dtype] * 10
    # Shepperd: exact half-turns about the axes and diagonals need every pivot
    half = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, -1]], dtype=dtype)
    R = torch.cat((so3.exp(v), so3.exp(math.pi * half / half.norm(dim=-1, keepdim=True)),
                   so3.random_uniform(1000, dtype=dtype)))
    q2 = so3.matrix_to_quat(R)
    assert (q2[:, 0] >= 0).all()
    assert (so3.quat_to_matrix(q2) - R).abs().max() < TOL[dtype] * 10
    qq = torch.randn(1000, 4, dtype=dtype)
    qq = qq / qq.norm(dim=-1, keepdim=True)
    qq = torch.where(qq[:, :1] < 0, -qq, qq)
    assert (so3.matrix_to_quat(so3.quat_to_matrix(qq)) - qq).abs().max() < TOL[dtype] * 10


def test_geodesic_interpolation():
    g = torch.Generator().manual_seed(5)
    R0, R1 = so3.random_uniform((2, 300), generator=g, dtype=F64).unbind(0)
    d = so3.geodesic_distance(R0, R1)
    assert torch.allclose(d, so3.log(R0.transpose(-1, -2) @ R1).norm(dim=-1))
    assert torch.allclose(so3.interpolate(R0, R1, 0.0), R0, atol=1e-12)
    assert torch.allclose(so3.interpolate(R0, R1, 1.0), R1, atol=1e-10)
    t = torch.rand(300, dtype=F64, generator=g)
    Rt = so3.interpolate(R0, R1, t)
    assert torch.allclose(so3.geodesic_distance(R0, Rt), t * d, atol=1e-10)
    assert torch.allclose(so3.geodesic_distance(Rt, R1), (1 - t) * d, atol=1e-10)
    # left-invariance of the distance
    Q = so3.random_uniform(generator=g, dtype=F64)
    assert torch.allclose(so3.geodesic_distance(Q @ R0, Q @ R1), d, atol=1e-10)


def test_haar_sampling():
    R = so3.random_uniform(20000, generator=torch.Generator().manual_seed(0), dtype=F64)
    w = so3.angle(R)
    se = 0.5 / math.sqrt(20000)  # std of cos(w) under Haar is 1/2
    assert abs(torch.cos(w).mean().item() + 0.5) < 5 * se  # E[cos w] = -1/2
    assert R.mean(0).abs().max() < 5 * math.sqrt(1 / 3 / 20000)  # E[R] = 0, Var R_ij = 1/3
    ws, _ = torch.sort(w)
    cdf = (ws - torch.sin(ws)) / math.pi  # Haar angle CDF of (1 - cos w) / pi
    emp = torch.arange(1, 20001, dtype=F64) / 20000
    assert (cdf - emp).abs().max() < 0.02
    R2 = so3.random_uniform(20000, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.equal(R, R2)


@pytest.mark.parametrize("eps", [0.1, 0.5, 1.0, 2.0])
def test_igso3_density_normalised(eps):
    w = torch.linspace(0, math.pi, 20001, dtype=F64)
    for method in ("auto", "series"):
        p = so3.igso3_angle_density(w, eps, L=400, method=method)
        assert (p >= -1e-12).all()
        assert abs(torch.trapezoid(p, w).item() - 1) < 1e-6
    f = so3.igso3_density(w[1:], eps)  # density w.r.t. Haar: (1 - cos w)/pi f = p
    p = so3.igso3_angle_density(w[1:], eps)
    assert torch.allclose((1 - torch.cos(w[1:])) / math.pi * f, p, atol=1e-8)


def test_igso3_limits_and_forms():
    w = torch.linspace(0, math.pi, 2001, dtype=F64)
    haar = (1 - torch.cos(w)) / math.pi
    gaps = [(so3.igso3_angle_density(w, e) - haar).abs().max().item() for e in (1.0, 2.0, 5.0)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-8
    for eps in (0.2, 0.5, 0.9, 1.5):  # closed (Poisson-summed) form agrees with the series
        a = so3.igso3_angle_density(w, eps, method="closed")
        b = so3.igso3_angle_density(w, eps, L=500, method="series")
        assert (a - b).abs().max() < 1e-10
    # small eps: rotation vector ~ N(0, eps^2 I), the angle is Maxwell(eps): E[w^2] = 3 eps^2
    for eps in (0.01, 0.02, 0.05):
        ws = torch.linspace(0, 12 * eps, 20001, dtype=F64)
        p = so3.igso3_angle_density(ws, eps)
        maxwell = math.sqrt(2 / math.pi) * ws**2 * torch.exp(-(ws**2) / (2 * eps**2)) / eps**3
        assert (p - maxwell).abs().max() < 0.01 * maxwell.max()
        rms = torch.trapezoid(p * ws**2, ws).sqrt().item()
        assert abs(rms / eps - math.sqrt(3)) < 0.01


def _ks(samples_w, eps):
    ws, _ = torch.sort(samples_w.double())
    grid = torch.linspace(0, math.pi, 200001, dtype=F64)
    p = so3.igso3_angle_density(grid, eps)
    cdf = torch.cat((torch.zeros(1, dtype=F64),
                     torch.cumsum((p[1:] + p[:-1]) / 2 * grid.diff(), 0)))
    idx = torch.searchsorted(grid, ws).clamp(1, len(grid) - 1)
    c = cdf[idx - 1] + (cdf[idx] - cdf[idx - 1]) * (ws - grid[idx - 1]) / grid.diff()[idx - 1]
    n = len(ws)
    hi = torch.arange(1, n + 1, dtype=F64) / n
    return torch.maximum((c - hi + 1 / n).abs(), (c - hi).abs()).max().item()


KS = {}


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.5, 1.0, 2.0])
def test_igso3_sample_matches_density(eps):
    R = so3.igso3_sample(20000, eps, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert R.shape == (20000, 3, 3)
    assert (torch.linalg.det(R) - 1).abs().max() < 1e-10
    KS[eps] = _ks(so3.angle(R), eps)
    assert KS[eps] < 0.03
    axis = so3.log(R) / so3.angle(R)[:, None]
    assert axis.mean(0).abs().max() < 0.03  # isotropic axis


def test_igso3_sample_per_row_eps_and_scaling():
    eps = torch.tensor([[0.02], [0.04], [1.0]])
    R = so3.igso3_sample((3, 10000), eps, generator=torch.Generator().manual_seed(1))
    assert R.shape == (3, 10000, 3, 3) and R.dtype == F32
    w = so3.angle(R.double())
    for i, e in enumerate(eps[:, 0].tolist()):
        assert _ks(w[i], e) < 0.03
    # small eps: the angle std is proportional to eps (Maxwell std = eps sqrt(3 - 8/pi))
    ratio = w[1].std() / w[0].std()
    assert abs(ratio - 2) < 0.1
    assert abs(w[0].std() / 0.02 - math.sqrt(3 - 8 / math.pi)) < 0.03


@pytest.mark.parametrize("fn, arg, msg", [
    (so3.exp, torch.zeros(4, 2), r"exp: expected \(\.\.\., 3\), got \(4, 2\)"),
    (so3.hat, torch.zeros(5), r"hat: expected \(\.\.\., 3\), got \(5,\)"),
    (so3.log, torch.zeros(2, 3), r"log: expected \(\.\.\., 3, 3\), got \(2, 3\)"),
    (so3.vee, torch.zeros(3, 4), r"vee: expected \(\.\.\., 3, 3\), got \(3, 4\)"),
    (so3.quat_to_matrix, torch.zeros(3), r"quat_to_matrix: expected \(\.\.\., 4\), got \(3,\)"),
    (so3.matrix_to_quat, torch.zeros(4, 4), r"matrix_to_quat: expected \(\.\.\., 3, 3\)"),
    (so3.rotvec_to_quat, torch.zeros(2, 4), r"rotvec_to_quat: expected \(\.\.\., 3\)"),
    (so3.quat_to_rotvec, torch.zeros(2, 3), r"quat_to_rotvec: expected \(\.\.\., 4\)"),
])
def test_bad_shapes(fn, arg, msg):
    with pytest.raises(ValueError, match=msg):
        fn(arg)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"interpolate: expected \(\.\.\., 3, 3\), got \(3,\)"):
        so3.interpolate(torch.eye(3), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="eps must be > 0"):
        so3.igso3_angle_density(torch.ones(3), 0.0)
    with pytest.raises(ValueError, match="method"):
        so3.igso3_density(torch.ones(3), 0.5, method="bogus")


def test_parity_with_scipy_rotation():
    """exp / log / quaternions agree with scipy.spatial.transform.Rotation (float64)."""
    from scipy.spatial.transform import Rotation

    g = torch.Generator().manual_seed(7)
    axis = torch.randn(200, 3, generator=g, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    theta = torch.rand(200, 1, generator=g, dtype=torch.float64) * (math.pi - 1e-6)
    v = axis * theta  # (200, 3), angles in [0, pi)
    ref = Rotation.from_rotvec(v.numpy())
    torch.testing.assert_close(so3.exp(v), torch.from_numpy(ref.as_matrix()), atol=1e-12, rtol=0)
    torch.testing.assert_close(so3.log(so3.exp(v)), torch.from_numpy(ref.as_rotvec()),
                               atol=1e-9, rtol=0)
    q = so3.matrix_to_quat(so3.exp(v))  # (w, x, y, z), w >= 0
    q_ref = torch.from_numpy(ref.as_quat(canonical=True))[:, [3, 0, 1, 2]]  # scipy: (x, y, z, w)
    torch.testing.assert_close(q, q_ref, atol=1e-12, rtol=0)


def test_validate_refuses_or_reorthogonalises():
    import warnings

    R = so3.random_uniform((4,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(so3.validate(R), R)
    bad = R.clone()
    bad[2] = bad[2] * 1.01  # scaled: not orthogonal
    with pytest.raises(ValueError, match=r"1 of 4 matrices.*index \(2,\)"):
        so3.validate(bad)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fixed = so3.validate(bad, mode="fix")
    assert rec and "re-orthogonalised" in str(rec[0].message)
    assert torch.allclose(fixed[2], R[2], atol=1e-12) and torch.equal(fixed[0], R[0])
    refl = R.clone()
    refl[1] = -refl[1]  # det = -1
    with pytest.raises(ValueError, match="reflections"):
        so3.validate(refl, mode="fix")
    with pytest.raises(ValueError, match="NaN"):
        so3.validate(torch.full((3, 3), float("nan")))
    M = R + 0.05 * torch.randn(4, 3, 3, dtype=torch.float64, generator=torch.Generator()
                                .manual_seed(1))
    P = so3.project(M)
    assert torch.allclose(P.transpose(-1, -2) @ P, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(torch.linalg.det(P), torch.ones(4, dtype=torch.float64))
