"""Planned vs measured memory: a few real training steps on the CPU beside :func:`fdistill.apps.plan.plan_run`.

The measurement is the growth of the process's peak resident set (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``) from just before the trainer builds its networks to the end of ``steps`` generator
steps (fake-score warm-up off, evaluation and export off). It holds every network, gradient, optimizer state, the
EMA and the live activations, plus what the plan does not model (allocator slack, the data batch, autograd
bookkeeping), so it reads a little above the plan on small networks.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from fdistill.apps.plan import plan_run
from fdistill.train.distill import Distiller


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field} (peak memory is measured on Linux only)")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def measure_cpu(cfg, steps: int = 2) -> dict[str, float]:
    """Planned per-process total (one process, fp32 on CPU) and the measured peak growth, in bytes."""
    train = replace(cfg.train, steps=steps, fake_warmup_steps=0, eval_every=0, checkpoint_every=0, mixed_precision="no")
    cfg = replace(cfg, train=train)
    planned = plan_run(cfg, num_gpus=1).per_gpu("ddp")["total"]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    _reset_peak()
    before = _status_kib("VmRSS")
    distiller = Distiller(cfg)
    for step in range(steps):
        distiller.train_step(step)
    peak = _status_kib("VmHWM")
    return {"planned": planned, "measured": (peak - before) * 1024.0, "ratio": (peak - before) * 1024.0 / planned}
