"""What makes a teacher run resume exactly: the step-indexed data order, the EMA decay schedule (EDM's half-life
with ramp-up, Karras et al. 2022, Appendix F / docs/math.md §1.3) and the counters saved with each checkpoint."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler

from fdistill.config.teacher import TeacherTrainConfig
from fdistill.train.checkpoint import TrainState

__all__ = ["StepSampler", "TeacherTrainState", "ema_beta"]


class StepSampler(Sampler[int]):
    """Indices for the global positions ``[start_step * B, steps * B)`` of an endless stream of per-epoch
    permutations (epoch ``e`` shuffled with ``seed + e``): the batch of step ``k`` is the same whether or not
    the run was interrupted, and every process sees the same order (accelerate then splits each batch)."""

    def __init__(self, n: int, batch_size: int, start_step: int, steps: int, seed: int) -> None:
        self.n, self.batch_size, self.start, self.stop, self.seed = n, batch_size, start_step, steps, seed

    def _perm(self, epoch: int) -> Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def __iter__(self) -> Iterator[int]:
        pos, end = self.start * self.batch_size, self.stop * self.batch_size
        epoch, perm = -1, None
        while pos < end:
            if pos // self.n != epoch:
                epoch = pos // self.n
                perm = self._perm(epoch)
            yield int(perm[pos % self.n])  # type: ignore[index]
            pos += 1

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.batch_size


def ema_beta(cfg: TeacherTrainConfig, images_seen: int) -> float:
    """Per-step EMA decay: fixed ``ema_decay`` or EDM's half-life ``0.5 ** (B / halflife_nimg)`` with ramp-up."""
    if cfg.ema_decay is not None:
        return float(cfg.ema_decay)
    halflife = cfg.ema_halflife_kimg * 1000
    if cfg.ema_rampup_ratio > 0:
        halflife = min(halflife, images_seen * cfg.ema_rampup_ratio)
    return float(0.5 ** (cfg.batch_size / max(halflife, 1e-8)))


class TeacherTrainState(TrainState):
    """Step / images / non-finite counters plus the training wall time (summed over resumes)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.seconds = float(state.get("seconds", 0.0))
