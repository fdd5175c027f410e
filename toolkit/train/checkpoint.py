"""Atomic, self-describing checkpoints and RNG snapshots.

Layout of a run directory::

    RUN_DIR/config.yaml                 resolved recipe (what built the model)
    RUN_DIR/checkpoints/step_00000100/  one checkpoint:
        model.safetensors               live weights
        ema.safetensors                 EMA weights (sampling uses these by default)
        optimizer.pt                    optimizer state dict (loaded with weights_only=True)
        config.yaml                     the same resolved recipe
        state.json                      step, RNG states, data position, EMA counter, ...,
                                        and the SHA-256 and size of every other file
        rng_rank1.json ...              RNG states of the other processes (multi-process)

A checkpoint directory is written under a temporary name (``.tmp-...``) and renamed into
place with ``os.replace`` only when complete (``state.json`` is written last), so a crash
mid-write never damages or hides the previous checkpoint; stale temporary directories are
removed at the next save. A failed write (e.g. a full disk) removes its temporary directory
and says that the previous checkpoint is intact. ``latest`` (resume, sampling) verifies the
checksums and falls back, with a warning, to the newest checkpoint that is intact, so a
checkpoint truncated or modified after it was written is never loaded silently.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

CKPT_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    """``step_00000100`` for step 100."""
    return f"step_{int(step):08d}"


def file_digest(path: Path) -> dict[str, Any]:
    """``{"sha256": hex digest, "bytes": size}`` of a file (read in 1 MiB blocks)."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            n += len(block)
    return {"sha256": h.hexdigest(), "bytes": n}


def verify_checkpoint(path: str | Path) -> str | None:
    """None if the checkpoint at ``path`` is complete and intact, else what is wrong
    (unreadable ``state.json``, a missing file, a size or SHA-256 mismatch). Checkpoints
    written before checksums were recorded are only checked for completeness."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        return f"state.json is missing or unreadable ({type(e).__name__}: {e})"
    if not (path / "model.safetensors").is_file():
        return "model.safetensors is missing"
    for name, want in (state.get("files") or {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != int(want["bytes"]):
            return (f"{name} has {f.stat().st_size} bytes, {want['bytes']} were written "
                    "(truncated or modified)")
        if file_digest(f)["sha256"] != want["sha256"]:
            return f"{name} does not match its SHA-256 checksum (corrupted or modified)"
    return None


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model_state: dict[str, Tensor],
    ema_state: dict[str, Tensor] | None,
    optimizer_state: dict[str, Any] | None,
    state: dict[str, Any],
    config_yaml: str,
    extra_json: dict[str, dict] | None = None,
    tmp_dir: Path | None = None,
) -> Path:
    """Write ``RUN_DIR/checkpoints/step_N`` atomically and return its path.

    Args:
        run_dir: the run directory. step: optimizer steps done.
        model_state / ema_state: tensor dicts (saved as safetensors).
        optimizer_state: ``optimizer.state_dict()``. state: JSON-able trainer state.
        config_yaml: the resolved recipe. extra_json: more ``name -> dict`` JSON files.
        tmp_dir: an already created temporary directory to finish (multi-process saving,
            where other ranks wrote their files into it first).
    """
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = tmp_dir or make_tmp_dir(run_dir, step)
    try:
        contiguous = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
        save_file(contiguous, str(tmp / "model.safetensors"))
        if ema_state is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema_state.items()},
                      str(tmp / "ema.safetensors"))
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        (tmp / "config.yaml").write_text(config_yaml)
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj))
        files = {f.name: file_digest(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        state = {**state, "files": files}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))  # completeness marker
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        prev = latest_checkpoint(run_dir, verify=False)
        raise OSError(
            f"writing checkpoint {step_dir_name(step)} failed ({e}); nothing was replaced, "
            f"the previous checkpoint {str(prev) if prev else '(none)'} is intact") from e
    if final.exists():  # re-saving the same step: move the old one aside first
        trash = root / f".trash-{final.name}-{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def make_tmp_dir(run_dir: str | Path, step: int) -> Path:
    """Create a fresh temporary checkpoint directory (stale ones are removed)."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{step_dir_name(step)}"
    tmp.mkdir()
    return tmp


def tmp_dir_path(run_dir: str | Path, step: int) -> Path:
    """Where :func:`make_tmp_dir` puts the temporary directory of ``step``."""
    return Path(run_dir) / CKPT_DIR / f".tmp-{step_dir_name(step)}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run (those with a ``state.json``), oldest first."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path, verify: bool = True) -> Path | None:
    """The newest complete checkpoint of a run, or None. With ``verify`` (default) the
    newest one that passes :func:`verify_checkpoint`; each one skipped is warned about."""
    ckpts = list_checkpoints(run_dir)
    if not verify:
        return ckpts[-1] if ckpts else None
    for i in range(len(ckpts) - 1, -1, -1):
        problem = verify_checkpoint(ckpts[i])
        if problem is None:
            return ckpts[i]
        older = str(ckpts[i - 1]) if i else "none left"
        warnings.warn(f"checkpoint {str(ckpts[i])!r} is damaged: {problem}; falling back to "
                      f"the previous one ({older})", RuntimeWarning, stacklevel=2)
    return None


def resolve_checkpoint(spec: str | Path, run_dir: str | Path) -> Path | None:
    """``latest`` -> newest checkpoint of ``run_dir`` (None if there is none); a run
    directory -> its newest checkpoint; a checkpoint directory -> itself."""
    if str(spec) == "latest":
        return latest_checkpoint(run_dir)
    p = Path(spec)
    if (p / "state.json").is_file():
        problem = verify_checkpoint(p)
        if problem is not None:
            raise ValueError(f"checkpoint {str(p)!r} is damaged: {problem}. Pass the run "
                             "directory (or 'latest') to fall back to its newest intact one")
        return p
    if (p / CKPT_DIR).is_dir():
        ck = latest_checkpoint(p)
        if ck is not None:
            return ck
    raise FileNotFoundError(
        f"no complete checkpoint at {str(p)!r} (expected a run directory with "
        f"{CKPT_DIR}/step_*/state.json, a checkpoint directory, or 'latest')"
    )


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (<= 0 keeps all); returns deleted."""
    if keep_last <= 0:
        return []
    ckpts = list_checkpoints(run_dir)
    doomed = ckpts[: max(0, len(ckpts) - keep_last)]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint directory: ``{"model", "ema", "optimizer", "state", "dir"}``."""
    path = Path(path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a complete checkpoint (no state.json)")
    out: dict[str, Any] = {"dir": path, "state": json.loads((path / "state.json").read_text())}
    out["model"] = load_file(str(path / "model.safetensors"), device=str(map_location))
    ema = path / "ema.safetensors"
    out["ema"] = load_file(str(ema), device=str(map_location)) if ema.is_file() else None
    opt = path / "optimizer.pt"
    out["optimizer"] = (torch.load(opt, map_location=map_location, weights_only=True)
                        if opt.is_file() else None)
    return out


# ----------------------------------------------------------------------------- RNG states
def _b64(t: Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def generator_state(gen: torch.Generator) -> str:
    """A ``torch.Generator``'s state as a base64 string."""
    return _b64(gen.get_state())


def set_generator_state(gen: torch.Generator, s: str) -> None:
    """Restore a state produced by :func:`generator_state`."""
    gen.set_state(_unb64(s))


def rng_state() -> dict[str, Any]:
    """JSON-able snapshot of python, numpy, torch (CPU and CUDA) global RNGs."""
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": base64.b64encode(json.dumps(random.getstate()).encode()).decode("ascii"),
        "numpy": [np_state[0], _b64(torch.from_numpy(np_state[1].astype(np.uint32)).view(
            torch.uint8)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot taken by :func:`rng_state`."""
    py = json.loads(base64.b64decode(state["python"]))
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    keys = _unb64(keys).view(torch.int32).numpy().view(np.uint32)
    np.random.set_state((name, keys, pos, has_gauss, gauss))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# ----------------------------------------------------------------------------- loading runs
def filter_state(state: dict[str, Tensor], exclude: tuple[str, ...] | list[str]) -> dict:
    """Drop entries whose key starts with one of ``exclude`` (e.g. frozen encoders)."""
    return {k: v for k, v in state.items() if not any(k.startswith(p) for p in exclude)}


def load_weights(model: torch.nn.Module, state: dict[str, Tensor], what: str,
                 exclude: tuple[str, ...] | list[str] = (), load: Any = None) -> None:
    """Load ``state`` into ``model``; missing keys are allowed only under ``exclude``.

    ``load(model, state)`` replaces the final ``model.load_state_dict(state, strict=False)``
    (e.g. :func:`toolkit.train.fsdp.load_full_model_state` for a sharded model; the key and
    shape checks use global shapes either way).

    Raises:
        ValueError: naming the missing/unexpected keys and shape mismatches.
    """
    own = filter_state(model.state_dict(), exclude)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        raise ValueError(f"{what} does not fit this model: " + ", ".join(parts))
    if load is not None:
        load(model, state)
    else:
        model.load_state_dict(state, strict=False)


def load_run(run_dir: str | Path, checkpoint: str = "latest", use_ema: bool = True,
             map_location: str = "cpu") -> tuple[torch.nn.Module, Any, Any, Path]:
    """Rebuild a run's model and task from its ``config.yaml`` and load checkpoint weights.

    The hook for sampling/evaluation:
    ``model, task, cfg, ckpt = load_run("runs/toy2d_cfm")``, then
    ``task.generate(model, n, generator)`` where the task provides it.

    Args:
        run_dir: a run directory. checkpoint: ``latest`` or a checkpoint path.
        use_ema: load EMA weights when the checkpoint has them.

    Returns:
        ``(model in eval mode, task, resolved config, checkpoint dir)``.
    """
    from omegaconf import OmegaConf

    from toolkit.train.trainer import build

    run_dir = Path(run_dir)
    ckpt = resolve_checkpoint(checkpoint, run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"run {str(run_dir)!r} has no complete checkpoint yet")
    cfg = OmegaConf.load(ckpt / "config.yaml")
    assets = run_dir / "assets.json"  # toolkit.train.tasks.register_run_asset
    if assets.is_file():
        for key, rel in json.loads(assets.read_text()).items():
            OmegaConf.update(cfg, key, str(run_dir / rel), merge=False)
    model, task, _ = build(cfg, with_data=False)
    data = load_checkpoint(ckpt, map_location)
    weights = data["ema"] if use_ema and data["ema"] is not None else data["model"]
    load_weights(model, weights, f"checkpoint {str(ckpt)!r}",
                 exclude=tuple(getattr(model, "checkpoint_exclude", ())))
    return model.eval(), task, cfg, ckpt


__all__ = [
    "save_checkpoint", "make_tmp_dir", "tmp_dir_path", "list_checkpoints", "latest_checkpoint",
    "verify_checkpoint", "file_digest",
    "resolve_checkpoint", "prune_checkpoints", "load_checkpoint", "rng_state",
    "set_rng_state", "generator_state", "set_generator_state", "filter_state",
    "load_weights", "load_run", "step_dir_name",
]
