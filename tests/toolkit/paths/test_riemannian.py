"""Riemannian conditional flow matching on SO(3)^N and SE(3)^N (toolkit.paths.riemannian)."""

import itertools
import math

import pytest
import torch

from toolkit.geometry import se3, so3
from toolkit.geometry.se3 import Rigid
from toolkit.paths.riemannian import (
    R3Path,
    SE3Path,
    SO3GeodesicPath,
    riemannian_euler,
    riemannian_fm_loss,
    riemannian_heun,
    so3_ot_coupling,
)

F64 = torch.float64
SCHEDULES = [("linear", False), ("exp", False), ("exp", True)]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _rots(shape, seed=0, dtype=F64):
    return so3.random_uniform(shape, generator=_gen(seed), dtype=dtype)


def _on_so3(R, atol=1e-10):
    eye = torch.eye(3, dtype=R.dtype)
    return (torch.allclose(R.mT @ R, eye.expand_as(R), atol=atol)
            and torch.allclose(torch.linalg.det(R), torch.ones(R.shape[:-2], dtype=R.dtype),
                               atol=atol))


@pytest.mark.parametrize("schedule,norm", SCHEDULES)
def test_path_endpoints_and_manifold(schedule, norm):
    p = SO3GeodesicPath(schedule, exp_normalize=norm)
    R0, R1 = _rots((64,), 0), _rots((64,), 1)
    assert torch.allclose(p.interpolate(R0, R1, 0.0), R0, atol=1e-12)
    d_end = so3.geodesic_distance(p.interpolate(R0, R1, 1.0), R1)
    if schedule == "exp" and not norm:
        # FrameFlow's kappa(1) = 1 - exp(-c): the path stops exp(-c) d(R0, R1) short of R1
        expect = math.exp(-10.0) * so3.geodesic_distance(R0, R1)
        assert torch.allclose(d_end, expect, atol=1e-10)
    else:
        assert d_end.max() < 1e-10
    for t in (0.1, 0.37, 0.8, 0.999):
        Rt = p.interpolate(R0, R1, t)
        assert _on_so3(Rt)
        # geodesic: d(R0, R_t) = kappa(t) d(R0, R1)
        k = p.kappa(torch.tensor(t, dtype=F64))
        assert torch.allclose(so3.geodesic_distance(R0, Rt), k * so3.geodesic_distance(R0, R1),
                              atol=1e-9)
    # per-sample times broadcast
    t = torch.linspace(0, 1, 64, dtype=F64)
    Rt = p.interpolate(R0, R1, t)
    assert torch.allclose(Rt[10], p.interpolate(R0[10], R1[10], t[10]), atol=1e-12)


@pytest.mark.parametrize("schedule,norm", SCHEDULES)
def test_kappa_derivative(schedule, norm):
    p = SO3GeodesicPath(schedule, exp_normalize=norm)
    t = torch.linspace(0.05, 0.95, 19, dtype=F64)
    h = 1e-6
    fd = (p.kappa(t + h) - p.kappa(t - h)) / (2 * h)
    assert torch.allclose(fd, p.d_kappa(t), rtol=1e-7)
    assert torch.allclose(p.rate(t), p.d_kappa(t) / (1 - p.kappa(t)), rtol=1e-10)


@pytest.mark.parametrize("schedule,norm", SCHEDULES)
def test_conditional_velocity_is_time_derivative(schedule, norm):
    p = SO3GeodesicPath(schedule, exp_normalize=norm)
    R0, R1 = _rots((128,), 2), _rots((128,), 3)
    h = 1e-6
    for t in (0.05, 0.3, 0.5, 0.75, 0.95):
        Rt = p.interpolate(R0, R1, t)
        # central difference of the body velocity R_t^T dR_t/dt, read off through log
        fd = (so3.log(Rt.mT @ p.interpolate(R0, R1, t + h))
              - so3.log(Rt.mT @ p.interpolate(R0, R1, t - h))) / (2 * h)
        u = p.conditional_velocity(Rt, R1, t)
        assert u.shape == (128, 3)
        assert (fd - u).abs().max() < 1e-5


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-9), (torch.float32, 1e-4)])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_linear_conditional_field_integrates_exactly(dtype, tol, steps):
    # Linear schedule: an Euler step from t_k covers the fraction dt / (1 - t_k) of the remaining
    # geodesic, which is exactly the path's progress, so every grid point is hit (any K, even 1).
    p = SO3GeodesicPath()
    R0, R1 = _rots((32,), 4, dtype), _rots((32,), 5, dtype)
    field = lambda R, t: p.conditional_velocity(R, R1, t)  # noqa: E731
    for integrate in (riemannian_euler, riemannian_heun):
        R, _ = integrate(field, R0, steps, p)
        assert so3.geodesic_distance(R, R1).max() < tol
        assert _on_so3(R, atol=10 * tol)


def test_heun_without_euler_last_halves_final_step():
    # The conditional field is singular at t = 1 (rate 1 / (1 - t), floored): evaluated there it
    # gives ~0, so the trapezoid average halves the last step and stops d / (2K) short of R1.
    # This is why riemannian_heun defaults to euler_last=True.
    p = SO3GeodesicPath()
    R0, R1 = _rots((32,), 24), _rots((32,), 25)
    field = lambda R, t: p.conditional_velocity(R, R1, t)  # noqa: E731
    R, n = riemannian_heun(field, R0, 5, p, euler_last=False)
    assert n == 10
    expect = so3.geodesic_distance(R0, R1) / 10
    assert torch.allclose(so3.geodesic_distance(R, R1), expect, atol=1e-6)


def test_convergence_order_exp_schedule():
    # FrameFlow exp schedule: constant rate c = 10 (stiff-ish), no singularity at t = 1.
    p = SO3GeodesicPath("exp")
    R0, R1 = _rots((16,), 6), _rots((16,), 7)
    target = p.interpolate(R0, R1, 1.0)
    field = lambda R, t: p.conditional_velocity(R, R1, t)  # noqa: E731

    def err(fn, K):
        return so3.geodesic_distance(fn(field, R0, K, p)[0], target).max().item()

    e_euler = [err(riemannian_euler, K) for K in (100, 200, 400)]
    e_heun = [err(riemannian_heun, K) for K in (50, 100, 200)]
    r_euler = [a / b for a, b in itertools.pairwise(e_euler)]
    r_heun = [a / b for a, b in itertools.pairwise(e_heun)]
    assert all(1.7 < r < 2.3 for r in r_euler), (e_euler, r_euler)
    assert all(3.5 < r < 4.6 for r in r_heun), (e_heun, r_heun)
    assert e_heun[-1] < 0.1 * e_euler[-1]


def test_heun_second_order_noncommuting_field():
    # Body velocity xi(t) = Rz(3t) (2, 0, 1): successive velocities do not commute. Closed form:
    # R(t) = R0 exp(t (xi0 + 3 e_z)) Rz(-3t)  (differentiate: R^T R' = Rz(3t)(xi0 + 3e_z) - 3e_z).
    p = SO3GeodesicPath()
    R0 = _rots((8,), 8)

    def field(R, t):
        xi = torch.stack((2 * torch.cos(3 * t), 2 * torch.sin(3 * t), torch.ones_like(t)))
        return xi.expand(*R.shape[:-2], 3)

    exact = R0 @ so3.exp(torch.tensor([2.0, 0.0, 4.0], dtype=F64)) @ so3.exp(
        torch.tensor([0.0, 0.0, -3.0], dtype=F64))

    def err(K, **kw):
        fn = riemannian_euler if kw.pop("euler", False) else riemannian_heun
        return so3.geodesic_distance(fn(field, R0, K, p, **kw)[0], exact).max().item()

    Ks = (10, 20, 40)
    e1 = [err(K, euler=True) for K in Ks]
    assert all(1.8 < a / b < 2.2 for a, b in itertools.pairwise(e1)), e1
    for transport in (False, True):
        e2 = [err(K, euler_last=False, transport=transport) for K in Ks]
        assert all(3.6 < a / b < 4.4 for a, b in itertools.pairwise(e2)), (transport, e2)
        assert e2[-1] < 0.1 * e1[-1]


def test_translation_prior_and_path():
    p = R3Path(scale=3.0)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[1, 5:] = False
    mask[3, 2:] = False
    x0 = p.sample_prior((4, 7), _gen(9), mask=mask, dtype=F64)
    assert x0.shape == (4, 7, 3)
    m = mask.to(F64)[..., None]
    assert torch.allclose((m * x0).sum(-2), torch.zeros(4, 3, dtype=F64), atol=1e-12)
    assert (x0[~mask] == 0).all()
    big = p.sample_prior((2000, 4), _gen(10), dtype=F64)
    # centring 4 points keeps 3/4 of the variance per point
    assert abs(big.var().item() / (9.0 * 0.75) - 1) < 0.05
    x1 = torch.randn(4, 7, 3, dtype=F64, generator=_gen(11))
    t = torch.tensor([0.0, 0.25, 0.6, 1.0], dtype=F64)
    xt = p.interpolate(x0, x1, t)
    assert torch.allclose(xt, (1 - t)[:, None, None] * x0 + t[:, None, None] * x1)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[3], x1[3])
    u = p.conditional_velocity(xt[:3], x1[:3], t[:3])
    assert torch.allclose(u, x1[:3] - x0[:3], atol=1e-12)


def test_se3_path_product_structure():
    path = SE3Path(trans_scale=2.0)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, 4:] = False
    T0 = path.sample_prior((3,), 6, _gen(12), mask=mask, dtype=F64)
    assert T0.shape == (3, 6)
    assert torch.equal(T0.rots[2, 4:], torch.eye(3, dtype=F64).expand(2, 3, 3))
    T1 = Rigid(_rots((3, 6), 13), torch.randn(3, 6, 3, dtype=F64, generator=_gen(14)))
    t = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    Tt = path.interpolate(T0, T1, t)
    ref = se3.interpolate(T0, T1, t[:, None])
    assert torch.allclose(Tt.rots, ref.rots, atol=1e-12)
    assert torch.allclose(Tt.trans, ref.trans, atol=1e-12)
    rv, tv = path.conditional_velocity(Tt, T1, t)
    assert rv.shape == tv.shape == (3, 6, 3)
    # one Euler step along the conditional field stays on the path (linear schedule)
    T2 = path.step(Tt, (rv, tv), 0.05)
    ref2 = path.interpolate(T0, T1, t + 0.05)
    assert so3.geodesic_distance(T2.rots, ref2.rots).max() < 1e-9
    assert torch.allclose(T2.trans, ref2.trans, atol=1e-9)


@pytest.mark.parametrize("schedule,norm,integrate,steps,tol", [
    ("linear", False, riemannian_euler, 8, 1e-9),
    ("linear", False, riemannian_heun, 8, 1e-9),
    ("exp", True, riemannian_heun, 100, 1e-4),
])
def test_marginal_field_single_target_lands_on_target(schedule, norm, integrate, steps, tol):
    # Marginal field u_t(x) = sum_j w_j(x, t) u_t(x | x1^j) with posterior weights w_j from the
    # translation likelihood N(x_t; t x1^j, (1 - t)^2 s^2). With all data = one T1 the weights
    # are uniform and the marginal equals the conditional field, so every prior lands on T1.
    path = SE3Path(SO3GeodesicPath(schedule, exp_normalize=norm), trans_scale=1.5)
    T1 = Rigid(_rots((5,), 15), 4 * torch.randn(5, 3, dtype=F64, generator=_gen(16)))
    data = [T1] * 3

    def marginal(T, t):
        logw, vels = [], []
        for D in data:
            d2 = ((T.trans - t * D.trans) ** 2).sum((-1, -2))  # (B,)
            logw.append(-d2 / (2 * (1 - t).clamp_min(1e-6) ** 2 * 1.5**2))
            vels.append(path.conditional_velocity(T, D.unsqueeze(0), t))
        w = torch.softmax(torch.stack(logw), 0)[..., None, None]  # (J, B, 1, 1)
        rot = (w * torch.stack([v[0] for v in vels])).sum(0)
        trans = (w * torch.stack([v[1] for v in vels])).sum(0)
        return rot, trans

    T0 = path.sample_prior((8,), 5, _gen(17), dtype=F64)
    T, _ = integrate(marginal, T0, steps, path)
    assert so3.geodesic_distance(T.rots, T1.rots).max() < tol
    assert (T.trans - T1.trans).abs().max() < tol


def test_nfe_accounting():
    path = SE3Path()
    calls = []

    def field(T, t):
        calls.append(float(t))
        return torch.zeros_like(T.trans), torch.zeros_like(T.trans)

    T0 = path.sample_prior((2,), 3, _gen(18))
    _, n = riemannian_euler(field, T0, 7, path)
    assert n == len(calls) == 7 and calls[0] == 0.0 and max(calls) < 1.0
    calls.clear()
    _, n = riemannian_heun(field, T0, 7, path)  # euler_last: never evaluates at t_end
    assert n == len(calls) == 13 and max(calls) < 1.0
    calls.clear()
    _, n = riemannian_heun(field, T0, 7, path, euler_last=False, t_start=0.2, t_end=0.9)
    assert n == len(calls) == 14 and calls[0] == pytest.approx(0.2)
    assert max(calls) == pytest.approx(0.9)


def test_loss_helper():
    g = _gen(19)
    a, b = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    assert riemannian_fm_loss(a, b, a, b).item() == 0.0
    c, d = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    full = riemannian_fm_loss(a, b, c, d, rot_weight=0.5)
    ref = (0.5 * ((a - c) ** 2).sum(-1) + ((b - d) ** 2).sum(-1)).mean()
    assert torch.allclose(full, ref)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, 3:] = False
    c2, d2 = c.clone(), d.clone()
    c2[0, 3:] = float("nan")
    d2[0, 3:] = 1e9
    masked = riemannian_fm_loss(a, b, c2, d2, mask=mask)
    ref = (((a - c) ** 2).sum(-1) + ((b - d) ** 2).sum(-1))[mask].mean()
    assert torch.allclose(masked, ref)
    with pytest.raises(ValueError, match=r"\(2, 5, 3\).*\(2, 4, 3\)"):
        riemannian_fm_loss(a, b, c[:, :4], d)
    with pytest.raises(ValueError, match=r"\(2, 5, 3\).*\(2, 5, 2\)"):
        riemannian_fm_loss(a, b, c, d[..., :2])
    with pytest.raises(ValueError, match="mask"):
        riemannian_fm_loss(a, b, c, d, mask=mask[:, :4])


def test_so3_ot_coupling_is_optimal():
    R0, R1 = _rots((6, 4), 20), _rots((6, 4), 21)
    Rp, perm = so3_ot_coupling(R0, R1)
    assert sorted(perm.tolist()) == list(range(6))
    assert torch.equal(Rp, R0[perm])

    def cost(p):
        return (so3.geodesic_distance(R0[list(p)], R1) ** 2).sum().item()

    best = min(cost(p) for p in itertools.permutations(range(6)))
    assert cost(perm.tolist()) == pytest.approx(best, rel=1e-10)
    assert cost(perm.tolist()) <= cost(range(6))


def test_se3_ot_coupling_is_optimal_with_masks():
    from toolkit.paths.riemannian import se3_ot_coupling

    g = _gen(30)
    T0 = Rigid(_rots((5, 4), 31), torch.randn(5, 4, 3, generator=g, dtype=F64))
    T1 = Rigid(_rots((5, 4), 32), torch.randn(5, 4, 3, generator=g, dtype=F64))
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[1, 2:] = False  # data structure 1 has 2 residues: its padding costs nothing
    Tp, perm = se3_ot_coupling(T0, T1, mask, rot_weight=0.5)
    assert sorted(perm.tolist()) == list(range(5)) and torch.equal(Tp.trans, T0.trans[perm])

    def cost(p):
        p = list(p)
        c = 0.5 * so3.geodesic_distance(T0.rots[p], T1.rots) ** 2 \
            + ((T0.trans[p] - T1.trans) ** 2).sum(-1)
        return (c * mask).sum().item()

    best = min(cost(p) for p in itertools.permutations(range(5)))
    assert cost(perm.tolist()) == pytest.approx(best, rel=1e-10)
    with pytest.raises(ValueError, match="frames"):
        se3_ot_coupling(T0, Rigid(T1.rots[:, :3], T1.trans[:, :3]))


def test_prior_options_and_errors():
    p = SO3GeodesicPath(prior_eps=0.1)
    R = p.sample_prior((500,), _gen(22), dtype=F64)
    assert _on_so3(R) and so3.angle(R).mean() < 0.3  # concentrated (Maxwell mean ~ 0.16)
    assert so3.angle(SO3GeodesicPath().sample_prior((500,), _gen(23))).mean() > 1.5  # Haar ~2.13
    with pytest.raises(ValueError, match="schedule"):
        SO3GeodesicPath("cosine")
    with pytest.raises(ValueError, match="steps"):
        riemannian_euler(lambda T, t: T, _rots((2,)), 0, SO3GeodesicPath())


def test_toolkit_sample_dispatches_on_manifold_paths():
    """``toolkit.sample`` with an SE(3)^N path: the path applies each step (exp on SO(3)),
    the model gets ``t`` of shape (B,), NFE is reported, and bad settings are refused."""
    import toolkit

    path = SE3Path()
    T0 = path.sample_prior((3,), 5, _gen(21), dtype=F64)
    T1 = Rigid(_rots((3, 5), 22), torch.randn(3, 5, 3, dtype=F64, generator=_gen(23)))
    seen = []

    def model(T, t, target=None):
        seen.append(tuple(t.shape))
        return path.conditional_velocity(T, target, t)

    info = {}
    out = toolkit.sample(model, T0, path=path, steps=6, cond={"target": T1}, info=info)
    assert so3.geodesic_distance(out.rots, T1.rots).max() < 1e-9  # linear schedule: exact
    assert torch.allclose(out.trans, T1.trans, atol=1e-9)
    assert info["nfe"] == 6 and set(seen) == {(3,)}
    out_h = toolkit.sample(model, T0, path=path, solver="heun", steps=6, cond={"target": T1},
                           info=info)
    assert info["nfe"] == 11 and so3.geodesic_distance(out_h.rots, T1.rots).max() < 1e-9
    R = toolkit.sample(lambda R, t: SO3GeodesicPath().conditional_velocity(R, T1.rots, t),
                       T0.rots, path=SO3GeodesicPath(), steps=4)  # rotations alone
    assert so3.geodesic_distance(R, T1.rots).max() < 1e-9
    with pytest.raises(ValueError, match="manifold"):
        toolkit.sample(model, T0, path=path, solver="dpmpp2m", cond={"target": T1})
    with pytest.raises(ValueError, match="uniform grid"):
        toolkit.sample(model, T0, path=path, grid="karras", cond={"target": T1})
    with pytest.raises(ValueError, match="velocity"):
        toolkit.sample(model, T0, path=path, prediction="noise", cond={"target": T1})
