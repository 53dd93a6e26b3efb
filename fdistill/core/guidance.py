"""Classifier-free guidance, the one implementation (Ho & Salimans 2022; docs/math.md §1.2).

``D_w = D_u + w (D_c - D_u)``: ``w = 1`` is the conditional denoiser (no guidance), ``w = 0`` the unconditional one.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

Denoiser = Callable[[Tensor, Tensor, object], Tensor]


def combine(d_cond: Tensor, d_uncond: Tensor, scale: float) -> Tensor:
    """``D_u + scale (D_c - D_u)`` from both branches' outputs (denoised images, eps or v: the map is linear)."""
    return d_uncond + scale * (d_cond - d_uncond)


def guided(denoise: Denoiser, x: Tensor, sigma: Tensor, cond: object, scale: float, uncond: object = None) -> Tensor:
    """``denoise(x, sigma, cond)`` under guidance ``scale``; ``uncond`` is the null condition (``None`` by default).

    ``scale == 1`` or ``cond is None`` costs one call (there is nothing to guide); otherwise two.
    """
    d_c = denoise(x, sigma, cond)
    if scale == 1.0 or cond is None:
        return d_c
    return combine(d_c, denoise(x, sigma, uncond), scale)
