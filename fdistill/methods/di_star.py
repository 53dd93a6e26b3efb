"""Diff-Instruct* (Luo et al., ICML 2025 "David and Goliath"), docs/math.md §2.8.

Reward-aligned one-step generation: maximise ``alpha_rev * R(x0, c)`` while a score-based divergence
(SIM's pseudo-Huber surrogate, §2.5) keeps the generator close to the reference diffusion. CFG is
folded into the reference score ("DI*-IN"): ``s_ref = s_c + omega (s_c - s_u)``, the score of the
reward-tilted reference ``p(x|c) p(c|x)^omega``; in our ``w = 1 means off`` convention the teacher's
guidance is ``w = 1 + alpha_cfg``. Per-sample loss: ``SIM(x0) - alpha_rev * R(x0, c)``; a row that SIM drops
(non-finite network output) is dropped whole, reward included.

``method.gan_weight > 0`` adds SiDA's adversarial term on real data (Zhou et al., ICLR 2025; as ``sid`` does, see
:mod:`fdistill.methods.sid`): the head on the fake score's encoder, ``gan_weight * numel * softplus(-logit) / wf``
in the generator loss. Not in DI*'s paper: an extension in the line of SiDA and Uni-Instruct, off by default.

Training recipe (``methods/recipes.py``): DI*'s training code is not public; SIM's (= SiD's) loop.
"""

from __future__ import annotations

import torch

from fdistill.core.noise import SigmaSampler
from fdistill.methods.base import GeneratorInputs, Method, MethodOutput, fp32, register
from fdistill.methods.sid import kept_mean
from fdistill.methods.sim import score_divergence_loss


@register
class DiffInstructStar(Method):
    name = "di_star"
    default_sigma = SigmaSampler("karras", t_max=0.8)
    uses = ("distance", "huber_c", "normalize", "alpha_rev", "alpha_cfg", "gan_weight", "disc_features", "disc_weight",
            "sigma")  # fmt: skip

    @property
    def needs_discriminator(self) -> bool:
        return self.cfg.gan_weight > 0  # SiDA's term

    @property
    def teacher_guidance(self) -> float:
        return 1.0 + float(self.cfg.alpha_cfg)

    def generator_loss(self, b: GeneratorInputs) -> MethodOutput:
        reg, dist, keep, gan = score_divergence_loss(
            b, self.cfg.distance, self.cfg.huber_c, self.cfg.normalize, with_gan=self.needs_discriminator
        )
        logs = {
            "score_distance": kept_mean(dist, keep),
            "regularizer": reg.detach().mean(),
            "dropped": (~keep).sum().float(),
        }
        loss = reg
        if gan is not None:
            loss = loss + self.cfg.gan_weight * gan
            logs["gan_term"] = kept_mean(gan.detach(), keep)  # times numel / wf, unlike gan_loss
        if self.cfg.alpha_rev != 0:
            assert b.reward is not None, "di_star with alpha_rev != 0 needs a reward (reward.kind)"
            reward = fp32(b.reward(b.x0, b.cond))
            loss = torch.where(keep, loss - self.cfg.alpha_rev * reward, 0.0)
            logs["reward"] = reward.detach().mean()
        return MethodOutput(loss, logs)
