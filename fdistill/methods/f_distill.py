"""f-distill (Xu, Nie & Vahdat 2025, arXiv 2502.15681): integral f-divergence, docs/math.md §2.6, §3.

Gradient of ``D_f(p_t || q_t)`` is ``E[h(r) (s_q - s_p) . dx0/dtheta]`` (docs/math.md I5) with
``h(r) = f''(r) r^2`` and the density ratio ``r = exp(logit)`` from the discriminator. This is DMD2's update
multiplied per sample by ``h(r)``; with ``rkl`` (h = 1) and the normalisations off it *is* DMD. Stabilisers of
NVIDIA's reference (FastGen): logits clamped, r clipped to [ratio_min, ratio_max], r divided by its running
mean per noise-level bin (enforcing E_q[r] = 1 at every sigma), h divided by its batch mean (all processes),
then the DMD L1 normaliser. Deviations, on purpose: bins uniform in log sigma (FastGen's are linear in sigma,
which puts almost every sample of a Karras grid in its first bin), and the running mean is a ratio of decayed
sums and counts with pooling of sparse bins (:class:`PerNoiseLevelMean`), so that it is not noise at small batch.
With ``gan_weight > 0`` one discriminator forward serves both the GAN term and the (detached) ratio.

Training recipe (``methods/recipes.py``): FastGen's, sigma_init 80, AdamW (0.9, 0.999, wd 0.01), grad clip 10,
the fake score on the generator's own grid.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fdistill.core import divergences
from fdistill.core.noise import SIGMA_MAX, SIGMA_MIN, SigmaSampler, append_dims
from fdistill.methods.base import (
    GeneratorInputs,
    Method,
    MethodOutput,
    fp32,
    gan_generator_loss,
    pseudo_target_loss,
    register,
)
from fdistill.methods.dmd import dmd_direction


class PerNoiseLevelMean(nn.Module):
    """Running mean of a per-sample statistic in ``n_bins`` bins uniform in log sigma.

    State: per-bin exponentially decayed sums and counts (float64 buffers, saved in checkpoints). Every call
    (every micro-batch of gradient accumulation) multiplies both by ``ema`` and adds its finite samples, summed
    over processes by ``all_reduce_sum``; the mean is sum / count, with no initial value mixed in (``ema = 0``:
    the current global batch). Memory: about ``micro_batch * processes / (1 - ema)`` samples.

    Sparse bins: a bin whose decayed count is below ``min_count`` takes the pooled mean of the smallest window
    ``[k - w, k + w]`` of bins around it (clamped at the ends) that reaches ``min_count``, else the global mean.
    So the number of bins shrinks to what the history fills, and every divisor's standard error is at most
    about ``std(r) / sqrt(min_count)``, instead of r / r for a bin holding one sample of a small batch.
    """

    def __init__(
        self,
        n_bins: int,
        ema: float,
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
        min_count: float = 2048.0,
    ) -> None:
        super().__init__()
        self.n_bins, self.ema, self.min_count = n_bins, ema, min_count
        self.log_lo, self.log_hi = math.log(sigma_min), math.log(sigma_max)
        self.register_buffer("sums", torch.zeros(n_bins, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(n_bins, dtype=torch.float64))

    def bin_of(self, sigma: Tensor) -> Tensor:
        pos = (sigma.log() - self.log_lo) / (self.log_hi - self.log_lo) * self.n_bins
        return pos.floor().long().clamp(0, self.n_bins - 1)

    @torch.no_grad()
    def update(self, values: Tensor, sigma: Tensor, all_reduce_sum) -> None:
        # one-hot reductions instead of scatter_add_: no atomics, bit-reproducible on GPUs
        finite = torch.isfinite(values)
        onehot = F.one_hot(self.bin_of(sigma), self.n_bins).to(torch.float64) * finite[:, None]
        v = torch.where(finite, values, 0).to(torch.float64)
        stats = all_reduce_sum(torch.stack([(onehot * v[:, None]).sum(0), onehot.sum(0)]))
        self.sums.mul_(self.ema).add_(stats[0])
        self.counts.mul_(self.ema).add_(stats[1])

    @torch.no_grad()
    def bin_means(self) -> Tensor:
        """The divisor of each bin: its own mean, or that of the smallest window around it holding ``min_count``."""
        k = torch.arange(self.n_bins, device=self.sums.device)
        window = (k[None, :, None] - k[None, None, :]).abs() <= k[:, None, None]  # [radius, bin, bin']
        sums, counts = (window * self.sums).sum(-1), (window * self.counts).sum(-1)  # [radius, bin]
        enough = (counts >= self.min_count) & (counts > 0)
        enough[-1] = True  # radius n_bins - 1 covers every bin: the global mean
        radius = enough.int().argmax(0, keepdim=True)  # the first (smallest) sufficient radius
        s, c = sums.gather(0, radius)[0], counts.gather(0, radius)[0]
        return torch.where(c > 0, s / c.clamp_min(1e-300), 1.0)

    def update_and_lookup(self, values: Tensor, sigma: Tensor, all_reduce_sum) -> Tensor:
        self.update(values, sigma, all_reduce_sum)
        return self.bin_means()[self.bin_of(sigma)].to(values.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints of the former per-batch-mean version ('means', 'seen'): start the statistics afresh
        if prefix + "means" in state_dict and prefix + "sums" not in state_dict:
            state_dict.pop(prefix + "means")
            state_dict.pop(prefix + "seen", None)
            state_dict[prefix + "sums"], state_dict[prefix + "counts"] = self.sums.clone(), self.counts.clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


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
            r = density_ratio(fp32(logit.detach()), self.cfg.logit_clip, self.cfg.ratio_min, self.cfg.ratio_max)
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
            gan_on = self.cfg.gan_weight > 0
            # one forward: differentiated by the GAN term, detached for the ratio weight
            with contextlib.nullcontext() if gan_on else torch.no_grad():
                logit = b.logit(b.x_t, b.sigma, b.cond)
            if gan_on:
                gan = gan_generator_loss(b, logit)
                loss = loss + self.cfg.gan_weight * gan
                logs["gan_loss"] = gan.mean().detach()
            if self.cfg.divergence != "rkl":
                h, r = self.weights(b, logit.detach())
                g = g * append_dims(h.to(g.dtype), g.ndim)
                logs.update(h_min=h.min(), h_mean=h.mean(), h_max=h.max(), r_mean=r.mean())
                logs["logit_mean"] = logit.detach().mean()
        dm = pseudo_target_loss(b.x0, g)
        logs["dm_loss"] = dm.mean().detach()
        return MethodOutput(loss + dm, logs)
