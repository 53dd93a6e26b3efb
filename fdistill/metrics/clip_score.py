"""CLIP score (Hessel et al. 2021, Eq. 1 with w = 100: ``max(100 * mean cos(E_I, E_C), 0)``) through torchmetrics.

As torchmetrics does, the cosine similarities are averaged first and the mean is clipped at 0 (the paper clips
each pair).

torchmetrics' ``CLIPScore`` accepts either one of a few hub ids or a callable returning ``(model,
processor)``; we always pass the callable, so that a local directory, any hub id, or a model built in
memory work alike. Two transformers-5 incompatibilities are absorbed here:

- ``CLIPModel.get_image_features`` / ``get_text_features`` return a ``BaseModelOutputWithPooling`` whose
  ``pooler_output`` holds the projected embedding (transformers 4 returned the tensor itself), which
  torchmetrics 1.9 then tries to ``.norm()``; :class:`TensorFeaturesCLIP` returns tensors under either;
- ``CLIPImageProcessor`` needs torchvision in transformers 5 and falls back to the PIL processor with a
  warning; we build the PIL one directly when torchvision is absent (torchvision is broken on the CPU
  machines this project is developed on, see shared/RESOURCES.md).

No CLIP weights ship offline: pass a local directory saved with ``save_pretrained`` or a hub id
(downloaded on machines with internet); :class:`CLIPWeightsNotFound` explains what is accepted otherwise.
Tests build a tiny random CLIP from a ``CLIPConfig`` with a tokenizer whose vocabulary is written on the
spot (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from fdistill.metrics.inception import quantize_uint8

if TYPE_CHECKING:
    from torchmetrics.multimodal.clip_score import CLIPScore


class CLIPWeightsNotFound(FileNotFoundError):
    """No CLIP weights at the given path / hub id (or offline without them in the cache)."""


def as_embedding(out, kind: str) -> Tensor:
    """Tensor from whatever ``get_*_features`` returned (transformers 4: tensor; 5: output object / tuple)."""
    if isinstance(out, Tensor):
        return out
    for attr in (f"{kind}_embeds", "pooler_output"):
        value = getattr(out, attr, None)
        if isinstance(value, Tensor):
            return value
    if isinstance(out, tuple | list) and len(out) > 1 and isinstance(out[1], Tensor):
        return out[1]  # return_dict=False: (last_hidden_state, pooler_output, ...)
    raise TypeError(f"cannot find the {kind} embedding in a {type(out).__name__} returned by get_{kind}_features")


class TensorFeaturesCLIP(nn.Module):
    """A CLIP model whose ``get_image_features`` / ``get_text_features`` always return embedding tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    def get_image_features(self, *args, **kwargs) -> Tensor:
        return as_embedding(self.model.get_image_features(*args, **kwargs), "image")

    def get_text_features(self, *args, **kwargs) -> Tensor:
        return as_embedding(self.model.get_text_features(*args, **kwargs), "text")

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


def _image_processor_cls():
    import transformers

    if importlib.util.find_spec("torchvision") is None and hasattr(transformers, "CLIPImageProcessorPil"):
        return transformers.CLIPImageProcessorPil
    return transformers.CLIPImageProcessor


def load_clip(name_or_path: str | Path, device: str | torch.device = "cpu") -> tuple[TensorFeaturesCLIP, object]:
    """``(model, processor)`` from a local ``save_pretrained`` directory or a hub id, model in eval mode."""
    from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

    spec = str(name_or_path)
    local = Path(spec).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise CLIPWeightsNotFound(
            f"{local} exists but holds no config.json: not a CLIP model saved with save_pretrained"
        )
    try:
        model = CLIPModel.from_pretrained(str(local) if local.exists() else spec)
        try:
            processor = CLIPProcessor.from_pretrained(str(local) if local.exists() else spec)
        except (OSError, ValueError, ImportError):
            src = str(local) if local.exists() else spec
            processor = CLIPProcessor(image_processor=_image_processor_cls().from_pretrained(src),
                                      tokenizer=CLIPTokenizer.from_pretrained(src))  # fmt: skip
    except OSError as e:
        raise CLIPWeightsNotFound(
            f"no CLIP weights for {spec!r}: give a local directory saved with CLIPModel/CLIPProcessor.save_pretrained "
            "or a hub id such as openai/clip-vit-base-patch16 (needs internet or the hub cache; HF_HUB_OFFLINE=1 "
            f"blocks downloads). No CLIP weights ship offline with fdistill. ({e.__class__.__name__}: {e})"
        ) from e
    return TensorFeaturesCLIP(model).to(device).eval().requires_grad_(False), processor


def make_clip_score(model: str | Path | tuple[nn.Module, object], device: str | torch.device = "cpu", **kwargs):
    """A torchmetrics ``CLIPScore`` on ``model`` (path / hub id, or an in-memory ``(model, processor)`` pair)."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    if isinstance(model, tuple):
        pair = (model[0] if isinstance(model[0], TensorFeaturesCLIP) else TensorFeaturesCLIP(model[0]), model[1])
        pair[0].eval().requires_grad_(False)
    else:
        pair = load_clip(model, device)
    return CLIPScore(model_name_or_path=lambda: pair, **kwargs).to(device)


def _to_uint8(images: Tensor) -> Tensor:
    if images.dtype == torch.uint8:
        return images
    return quantize_uint8(images, (-1.0, 1.0))


@torch.no_grad()
def clip_score(
    images: Tensor,
    captions: Sequence[str],
    model: str | Path | tuple[nn.Module, object],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> float:
    """Mean CLIP score of images (uint8, or float in [-1, 1]; (N, 1|3, H, W)) against their captions."""
    if len(captions) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
    sums = CLIPScoreSums(make_clip_score(model, device))
    for start in range(0, images.shape[0], batch_size):
        sums.update(images[start : start + batch_size], captions[start : start + batch_size])
    return sums.score()


class CLIPScoreSums:
    """The CLIP score of a stream of image batches, of all images and of groups of them, one CLIP pass per image.

    Each :meth:`update` adds a batch's per-group sums of ``100 cos(E_I, E_C)`` and counts, read from ``metric``'s
    own states (torchmetrics' ``CLIPScore``: ``score``, ``n_samples``, reset per group); :meth:`score` is then
    ``max(sum / count, 0)`` over the groups asked for, exactly what ``metric.compute()`` gives on those images.
    """

    def __init__(self, metric: CLIPScore, groups: int = 1) -> None:
        self.metric = metric
        self.sums = [0.0] * groups
        self.counts = [0] * groups

    @torch.no_grad()
    def update(self, images: Tensor, captions: Sequence[str], groups: Tensor | None = None) -> None:
        """Add images (uint8, or float in [-1, 1]; (B, 1|3, H, W)) and their captions; ``groups[i]`` is image
        ``i``'s group (default: all in group 0)."""
        if len(captions) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
        images = _to_uint8(images)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        groups = torch.zeros(images.shape[0], dtype=torch.long) if groups is None else groups
        for g in groups.unique().tolist():
            idx = (groups == g).nonzero().flatten()
            self.metric.reset()
            self.metric.update(list(images[idx].to(self.metric.device)), [captions[i] for i in idx.tolist()])
            self.sums[g] += float(self.metric.score)
            self.counts[g] += int(self.metric.n_samples)

    def score(self, groups: Sequence[int] | None = None) -> float:
        """The CLIP score of the images of ``groups`` (default: every image added)."""
        groups = range(len(self.sums)) if groups is None else groups
        n = sum(self.counts[g] for g in groups)
        if n == 0:
            raise ValueError("no images in the groups asked for")
        return max(sum(self.sums[g] for g in groups) / n, 0.0)
