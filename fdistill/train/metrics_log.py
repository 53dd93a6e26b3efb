"""Run logging: ``metrics.jsonl`` (one JSON object per logged step) and accelerate's trackers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from accelerate import Accelerator


def to_float(value) -> float:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().mean().item()
    return float(value)


class MetricsLog:
    def __init__(self, accelerator: Accelerator, run_dir: Path) -> None:
        self.accelerator = accelerator
        self.path = run_dir / "metrics.jsonl"

    def log(self, step: int, values: dict) -> dict[str, float]:
        row = {k: to_float(v) for k, v in values.items()}
        if self.accelerator.is_main_process:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **{k: v for k, v in row.items() if math.isfinite(v)}}) + "\n")
        self.accelerator.log(row, step=step)
        return row
