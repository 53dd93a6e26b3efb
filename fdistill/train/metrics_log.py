"""Run logging: ``metrics.jsonl`` (one JSON object per logged step) and accelerate's trackers.

A resumed run first drops the rows logged after the checkpoint it resumes from (:func:`truncate_metrics`): they
are about to be logged again, so ``metrics.jsonl`` of a killed and resumed run has the rows of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from omegaconf import OmegaConf
from torch import Tensor


def to_float(value) -> float:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().mean().item()
    return float(value)


def _row_step(line: str) -> int | None:
    """The ``step`` of one ``metrics.jsonl`` line; ``None`` for a malformed one (a killed run's half-written row)."""
    try:
        row = json.loads(line)
        return int(row.get("step", 0)) if isinstance(row, dict) else None
    except (ValueError, TypeError):
        return None


def truncate_metrics(path: str | Path, step: int, size: int | None = None) -> int:
    """Drop the rows of ``path`` written after the checkpoint a run resumes from; returns how many were dropped.

    ``size``: the file's length in bytes when that checkpoint was written (exact: rows logged at the checkpoint's
    step after it, e.g. the final evaluation's, go too). Without it (older checkpoints, or a length that does not
    end a row) rows with a step after ``step`` go. Malformed lines (a killed run's half-written last row) go either
    way. The file is replaced atomically: a run killed while truncating keeps the old file."""
    path = Path(path)
    if not path.is_file():
        return 0
    raw = path.read_bytes()
    lines = [line for line in raw.decode(errors="replace").splitlines() if line.strip()]
    data = raw
    if size is not None and 0 <= size <= len(raw) and (size == 0 or raw[size - 1 : size] == b"\n"):
        data = raw[:size]
    keep = [
        line for line in data.decode(errors="replace").splitlines() if (k := _row_step(line)) is not None and k <= step
    ]
    text = "".join(line + "\n" for line in keep)
    if text.encode() != raw:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return len(lines) - len(keep)


class MetricsLog:
    def __init__(self, accelerator: Accelerator, run_dir: Path) -> None:
        self.accelerator = accelerator
        self.path = run_dir / "metrics.jsonl"

    def size(self) -> int:
        """The file's length in bytes (recorded in each checkpoint, see :func:`truncate_metrics`)."""
        return self.path.stat().st_size if self.path.is_file() else 0

    def log(self, step: int, values: dict) -> dict[str, float]:
        row = {k: to_float(v) for k, v in values.items()}
        if self.accelerator.is_main_process:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **{k: v for k, v in row.items() if math.isfinite(v)}}) + "\n")
        self.accelerator.log(row, step=step)
        return row


def by_noise_level(name: str, values: Tensor, sigma: Tensor, sigma_data: float) -> dict[str, Tensor]:
    """The mean of per-sample ``values`` below and above ``sigma = sigma_data`` (``NAME_low_noise``,
    ``NAME_high_noise``): a discriminator's BCE averaged over all sigmas stays near ln 4 while its low-noise half
    separates real from generated. An empty half is NaN, which :meth:`MetricsLog.log` leaves out of the row."""
    low = (sigma < sigma_data).to(values.dtype)
    nan = torch.tensor(float("nan"), device=values.device)
    mean = lambda w: (values * w).sum() / w.sum() if w.sum() > 0 else nan  # noqa: E731
    return {f"{name}_low_noise": mean(low).detach(), f"{name}_high_noise": mean(1 - low).detach()}


def flat_hparams(cfg: object) -> dict:
    """A structured config as one flat ``{dotted.key: scalar}`` dict (TensorBoard's hparams; others as text)."""
    flat = {}

    def walk(prefix: str, node: dict) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                flat[prefix + k] = v if isinstance(v, int | float | str | bool) else str(v)

    walk("", OmegaConf.to_container(OmegaConf.structured(cfg)))
    return flat
