"""Evaluation of a saved caption-match folder through the reward path (:class:`fdistill.rewards.PreferenceReward`):
image->caption retrieval against all captions (top-1 / top-5) and matched / unmatched cosines, on clean and on
degraded images (blurred and noised, like an imperfect generated sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from fdistill.rewards import PreferenceReward


def fmt(x: float) -> float:
    """``x`` rounded to 4 significant digits (the numbers in ``training_info.json``)."""
    return float(f"{x:.4g}")


@torch.no_grad()
def evaluate_reward_folder(
    folder: str | Path,
    captions: Sequence[str],
    image_sets: dict[str, Tensor],
    groups: dict[str, Tensor],
    expected_text: Tensor | None = None,
    batch_size: int = 512,
) -> dict:
    """Image->caption retrieval against *all* ``captions`` and matched / unmatched cosines, measured through
    :meth:`PreferenceReward.from_pretrained` (the reward path: saved folder, tokenizer, preprocessing).

    ``image_sets`` maps a suffix to images (image ``i`` captioned ``captions[i]``), ``groups`` a name to a boolean
    mask over them; results are keyed ``name + suffix``. ``expected_text``: the unit text embeddings the model was
    trained with, compared with the reward's (``text_embedding_max_abs_diff``)."""
    reward = PreferenceReward.from_pretrained(str(folder), list(captions))
    txt = reward.text_features(list(captions))
    n = len(captions)
    out: dict = {"scale": fmt(reward.scale), "num_captions": n}
    if expected_text is not None:
        out["text_embedding_max_abs_diff"] = float(f"{(txt - expected_text).abs().max().item():.3g}")
    for suffix, images in image_sets.items():
        chunks = [reward.image_features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        cos = torch.cat(chunks) @ txt.T
        matched = cos.diagonal()
        rank = (cos >= matched[:, None]).sum(1) - 1  # other captions scoring at least as high (ties count against)
        for name, mask in groups.items():
            if not bool(mask.any()):
                continue
            m = mask.nonzero().squeeze(1)
            unmatched = (cos[m].sum(1) - matched[m]) / (n - 1)
            out[name + suffix] = {
                "images": int(m.numel()),
                "top1": fmt((rank[m] < 1).float().mean().item()),
                "top5": fmt((rank[m] < 5).float().mean().item()),
                "matched_cos": fmt(matched[m].mean().item()),
                "unmatched_cos": fmt(unmatched.mean().item()),
                "matched_reward": fmt(reward.scale * matched[m].mean().item()),
            }
    return out


def degrade(x: Tensor) -> Tensor:
    """``x`` blurred (Gaussian, sigma 0.7) and noised (std 0.05, fixed seed): the card's "degraded" images."""
    g = torch.Generator().manual_seed(1234)
    t = torch.arange(-2, 3, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / 0.7) ** 2)
    k = (k / k.sum()).repeat(x.shape[1], 1)
    y = F.pad(x, (2, 2, 2, 2), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=x.shape[1])
    y = F.conv2d(y, k[:, None, :, None], groups=x.shape[1])
    return y + 0.05 * torch.randn(y.shape, generator=g)
