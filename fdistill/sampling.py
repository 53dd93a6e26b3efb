"""Teacher samplers: the deterministic EDM Heun sampler (Karras et al. 2022, Algorithm 1).

``nfe`` counts denoiser evaluations: ``steps`` Heun steps cost ``2 * steps - 1`` evaluations (the last
step is Euler), so the EDM default of 18 steps is NFE 35. An odd ``nfe`` maps to ``(nfe + 1) / 2``
steps; an even one uses a final extra Euler step budget rounded down.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fdistill.noise import SIGMA_MAX, SIGMA_MIN, karras_sigma


def heun_steps_for_nfe(nfe: int) -> int:
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    return (nfe + 1) // 2


@torch.no_grad()
def edm_heun_sampler(
    denoise: Callable[[Tensor, Tensor], Tensor],
    shape: tuple[int, ...],
    nfe: int = 35,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = 7.0,
) -> Tensor:
    steps = heun_steps_for_nfe(nfe)
    t = torch.linspace(0, 1, steps, device=device, dtype=torch.float64)
    sigmas = torch.cat([karras_sigma(t, sigma_min, sigma_max, rho), torch.zeros(1, device=device, dtype=torch.float64)])
    x = torch.randn(shape, generator=generator, device=device) * sigmas[0].float()
    used = 0
    for i in range(steps):
        s_cur, s_next = sigmas[i].float(), sigmas[i + 1].float()
        d = (x - denoise(x, s_cur.expand(shape[0]))) / s_cur
        used += 1
        x_next = x + (s_next - s_cur) * d
        if s_next > 0 and used < nfe:
            d2 = (x_next - denoise(x_next, s_next.expand(shape[0]))) / s_next
            used += 1
            x_next = x + (s_next - s_cur) * 0.5 * (d + d2)
        x = x_next
    return x
