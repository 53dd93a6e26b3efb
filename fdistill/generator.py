"""The one-step generator ``x = G(z, cond) = D_theta(sigma_init z, sigma_init, cond)`` (DESIGN.md).

``D_theta`` is a trainable copy of the teacher's denoiser network (SiD: sigma_init = 2.5; DMD2/FastGen:
80; Diff-Instruct: 1), so the generator starts as the teacher's one-step denoiser at that noise level.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class OneStepGenerator(nn.Module):
    def __init__(self, net: nn.Module, sigma_init: float, input_scaling: str = "ve") -> None:
        super().__init__()
        if input_scaling not in ("ve", "vp"):
            raise ValueError(f"input_scaling={input_scaling!r}; accepted: ve, vp")
        self.net = net
        self.sigma_init = float(sigma_init)
        self.input_scaling = input_scaling
        self.input_scale = self.sigma_init if input_scaling == "ve" else math.sqrt(1 + self.sigma_init**2)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        sigma = torch.full((z.shape[0],), self.sigma_init, device=z.device, dtype=z.dtype)
        return self.net(self.input_scale * z, sigma, cond)
