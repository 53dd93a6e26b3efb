"""Exponential moving average of the generator's weights (the network students are evaluated with).

The average is a full, unsharded copy on every process: under FSDP2 each sharded parameter (a ``DTensor``) is
gathered first (a collective: every process updates), so the EMA is the average of the full parameters and exports
the same network as a single-process run."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor


def full(t: Tensor) -> Tensor:
    """The whole tensor of a sharded ``DTensor`` (all-gathered), any other tensor as is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


class EMA(nn.Module):
    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(full(p.detach()).to(ema_p.dtype), 1 - self.decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(full(b))
