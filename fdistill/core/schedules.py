"""The one map between a VP (DDPM) teacher's discrete timesteps and EDM's sigma (docs/math.md §1.2).

A VP timestep t with cumulative signal ``abar_t`` is the VE noise level ``sigma_t = sqrt((1 - abar_t) / abar_t)``;
fractional timesteps interpolate linearly in ``log sigma`` between neighbouring training timesteps (k-diffusion's
``DiscreteSchedule``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def ddpm_sigmas(alphas_cumprod: Tensor) -> Tensor:
    """``sigma_t = sqrt((1 - abar_t) / abar_t)`` for every training timestep (float64; zero-SNR ends are clamped)."""
    ac = alphas_cumprod.double().clamp(1e-12, 1.0)
    return ((1 - ac) / ac).sqrt().clamp_min(1e-12)


def sigma_to_timestep(sigma: Tensor, log_sigmas: Tensor) -> Tensor:
    """Continuous timestep whose sigma equals ``sigma``: linear interpolation in ``log sigma`` between the two
    neighbouring training timesteps (k-diffusion's ``DiscreteSchedule.sigma_to_t``), clamped to ``[0, T-1]``."""
    ls = log_sigmas.double().to(sigma.device)
    log_sigma = sigma.double().clamp_min(1e-20).log()
    idx = torch.searchsorted(ls, log_sigma).clamp(1, ls.shape[0] - 1)
    lo, hi = ls[idx - 1], ls[idx]
    w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
    return (idx - 1).double() + w


def timestep_to_sigma(t: Tensor | float, log_sigmas: Tensor) -> Tensor:
    """Inverse of :func:`sigma_to_timestep` (log-linear interpolation between integer timesteps)."""
    ls = log_sigmas.double()
    t = torch.as_tensor(t, dtype=torch.float64, device=ls.device).clamp(0, ls.shape[0] - 1)
    lo = t.floor().long().clamp(max=ls.shape[0] - 2)
    w = t - lo
    return ((1 - w) * ls[lo] + w * ls[lo + 1]).exp()
