"""Uni-Instruct (Wang et al., NeurIPS 2025, arXiv 2505.20755): expanded f-divergence, docs/math.md §2.7.

``D_f(p_0 || q_0) = int 1/2 g^2 E_{q_t}[h(r_t) |s_p - s_q|^2] dt``. Its exact tractable surrogate at one
sigma, with ``u = s_p - s_q`` (one vector per sample, all of C*H*W) and the density ratio
``r = exp(logit(x_t))`` differentiated through ``x_t`` (networks and discriminator frozen), is

    (h(r) - r h'(r)) |u|^2 + 2 h(r) u . (s_q - grad log q(x_t | x0)).

Written in denoiser form and weighted by ``sigma^4 / wf`` like SiD:
``[(h - r h') |D_p - D_q|^2 + 2 h (D_p - D_q).(D_q - x0)] / wf``. With ``rkl`` (h = 1) this is exactly
twice SiD with ``alpha = 0.5`` (the Fisher divergence). ``normalize_h`` divides h and r h' by the
(stop-gradient) mean of h over the kept rows of the batch: a positive per-batch constant that keeps the scale
of the RKL case. The optional GAN term uses the same discriminator forward. Non-finite rows (networks or
discriminator) are dropped exactly (:func:`fdistill.methods.sid.frozen_denoisers`). The released code's
batch-mean "ratio" is not reproduced (see docs/math.md §2.7 caveat).

Training recipe (``methods/recipes.py``): the released SiDA fork's, sigma_init 2.5, Adam (0, 0.999), no clip, fake
score on EDM's lognormal, the discriminator head trained in the fake-score update on its sigma and noise (SiDA's).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fdistill.core import divergences
from fdistill.core.noise import SigmaSampler
from fdistill.methods.base import GeneratorInputs, Method, MethodOutput, gan_generator_loss, register, sum_chw
from fdistill.methods.sid import frozen_denoisers, sid_weight


@register
class UniInstruct(Method):
    name = "uni_instruct"
    default_sigma = SigmaSampler("karras", t_max=0.8)
    uses = (
        "divergence", "divergence_alpha", "normalize", "guidance", "gan_weight", "disc_features", "disc_weight",
        "logit_clip", "ratio_min", "ratio_max", "normalize_h", "sigma",
    )  # fmt: skip

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        params = {"alpha": cfg.divergence_alpha} if cfg.divergence == "alpha" else {}
        self.divergence = divergences.get(cfg.divergence, **params)

    @property
    def needs_discriminator(self) -> bool:
        return self.cfg.divergence != "rkl" or self.cfg.gan_weight > 0

    def ratio_weights(self, b: GeneratorInputs, logit: Tensor | None, keep: Tensor) -> tuple[Tensor, Tensor, dict]:
        """``h(r)`` and ``h(r) - r h'(r)``, differentiable in ``x_t`` through the discriminator's ``logit``."""
        if self.cfg.divergence == "rkl":
            one = torch.ones(b.x0.shape[0], device=b.x0.device)
            return one, one, {}
        # outside the logit clamp and the r clip the r-derivative is zero (the guards FastGen uses for r); the
        # logit is float32 at least (frozen_denoisers)
        r = logit.clamp(-self.cfg.logit_clip, self.cfg.logit_clip).exp().clamp(self.cfg.ratio_min, self.cfg.ratio_max)
        h = self.divergence.h(r)
        h_lin = h - r * self.divergence.h_prime(r)
        if self.cfg.normalize_h:
            with torch.no_grad():
                kept = torch.where(keep, h, 0.0).sum()
                total = b.all_reduce_sum(torch.stack([kept, keep.sum().to(kept.dtype)]))
                scale = total[0] / total[1].clamp_min(1) + 1e-6
            h, h_lin = h / scale, h_lin / scale
        return h, h_lin, {"h_mean": h.detach().mean(), "r_mean": r.detach().mean()}

    def generator_loss(self, b: GeneratorInputs) -> MethodOutput:
        if self.needs_discriminator:
            assert b.logit is not None, f"uni_instruct with {self.cfg.divergence!r} needs a discriminator"
        x0, d_p, d_q, keep, logit = frozen_denoisers(b, with_logit=self.needs_discriminator)
        h, h_lin, logs = self.ratio_weights(b, logit, keep)
        h, h_lin = torch.where(keep, h, 0.0), torch.where(keep, h_lin, 0.0)
        wf = sid_weight(x0, d_p, self.cfg.normalize)
        diff = d_p - d_q
        fisher = sum_chw(diff**2 / wf)  # sigma^4 |u|^2 / wf
        cross = sum_chw(diff * (d_q - x0) / wf)  # sigma^4 u.(s_q - grad log q(x_t|x0)) / wf
        loss = h_lin * fisher + 2 * h * cross
        if self.cfg.gan_weight > 0:
            gan = gan_generator_loss(b, logit)
            loss = loss + self.cfg.gan_weight * gan
            logs["gan_loss"] = gan.mean().detach()
        logs.update(fisher=fisher.detach().mean(), dropped=(~keep).sum().float())
        return MethodOutput(torch.where(keep, loss, 0.0), logs)
