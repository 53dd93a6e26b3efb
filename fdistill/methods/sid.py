"""Score identity Distillation (Zhou et al., ICML 2024), docs/math.md §2.4.

Per-sample loss ``(D_p - D_q) . ((D_p - x0) - alpha (D_p - D_q)) / wf`` with ``wf = sg(mean|x0 - D_p|)``
and the frozen networks differentiated through ``x_t``. In score form this is
``sigma^4 [u.(s_q - grad log q(x_t|x0)) + (1 - alpha) |u|^2] / wf`` with ``u = s_p - s_q`` over the whole
sample: ``alpha = 0.5`` is the exact Fisher-divergence gradient, ``alpha = 1`` freezes the sampling
distribution (= SIM with ``d = |.|^2``, up to a factor 2). Samples with non-finite values are dropped exactly
(:func:`frozen_denoisers`).

SiDA (Zhou et al., ICLR 2025) is ``gan_weight > 0``: a discriminator head on the fake score's encoder (the
trainer adds its BCE on real vs generated data to the fake-score update) and, on the same ``x_t``, SiDA's
generator GAN term ``gan_weight * numel * softplus(-logit(x_t)) / wf`` added to the generator loss: scaled like
the SiD term (a sum over the sample's ``numel`` values, divided by the same ``wf``), so the ratio of the two
does not move with sigma or resolution. SiDA's code mixes ``0.5 lsg * L_SiD + 0.5 lsg_gan * L_GAN``; its
CIFAR-10 recipe (``lsg 100, lsg_gan 0.01``) is ``gan_weight = 1e-4`` here. The head is trained as SiDA's
``fakescore_discriminator_share_encoder_loss`` does (the recipe's ``method.disc_sigma = fake``): on the fake
score's DSM sigma (EDM's lognormal) and noise, its BCE weighted like that DSM term (``lsd = 1``). Deviation from
SiDA's code: our head is a small conv head, not the channel mean of the bottleneck.

Training recipe (``methods/recipes.py``): SiD's run_sid.sh, sigma_init 2.5, Adam (0, 0.999), no clip, fake score
on EDM's lognormal.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fdistill.core.noise import SigmaSampler, append_dims
from fdistill.methods.base import GeneratorInputs, Method, MethodOutput, fp32, l1_normalizer, register, sum_chw


class Frozen(NamedTuple):
    x0: Tensor
    d_p: Tensor
    d_q: Tensor
    keep: Tensor  # (B,) bool: rows whose values are all finite
    logit: Tensor | None  # the discriminator on the same x_t, when asked for


def frozen_denoisers(b: GeneratorInputs, with_logit: bool = False) -> Frozen:
    """``x0, D_p, D_q`` (and the logit) on one ``x_t``, differentiable through ``x_t`` into the frozen networks.

    A row with a non-finite value in x0, D_p, D_q (or the logit) is dropped exactly, as if it were not in the
    batch: its values are replaced by zeros *before* any arithmetic (``keep`` marks the others), and a hook on
    ``x_t`` zeroes that row of the gradient reaching it, because the backward through a network whose forward
    produced the NaN multiplies the row's zero gradient by NaN. The networks are per-sample (GroupNorm,
    attention within a sample), so such a NaN stays in its row. A NaN inside the generator itself cannot be
    dropped per row: the trainer's non-finite guard skips that step. Everything returned is float32 at least.
    """
    x_t = b.x_t
    d_p, d_q = fp32(b.teacher(x_t, b.sigma, b.cond)), fp32(b.fake(x_t, b.sigma, b.cond))
    logit = None
    if with_logit:
        assert b.logit is not None, "this method needs a discriminator"
        logit = fp32(b.logit(x_t, b.sigma, b.cond))
    keep = finite_rows(b.x0, d_p, d_q, *([] if logit is None else [logit]))
    if x_t.requires_grad:
        x_t.register_hook(lambda g: torch.where(append_dims(keep, g.ndim), g, 0.0))
    m = append_dims(keep, b.x0.ndim)
    x0, d_p, d_q = torch.where(m, fp32(b.x0), 0.0), torch.where(m, d_p, 0.0), torch.where(m, d_q, 0.0)
    return Frozen(x0, d_p, d_q, keep, None if logit is None else torch.where(keep, logit, 0.0))


def finite_rows(*tensors: Tensor) -> Tensor:
    """Per-sample mask of rows whose values are all finite (SiD's NaN-sample dropping)."""
    mask = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        mask &= torch.isfinite(t.detach()).reshape(t.shape[0], -1).all(1)
    return mask


def kept_mean(values: Tensor, keep: Tensor) -> Tensor:
    """Mean of a per-sample log value over the kept rows (0 when none is kept)."""
    return torch.where(keep, values, 0.0).sum() / keep.sum().clamp_min(1)


def sid_weight(x0: Tensor, d_p: Tensor, normalize: bool) -> Tensor:
    return l1_normalizer(x0, d_p) if normalize else torch.ones_like(x0)


def sida_gan_term(logit: Tensor, x0: Tensor, wf: Tensor) -> Tensor:
    """SiDA's per-sample generator GAN term ``numel * softplus(-logit(x_t)) / wf``: scaled like the SiD term (a sum
    over the sample's values divided by the same ``wf``), so their ratio does not move with sigma or resolution."""
    return x0[0].numel() / wf.flatten(1)[:, 0] * F.softplus(-logit)


@register
class SiD(Method):
    name = "sid"
    default_sigma = SigmaSampler("karras", t_max=0.8)
    uses = ("alpha", "normalize", "guidance", "gan_weight", "disc_features", "disc_weight", "sigma")

    @property
    def needs_discriminator(self) -> bool:
        return self.cfg.gan_weight > 0  # SiDA

    def generator_loss(self, b: GeneratorInputs) -> MethodOutput:
        x0, d_p, d_q, keep, logit = frozen_denoisers(b, with_logit=self.needs_discriminator)
        diff, wf = d_p - d_q, sid_weight(x0, d_p, self.cfg.normalize)
        loss = sum_chw(diff * ((d_p - x0) - self.cfg.alpha * diff) / wf)
        logs = {"dropped": (~keep).sum().float()}
        if logit is not None:
            loss = loss + self.cfg.gan_weight * sida_gan_term(logit, x0, wf)
            logs["gan_loss"] = kept_mean(F.softplus(-logit).detach(), keep)
        return MethodOutput(torch.where(keep, loss, 0.0), logs)
