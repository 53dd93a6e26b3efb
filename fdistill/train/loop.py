"""Plumbing every training loop shares (distill, teacher, VAE, caption-match): the one non-finite-training error,
per-step random generators from a hash, freezing networks and checking their gradients, resumable
``metrics.jsonl``, graceful SIGTERM / SIGINT and the wall-clock budget ``train.max_minutes``.

Determinism (docs/math.md §5): every random draw of a step comes from :func:`step_generator`, seeded by
a hash of (seed, step, phase, micro-batch, process), so a run resumed from a checkpoint of step ``k`` replays steps
``k+1..`` bit-for-bit, and :func:`truncate_metrics` drops the rows a killed attempt logged after that checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from fdistill.train.metrics_log import truncate_metrics
from fdistill.train.signals import GracefulStop, stopped_message

__all__ = [
    "Budget",
    "GracefulStop",
    "NonFiniteError",
    "frozen",
    "grads_finite",
    "step_generator",
    "stopped_message",
    "truncate_metrics",
]


class NonFiniteError(RuntimeError):
    """Training stopped after too many consecutive non-finite losses or gradients (``train.max_nonfinite``)."""


def step_generator(seed: int, step: int, phase: int, rank: int, micro: int = 0) -> torch.Generator:
    """The CPU generator of every draw of one (step, phase, micro-batch, process): seeded by a hash of the five
    (numpy's SeedSequence), so no two of them replay each other's noise, whatever the counts."""
    words = np.random.SeedSequence([seed % 2**32, step, phase, micro, rank]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))


class Budget:
    """A wall-clock budget of ``minutes`` (0 = none) started at construction: ``train.max_minutes``."""

    def __init__(self, minutes: float) -> None:
        self.minutes = float(minutes)
        self.t0 = time.perf_counter()

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.t0

    def left_s(self) -> float:
        """Seconds left (``inf`` without a budget)."""
        return max(60 * self.minutes - self.elapsed_s(), 0.0) if self.minutes > 0 else float("inf")

    def spent(self) -> bool:
        return self.minutes > 0 and self.elapsed_s() > 60 * self.minutes


@contextlib.contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Temporarily stop parameter gradients of ``modules`` (inputs stay differentiable)."""
    saved = [(p, p.requires_grad) for m in modules if m is not None for p in m.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def grads_finite(module: nn.Module | None) -> bool:
    """This process's gradients (its shards under FSDP: no collective) are finite."""
    if module is None:
        return True
    grads = (p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in module.parameters())
    return all(torch.isfinite(g).all() for g in grads if g is not None)
