"""The exact reward of the Gaussian-mixture teacher (Diff-Instruct*, docs/math.md §2.8).

``R(x) = log N(x; mu_k, s_k^2 I)``, the log-density of one component: maximising it moves mass towards that
component while the score-divergence regulariser keeps the student close to the teacher, so reward alignment is
measurable exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fdistill.teachers.gmm import GaussianMixtureTeacher


class GMMComponentReward:
    """``R(x) = log N(x; mu_k, s_k^2 I)`` for component ``k`` of a Gaussian-mixture teacher."""

    def __init__(self, teacher: GaussianMixtureTeacher, component: int) -> None:
        if not 0 <= component < teacher.num_components:
            raise ValueError(f"reward.component={component} out of range 0..{teacher.num_components - 1}")
        self.teacher, self.component = teacher, component

    def __call__(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        mu = self.teacher.means[self.component]
        v = self.teacher.stds[self.component] ** 2
        d = x.shape[1]
        return -0.5 * ((x - mu) ** 2).sum(1) / v - 0.5 * d * torch.log(2 * torch.pi * v)
