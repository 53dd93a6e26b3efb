"""Differentiable rewards ``R(x0, cond) -> (B,)`` for Diff-Instruct* (ALGORITHMS.md §2.8).

The analytic reward for the Gaussian-mixture teacher is the exact log-density of one chosen component,
so reward alignment is measurable exactly: maximising it moves mass towards that component, while the
score-divergence regulariser keeps the student close to the teacher.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fdistill.teachers.base import Teacher

RewardFn = Callable[[Tensor, "Tensor | None"], Tensor]


class GMMComponentReward:
    """``R(x) = log N(x; mu_k, s_k^2 I)`` for component ``k`` of a Gaussian-mixture teacher."""

    def __init__(self, teacher, component: int) -> None:
        if not 0 <= component < teacher.num_components:
            raise ValueError(f"reward.component={component} out of range 0..{teacher.num_components - 1}")
        self.teacher, self.component = teacher, component

    def __call__(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        mu = self.teacher.means[self.component]
        v = self.teacher.stds[self.component] ** 2
        d = x.shape[1]
        return -0.5 * ((x - mu) ** 2).sum(1) / v - 0.5 * d * torch.log(2 * torch.pi * v)


def build_reward(cfg, teacher: Teacher) -> RewardFn | None:
    """Reward from ``cfg.reward``; ``None`` for ``reward.kind=none``."""
    kind = cfg.reward.kind
    if kind == "none":
        return None
    if kind == "gmm_component":
        if cfg.teacher.kind != "gmm":
            raise ValueError("reward.kind=gmm_component needs teacher.kind=gmm")
        return GMMComponentReward(teacher, cfg.reward.component)
    raise NotImplementedError(f"reward.kind={kind!r} is not available yet; use gmm_component or none")
