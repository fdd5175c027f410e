"""Training logs: a plain ``metrics.jsonl``, TensorBoard scalars/images, and image grids.

Only the main process writes (pass ``enabled=False`` elsewhere). ``metrics.jsonl`` holds one
JSON object per logged step (``{"step": 10, "loss": 0.93, "lr": 0.001, ...}``); after a
resume, lines newer than the resumed step are dropped so the file reads as one run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch import Tensor


def _jsonable(v: Any) -> Any:
    if isinstance(v, Tensor):
        v = v.detach().cpu()
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLogger:
    """Writes metrics to ``RUN_DIR/metrics.jsonl`` and TensorBoard (``RUN_DIR/tb``).

    Args:
        run_dir: the run directory. enabled: False on non-main processes (no-op).
        tensorboard: also write TensorBoard event files.
        resume_step: when resuming, drop ``metrics.jsonl`` lines with ``step`` greater
            than this (they belong to the abandoned continuation).
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = []
            for ln in self.path.read_text().splitlines():
                try:
                    rec = json.loads(ln)
                except ValueError:  # a line cut short when the process was killed
                    continue
                if rec.get("step", 0) <= resume_step:
                    kept.append(ln)
            self.path.write_text("".join(ln + "\n" for ln in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one record for ``step`` (scalars go to TensorBoard too)."""
        if not self.enabled:
            return
        rec = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def log_image(self, tag: str, image: Tensor, step: int) -> None:
        """Add a ``(3, H, W)`` image in [0, 1] to TensorBoard."""
        if self.enabled and self._tb is not None:
            self._tb.add_image(tag, image.clamp(0, 1), step)

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of ``RUN_DIR/metrics.jsonl`` in order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def save_image_grid(images: Tensor, path: str | Path, nrow: int | None = None,
                    value_range: tuple[float, float] = (-1.0, 1.0), padding: int = 2) -> Tensor:
    """Save ``(N, C, H, W)`` images as one PNG grid; returns the grid ``(3, H', W')`` in [0, 1].

    Args:
        images: a batch with C in {1, 3}. path: the PNG file (parents are created).
        nrow: images per row (default ``ceil(sqrt(N))``). value_range: mapped to [0, 1].
    """
    from torchvision.utils import make_grid, save_image

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"save_image_grid expects (N, 1|3, H, W), got {tuple(images.shape)}")
    lo, hi = value_range
    x = ((images.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    nrow = nrow or max(1, math.ceil(math.sqrt(x.shape[0])))
    grid = make_grid(x, nrow=nrow, padding=padding, pad_value=1.0)  # (3, H', W')
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, str(path))
    return grid


def format_eta(seconds: float) -> str:
    """``1h02m03s`` style duration."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


__all__ = ["MetricsLogger", "read_metrics", "save_image_grid", "format_eta"]
