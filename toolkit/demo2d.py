"""The embedded-default main job: a 2-D flow model trained, sampled and plotted.

``toolkit demo2d`` trains a small time-conditioned MLP on a 2-D toy distribution with
conditional flow matching (independent or minibatch-OT coupling) or VP noise prediction,
samples it with any toolkit solver, reports the exact W2 distance to fresh data (next to
the finite-sample floor, W2 between two fresh data sets) and writes a plot of data,
samples and ODE trajectories.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from toolkit import metrics
from toolkit.data import toy2d
from toolkit.losses import cfm_loss, regression_loss
from toolkit.nn.mlp import TimeMLP
from toolkit.sampling import sample

METHODS = {
    # name: (path, prediction, loss kind)
    "cfm": ("linear", "velocity", "cfm"),
    "ot_cfm": ("linear", "velocity", "ot"),
    "vp_noise": ("vp", "noise", "dsm"),
}


def train(
    dataset: str,
    method: str,
    steps: int,
    seed: int = 0,
    batch: int = 256,
    lr: float = 2e-3,
    progress: bool = True,
) -> TimeMLP:
    """Train a :class:`TimeMLP` on ``dataset`` with ``method`` (``cfm | ot_cfm | vp_noise``)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    path, prediction, kind = METHODS[method]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = TimeMLP(dim=2, hidden=256, depth=3)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    bar = tqdm(range(steps), desc=f"train {method} on {dataset}", disable=not progress)
    for _ in bar:
        x1 = toy2d.sample(dataset, batch, generator=gen)
        if kind == "dsm":
            out = regression_loss(net, x1, path, prediction, generator=gen)
        else:
            out = cfm_loss(net, x1, coupling="exact_ot" if kind == "ot" else None, generator=gen)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sched.step()
        if not torch.isfinite(out.loss):
            raise FloatingPointError(f"loss became {out.loss.item()} during demo training")
        bar.set_postfix(loss=f"{out.loss.item():.4f}")
    return net.eval()


def run(
    dataset: str = "8gaussians",
    method: str = "ot_cfm",
    train_steps: int = 2000,
    solver: str = "heun",
    nfe_steps: int = 10,
    out: str | Path = "runs/demo2d",
    seed: int = 0,
    n_samples: int = 2000,
) -> dict:
    """Train, sample, measure and plot; returns the metrics written to ``metrics.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    net = train(dataset, method, train_steps, seed=seed)
    train_s = time.perf_counter() - t0
    path, prediction, _ = METHODS[method]
    gen = torch.Generator().manual_seed(seed + 1)
    x0 = torch.randn(n_samples, 2, generator=gen)
    info: dict = {}
    xs = [x0]
    with torch.no_grad():
        x1 = sample(
            net,
            x0,
            path=path,
            prediction=prediction,
            solver=solver,
            steps=nfe_steps,
            info=info,
            callback=lambda d: xs.append(d["x"]),
        )
    data = toy2d.sample(dataset, n_samples, generator=gen)
    data2 = toy2d.sample(dataset, n_samples, generator=gen)
    result = {
        "dataset": dataset,
        "method": method,
        "solver": solver,
        "steps": nfe_steps,
        "nfe": info["nfe"],
        "train_steps": train_steps,
        "train_seconds": round(train_s, 1),
        "w2_samples_vs_data": metrics.w2(x1, data),
        "w2_data_vs_data_floor": metrics.w2(data2, data),
        "w2_prior_vs_data": metrics.w2(x0, data),
    }
    fig, ax = plt.subplots(1, 3, figsize=(13, 4.4))
    lim = float(data.abs().max()) * 1.15
    ax[0].scatter(*data.T, s=2, c="tab:blue")
    ax[0].set_title(f"data: {dataset}")
    ax[1].scatter(*x1.T, s=2, c="tab:orange")
    ax[1].set_title(f"samples: {method}, {solver}, NFE {info['nfe']}")
    traj = torch.stack(xs)[:, :300]  # (S+1, 300, 2)
    ax[2].plot(traj[..., 0], traj[..., 1], lw=0.5, c="gray", alpha=0.6)
    ax[2].scatter(*traj[0].T, s=3, c="black", label="noise (t=0)")
    ax[2].scatter(*traj[-1].T, s=3, c="tab:orange", label="data (t=1)")
    ax[2].legend(loc="upper right", fontsize=8)
    ax[2].set_title("ODE trajectories")
    for a in ax:
        a.set_xlim(-lim, lim)
        a.set_ylim(-lim, lim)
        a.set_aspect("equal")
    fig.suptitle(
        f"W2(samples, data) = {result['w2_samples_vs_data']:.3f}   "
        f"(floor W2(data, data) = {result['w2_data_vs_data_floor']:.3f}, "
        f"prior {result['w2_prior_vs_data']:.3f})"
    )
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=110)
    plt.close(fig)
    save_file(net.state_dict(), out / "model.safetensors")
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {out / 'samples.png'}")
    return result
