"""Noise levels: sigma sampling, EDM preconditioning and VP <-> VE conversions.

One convention for the whole engine (EDM, Karras et al. 2022, Eq. 7): ``x_t = x + sigma * eps``.
VP/DDPM teachers (``x_vp = alpha * x + s * eps``) are seen through ``sigma = s / alpha`` and
``x_t = x_vp / alpha`` (docs/math.md §1.2). Each distillation method names the sigma distribution its
paper uses (docs/math.md §5.2); every distribution here draws from an explicit ``torch.Generator`` so
that a resumed run sees the same noise. Every parameter is a config key (``method.sigma_params``): EDM's
lognormal is tuned for images (sigma_data 0.5), presets of other teachers state their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

SIGMA_DATA = 0.5
SIGMA_MIN = 0.002
SIGMA_MAX = 80.0


def append_dims(x: Tensor, ndim: int) -> Tensor:
    """Reshape a per-sample tensor of shape (B,) so it broadcasts against a (B, ...) tensor."""
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def karras_sigma(t: Tensor, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) Eq. 5 schedule: t=0 -> sigma_max, t=1 -> sigma_min."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + t * (lo - hi)) ** rho


@dataclass(frozen=True)
class SigmaSampler:
    """A named per-sample sigma distribution (docs/math.md §5.2).

    kinds:
      ``lognormal``   ln sigma ~ N(p_mean, p_std**2), clamped to [sigma_min, sigma_max] (EDM DSM, DI)
      ``karras``      u ~ U[0, t_max], sigma = karras(1 - u)                 (SiD, SiDA, Uni-Instruct)
      ``karras_grid`` sigma = karras_1000[randint(lo, hi)] on a 1000-point grid (DMD2, FastGen)
      ``loguniform``  ln sigma ~ U[ln sigma_min, ln sigma_max]
      ``ddpm_uniform`` t ~ U{t_lo..t_hi} DDPM timesteps, sigma = timestep_sigmas[t]  (DMD2-SD, SiD-LSG: 20..980)

    ``timestep_sigmas`` is the VP teacher's sigma of every training timestep (set by the trainer from
    ``Teacher.timestep_sigmas``); only ``ddpm_uniform`` reads it.
    """

    kind: str = "lognormal"
    p_mean: float = -1.2
    p_std: float = 1.2
    t_max: float = 0.8
    grid_lo: int = 20
    grid_hi: int = 980
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    rho: float = 7.0
    t_lo: int = 20
    t_hi: int = 980
    timestep_sigmas: tuple[float, ...] = field(default=(), repr=False)

    KINDS = ("lognormal", "karras", "karras_grid", "loguniform", "ddpm_uniform")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown sigma distribution {self.kind!r}; accepted: {', '.join(self.KINDS)}")
        if (
            self.kind == "ddpm_uniform"
            and self.timestep_sigmas
            and not 0 <= self.t_lo <= self.t_hi < len(self.timestep_sigmas)
        ):
            raise ValueError(f"ddpm_uniform: need 0 <= t_lo <= t_hi < {len(self.timestep_sigmas)} timesteps")

    def __call__(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
        dev = torch.device(device)
        if self.kind == "lognormal":
            sigma = torch.exp(self.p_mean + self.p_std * torch.randn(n, generator=generator, device=dev))
            return sigma.clamp(self.sigma_min, self.sigma_max)
        if self.kind == "karras":
            # SiD: sigma at "time" t ~ U[0, t_max] measured from sigma_min (t=0) towards sigma_max
            t = self.t_max * torch.rand(n, generator=generator, device=dev)
            return karras_sigma(1 - t, self.sigma_min, self.sigma_max, self.rho)
        if self.kind == "karras_grid":
            idx = torch.randint(self.grid_lo, self.grid_hi + 1, (n,), generator=generator, device=dev)
            return karras_sigma(1 - idx.float() / 999, self.sigma_min, self.sigma_max, self.rho)
        if self.kind == "ddpm_uniform":
            if not self.timestep_sigmas:
                raise ValueError("sigma distribution ddpm_uniform needs a VP (DDPM) teacher's timestep sigmas")
            t = torch.randint(self.t_lo, self.t_hi + 1, (n,), generator=generator, device=dev)
            return torch.tensor(self.timestep_sigmas, dtype=torch.float32, device=dev)[t]
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator, device=dev))


def edm_loss_weight(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """EDM DSM weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_preconditioning(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM (Karras et al. 2022, Table 1) c_skip, c_out, c_in, c_noise for D = c_skip x + c_out F(c_in x)."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def vp_to_ve_sigma(alpha: Tensor, s: Tensor) -> Tensor:
    """sigma = s / alpha for x_vp = alpha x + s eps (docs/math.md §1.2)."""
    return s / alpha


def ve_to_vp(x_t: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """x_vp = x_t / sqrt(1 + sigma^2) and alpha = 1 / sqrt(1 + sigma^2)."""
    alpha = 1 / (1 + sigma**2).sqrt()
    return x_t * append_dims(alpha, x_t.ndim), alpha


def denoising_score_matching_loss(
    denoise: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    sigma: Tensor,
    eps: Tensor,
    sigma_data: float = SIGMA_DATA,
) -> Tensor:
    """Per-sample EDM DSM loss ``lambda(sigma) * mean_chw (D(x0 + sigma eps, sigma) - x0)^2`` (§1.3).

    ``mean`` (not ``sum``) over pixels keeps learning rates independent of the resolution; Adam is
    invariant to that constant anyway.
    """
    x_t = x0 + append_dims(sigma, x0.ndim) * eps
    err = (denoise(x_t, sigma) - x0) ** 2
    return edm_loss_weight(sigma, sigma_data) * err.flatten(1).mean(1)
