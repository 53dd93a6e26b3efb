"""f-distill (Xu, Nie & Vahdat 2025, arXiv 2502.15681): integral f-divergence, ALGORITHMS.md §2.6, §3.

Gradient of ``D_f(p_t || q_t)`` is ``E[h(r) (s_q - s_p) . dx0/dtheta]`` with ``h(r) = f''(r) r^2`` and the
density ratio ``r = exp(logit)`` from the discriminator. This is DMD2's update multiplied per sample by
``h(r)``; with ``rkl`` (h = 1) and the normalisations off it *is* DMD. Stabilisers of NVIDIA's
reference (FastGen): logits clamped, r clipped to [ratio_min, ratio_max], r divided by its running
mean per noise-level bin (enforcing E_q[r] = 1 at every sigma), h divided by its batch mean (all
processes), then the DMD L1 normaliser. Deviation, on purpose: our bins are uniform in log sigma
(FastGen's are linear in sigma, which puts almost every sample of a Karras grid in its first bin).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fdistill import divergences
from fdistill.methods.base import (
    GeneratorInputs,
    Method,
    MethodOutput,
    gan_generator_loss,
    pseudo_target_loss,
    register,
)
from fdistill.methods.dmd import dmd_direction
from fdistill.noise import SIGMA_MAX, SIGMA_MIN, SigmaSampler, append_dims


class PerNoiseLevelMean(nn.Module):
    """Running mean of a per-sample statistic in ``n_bins`` log-sigma bins (EMA across steps)."""

    def __init__(self, n_bins: int, ema: float, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX) -> None:
        super().__init__()
        self.n_bins, self.ema = n_bins, ema
        self.log_lo, self.log_hi = math.log(sigma_min), math.log(sigma_max)
        self.register_buffer("means", torch.ones(n_bins))
        self.register_buffer("seen", torch.zeros(n_bins, dtype=torch.bool))

    def bin_of(self, sigma: Tensor) -> Tensor:
        pos = (sigma.log() - self.log_lo) / (self.log_hi - self.log_lo) * self.n_bins
        return pos.floor().long().clamp(0, self.n_bins - 1)

    @torch.no_grad()
    def update_and_lookup(self, values: Tensor, sigma: Tensor, all_reduce_sum) -> Tensor:
        idx = self.bin_of(sigma)
        stats = torch.zeros(2, self.n_bins, device=values.device, dtype=torch.float32)
        stats[0].scatter_add_(0, idx, values.float())
        stats[1].scatter_add_(0, idx, torch.ones_like(values, dtype=torch.float32))
        stats = all_reduce_sum(stats)
        present = stats[1] > 0
        batch_mean = stats[0] / stats[1].clamp_min(1)
        blend = torch.where(self.seen, self.ema * self.means + (1 - self.ema) * batch_mean, batch_mean)
        self.means.copy_(torch.where(present, blend, self.means))
        self.seen |= present
        return self.means[idx]


def density_ratio(logit: Tensor, clip: float, r_min: float, r_max: float) -> Tensor:
    """``r = exp(clamp(logit, +-clip))`` clipped to ``[r_min, r_max]`` (FastGen's guards)."""
    return logit.clamp(-clip, clip).exp().clamp(r_min, r_max)


@register
class FDistill(Method):
    name = "fdistill"
    default_sigma = SigmaSampler("karras_grid", grid_lo=2, grid_hi=998)
    uses = (
        "divergence", "divergence_alpha", "normalize", "guidance", "gan_weight", "disc_features", "disc_weight",
        "logit_clip", "ratio_min", "ratio_max", "ratio_bins", "ratio_ema", "normalize_h", "sigma",
    )  # fmt: skip

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        params = {"alpha": cfg.divergence_alpha} if cfg.divergence == "alpha" else {}
        self.divergence = divergences.get(cfg.divergence, **params)
        self.ratio_means = PerNoiseLevelMean(cfg.ratio_bins, cfg.ratio_ema) if cfg.ratio_bins > 0 else None

    @property
    def needs_discriminator(self) -> bool:
        return self.cfg.divergence != "rkl" or self.cfg.gan_weight > 0

    def weights(self, b: GeneratorInputs, logit: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample ``(h, r)`` after clipping and the optional normalisations (no gradients)."""
        with torch.no_grad():
            r = density_ratio(
                logit.detach().to(torch.promote_types(logit.dtype, torch.float32)),
                self.cfg.logit_clip,
                self.cfg.ratio_min,
                self.cfg.ratio_max,
            )
            if self.ratio_means is not None:
                r = r / (self.ratio_means.update_and_lookup(r, b.sigma, b.all_reduce_sum) + 1e-6)
            h = self.divergence.h(r)
            if self.cfg.normalize_h:
                total = b.all_reduce_sum(torch.stack([h.sum(), torch.tensor(float(h.numel()), device=h.device)]))
                h = h / (total[0] / total[1] + 1e-6)
        return h, r

    def generator_loss(self, b: GeneratorInputs) -> MethodOutput:
        g, _ = dmd_direction(b, self.cfg.normalize)
        logs: dict[str, Tensor] = {}
        loss = torch.zeros(b.x0.shape[0], device=b.x0.device)
        if self.needs_discriminator:
            assert b.logit is not None, "fdistill with a divergence other than rkl needs a discriminator"
            if self.cfg.gan_weight > 0:
                gan = gan_generator_loss(b)  # shares the forward with the ratio below
                loss = loss + self.cfg.gan_weight * gan
                logs["gan_loss"] = gan.mean().detach()
            if self.cfg.divergence != "rkl":
                with torch.no_grad():
                    logit = b.logit(b.x_t, b.sigma, b.cond)
                h, r = self.weights(b, logit)
                g = g * append_dims(h.to(g.dtype), g.ndim)
                logs.update(h_min=h.min(), h_mean=h.mean(), h_max=h.max(), r_mean=r.mean(), logit_mean=logit.mean())
        dm = pseudo_target_loss(b.x0, g)
        logs["dm_loss"] = dm.mean().detach()
        return MethodOutput(loss + dm, logs)
