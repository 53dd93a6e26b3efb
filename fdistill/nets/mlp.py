"""Networks for low-dimensional (vector) data: the EDM-preconditioned MLP denoiser and the plain MLP generator.

``MLPDenoiser``: ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise, label)`` (Karras et al. 2022, Table 1), the
fake score, the discriminator's feature extractor and (by default) the generator of the analytic teachers, as image
runs use a copy of the teacher's UNet.

``MLPGenerator``: ``x0 = F(x / sigma, c_noise, label)``, a plain MLP without the skip path, the generator of a
teacher that has no network to copy when ``network.generator=mlp`` (docs/math.md §5.1). The one-step generator is
then a plain MLP of the unit noise z, as in the 2-D experiments of Diff-Instruct, DMD and the independent reference
loop.
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


class MLPGenerator(nn.Module):
    """``x0 = F(x / sigma, c_noise, label)``: a plain MLP of ``depth - 1`` hidden SiLU layers that predicts x0.

    With nothing to inherit from a teacher, the EDM skip path ``c_skip x`` only hard-codes a Gaussian blob of z into
    every sample (``c_skip sigma_init z``), which the network must then undo to make separated modes; on the
    ``ring8w`` mixture that generator dropped one or two of the eight modes on 4 of 10 seeds, where this one covers
    them; on ``gmm8`` at 1,000 steps it is worse for several methods, so it is an option, not the default
    (bench/results/gmm_ring8w_generator_cpu.md). The input is in units of its level's noise, so the first level
    of a student (``x = sigma_init z``) reads z itself; the level enters as the scalar ``c_noise = ln(sigma) / 4``
    (K-step students and hybrid sampling call the network on other levels). The last layer starts at a tenth of
    its default scale with zero bias, so the first samples are a small blob near the origin. One hidden layer fewer
    than :class:`MLPDenoiser` at the same ``network.depth``: without residual paths the deeper MLP trained worse
    (ring8w DI, seeds 0-3: weight error 0.035-0.055 with 4 hidden layers, 0.010-0.018 with 3).
    """

    def __init__(
        self, dim: int, hidden: int = 256, depth: int = 4, num_classes: int = 0, init_scale: float = 0.1
    ) -> None:
        super().__init__()
        self.dim, self.hidden, self.num_classes = dim, hidden, num_classes
        self.label = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.inp = nn.Linear(dim + 1, hidden)
        self.layers = nn.Sequential(
            *(m for _ in range(max(depth - 2, 0)) for m in (nn.SiLU(), nn.Linear(hidden, hidden)))
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))
        with torch.no_grad():
            self.out[1].weight.mul_(init_scale)
            self.out[1].bias.zero_()

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor:
        sigma = sigma.to(x.dtype).expand(x.shape[0])
        h = self.inp(torch.cat([x / sigma[:, None], sigma.log()[:, None] / 4], dim=1))
        if self.label is not None:
            labels = torch.full_like(sigma, self.num_classes, dtype=torch.long) if cond is None else cond
            h = h + self.label(labels)
        return self.out(self.layers(h))
