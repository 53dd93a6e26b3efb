"""Teacher samplers: the deterministic EDM Heun sampler (Karras et al. 2022, Algorithm 1).

``nfe`` counts denoiser evaluations: ``steps`` Heun steps cost ``2 * steps - 1`` evaluations (the last
step is Euler), so the EDM default of 18 steps is NFE 35. An odd ``nfe`` maps to ``(nfe + 1) / 2``
steps; an even one uses a final extra Euler step budget rounded down.

For hybrid sampling and DT-visualisation (docs/math.md §2.11) the sampler can stop after the first ``stop_after``
steps (returning ``x`` at the schedule's ``sigmas[stop_after]``), start from a given unit noise ``z`` and report each
step's x0 prediction ``D(x_i, sigma_i)`` (its first evaluation) to a ``callback``; none of this changes the samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fdistill.core.noise import SIGMA_MAX, SIGMA_MIN, karras_sigma


def heun_steps_for_nfe(nfe: int) -> int:
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    return (nfe + 1) // 2


def edm_sigmas(
    nfe: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = 7.0, device="cpu"
) -> Tensor:
    """The sampler's float64 schedule for ``nfe``: ``heun_steps_for_nfe(nfe)`` Karras levels, then 0."""
    t = torch.linspace(0, 1, heun_steps_for_nfe(nfe), device=device, dtype=torch.float64)
    return torch.cat([karras_sigma(t, sigma_min, sigma_max, rho), torch.zeros(1, device=device, dtype=torch.float64)])


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
    *,
    z: Tensor | None = None,
    stop_after: int | None = None,
    callback: Callable[[int, float, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """EDM Heun samples of ``shape`` from ``sigma_max * z``, ``z`` drawn from ``generator`` unless given.

    ``stop_after`` = N runs only the first N steps of the schedule and returns ``x`` at ``edm_sigmas(...)[N]`` (N = the
    number of steps, or None: the finished sample). ``callback(i, sigma_i, x_i, x0_i)`` sees each step's state and its
    x0 prediction ``D(x_i, sigma_i)``."""
    sigmas = edm_sigmas(nfe, sigma_min, sigma_max, rho, device)
    steps = len(sigmas) - 1
    stop = steps if stop_after is None else int(stop_after)
    if not 0 <= stop <= steps:
        raise ValueError(f"stop_after={stop_after} is out of range: nfe={nfe} is {steps} Heun steps (0..{steps})")
    if z is None:
        z = torch.randn(shape, generator=generator, device=device)
    x = z.to(device) * sigmas[0].float()
    used = 0
    for i in range(stop):
        s_cur, s_next = sigmas[i].float(), sigmas[i + 1].float()
        x0 = denoise(x, s_cur.expand(shape[0]))
        if callback is not None:
            callback(i, float(s_cur), x, x0)
        d = (x - x0) / s_cur
        used += 1
        x_next = x + (s_next - s_cur) * d
        if s_next > 0 and used < nfe:
            d2 = (x_next - denoise(x_next, s_next.expand(shape[0]))) / s_next
            used += 1
            x_next = x + (s_next - s_cur) * 0.5 * (d + d2)
        x = x_next
    return x
