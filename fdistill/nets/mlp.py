"""EDM-preconditioned MLP denoiser for low-dimensional data (Karras et al. 2022, Table 1).

``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise, label)``. Generators, fake scores and the
discriminator's feature extractor for vector data all use this one network, exactly as image runs use
a copy of the teacher's UNet.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fdistill.core.noise import append_dims, edm_preconditioning


class FourierEmbedding(nn.Module):
    """Random Fourier features of c_noise = ln(sigma)/4 (as in EDM's NCSN++ embedding)."""

    def __init__(self, dim: int, scale: float = 4.0) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, c_noise: Tensor) -> Tensor:
        arg = 2 * math.pi * c_noise[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class MLPDenoiser(nn.Module):
    def __init__(
        self, dim: int, hidden: int = 256, depth: int = 4, num_classes: int = 0, sigma_data: float = 0.5
    ) -> None:
        super().__init__()
        self.dim, self.hidden, self.num_classes, self.sigma_data = dim, hidden, num_classes, sigma_data
        self.embed = FourierEmbedding(hidden)
        # one extra label slot: index num_classes is the unconditional ("null") label for CFG
        self.label = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(max(depth - 1, 1))
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def _trunk(self, x: Tensor, sigma: Tensor, cond: Tensor | None) -> tuple[list[Tensor], Tensor]:
        sigma = sigma.to(x.dtype).expand(x.shape[0])
        _, _, c_in, c_noise = edm_preconditioning(sigma, self.sigma_data)
        h = self.inp(append_dims(c_in, x.ndim) * x) + self.embed(c_noise)
        if self.label is not None:
            labels = torch.full_like(sigma, self.num_classes, dtype=torch.long) if cond is None else cond
            h = h + self.label(labels)
        feats = []
        for block in self.blocks:
            h = h + block(h)
            feats.append(h)
        return feats, h

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor:
        sigma = sigma.to(x.dtype).expand(x.shape[0])
        c_skip, c_out, _, _ = edm_preconditioning(sigma, self.sigma_data)
        _, h = self._trunk(x, sigma, cond)
        return append_dims(c_skip, x.ndim) * x + append_dims(c_out, x.ndim) * self.out(h)

    def features(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> list[Tensor]:
        """Hidden activations after each residual block (the discriminator's 'encoder features')."""
        return self._trunk(x, sigma, cond)[0]
