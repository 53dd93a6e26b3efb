"""Score Implicit Matching (Luo et al., NeurIPS 2024), docs/math.md §2.5 and §4.

Minimises ``E_{pi_t} d(s_p - s_q)`` with the sampling distribution frozen, through the tractable
surrogate ``d'(u) . (s_q - grad log q(x_t | x0)) = d'(u) . (D_q - x0) / sigma^2`` where ``u = s_p - s_q``
(one vector per sample, all of C*H*W) stays differentiable in ``x_t``. Weighted by ``sigma^4 / wf`` (SiD's
weighting) so that ``d = |.|^2`` gives exactly twice SiD with ``alpha = 1``. Distances: ``pseudo_huber``
``sqrt(|u|^2 + c^2) - c`` (SIM's default, Diff-Instruct*'s regulariser) and ``l2`` ``|u|^2``. Non-finite
rows are dropped exactly (:func:`fdistill.methods.sid.frozen_denoisers`).

Training recipe (``methods/recipes.py``): SIM's training code is not public; SiD's loop (sigma_init 2.5, Adam
(0, 0.999), no clip, fake score on EDM's lognormal).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fdistill.core.noise import SigmaSampler, append_dims
from fdistill.methods.base import GeneratorInputs, Method, MethodOutput, register, sum_chw
from fdistill.methods.sid import frozen_denoisers, kept_mean, sid_weight, sida_gan_term


def distance_gradient(u: Tensor, distance: str, c: float) -> Tensor:
    """d'(u) for the score distance ``d`` (per sample, over all non-batch dims)."""
    if distance == "l2":
        return 2 * u
    if distance == "pseudo_huber":
        return u / append_dims((sum_chw(u**2) + c**2).sqrt(), u.ndim)
    raise ValueError(f"unknown distance {distance!r}; accepted: pseudo_huber, l2")


def distance_value(u: Tensor, distance: str, c: float) -> Tensor:
    sq = sum_chw(u**2)
    return sq if distance == "l2" else (sq + c**2).sqrt() - c


class ScoreDivergence(NamedTuple):
    loss: Tensor  # (B,) SIM surrogate, 0 on dropped rows
    distance: Tensor  # (B,) detached d(u), for logging
    keep: Tensor  # (B,) bool: the rows kept
    gan: Tensor | None  # (B,) SiDA's GAN term on the same x_t (sid.sida_gan_term), when asked for


def score_divergence_loss(
    b: GeneratorInputs, distance: str, c: float, normalize: bool, with_gan: bool = False
) -> ScoreDivergence:
    """SIM surrogate per sample, the (detached) distance value d(u) for logging, the kept-rows mask and, with
    ``with_gan``, SiDA's generator GAN term through the discriminator on the same ``x_t``."""
    x0, d_p, d_q, keep, logit = frozen_denoisers(b, with_logit=with_gan)
    s2 = append_dims(b.sigma, x0.ndim) ** 2
    u = (d_p - d_q) / s2
    wf = sid_weight(x0, d_p, normalize)
    surrogate = (s2**2 / wf) * distance_gradient(u, distance, c) * (d_q - x0) / s2
    gan = None if logit is None else torch.where(keep, sida_gan_term(logit, x0, wf), 0.0)
    return ScoreDivergence(
        torch.where(keep, sum_chw(surrogate), 0.0), distance_value(u.detach(), distance, c), keep, gan
    )


@register
class SIM(Method):
    name = "sim"
    default_sigma = SigmaSampler("karras", t_max=0.8)
    uses = ("distance", "huber_c", "normalize", "guidance", "sigma")

    def generator_loss(self, b: GeneratorInputs) -> MethodOutput:
        loss, dist, keep, _ = score_divergence_loss(b, self.cfg.distance, self.cfg.huber_c, self.cfg.normalize)
        return MethodOutput(loss, {"score_distance": kept_mean(dist, keep), "dropped": (~keep).sum().float()})
