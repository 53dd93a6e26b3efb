"""The pixel teacher recipe: an :class:`~fdistill.nets.unet.EDMUNet` trained by EDM denoising score matching
(Karras et al. 2022, Eq. 8 / Table 1: ``ln sigma ~ N(P_mean, P_std^2)``, loss weight
``lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``; docs/math.md §1.3), label ``num_classes`` being the
null label of classifier-free guidance (Ho & Salimans 2022), and its EDM Heun sample grid.

A recipe is what the loop (:mod:`fdistill.train.teacher.trainer`) sees of a model: ``net``, ``dataset``,
``null_label``, ``draw_sigma(n, gen)``, ``loss(denoise, x0, sigma, eps)``, ``sample_grid(net, rows, nfe, guidance,
seed, device) -> (images, columns)`` and ``save(net, folder)``; :class:`~fdistill.train.teacher.latent_recipe.
LatentRecipe` is the text-to-image one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor

from fdistill.config.schema import ConfigError
from fdistill.config.teacher import TeacherTrainConfig
from fdistill.core.guidance import guided
from fdistill.core.noise import SigmaSampler, denoising_score_matching_loss
from fdistill.core.sampling import edm_heun_sampler
from fdistill.nets.unet import EDMUNet

__all__ = ["EDMRecipe", "sample_grid"]


@torch.no_grad()
def sample_grid(
    net: torch.nn.Module,
    n_rows: int,
    nfe: int,
    guidance: float = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Tensor:
    """EDM Heun samples of an EDMUNet: one column per class (or ``n_rows * 10`` unconditional samples), under
    classifier-free guidance ``guidance`` (:func:`fdistill.core.guidance.guided`; 1 = off)."""
    k = net.num_classes or 10
    n = n_rows * k
    labels = (torch.arange(n, device=device) % k) if net.num_classes else None

    def denoise(x: Tensor, s: Tensor) -> Tensor:
        return guided(net, x, s, labels, guidance)

    gen = torch.Generator(device=device).manual_seed(seed)
    return edm_heun_sampler(denoise, (n, *net.sample_shape), nfe, generator=gen, device=device)


class EDMRecipe:
    """The pixel teacher: an :class:`~fdistill.nets.unet.EDMUNet` trained by EDM DSM with lognormal sigma; label
    ``num_classes`` is the null label."""

    def __init__(self, cfg: TeacherTrainConfig, dataset) -> None:
        nc = cfg.network
        if tuple(dataset.sample_shape) != (nc.in_channels, nc.sample_size, nc.sample_size):
            raise ConfigError(
                f"data {cfg.data.name} has images of shape {tuple(dataset.sample_shape)} but the network expects "
                f"{(nc.in_channels, nc.sample_size, nc.sample_size)} (network.in_channels / network.sample_size)"
            )
        if nc.num_classes and int(dataset.labels.max()) >= nc.num_classes:
            raise ConfigError(
                f"data labels go up to {int(dataset.labels.max())} but network.num_classes={nc.num_classes}"
            )
        self.net = EDMUNet(**OmegaConf.to_container(OmegaConf.structured(nc)))  # type: ignore[arg-type]
        self.dataset = dataset
        self.null_label = nc.num_classes or None
        self.sigma_data = nc.sigma_data
        self._sigma = SigmaSampler("lognormal", p_mean=cfg.p_mean, p_std=cfg.p_std)

    def draw_sigma(self, n: int, gen: torch.Generator) -> Tensor:
        return self._sigma(n, gen)

    def loss(self, denoise, x0: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
        return denoising_score_matching_loss(denoise, x0, sigma, eps, self.sigma_data)

    def sample_grid(self, net, rows: int, nfe: int, guidance: float, seed: int, device) -> tuple[Tensor, int]:
        return sample_grid(net, rows, nfe, guidance, seed, device), net.num_classes or 10

    def save(self, net: torch.nn.Module, folder: Path) -> None:
        net.save_pretrained(folder, safe_serialization=True)
