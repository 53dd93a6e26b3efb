"""The latent teacher's autoencoder: ``z = scaling_factor * (E(x) - shift)`` and back (Rombach et al. 2022)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def vae_factors(vae: nn.Module) -> tuple[float, float]:
    """``(scaling_factor, shift_factor)`` of a diffusers VAE (no shift = 0, as in SD 1.x/2.x)."""
    cfg = vae.config
    return float(cfg.scaling_factor), float(getattr(cfg, "shift_factor", None) or 0.0)


def vae_decode(vae: nn.Module, latents: Tensor) -> Tensor:
    """Images in about ``[-1, 1]`` from latents ``scaling_factor * (E(x) - shift)`` (differentiable, not clamped)."""
    scale, shift = vae_factors(vae)
    return vae.decode((latents.float() / scale + shift).to(vae.dtype)).sample.float()


@torch.no_grad()
def vae_encode(
    vae: nn.Module,
    images: Tensor,
    sample: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
) -> Tensor:
    """Latents ``scaling_factor * (E(x) - shift)`` of images in ``[-1, 1]`` (posterior mean, or a sample), in
    float32 on the VAE's device."""
    scale, shift = vae_factors(vae)
    out = []
    for chunk in images.split(batch_size):
        dist = vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        out.append((z.float() - shift) * scale)
    return torch.cat(out)
