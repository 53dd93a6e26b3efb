"""The teacher interface: every teacher is seen through one EDM denoiser ``D(x_t, sigma, cond) -> x0_hat``.

Following k-diffusion's ``external.py`` wrappers, foreign parameterisations (epsilon, v, VP schedules,
latent models) are converted inside their adapter and never inside a loss. The score is
``s(x_t, sigma) = (D - x_t) / sigma**2`` (docs/math.md §1.1) and classifier-free guidance uses the
convention ``D_w = D_u + w (D_c - D_u)``, so ``w = 1`` means no guidance (§1.2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from fdistill.core.guidance import guided
from fdistill.core.noise import SIGMA_MAX, SIGMA_MIN, append_dims
from fdistill.core.sampling import edm_heun_sampler

DenoiseFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


class DenoiserNet(Protocol):
    """A trainable network in denoiser form; students and fake scores are built from these."""

    def __call__(self, x_t: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor: ...

    def features(self, x_t: Tensor, sigma: Tensor, cond: Tensor | None = None) -> list[Tensor]: ...


class Teacher(nn.Module):
    """Base class of all teachers. Subclasses implement ``denoise_cond`` and the attributes below.

    Attributes:
        sample_shape: shape of one sample (``(d,)`` for vectors, ``(C, H, W)`` for images).
        num_classes: number of class labels (0 = unconditional); ``cond`` is then a LongTensor.
        sigma_data: data standard deviation used by EDM preconditioning of student networks.
        guidance: default CFG scale applied by :meth:`denoise` (1 = off).
    """

    sample_shape: tuple[int, ...]
    num_classes: int = 0
    sigma_data: float = 0.5
    sigma_min: float = SIGMA_MIN  # the noise range the teacher knows (samplers and sigma draws stay inside)
    sigma_max: float = SIGMA_MAX

    @property
    def timestep_sigmas(self) -> Tensor | None:
        """sigma of each DDPM training timestep for VP teachers (``ddpm_uniform`` draws); None for EDM teachers."""
        return None

    def denoise_cond(self, x_t: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
        """D(x_t, sigma | cond); ``cond=None`` is the unconditional branch."""
        raise NotImplementedError

    def denoise(self, x_t: Tensor, sigma: Tensor, cond: Tensor | None = None, guidance: float = 1.0) -> Tensor:
        """Guided denoiser ``D_u + w (D_c - D_u)`` (:func:`fdistill.core.guidance.guided`); plain ``D_c`` when
        ``w == 1`` or ``cond is None``."""
        return guided(self.denoise_cond, x_t, sigma, cond, guidance)

    def score(self, x_t: Tensor, sigma: Tensor, cond: Tensor | None = None, guidance: float = 1.0) -> Tensor:
        s2 = append_dims(sigma, x_t.ndim) ** 2
        return (self.denoise(x_t, sigma, cond, guidance) - x_t) / s2

    def features(self, x_t: Tensor, sigma: Tensor, cond: Tensor | None = None) -> list[Tensor]:
        """Encoder features for a discriminator head on the teacher (FastGen's placement)."""
        raise NotImplementedError(f"{type(self).__name__} exposes no encoder features")

    def make_network(self) -> nn.Module:
        """A trainable denoiser network of the teacher's architecture, initialised from the teacher
        where it has weights. The generator and the fake score are both built from this."""
        raise NotImplementedError

    def make_generator_network(self) -> nn.Module:
        """The generator's network: :meth:`make_network` (the student starts as the teacher's denoiser); the analytic
        mixture, which has no weights to start from, can take a plain MLP instead (``network.generator=mlp``,
        docs/math.md §5.1)."""
        return self.make_network()

    def sample_labels(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"):
        if self.num_classes == 0:
            return None
        return torch.randint(0, self.num_classes, (n,), generator=generator, device=device)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        cond: Tensor | None = None,
        nfe: int = 18,
        guidance: float = 1.0,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Teacher samples with the EDM Heun sampler (Karras et al. 2022, Alg. 1) at ``nfe`` evaluations."""
        return edm_heun_sampler(
            lambda x, s: self.denoise(x, s, cond, guidance),
            (n, *self.sample_shape),
            nfe,
            generator,
            device,
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
        )
