"""The one-step generator ``x = G(z, cond) = D_theta(sigma_init z, sigma_init, cond)`` (DESIGN.md).

``D_theta`` is a trainable copy of the teacher's denoiser network (SiD: sigma_init = 2.5; DMD2/FastGen:
80; Diff-Instruct: 1), so the generator starts as the teacher's one-step denoiser at that noise level.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class OneStepGenerator(nn.Module):
    def __init__(self, net: nn.Module, sigma_init: float) -> None:
        super().__init__()
        self.net = net
        self.sigma_init = float(sigma_init)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        sigma = torch.full((z.shape[0],), self.sigma_init, device=z.device, dtype=z.dtype)
        return self.net(self.sigma_init * z, sigma, cond)
