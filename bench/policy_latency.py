"""Per-chunk CPU inference latency at batch 1: our action-chunk policies vs lerobot's DP.

A state-only Meta-World-sized problem (state S = 39, action A = 4, horizon H = 16,
n_action_steps 8), timed side by side in one process on one thread:

- **flow (cached)**: our pi0-style flow policy, :class:`modalities.actions.policy.Policy`
  around :class:`~modalities.actions.task.FlowPolicyTask` +
  :class:`~modalities.actions.nets.FlowPolicyNet` (``recipes/model/flow_policy.yaml``:
  width 128, depth 4, heads 4), 10 Euler steps against the cached observation prefix: the
  normal ``predict_action_chunk`` path (input checks, normalisation, noise, sampling,
  unnormalisation).
- **flow (uncached forward)**: the same network, 10 Euler steps of the full
  ``FlowPolicyNet.forward`` (prefix recomputed every step); reference only.
- **ours DP**: :class:`~modalities.actions.task.DiffusionPolicyTask` +
  :class:`~modalities.actions.nets.TemporalUNet1d` (``recipes/model/diffusion_unet1d.yaml``),
  DDIM 10 steps, through the same ``Policy`` wrapper.
- **lerobot DP**: ``lerobot.policies.diffusion.modeling_diffusion.DiffusionPolicy`` with a
  comparable ``DiffusionConfig`` (see :func:`lerobot_config`): preprocessor ->
  ``predict_action_chunk`` -> postprocessor (normalisation runs in lerobot's processor
  pipelines since 0.4; its stats are mean 0 / std 1 / min -1 / max 1).

lerobot's DP needs an image or an ``observation.environment_state`` input besides
``observation.state``; ``--lerobot-obs dummy`` (default) adds a constant 1-d environment
state to the 39-d ``observation.state``, ``split`` feeds lerobot's own Meta-World split
(``observation.state`` = the first 4 entries, the robot's ``agent_pos``; the other 35 as
environment state). Either way the U-Net's global condition is ~39 numbers per observation
step, so the cost differs only in the first FiLM layers.

Without ``--run`` / ``--dp-run`` our models are fresh (seeded) and their normalisers are fitted
by the task's own ``setup`` from synthetic statistics (mean 0, std 1, min -1, max 1); weights do
not change the cost. The benches are interleaved round-robin (rotating the order each round) so
that background load hits them alike; we report min and median over the rounds, and the median
of the per-round ratios. ``select_action`` is timed over whole chunk cycles (``reset`` then
``n_action_steps`` calls, i.e. one chunk generation plus the queue pops) divided by
``n_action_steps``. The Python GC is disabled while timing.

Run ``python -m bench.policy_latency [--run runs/mw_push_flow] [--dp-run runs/mw_push_dp]
[--reps 100] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modalities.actions.nets import FlowPolicyNet, TemporalUNet1d
from modalities.actions.policy import Policy
from modalities.actions.task import ACTION, STATE, DiffusionPolicyTask, FlowPolicyTask

S, A, H, N_ACT, STEPS = 39, 4, 16, 8, 10
ENV_STATE = "observation.environment_state"


@dataclass
class Bench:
    """One policy: a chunk generation and a chunk cycle of ``select_action`` calls."""

    name: str
    params: int
    nfe: int
    chunk: Callable[[], Any]
    cycle: Callable[[], Any] | None = None  # reset + n_action_steps select_action calls
    chunk_ms: list[float] = field(default_factory=list)
    select_ms: list[float] = field(default_factory=list)  # per action, amortised

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "params": self.params, "nfe": self.nfe,
                               "chunk_ms": stats(self.chunk_ms)}
        if self.select_ms:
            out["select_action_ms_amortised"] = stats(self.select_ms)
        return out


def stats(x: list[float]) -> dict[str, float]:
    s = sorted(x)
    return {"n": len(s), "min": s[0], "median": statistics.median(s),
            "p90": s[min(len(s) - 1, int(0.9 * len(s)))], "mean": statistics.fmean(s)}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_calls(obj: Any, attr: str, fn: Callable[[], Any]) -> int:
    """Run ``fn`` with ``obj.attr`` (a bound method) wrapped by a call counter: the NFE."""
    orig, n = getattr(obj, attr), 0

    def counted(*a: Any, **k: Any) -> Any:
        nonlocal n
        n += 1
        return orig(*a, **k)

    setattr(obj, attr, counted)
    try:
        fn()
    finally:
        delattr(obj, attr)  # the instance override; the class method shows through again
    return n


def synthetic_stats(d: int) -> dict[str, Tensor]:
    return {"mean": torch.zeros(d), "std": torch.ones(d), "min": -torch.ones(d),
            "max": torch.ones(d), "q01": -torch.ones(d), "q99": torch.ones(d)}


class StatsOnly:
    """The part of the chunk-dataset contract a task's ``setup`` reads, without items."""

    state_dim, action_dim, horizon = S, A, H
    features = {STATE: (S,), ACTION: (A,)}
    stats = {STATE: synthetic_stats(S), ACTION: synthetic_stats(A)}
    tasks: list[str] = []

    def __len__(self) -> int:
        return 0


def our_policy(task: Any, net: torch.nn.Module, run: str | None, solver: str) -> Policy:
    """A trained run, or a fresh model whose normaliser ``task.setup`` fits (synthetic stats)."""
    kw = dict(n_action_steps=N_ACT, steps=STEPS, solver=solver)
    if run:
        return Policy.from_pretrained(run, device="cpu", **kw)
    model = task.wrap_model(net)
    with tempfile.TemporaryDirectory() as d:
        task.setup(StatsOnly(), Path(d), model)
    return Policy(model, task, **kw)


# -- ours ------------------------------------------------------------------------------------
def flow_benches(run: str | None, obs: dict[str, Tensor]) -> tuple[list[Bench], dict]:
    policy = our_policy(FlowPolicyTask(val_batch=0), FlowPolicyNet(S, A, H, width=128, depth=4,
                                                                   heads=4), run, "euler")
    m, task, net = policy.model, policy.task, policy.net
    steps = STEPS

    def uncached() -> Tensor:
        batch = {STATE: obs[STATE].float().reshape(1, -1)}
        x = torch.randn(1, policy.horizon, policy.action_dim, generator=policy.generator)
        with torch.inference_mode():
            o = task.model_obs(m, batch)
            for k in range(steps):
                x = x + net(x, torch.full((1,), k / steps), o) / steps  # Euler, t: 0 -> 1
            return m.normalizer.unnormalize(ACTION, x)

    def cycle() -> None:
        policy.reset()
        for _ in range(policy.n_action_steps):
            policy.select_action(obs)

    # the cached sampler and the uncached Euler loop agree from the same noise
    x0 = torch.randn(1, policy.horizon, policy.action_dim, generator=torch.Generator()
                     .manual_seed(1))
    with torch.inference_mode():
        o = task.model_obs(m, {STATE: obs[STATE].reshape(1, -1)})
        xc = task.sample_normalized(m, o, x0, steps, "euler")
        xu = x0
        for k in range(steps):
            xu = xu + net(xu, torch.full((1,), k / steps), o) / steps
    check = {"flow_cached_vs_uncached_max_abs_diff": float((xc - xu).abs().max())}

    def chunk() -> Tensor:
        return policy.predict_action_chunk(obs)

    info = {"width": net.width, "depth": len(net.layers), "heads": net.heads,
            "action_width": net.action_width, "horizon": net.horizon, "steps": steps,
            "solver": "euler", "run": run}
    params = n_params(net)
    return [Bench("ours flow (pi0-style, prefix cache)", params,
                  count_calls(net, "velocity", chunk), chunk, cycle),
            Bench("ours flow, uncached forward (ref.)", params,
                  count_calls(net, "forward", uncached), uncached)], {**info, **check}


def dp_bench(run: str | None, obs: dict[str, Tensor]) -> tuple[Bench, dict]:
    policy = our_policy(DiffusionPolicyTask(val_batch=0), TemporalUNet1d(
        S, A, H, down_dims=(64, 128, 256), obs_dim=128, step_dim=64, kernel=5), run, "ddim")
    net = policy.net

    def chunk() -> Tensor:
        return policy.predict_action_chunk(obs)

    def cycle() -> None:
        policy.reset()
        for _ in range(policy.n_action_steps):
            policy.select_action(obs)

    down = [r[0].b1[0].out_channels for r in net.down]
    info = {"down_dims": down, "step_dim": net.step_dim, "horizon": net.horizon,
            "steps": STEPS, "solver": "ddim", "run": run}
    return Bench("ours Diffusion Policy (TemporalUNet1d)", n_params(net),
                 count_calls(net, "denoise", chunk), chunk, cycle), info


# -- lerobot ---------------------------------------------------------------------------------
def lerobot_config(obs_mode: str, n_obs_steps: int) -> tuple[dict, dict, dict[str, Any]]:
    """``(input shapes, output shapes, DiffusionConfig overrides)``: state-only DP comparable
    to ours (U-Net (64, 128, 256), kernel 5, step embedding 64 as ours (lerobot: 128), FiLM
    scale + bias, DDIM 10 of 100 squared-cosine steps, epsilon prediction, no backbone)."""
    if obs_mode == "dummy":
        inputs = {STATE: (S,), ENV_STATE: (1,)}
    elif obs_mode == "split":
        inputs = {STATE: (4,), ENV_STATE: (S - 4,)}
    else:
        raise ValueError(f"--lerobot-obs must be dummy or split, got {obs_mode!r}")
    overrides = dict(n_obs_steps=n_obs_steps, horizon=H, n_action_steps=N_ACT,
                     down_dims=(64, 128, 256), kernel_size=5, n_groups=8,
                     diffusion_step_embed_dim=64, use_film_scale_modulation=True,
                     noise_scheduler_type="DDIM", num_train_timesteps=100,
                     beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                     clip_sample=True, clip_sample_range=1.0, num_inference_steps=STEPS,
                     pretrained_backbone_weights=None, compile_model=False, device="cpu")
    return inputs, {ACTION: (A,)}, overrides


def lerobot_bench(obs_mode: str, n_obs_steps: int, obs: dict[str, Tensor]) -> tuple[Bench, dict]:
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    inputs, outputs, overrides = lerobot_config(obs_mode, n_obs_steps)
    kind = {STATE: FeatureType.STATE, ENV_STATE: FeatureType.ENV}
    cfg = DiffusionConfig(
        input_features={k: PolicyFeature(type=kind[k], shape=s) for k, s in inputs.items()},
        output_features={k: PolicyFeature(type=FeatureType.ACTION, shape=s)
                         for k, s in outputs.items()}, **overrides)
    policy = DiffusionPolicy(cfg).eval()
    ds_stats = {k: synthetic_stats(s[0]) for k, s in {**inputs, **outputs}.items()}
    pre, post = make_diffusion_pre_post_processors(cfg, ds_stats)
    s = obs[STATE].float()
    lr_obs = ({STATE: s, ENV_STATE: torch.zeros(1)} if obs_mode == "dummy"
              else {STATE: s[:4], ENV_STATE: s[4:]})

    def chunk() -> Tensor:
        policy.reset()  # empty queues: predict_action_chunk takes the batch as given
        b = pre(lr_obs)  # adds the batch dim, normalises
        b = {k: b[k][:, None].expand(-1, n_obs_steps, -1) for k in inputs}  # (B, n_obs, D)
        return post(policy.predict_action_chunk(b))  # (B, n_action_steps, A)

    def cycle() -> None:
        policy.reset()
        for _ in range(N_ACT):
            post(policy.select_action(pre(lr_obs)))

    calls = [0]
    hook = policy.diffusion.unet.register_forward_pre_hook(
        lambda *_: calls.__setitem__(0, calls[0] + 1))
    out = chunk()
    hook.remove()
    assert out.shape == (1, N_ACT, A), out.shape
    info = {"input_features": {k: list(v) for k, v in inputs.items()},
            "output_features": {k: list(v) for k, v in outputs.items()},
            "overrides": {k: list(v) if isinstance(v, tuple) else v
                          for k, v in overrides.items()},
            "normalization_mapping": {k: str(v.value) for k, v in
                                      cfg.normalization_mapping.items()},
            "full_config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str))}
    return Bench(f"lerobot DiffusionPolicy ({obs_mode} env state)", n_params(policy), calls[0],
                 chunk, cycle), info


# -- timing ----------------------------------------------------------------------------------
def measure(benches: list[Bench], reps: int, warmup: int, cycles: int) -> None:
    """Round-robin: every round times each bench once, the order rotated each round."""
    for b in benches:
        for _ in range(warmup):
            b.chunk()
        if b.cycle is not None:
            for _ in range(max(1, warmup // 4)):
                b.cycle()
    gc.collect()
    gc.disable()
    try:
        n = len(benches)
        for r in range(reps):
            for b in benches[r % n:] + benches[: r % n]:
                t0 = time.perf_counter()
                b.chunk()
                b.chunk_ms.append((time.perf_counter() - t0) * 1e3)
        cyc = [b for b in benches if b.cycle is not None]
        for r in range(cycles):
            for b in cyc[r % len(cyc):] + cyc[: r % len(cyc)]:
                t0 = time.perf_counter()
                b.cycle()
                b.select_ms.append((time.perf_counter() - t0) * 1e3 / N_ACT)
    finally:
        gc.enable()


def ratios(a: Bench, b: Bench) -> dict[str, float]:
    per_round = [x / y for x, y in zip(a.chunk_ms, b.chunk_ms)]
    return {"min": min(a.chunk_ms) / min(b.chunk_ms),
            "median": statistics.median(a.chunk_ms) / statistics.median(b.chunk_ms),
            "paired_median": statistics.median(per_round)}


def table(benches: list[Bench]) -> str:
    rows = ["| policy | params | NFE | per-chunk ms (min / median) | "
            "select_action ms amortised (min / median) |", "|---|---:|---:|---:|---:|"]
    for b in benches:
        c = stats(b.chunk_ms)
        sel = stats(b.select_ms) if b.select_ms else None
        s = f"{sel['min']:.2f} / {sel['median']:.2f}" if sel else "-"
        rows.append(f"| {b.name} | {b.params:,} | {b.nfe} | {c['min']:.2f} / "
                    f"{c['median']:.2f} | {s} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=None, help="trained flow-policy run directory")
    ap.add_argument("--dp-run", default=None, help="trained Diffusion-Policy run directory")
    ap.add_argument("--reps", type=int, default=100, help="timed chunk calls per policy")
    ap.add_argument("--warmup", type=int, default=10, help="untimed chunk calls per policy")
    ap.add_argument("--cycles", type=int, default=20,
                    help="timed select_action chunk cycles (n_action_steps calls each)")
    ap.add_argument("--lerobot-obs", choices=("dummy", "split"), default="dummy",
                    help="how lerobot's DP gets its required environment state (module doc)")
    ap.add_argument("--lerobot-n-obs", type=int, default=1, choices=(1, 2),
                    help="lerobot n_obs_steps (ours sees 1 observation)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start, load0 = time.perf_counter(), os.getloadavg()
    obs = {STATE: torch.randn(S, generator=torch.Generator().manual_seed(0))}

    flow, flow_info = flow_benches(args.run, obs)
    dp, dp_info = dp_bench(args.dp_run, obs)
    lr, lr_info = lerobot_bench(args.lerobot_obs, args.lerobot_n_obs, obs)
    benches = [*flow, dp, lr]
    measure(benches, args.reps, args.warmup, args.cycles)
    r_lr, r_dp = ratios(flow[0], lr), ratios(flow[0], dp)

    import lerobot

    env = {"torch": torch.__version__, "lerobot": getattr(lerobot, "__version__", "?"),
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "python": platform.python_version(), "loadavg_start": load0,
           "loadavg_end": os.getloadavg(), "wall_s": time.perf_counter() - start}
    print(f"Batch 1, S={S}, A={A}, H={H}, n_action_steps={N_ACT}, {STEPS} sampler steps; "
          f"torch {env['torch']}, lerobot {env['lerobot']}, {env['threads']} thread(s); "
          f"{args.reps} timed chunks after {args.warmup} warm-ups, {args.cycles} select_action "
          f"cycles; load average {load0[0]:.1f} -> {env['loadavg_end'][0]:.1f}.")
    print(f"Flow policy: {'run ' + args.run if args.run else 'fresh model'}; "
          f"DP: {'run ' + args.dp_run if args.dp_run else 'fresh model'}.\n")
    print(table(benches))
    print(f"\nours flow / lerobot DP per-chunk latency: {r_lr['min']:.3f} (min), "
          f"{r_lr['median']:.3f} (median), {r_lr['paired_median']:.3f} (median per-round ratio)")
    print(f"ours flow / ours DP per-chunk latency:    {r_dp['min']:.3f} (min), "
          f"{r_dp['median']:.3f} (median), {r_dp['paired_median']:.3f} (median per-round ratio)")
    print(f"flow cached vs uncached, same noise: max |diff| = "
          f"{flow_info['flow_cached_vs_uncached_max_abs_diff']:.2e}")
    print(f"lerobot DiffusionConfig: input_features {lr_info['input_features']}, "
          f"output_features {lr_info['output_features']}, overrides {lr_info['overrides']}, "
          f"normalization_mapping {lr_info['normalization_mapping']}")
    print(f"Wall time: {env['wall_s']:.0f} s.")
    if args.json:
        out = {"env": env, "args": vars(args), "flow": flow_info, "dp": dp_info,
               "lerobot": lr_info, "results": [b.summary() for b in benches],
               "raw_chunk_ms": {b.name: b.chunk_ms for b in benches},
               "ratio_flow_over_lerobot_dp": r_lr, "ratio_flow_over_our_dp": r_dp}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
