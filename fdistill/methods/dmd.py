"""DMD / DMD2 (Yin et al., CVPR 2024 / NeurIPS 2024): reverse KL with the L1 normaliser, §2.2-2.3.

Update ``g = (D_q - D_p) / mean_chw |x0 - D_p|`` applied through the pseudo-target loss
``0.5 mean (x0 - sg(x0 - g))^2``; DMD2's optional non-saturating GAN term (``method.gan_weight``) goes
through the frozen discriminator. sigma on the 1000-point Karras grid, indices 20..980.

Training recipe (``methods/recipes.py``): DMD2's EDM runs, sigma_init 80, AdamW (0.9, 0.999, wd 0.01), grad clip 10,
the fake score on the generator's own grid, discriminator BCE at 0.01 on the fake score.
"""

from __future__ import annotations

import torch

from fdistill.core.noise import SigmaSampler
from fdistill.methods.base import (
    GeneratorInputs,
    Method,
    MethodOutput,
    fp32,
    gan_generator_loss,
    l1_normalizer,
    pseudo_target_loss,
    register,
)


def dmd_direction(b: GeneratorInputs, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D_q - D_p) [/ mean|x0 - D_p|]`` and ``D_p``, computed without gradients, in float32 at least."""
    x_t = b.x_t
    with torch.no_grad():
        d_p = fp32(b.teacher(x_t, b.sigma, b.cond))
        g = fp32(b.fake(x_t, b.sigma, b.cond)) - d_p
        if normalize:
            g = g / l1_normalizer(b.x0, d_p)
    return torch.nan_to_num(g, 0.0, 0.0, 0.0), d_p


@register
class DMD(Method):
    name = "dmd"
    default_sigma = SigmaSampler("karras_grid")
    uses = ("normalize", "guidance", "gan_weight", "disc_features", "disc_weight", "sigma")

    @property
    def needs_discriminator(self) -> bool:
        return self.cfg.gan_weight > 0

    def generator_loss(self, b: GeneratorInputs) -> MethodOutput:
        g, _ = dmd_direction(b, self.cfg.normalize)
        loss = pseudo_target_loss(b.x0, g)
        logs = {"dm_loss": loss.mean().detach()}
        if self.cfg.gan_weight > 0:
            gan = gan_generator_loss(b)
            loss = loss + self.cfg.gan_weight * gan
            logs["gan_loss"] = gan.mean().detach()
        return MethodOutput(loss, logs)
