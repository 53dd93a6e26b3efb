"""CLIP-like rewards ``R(x0, c) = scale * cos(E_img(x0), E_txt(c))`` (Diff-Instruct*, docs/math.md §2.8).

- :class:`CLIPReward`: CLIP score (Radford et al. 2021; Hessel et al. 2021, "CLIPScore", ``w = 100``) of the
  decoded image against its prompt, without CLIPScore's ``max(., 0)`` (which would zero the gradient of badly
  aligned samples).
- :class:`PreferenceReward`: a CLIP-like human-preference model: PickScore (Kirstain et al. 2023,
  ``R = logit_scale.exp() * cos``, the default) or HPS-style models converted to a transformers CLIP model
  (Wu et al. 2023, ``R = cos``: set ``reward.scale=1``); it may take its tokenizer and preprocessing from
  another folder (``reward.tokenizer_path``; PickScore uses the LAION CLIP-H processor).

They receive latents (or images) and the same prompt ids as the teacher: latents go through the teacher's VAE
decoder (:meth:`fdistill.teachers.latent.LatentTeacher.decode`), the ids are looked up in the teacher's prompt
table (id ``len(prompts)`` or ``cond=None`` = the empty prompt). The image preprocessing of ``CLIPImageProcessor``
(resize the short side with bicubic interpolation, centre crop, normalise) is done in torch so the gradient reaches
the generator; no torchvision. Weights come from a local folder or a hub id (none ship offline: tests build tiny
random CLIP models); a frozen text tower shipped apart is put back by :mod:`fdistill.rewards.text_tower`.
transformers 5 returns an output object from ``get_image_features``/``get_text_features`` (the projected embedding
in ``pooler_output``); 4.x a tensor: both are accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fdistill.metrics.clip_score import as_embedding
from fdistill.rewards.text_tower import TEXT_TOWER_FILE, load_text_tower, quiet_transformers

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(
    images: Tensor, size: int, crop: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    """``CLIPImageProcessor`` in torch, differentiably: images in ``[-1, 1]`` -> ``[0, 1]`` (clamped), short side
    resized to ``size`` (bicubic with PIL's antialiased kernel, clamped like PIL's uint8 output; the long side
    truncated as transformers does), centre crop ``crop = (h, w)``, ``(x - mean) / std``."""
    x = ((images.float() + 1) / 2).clamp(0, 1)
    h, w = x.shape[-2:]
    new = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)  # transformers' truncation
    new = (max(crop[0], new[0]), max(crop[1], new[1]))
    if new != (h, w):
        x = F.interpolate(x, size=new, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)  # as PIL
    top, left = (new[0] - crop[0]) // 2, (new[1] - crop[1]) // 2
    x = x[..., top : top + crop[0], left : left + crop[1]]
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    sd = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / sd


def _read_preprocessor_config(*sources: str | None) -> dict:
    """``preprocessor_config.json`` from the first source (folder or hub id) that has one; ``{}`` if none."""
    for src in sources:
        if not src:
            continue
        local = Path(src).expanduser()
        if local.is_dir():
            f = local / "preprocessor_config.json"
            if f.is_file():
                return json.loads(f.read_text())
            continue
        try:
            from huggingface_hub import hf_hub_download

            return json.loads(Path(hf_hub_download(src, "preprocessor_config.json")).read_text())
        except Exception:  # offline, no such file: fall back to the next source / CLIP defaults
            continue
    return {}


class CLIPReward(nn.Module):
    """``R(x0, cond) = scale * cos(E_img(preprocess(decode(x0))), E_txt(prompt(cond)))`` with a frozen CLIP-like
    model (any transformers model with ``get_image_features`` / ``get_text_features``).

    Args:
        model: the frozen model; tokenizer: its tokenizer.
        prompts: the teacher's prompt table (``cond`` indexes it; ``len(prompts)`` / ``None`` = ``""``).
        decode: latents -> images in ``[-1, 1]`` (identity for pixel-space teachers).
        scale: multiplies the cosine; ``None`` = :attr:`default_scale`.
        image_size, crop_size, mean, std: preprocessing (defaults: the model's image size, OpenAI CLIP stats).
    """

    default_scale: float | None = 100.0  # CLIPScore's w

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        prompts: Sequence[str] = (),
        decode: Callable[[Tensor], Tensor] | None = None,
        scale: float | None = None,
        image_size: int | None = None,
        crop_size: tuple[int, int] | None = None,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.decode = decode
        size = image_size or int(model.config.vision_config.image_size)
        self.image_size, self.crop_size = size, tuple(crop_size or (size, size))
        self.mean, self.std = tuple(mean), tuple(std)
        if scale is None:
            scale = self.default_scale if self.default_scale is not None else float(model.logit_scale.exp())
        self.scale = float(scale)
        self._text_cache: dict[str, Tensor] = {}

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        prompts: Sequence[str] = (),
        decode: Callable[[Tensor], Tensor] | None = None,
        tokenizer_path: str | None = None,
        scale: float | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> CLIPReward:
        """Model from ``path`` (folder or hub id), tokenizer and ``preprocessor_config.json`` from
        ``tokenizer_path`` (else ``path``)."""
        from transformers import AutoModel, AutoTokenizer

        kind = "preference" if cls is PreferenceReward else "clip"
        if not path:
            raise FileNotFoundError(f"reward.kind={kind} needs reward.path: a CLIP-like model folder or hub id")
        local = Path(path).expanduser()
        if not local.exists() and (path.startswith((".", "/", "~")) or path.count("/") != 1):
            raise FileNotFoundError(f"reward.path={path!r} does not exist (a local model folder or a hub id)")
        tok_src = tokenizer_path or path
        try:
            external_text = local.is_dir() and (local / TEXT_TOWER_FILE).is_file()
            with quiet_transformers(external_text):  # the text tower's weights are missing from the file, on purpose
                model = AutoModel.from_pretrained(str(local) if local.exists() else path)
            model = load_text_tower(model, local) if external_text else model
            tokenizer = AutoTokenizer.from_pretrained(tok_src)
        except OSError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FileNotFoundError(f"reward.path={path!r}: cannot load the {kind} reward model ({first})") from None
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ValueError(
                f"reward.path={path!r} holds a {type(model).__name__}, not a CLIP-like model "
                "(needs get_image_features and get_text_features)"
            )
        pp = _read_preprocessor_config(tokenizer_path, path)
        size = pp.get("size", {})
        short = size.get("shortest_edge") if isinstance(size, dict) else size
        crop = pp.get("crop_size")
        crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else ((crop, crop) if crop else None)
        return cls(
            model.to(device=device, dtype=dtype),
            tokenizer,
            prompts,
            decode,
            scale,
            image_size=short,
            crop_size=crop,
            mean=pp.get("image_mean", OPENAI_CLIP_MEAN),
            std=pp.get("image_std", OPENAI_CLIP_STD),
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def texts(self, cond: Tensor | None, n: int) -> list[str]:
        if cond is None:
            return [""] * n
        out = []
        for i in cond.reshape(-1).tolist():
            if not 0 <= i <= len(self.prompts):
                raise IndexError(f"prompt id {i} out of range 0..{len(self.prompts)} ({len(self.prompts)} = empty)")
            out.append("" if i == len(self.prompts) else self.prompts[i])
        return out

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> Tensor:
        """Unit-norm text embeddings (cached per prompt; no gradient needed)."""
        missing = sorted({t for t in texts if t not in self._text_cache})
        if missing:
            tcfg = getattr(self.model.config, "text_config", None)
            max_len = min(self.tokenizer.model_max_length, getattr(tcfg, "max_position_embeddings", 77))
            tok = self.tokenizer(
                missing, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt"
            ).to(self.device)
            out = self.model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask)
            emb = as_embedding(out, "text")
            for t, e in zip(missing, F.normalize(emb.float(), dim=-1), strict=True):
                self._text_cache[t] = e
        return torch.stack([self._text_cache[t] for t in texts])

    def image_features(self, images: Tensor) -> Tensor:
        """Unit-norm image embeddings of images in ``[-1, 1]`` (differentiable)."""
        pixels = clip_preprocess(images, self.image_size, self.crop_size, self.mean, self.std)
        dtype = next(self.model.parameters()).dtype
        return F.normalize(
            as_embedding(self.model.get_image_features(pixel_values=pixels.to(dtype)), "image").float(), dim=-1
        )

    def score_images(self, images: Tensor, texts: Sequence[str]) -> Tensor:
        """``scale * cos`` of images in ``[-1, 1]`` against ``texts`` (also a CLIP-score metric)."""
        return self.scale * (self.image_features(images.to(self.device)) * self.text_features(texts)).sum(-1)

    def forward(self, x0: Tensor, cond: Tensor | None = None) -> Tensor:
        images = self.decode(x0) if self.decode is not None else x0
        return self.score_images(images, self.texts(cond, x0.shape[0])).to(x0.dtype)


class PreferenceReward(CLIPReward):
    """A CLIP-like human-preference model (PickScore, HPS converted to transformers): ``scale`` defaults to the
    model's ``logit_scale.exp()`` (PickScore's score); HPS-style scoring is ``reward.scale=1``."""

    default_scale = None
