"""Training-step overhead of the toolkit vs a hand-written loop, and speed knobs (CPU/GPU).

**Overhead.** The same model (the DiT of ``recipe=text2img_cfm model=dit_text``, or the
class-conditional U-Net of ``recipe=class2img_cfm``), the same batch size and optimiser
settings, trained

- by :class:`toolkit.train.Trainer` (accelerate, process-consistent noise, CFG dropout,
  gradient clipping, EMA, LR schedule, metrics log every 10 steps, data loader), and
- by a minimal hand-written PyTorch loop doing the same arithmetic: CFG dropout, noise, logit-normal
  t, ``x_t = t x1 + (1 - t) x0``, velocity MSE, backward, clip, AdamW, EMA (``_foreach_lerp_``).

Per-step time is the slope between two run lengths (``(T(n2) - T(n1)) / (n2 - n1)``), so
one-off costs (set-up, data-loader start, the final checkpoint) cancel.

**Knobs** (DiT): training samples/s and sampling ms/image for fp32 eager, SDPA forced to
the math kernel, bf16 autocast, ``torch.compile``; (U-Net) channels-last. GPU figures
(including model FLOPs utilisation from a FLOP count of one training step) come out when
CUDA is available; the project never requires it.

    .venv/bin/python -m bench.train_speed                     # ~6 min on 2 CPU cores
    .venv/bin/python -m bench.train_speed --quick             # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

MODELS = {"dit": ("text2img_cfm", ["model=dit_text", "~model.base_channels"]),
          "unet": ("class2img_cfm", [])}


def _build(name: str, batch: int) -> tuple[Any, Any, Any, Any]:
    from toolkit.train.config import compose_recipe
    from toolkit.train.trainer import build, instantiate

    recipe, ovs = MODELS[name]
    cfg = compose_recipe(recipe, [*ovs, f"trainer.batch_size={batch}", "trainer.val_every=0",
                                  "trainer.progress=false", "trainer.tensorboard=false",
                                  "trainer.checkpoint_every=1000000", "trainer.warmup_steps=0"])
    model, task, data = build(cfg)
    return model, task, data, instantiate(cfg.trainer, _convert_="all")


def _batches(name: str, task: Any, data: Any, batch: int, k: int = 4) -> list[tuple]:
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False,
                                         collate_fn=getattr(data, "collate_fn", None))
    out = []
    for b in loader:
        out.append(tuple(b))
        if len(out) == k:
            break
    return out


def _cond_kwargs(name: str, model: Any, task: Any, batch: tuple, drop: torch.Tensor) -> dict:
    if name == "dit":
        return {"cond": task.condition(model, list(batch[1]), drop)}
    y = torch.as_tensor(batch[1]).long()
    return {"y": torch.where(drop, torch.full_like(y, task.num_classes), y)}


def hand_loop(name: str, model: Any, task: Any, batches: list[tuple], steps: int, tcfg: Any
              ) -> float:
    """Seconds for ``steps`` steps of the minimal loop (see the module docstring)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tcfg.lr, betas=tuple(tcfg.betas),
                            weight_decay=tcfg.weight_decay)
    ema = [p.detach().clone() for p in params]
    g = torch.Generator().manual_seed(0)
    model.train()
    t0 = time.perf_counter()
    for i in range(steps):
        batch = batches[i % len(batches)]
        x1 = batch[0]
        b = x1.shape[0]
        drop = torch.rand(b, generator=g) < 0.1  # CFG dropout
        kw = _cond_kwargs(name, model, task, batch, drop)
        x0 = torch.randn(x1.shape, generator=g)
        t = torch.sigmoid(torch.randn(b, generator=g))  # logit-normal(0, 1)
        tt = t[:, None, None, None]
        v = model(tt * x1 + (1 - tt) * x0, t, **kw)
        loss = ((v - (x1 - x0)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - tcfg.ema_decay)
    return time.perf_counter() - t0


def toolkit_loop(model: Any, task: Any, data: Any, steps: int, tcfg: Any) -> float:
    """Seconds for ``Trainer.fit`` of ``steps`` steps (incl. its one final checkpoint)."""
    from toolkit.train.trainer import Trainer

    cfg = copy.deepcopy(tcfg)
    cfg.max_steps, cfg.log_every = steps, 10
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(model, task, data, cfg, Path(tmp) / "run", seed=0)
        t0 = time.perf_counter()
        tr.fit()
        return time.perf_counter() - t0


class _Items(torch.utils.data.Dataset):
    """The items of a few pre-collated batches (both loops see the same data, and data
    augmentation or decoding cost is kept out of the comparison)."""

    def __init__(self, batches: list[tuple], collate: Any) -> None:
        self.items = [tuple(c[i] for c in b) for b in batches for i in range(len(b[0]))]
        self.collate_fn = collate

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple:
        return self.items[i]


def overhead(name: str, batch: int, n1: int, n2: int) -> dict[str, float]:
    """ms/step of both loops (slope between n1 and n2 steps) and the ratio."""
    model, task, data, tcfg = _build(name, batch)
    batches = _batches(name, task, data, batch)
    data = _Items(batches, None)
    init = copy.deepcopy(model.state_dict())
    res: dict[str, float] = {}
    for label, fn in (("hand", lambda n: hand_loop(name, model, task, batches, n, tcfg)),
                      ("toolkit", lambda n: toolkit_loop(model, task, data, n, tcfg))):
        times = []
        for n in (n1, n2):
            model.load_state_dict(init)
            times.append(fn(n))
        res[f"{label}_ms_per_step"] = 1e3 * (times[1] - times[0]) / (n2 - n1)
    res["overhead"] = res["toolkit_ms_per_step"] / res["hand_ms_per_step"] - 1.0
    return res


def _sample_ms(task: Any, model: Any, n: int, ctx: Any) -> float:
    gen = torch.Generator().manual_seed(0)
    with ctx:
        task.generate(model, n, gen, steps=4)  # warm-up (and compilation)
        t0 = time.perf_counter()
        task.generate(model, n, gen)
    return 1e3 * (time.perf_counter() - t0) / n


def knobs(name: str, batch: int, steps: int, device: str, compile_: bool = True
          ) -> list[dict[str, Any]]:
    """Training samples/s and sampling ms/image under each speed setting."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    settings = [("fp32 eager", {}), ("SDPA math kernel", {"math": True}),
                ("bf16 autocast", {"bf16": True})]
    if compile_:
        settings.append(("torch.compile", {"compile": True}))
    if name == "unet":
        settings.append(("channels-last", {"channels_last": True}))
    for label, opt in settings:
        model, task, data, tcfg = _build(name, batch)
        model.to(device)
        batches = [tuple(x.to(device) if torch.is_tensor(x) else x for x in b)
                   for b in _batches(name, task, data, batch)]
        if opt.get("channels_last"):
            model.to(memory_format=torch.channels_last)
            batches = [(b[0].contiguous(memory_format=torch.channels_last), *b[1:])
                       for b in batches]
        run_model = torch.compile(model) if opt.get("compile") else model
        ctx = contextlib.ExitStack()
        if opt.get("math"):
            ctx.enter_context(sdpa_kernel([SDPBackend.MATH]))
        if opt.get("bf16"):
            ctx.enter_context(torch.autocast(device_type=device, dtype=torch.bfloat16))
        with ctx:
            t0 = time.perf_counter()
            hand_loop(name, run_model, task, batches, 2, tcfg)  # warm-up / compile
            compile_s = time.perf_counter() - t0
            sec = hand_loop(name, run_model, task, batches, steps, tcfg)
        model.eval()
        sctx = contextlib.ExitStack()
        if opt.get("math"):
            sctx.enter_context(sdpa_kernel([SDPBackend.MATH]))
        if opt.get("bf16"):
            sctx.enter_context(torch.autocast(device_type=device, dtype=torch.bfloat16))
        ms = _sample_ms(task, run_model if not opt.get("compile") else model, 8, sctx)
        rows.append({"model": name, "setting": label, "train_samples_s": batch * steps / sec,
                     "warmup_s": compile_s, "sample_ms_per_image": ms})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the overhead and knob tables (JSON lines, then a summary)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true",
                    help="skip torch.compile (its CPU warm-up takes ~5 min per model)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n1, n2 = (3, 6) if args.quick else (10, 40)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in MODELS:
        res = overhead(name, args.batch, n1, n2)
        print(json.dumps({"model": name, **res}), flush=True)
    for name in MODELS:
        knobs(name, args.batch, 3 if args.quick else 10, device, not args.no_compile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
