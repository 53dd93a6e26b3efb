"""Teachers seen through one EDM denoiser interface; ``build_teacher(cfg)`` picks the adapter."""

from __future__ import annotations

from fdistill.teachers.base import Teacher
from fdistill.teachers.gmm import gaussian_mixture_from_config


def build_teacher(cfg) -> Teacher:
    """Teacher from a full :class:`fdistill.config.Config` (``teacher.kind`` = gmm | unet | latent)."""
    kind = cfg.teacher.kind
    if kind == "gmm":
        return gaussian_mixture_from_config(cfg.teacher, cfg.network)
    # the diffusers-backed adapters are imported only when chosen: importing diffusers takes seconds, and the
    # analytic teacher (and everything that only needs ``Teacher``) does without it
    if kind == "unet":
        from fdistill.teachers.diffusers import load_teacher

        return load_teacher(cfg.teacher)
    if kind == "latent":
        from fdistill.teachers.latent import load_latent_teacher

        return load_latent_teacher(cfg.teacher)
    raise ValueError(f"teacher.kind={kind!r}; accepted: gmm, unet, latent")


__all__ = ["Teacher", "build_teacher"]
