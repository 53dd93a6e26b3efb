"""The per-row metrics of ``fdistill eval-t2i`` on caption-match (CLIP-like) embeddings.

- R@k (R-precision as retrieval accuracy, the idea of Xu et al. 2018, "AttnGAN", Sec. 4.1): the fraction of images
  whose own prompt is among the ``k`` prompts with the highest cosine; rank = ``1 +`` the number of pool prompts
  with a strictly higher cosine (ties count in the image's favour).
- FD: the Frechet distance (Heusel et al. 2017, Eq. 6, :func:`fdistill.metrics.fid.fid_from_features`) between
  unit-norm image embeddings of generated and real images, "FD (caption-match features)", NOT Inception FID.
- diversity: mean pairwise cosine distance ``1 - cos`` between the samples of one prompt across seeds, and the
  per-pixel std across seeds (ddof 1, ``[-1, 1]`` pixel scale).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fdistill.rewards import CLIPReward


def retrieval_accuracy(
    image_features: Tensor, text_features: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """R@k: the fraction of images ``i`` whose own text ``targets[i]`` is among the ``k`` texts most similar to it
    (cosine of unit-norm features; rank = 1 + the number of texts with a strictly higher cosine)."""
    sims = image_features.double() @ text_features.double().T
    own = sims.gather(1, targets.long().view(-1, 1))
    rank = (sims > own).sum(1)  # 0-based
    return {int(k): float((rank < k).double().mean()) for k in ks}


def diversity_scores(features: Tensor, images: Tensor) -> tuple[float, float]:
    """``(mean pairwise 1 - cos, mean per-pixel std)`` of samples of the same prompt.

    ``features``: ``(S, D, F)`` embeddings of ``S`` seeds x ``D`` prompts (normalised here in float64);
    ``images``: ``(S, D, C, H, W)``. The cosine distance is averaged over the ``S (S - 1) / 2`` pairs of each prompt,
    then over prompts; the per-pixel std (ddof 1) across seeds is averaged over pixels, channels and prompts."""
    s = features.shape[0]
    if s < 2 or images.shape[0] != s:
        raise ValueError(f"diversity needs >= 2 seeds and matching shapes, got {tuple(features.shape)}")
    f = torch.nn.functional.normalize(features.double(), dim=-1)
    gram = torch.einsum("sdf,tdf->dst", f, f)
    i, j = torch.triu_indices(s, s, offset=1)
    dist = (1 - gram[:, i, j]).clamp_min(0).mean()
    std = images.double().std(dim=0, correction=1).mean()
    return float(dist), float(std)


@torch.no_grad()
def reward_image_features(reward: CLIPReward, images: Tensor, batch_size: int) -> Tensor:
    """Unit-norm caption-match image embeddings of images in ``[-1, 1]`` (on the CPU, float32)."""
    return torch.cat([reward.image_features(c.to(reward.device)).cpu() for c in images.split(batch_size)])


def reward_text_features(reward: CLIPReward, texts: Sequence[str], batch_size: int = 256) -> Tensor:
    """Unit-norm caption-match text embeddings of ``texts`` (on the CPU)."""
    texts = list(texts)
    return torch.cat([reward.text_features(texts[i : i + batch_size]).cpu() for i in range(0, len(texts), batch_size)])
