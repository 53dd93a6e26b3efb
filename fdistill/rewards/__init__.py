"""Differentiable rewards ``R(x0, cond) -> (B,)`` for Diff-Instruct* (docs/math.md §2.8), one module per kind.

- :mod:`~fdistill.rewards.gmm`: :class:`GMMComponentReward`, the exact log-density of one component of the
  Gaussian-mixture teacher.
- :mod:`~fdistill.rewards.classifier`: :class:`ClassifierReward`, ``log p_phi(y | x)`` under an image classifier.
- :mod:`~fdistill.rewards.clip`: :class:`CLIPReward` (CLIP score) and :class:`PreferenceReward` (PickScore /
  HPS-style preference models), with the differentiable CLIP preprocessing :func:`clip_preprocess`.
- :mod:`~fdistill.rewards.text_tower`: a frozen text tower shipped apart from a model folder
  (:data:`TEXT_TOWER_FILE`, :func:`load_text_tower`, :func:`text_tower_fingerprint`).
- :mod:`~fdistill.rewards.base`: the :data:`RewardFn` interface and :func:`build_reward` (from ``cfg.reward``).
"""

from fdistill.rewards.base import RewardFn, build_reward
from fdistill.rewards.classifier import ClassifierReward
from fdistill.rewards.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPReward, PreferenceReward, clip_preprocess
from fdistill.rewards.gmm import GMMComponentReward
from fdistill.rewards.text_tower import MINILM_PACKAGE_NAME, TEXT_TOWER_FILE, load_text_tower, text_tower_fingerprint

__all__ = [
    "MINILM_PACKAGE_NAME",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "TEXT_TOWER_FILE",
    "CLIPReward",
    "ClassifierReward",
    "GMMComponentReward",
    "PreferenceReward",
    "RewardFn",
    "build_reward",
    "clip_preprocess",
    "load_text_tower",
    "text_tower_fingerprint",
]
