"""The caption-match model: CLIP (Radford et al. 2021) with a locked pretrained text tower (LiT, Zhai et al. 2022).

A ``transformers.VisionTextDualEncoderModel``: a small ViT (``CLIPVisionModel``) trained from scratch, the frozen
all-MiniLM-L6-v2 ``BertModel`` as text tower, CLIP's symmetric InfoNCE (:func:`clip_loss`) with every fitted caption
as an image->caption negative, a fixed preconditioner for the bias-free text projection
(:func:`text_preconditioner`), the augmentations (:func:`augment`) and the held-out split (:func:`heldout_mask`).
It is the Diff-Instruct* reward ``R(image, prompt)`` (``docs/math.md §2.8``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from fdistill.rewards import clip_preprocess, text_tower_fingerprint

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
    from transformers import (  # lazy: transformers' model classes are heavy to import
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


def pixels(images: Tensor, size: int) -> Tensor:
    """``[-1, 1]`` images as the reward preprocesses them (mean = std = 0.5: the same ``[-1, 1]`` values out)."""
    return clip_preprocess(images, size, (size, size), MEAN, STD)


def image_embed(model, images: Tensor) -> Tensor:
    """The projected (not normalised) image embeddings, as ``get_image_features`` computes them."""
    out = model.vision_model(pixel_values=pixels(images, model.config.vision_config.image_size), return_dict=True)
    return model.visual_projection(out.pooler_output)
