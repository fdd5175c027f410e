"""Diffusion Forcing: scheduling matrices, per-token sampler, rollouts, task and data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modalities.hybrid import forcing
from modalities.hybrid.forcing_data import (
    SequenceDataset,
    action_sequences,
    canonicalize,
    decanonicalize,
    rigid_to_tokens,
    tokens_to_rigid,
)
from modalities.hybrid.forcing_task import DiffusionForcingTask
from toolkit.geometry import so3
from toolkit.nn.seq import SeqTransformer
from toolkit.train.tasks import StepContext

MU, S = 1.5, 0.5  # Gaussian toy: every token coordinate i.i.d. N(MU, S^2)


def oracle(x: torch.Tensor, t: torch.Tensor, **_: object) -> torch.Tensor:
    """Exact velocity E[x1 - x0 | x_t] on the linear path for x1 ~ N(MU, S^2), x0 ~ N(0, 1):
    x_t ~ N(t MU, t^2 S^2 + (1-t)^2), E[x1|x_t] = MU + t S^2 (x_t - t MU) / var,
    E[x0|x_t] = (1-t)(x_t - t MU) / var."""
    t = t[..., None].to(x.dtype)
    var = t * t * S * S + (1 - t) ** 2
    r = (x - t * MU) / var
    return MU + t * S * S * r - (1 - t) * r


def _net(dim: int = 3, causal: bool = True, **kw: object) -> SeqTransformer:
    torch.manual_seed(0)
    kw = {"hidden_dim": 32, "depth": 2, "num_heads": 2, "max_len": 8, "pos_embed": "learned",
          **kw}
    return SeqTransformer(in_dim=dim, causal=causal, **kw)


def _ctx(seed: int = 0) -> StepContext:
    return StepContext(0, 0, torch.Generator().manual_seed(seed))


def _smooth(n: int = 32, T: int = 24, D: int = 3, seed: int = 0) -> torch.Tensor:
    """Action-like sequences: sinusoids with random phase and frequency per dimension."""
    g = torch.Generator().manual_seed(seed)
    f = 0.2 + 0.3 * torch.rand(n, 1, D, generator=g)
    ph = 2 * math.pi * torch.rand(n, 1, D, generator=g)
    return torch.sin(f * torch.arange(T)[None, :, None] + ph)  # (n, T, D)


# ---------------------------------------------------------------- scheduling matrices
@pytest.mark.parametrize("name", forcing.SCHEDULES)
def test_schedules_are_valid(name):
    n, s = 5, 4
    K = forcing.make_schedule(name, n, s)
    forcing.check_schedule(K, n)
    assert (K[0] == 0).all() and (K[-1] == 1).all() and (K.diff(dim=0) >= 0).all()
    assert (K.diff(dim=0) > 0).any(dim=1).all()  # every row moves some token
    rows = {"autoregressive": n * s, "pyramid": s + n - 1, "full_sequence": s}[name]
    assert K.shape == (rows + 1, n)


def test_pyramid_offsets_and_special_cases():
    K = forcing.pyramid(6, 5, delay=2)
    assert torch.equal(K[2:, 1:], K[:-2, :-1])  # token j is token j-1 delayed by 2 rows
    assert (K[:, 1:] <= K[:, :-1]).all()  # earlier tokens are never noisier
    A = forcing.autoregressive(4, 3)
    busy = ((A > 0) & (A < 1)).sum(1)
    assert busy.max() == 1  # one token at a time
    assert torch.equal(A, forcing.pyramid(4, 3, delay=3))
    F = forcing.full_sequence(4, 3)
    assert torch.equal(F, F[:, :1].expand_as(F))


@pytest.mark.parametrize(("K", "msg"), [
    (torch.tensor([[0.0, 0.0], [0.5, 0.7], [0.4, 1.0], [1.0, 1.0]]), "non-decreasing"),
    (torch.tensor([[0.1, 0.0], [1.0, 1.0]]), "start at t = 0"),
    (torch.tensor([[0.0, 0.0], [1.0, 0.9]]), "end at t = 1"),
    (torch.zeros(1, 3), "M >= 1"),
])
def test_bad_schedules_are_refused(K, msg):
    with pytest.raises(ValueError, match=msg):
        forcing.check_schedule(K)


# ---------------------------------------------------------------- per-token sampler
def test_sampler_reproduces_gaussian_with_oracle_velocity():
    g = torch.Generator().manual_seed(0)
    ctx = MU + S * torch.randn(4000, 2, 2, generator=g)
    for name in ("pyramid", "autoregressive"):
        K = forcing.make_schedule(name, 3, 24)
        info: dict = {}
        x = forcing.denoise_window(oracle, ctx, 3, K, generator=g, stabilization=0.05,
                                   info=info)  # (4000, 3, 2)
        assert info["nfe"] == K.shape[0] - 1
        assert abs(float(x.mean()) - MU) < 0.03
        assert abs(float(x.std()) - S) < 0.03
    wrong = forcing.denoise_window(lambda x, t: torch.zeros_like(x), ctx, 3,
                                   forcing.full_sequence(3, 8), generator=g)
    assert abs(float(wrong.std()) - S) > 0.3  # the check can fail


def test_per_token_times_reach_network_in_sampler():
    seen = []

    def spy(x, t):
        seen.append((x.clone(), t.clone()))
        return torch.zeros_like(x)

    ctx = torch.randn(2, 3, 4)
    K = forcing.pyramid(2, 2, delay=1)
    forcing.denoise_window(spy, ctx, 2, K, stabilization=0.1,
                           generator=torch.Generator().manual_seed(0))
    assert len(seen) == K.shape[0] - 1
    for m, (x, t) in enumerate(seen):
        assert t.shape == (2, 5)
        want = torch.cat([torch.ones(3), K[m].float()]).clamp(max=0.9)  # t = 1 shown at 1 - eps
        assert torch.allclose(t, want.expand(2, 5))
        assert not torch.allclose(x[:, :3], ctx)  # stabilised context is shown noisy ...
        assert torch.allclose(x[:, :3], 0.9 * ctx, atol=0.5)
    seen.clear()
    forcing.denoise_window(spy, ctx, 2, K)  # ... and clean at t = 1 without stabilisation
    assert all(torch.equal(x[:, :3], ctx) and (t[:, :3] == 1).all() for x, t in seen)
    seen.clear()
    forcing.denoise_window(spy, ctx, 2, forcing.full_sequence(2, 3), context_mode="replace")
    assert [float(t[0, 0]) for _, t in seen] == pytest.approx([0, 1 / 3, 2 / 3])


def test_per_token_times_reach_network_in_training():
    seen = {}
    x = {"x": _smooth(8, 8)}
    for mode in ("independent", "full_sequence", "teacher_forcing"):
        task = DiffusionForcingTask(mode, horizon=8, representation="vector", chunk=4)
        model = task.wrap_model(_net(causal=mode != "full_sequence"))
        model.net.register_forward_pre_hook(lambda m, args: seen.update(t=args[1].clone()))
        task.loss(model, x, _ctx())
        t = seen["t"]
        assert t.shape == (8, 8)
        if mode == "independent":
            assert (t.std(dim=1) > 0.05).all()  # its own noise level per token
        elif mode == "full_sequence":
            assert torch.equal(t, t[:, :1].expand_as(t))
        else:
            assert (t[:, 0] == 1).all() and (t[:, -1] < 1).all()  # clean prefix, noisy end
            k = (t == 1).sum(1)  # clean prefix length, in min_context..L-1
            assert (k >= 1).all() and (k <= 7).all() and k.unique().numel() > 1
            assert all((t[i, k[i]:] == t[i, -1]).all() for i in range(8))  # one shared t


# ---------------------------------------------------------------- rollouts
def test_oracle_rollout_four_horizons_is_finite_and_counts_nfe():
    H, c, s = 8, 4, 16
    ctx = MU + S * torch.randn(256, 3, 2)
    info: dict = {}
    out = forcing.rollout(oracle, ctx, 4 * H, H, chunk=c, schedule="pyramid", steps=s,
                          stabilization=0.02, generator=torch.Generator().manual_seed(1),
                          info=info)
    assert out.shape == (256, 3 + 4 * H, 2) and torch.isfinite(out).all()
    assert torch.equal(out[:, :3], ctx)
    assert info["windows"] == 4 * H // c and info["nfe"] == info["windows"] * (s + c - 1)
    gen = out[:, 3:]
    assert abs(float(gen.mean()) - MU) < 0.05 and abs(float(gen.std()) - S) < 0.05


def test_task_rollout_of_poses_is_finite_valid_and_keeps_context():
    torch.manual_seed(0)
    task = DiffusionForcingTask("independent", horizon=8, num_classes=4, chunk=3, steps=2)
    model = task.wrap_model(_net(9, zero_init=False, pooled_dim=8)).eval()
    R = so3.random_uniform((3, 4), generator=torch.Generator().manual_seed(0))
    ctx = rigid_to_tokens(R, torch.randn(3, 4, 3))
    out = task.rollout(model, ctx, 32, y=torch.tensor([0, 1, 3]),
                       generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 36, 9) and torch.isfinite(out).all()
    assert torch.allclose(out[:, :4], ctx)
    Rg, _ = tokens_to_rigid(out[:, 4:])
    assert torch.allclose(Rg.transpose(-1, -2) @ Rg, torch.eye(3).expand_as(Rg), atol=1e-5)
    assert torch.allclose(out[:, 4:, 3:], rigid_to_tokens(Rg, out[:, 4:, :3])[..., 3:],
                          atol=1e-5)  # generated 6-D parts are valid rotations


def test_causal_network_ignores_later_tokens():
    task = DiffusionForcingTask("independent", horizon=8, representation="vector")
    model = task.wrap_model(_net(zero_init=False)).eval()
    x, t = torch.randn(2, 8, 3), torch.rand(2, 8)
    x2 = x.clone()
    x2[:, 5:] += 1.0
    t2 = t.clone()
    t2[:, 6] = 0.5
    a, b = model(x, t), model(x2, t2)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


# ---------------------------------------------------------------- bad input
def test_bad_input_is_refused_clearly():
    task = DiffusionForcingTask("independent", horizon=8, representation="vector")
    model = task.wrap_model(_net())
    with pytest.raises(ValueError, match="not shorter than the horizon"):
        task.rollout(model, torch.randn(2, 8, 3), 4)
    with pytest.raises(ValueError, match="positional range"):
        forcing.rollout(model, torch.randn(2, 2, 3), 4, horizon=16)
    with pytest.raises(ValueError, match="tokens have dim 4, but the model expects 3"):
        task.loss(model, {"x": torch.randn(2, 8, 4)}, _ctx())
    with pytest.raises(ValueError, match="longer than the horizon 8"):
        task.loss(model, {"x": torch.randn(2, 9, 3)}, _ctx())
    with pytest.raises(ValueError, match="model.causal=false"):
        DiffusionForcingTask("full_sequence", horizon=8, representation="vector").wrap_model(
            _net())
    with pytest.raises(ValueError, match="in_dim=3"):
        DiffusionForcingTask(horizon=8).wrap_model(_net())
    with pytest.raises(ValueError, match="noise_mode"):
        DiffusionForcingTask("diffusion")
    with pytest.raises(ValueError, match="shorter than the horizon"):
        SequenceDataset(torch.randn(2, 5, 3), horizon=8)
    with pytest.raises(ValueError, match="token_dim=4"):
        SequenceDataset(torch.randn(2, 9, 3), horizon=8, token_dim=4)


# ---------------------------------------------------------------- data and training
def test_pose_tokens_and_canonical_frames_round_trip():
    g = torch.Generator().manual_seed(0)
    R, x = so3.random_uniform((2, 5), generator=g), torch.randn(2, 5, 3, generator=g)
    tok = rigid_to_tokens(R, x)
    R2, x2 = tokens_to_rigid(tok)
    assert torch.allclose(R2, R, atol=1e-5) and torch.equal(x2, x)
    can, frame = canonicalize(tok, tok[:, 0])
    Rc, xc = tokens_to_rigid(can)
    assert torch.allclose(Rc[:, 0], torch.eye(3).expand(2, 3, 3), atol=1e-5)
    assert torch.allclose(xc[:, 0], torch.zeros(2, 3), atol=1e-6)
    assert torch.allclose(decanonicalize(can, frame), tok, atol=1e-5)
    # a rigid motion of space leaves canonical windows unchanged (torque-free invariance)
    Q = so3.random_uniform((), generator=g)
    moved = rigid_to_tokens(Q @ R, x @ Q.T + 3.0)
    assert torch.allclose(canonicalize(moved, moved[:, 0])[0], can, atol=1e-4)


def test_sequence_windows_and_action_adapter(tmp_path):
    seqs = [torch.arange(10.0)[:, None].repeat(1, 2), torch.arange(12.0)[:, None].repeat(1, 2)]
    ds = SequenceDataset(seqs, horizon=4, stride=2, labels=[0, 1])
    assert len(ds) == 4 + 5
    assert torch.equal(ds[5]["x"][:, 0], torch.tensor([2.0, 3, 4, 5])) and ds[5]["y"] == 1
    np.save(tmp_path / "s.npy", _smooth(3, 9).numpy())
    assert len(SequenceDataset(str(tmp_path / "s.npy"), horizon=8)) == 6
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    root = tmp_path / "lerobot"
    (root / "meta" / "episodes").mkdir(parents=True)
    (root / "meta" / "info.json").write_text("{}")
    (root / "data" / "chunk-000").mkdir(parents=True)
    ep = [0] * 6 + [1] * 3 + [2] * 7
    frame = list(range(6)) + list(range(3)) + list(range(7))
    act = [[float(e), float(f)] for e, f in zip(ep, frame)]
    pq.write_table(pa.table({"episode_index": ep, "frame_index": frame, "action": act}),
                   root / "data" / "chunk-000" / "file-000.parquet")
    ds = action_sequences(str(root), horizon=5, token_dim=2)
    assert len(ds.sequences) == 2 and len(ds) == 2 + 3  # episode 1 (3 frames) is skipped
    assert torch.equal(ds[2]["x"][:, 1], torch.arange(5.0)) and (ds[2]["x"][:, 0] == 2).all()


def test_tiny_training_lowers_the_loss():
    torch.manual_seed(0)
    ds = SequenceDataset(_smooth(64, 16), horizon=8)
    task = DiffusionForcingTask("independent", horizon=8, representation="vector")
    model = task.wrap_model(_net(hidden_dim=16, depth=1))
    task.setup(ds, None, model)
    X = torch.stack([ds[i]["x"] for i in range(len(ds))])  # (N, 8, 3)
    batch = {"x": X[::9]}

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(task.loss(model, batch, _ctx(123))["loss"])

    before = fixed_loss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(40):
        loss = task.loss(model, {"x": X[torch.randint(len(X), (32,), generator=g)]},
                         _ctx(step))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_loss() < 0.85 * before  # measured ~0.75


def test_rollout_errors_and_constant_velocity_baseline_on_poses():
    from modalities.hybrid.forcing_eval import errors
    from modalities.hybrid.forcing_task import _constant_velocity
    from modalities.trajectory.sim import sample_trajectories

    d = sample_trajectories(2, 20, classes=["sphere"], seed=0, substeps=2)
    tok = rigid_to_tokens(d["rots"], d["trans"]).double()  # (2, 20, 9)
    cv = _constant_velocity(tok[:, :5], 15, "rigid")  # exact for a free sphere (L&L §37)
    err = errors(cv, tok[:, 5:], "rigid")
    assert err["translation"].max() < 1e-5 and err["rotation_rad"].max() < 1e-4
    turn = so3.exp(torch.tensor([0.0, 0.0, 0.3], dtype=torch.float64))
    R, x = tokens_to_rigid(tok)
    err = errors(rigid_to_tokens(R @ turn, x + torch.tensor([0.0, 0.2, 0.0])), tok, "rigid")
    assert torch.allclose(err["rotation_rad"], torch.full((2, 20), 0.3, dtype=torch.float64))
    assert torch.allclose(err["translation"], torch.full((2, 20), 0.2, dtype=torch.float64))
