"""The reward interface of Diff-Instruct* (docs/math.md §2.8) and the factory that builds one from ``cfg.reward``.

A reward is a differentiable ``R(x0, cond) -> (B,)``: :mod:`fdistill.rewards.gmm` (the exact GMM component
log-density), :mod:`fdistill.rewards.classifier` (``log p_phi(y | x)``), :mod:`fdistill.rewards.clip` (CLIP score,
human-preference models).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fdistill.rewards.classifier import ClassifierReward
from fdistill.rewards.clip import CLIPReward, PreferenceReward
from fdistill.rewards.gmm import GMMComponentReward
from fdistill.teachers.base import Teacher

RewardFn = Callable[[Tensor, "Tensor | None"], Tensor]


def build_reward(cfg, teacher: Teacher) -> RewardFn | None:
    """Reward from ``cfg.reward``; ``None`` for ``reward.kind=none``."""
    kind = cfg.reward.kind
    if kind == "none":
        return None
    if kind == "gmm_component":
        if cfg.teacher.kind != "gmm":
            raise ValueError("reward.kind=gmm_component needs teacher.kind=gmm")
        return GMMComponentReward(teacher, cfg.reward.component)
    first_param = next(iter(teacher.parameters()), None) if hasattr(teacher, "parameters") else None
    device = first_param.device if first_param is not None else "cpu"
    if kind == "classifier":
        return ClassifierReward.from_pretrained(cfg.reward.path, device)
    if kind in ("clip", "preference"):
        cls = CLIPReward if kind == "clip" else PreferenceReward
        prompts = getattr(teacher, "prompts", None) or getattr(teacher, "class_names", None) or []
        return cls.from_pretrained(
            cfg.reward.path,
            prompts,
            getattr(teacher, "decode", None),
            tokenizer_path=getattr(cfg.reward, "tokenizer_path", None),
            scale=getattr(cfg.reward, "scale", None),
            dtype=getattr(torch, getattr(cfg.reward, "dtype", "float32")),
            device=device,
        )
    raise ValueError(f"unknown reward.kind={kind!r}; use none, gmm_component, classifier, clip or preference")
