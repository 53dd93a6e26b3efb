"""Diff-Instruct (Luo et al., NeurIPS 2023): integral reverse KL, docs/math.md §2.1.

Gradient ``E[w(sigma) (s_q - s_p) . dx0/dtheta]`` with ``w = sigma^2``, i.e. the x0-space direction
``D_q - D_p``; no normaliser, no back-propagation through the networks, sigma ~ LogNormal(-1.2, 1.2).

Training recipe (``methods/recipes.py``): the diff_instruct README's sigma_init 1, Adam (0, 0.999), no clip, fake
score on EDM's lognormal.
"""

from __future__ import annotations

import torch

from fdistill.core.noise import SigmaSampler
from fdistill.methods.base import GeneratorInputs, Method, MethodOutput, fp32, register, sum_chw


@register
class DiffInstruct(Method):
    name = "di"
    default_sigma = SigmaSampler("lognormal")
    uses = ("guidance", "sigma")

    def generator_loss(self, b: GeneratorInputs) -> MethodOutput:
        x_t = b.x_t
        with torch.no_grad():
            direction = fp32(b.fake(x_t, b.sigma, b.cond)) - fp32(b.teacher(x_t, b.sigma, b.cond))
            direction = torch.nan_to_num(direction, 0.0, 0.0, 0.0)
        # d/dx0 sum((Dq - Dp) * x0) = Dq - Dp = sigma^2 (s_q - s_p)
        return MethodOutput(sum_chw(direction * b.x0), {"direction_norm": direction.flatten(1).norm(dim=1).mean()})
