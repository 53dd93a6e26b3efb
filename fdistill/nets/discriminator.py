"""Density-ratio discriminator heads on encoder features (DMD2 §4.3; f-distill; docs/math.md §2.3, §2.6).

The head sits on a frozen-or-shared feature extractor: the fake-score network's encoder (DMD2, SiDA,
Uni-Instruct) or the teacher's (FastGen's f-distill); both placements are selectable because the
references disagree. One small head per feature level; their logits are averaged. Trained with
non-saturating BCE on real vs generated samples at the same sigma, the optimal logit is
``log p_sigma(x_t) / q_sigma(x_t)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fdistill.core.noise import edm_preconditioning
from fdistill.nets.mlp import FourierEmbedding


def _conv_trunk(channels: int, size: int, width: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = channels
    while size > 4:
        layers += [nn.Conv2d(c, width, 4, stride=2, padding=1), nn.GroupNorm(min(32, width // 4), width), nn.SiLU()]
        c, size = width, size // 2
    layers += [nn.Conv2d(c, width, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


class LevelHead(nn.Module):
    """Feature map (B, C, H, W) or vector (B, F) + sigma embedding -> one logit per sample."""

    def __init__(self, feature_shape: tuple[int, ...], width: int = 128) -> None:
        super().__init__()
        if len(feature_shape) == 3:
            self.trunk: nn.Module = _conv_trunk(feature_shape[0], min(feature_shape[1:]), width)
        else:
            self.trunk = nn.Sequential(nn.Linear(feature_shape[0], width), nn.SiLU())
        self.embed = FourierEmbedding(width)
        self.out = nn.Sequential(nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, 1))

    def forward(self, feat: Tensor, c_noise: Tensor) -> Tensor:
        h = self.trunk(feat)
        return self.out(torch.cat([h, self.embed(c_noise).to(h.dtype)], dim=1)).squeeze(1)


class DiscriminatorHead(nn.Module):
    """Heads over a list of feature levels; ``forward(features, sigma) -> logit (B,)``."""

    def __init__(self, feature_shapes: list[tuple[int, ...]], width: int = 128) -> None:
        super().__init__()
        self.heads = nn.ModuleList(LevelHead(s, width) for s in feature_shapes)

    @classmethod
    def for_features(cls, features: list[Tensor], width: int = 128) -> DiscriminatorHead:
        return cls([tuple(f.shape[1:]) for f in features], width)

    def forward(self, features: list[Tensor], sigma: Tensor) -> Tensor:
        c_noise = edm_preconditioning(sigma.float())[3]
        logits = [head(f, c_noise) for head, f in zip(self.heads, features, strict=True)]
        return sum(logits) / len(logits)
