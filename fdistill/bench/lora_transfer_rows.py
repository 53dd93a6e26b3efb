"""The rows of ``fdistill bench lora-transfer``: generators with and without the LoRA, and their zero-shot scores.

Teacher rows are the latent teacher's EDM Heun sampler (Karras et al. 2022, Alg. 1) with CFG (docs/math.md §1.2,
:func:`fdistill.eval.t2i.generators.teacher_generators`), its UNet a copy with the LoRA file loaded
(:func:`fdistill.bench.lora_transfer_train.with_lora`); student rows are the exported student's stock
``StableDiffusionPipeline`` one-step call (``fdistill_export.json``), the same LoRA file loaded with the pipeline's
own ``load_lora_weights``. Every row draws batch ``b`` from the noise of ``seed + b``
(:func:`fdistill.eval.t2i.generators.generate`), so the four rows are paired image by image.

Scoring is zero-shot classification with the caption-match model (a CLIP, Radford et al. 2021): each image goes to
the category name whose text embedding is most cosine-similar; ``share`` = the fraction sent to the LoRA's category
(binomial s.e. ``sqrt(p (1 - p) / n)``), ``similarity`` = the mean cosine to that category's name. Shifts (LoRA row
minus base row) and the student-minus-teacher difference of shifts use the paired per-image differences
(s.e. = their std / sqrt(n)).
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from fdistill.bench.lora_transfer_train import ADAPTER, WEIGHTS, with_lora
from fdistill.eval.t2i.base import T2IGenerator
from fdistill.eval.t2i.generators import pipeline_generator, teacher_generators
from fdistill.eval.t2i.metrics import reward_image_features, reward_text_features
from fdistill.export.loading import load_sd_pipeline, sd_one_step_call
from fdistill.rewards import CLIPReward
from fdistill.teachers.latent import LatentTeacher

__all__ = [
    "ZeroShot",
    "paired_shift",
    "score_row",
    "shift_difference",
    "student_generator",
    "teacher_generator",
]


@contextmanager
def _quiet_diffusers():
    """Silence diffusers' note that the LoRA file holds no text-encoder keys (it holds the UNet's only)."""
    logger = logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def teacher_generator(
    teacher: LatentTeacher, lora: str | Path | None, nfe: int, cfg: float, device: torch.device
) -> T2IGenerator:
    """The teacher (its UNet with the LoRA folder's adapter, or plain) at ``nfe`` EDM Heun evaluations, CFG ``cfg``."""
    if lora is not None:
        teacher = LatentTeacher(
            with_lora(teacher.unet, lora),
            teacher.vae,
            teacher.text_encoder,
            teacher.tokenizer,
            teacher.scheduler_config,
            teacher.prompts,
            source=teacher.source,
        ).to(device)
    (gen,) = teacher_generators(teacher, [nfe], [cfg], device)
    gen.name = f"teacher w={cfg:g}" + (" + LoRA" if lora is not None else "")
    return gen


def student_generator(path: str | Path, lora: str | Path | None, device: torch.device) -> T2IGenerator:
    """The exported one-step student's recorded stock-pipeline call, its UNet with the LoRA folder's adapter
    (``StableDiffusionPipeline.load_lora_weights``) or plain."""
    path = Path(path)
    call = sd_one_step_call(path)
    pipe = load_sd_pipeline(path, device)
    if lora is not None:
        with _quiet_diffusers():
            pipe.load_lora_weights(str(lora), adapter_name=ADAPTER, weight_name=WEIGHTS)
    name = "student + LoRA" if lora is not None else "student"
    return pipeline_generator(pipe, call, name, device, {"path": str(path), "call": call})


class ZeroShot:
    """Zero-shot category classification with a caption-match (CLIP-like) model; ``labels[target]`` is the LoRA's."""

    def __init__(self, reward: CLIPReward, labels: list[str], target: int, batch_size: int = 256) -> None:
        self.reward, self.labels, self.target, self.batch_size = reward, list(labels), int(target), batch_size
        self.text = reward_text_features(reward, self.labels)  # (L, d), unit norm

    def classify(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Per image: whether its best-matching label is the target (bool), and its cosine to the target label."""
        sims = reward_image_features(self.reward, images, self.batch_size) @ self.text.T
        return sims.argmax(1) == self.target, sims[:, self.target]


def score_row(name: str, hits: Tensor, sims: Tensor, seconds: float | None = None) -> dict:
    """One table row: share of target hits +- its binomial s.e., mean cosine +- its s.e., n; per-image values
    kept (``hits``, ``sims``) for the paired shifts."""
    n = int(hits.numel())
    p = float(hits.double().mean())
    s = sims.double()
    return {
        "name": name,
        "n": n,
        "hits": int(hits.sum()),
        "share": p,
        "share_se": math.sqrt(p * (1 - p) / n),
        "similarity": float(s.mean()),
        "similarity_se": float(s.std() / math.sqrt(n)) if n > 1 else 0.0,
        "ms_per_image": None if seconds is None else 1000.0 * seconds / n,
        "per_image": {"hits": hits.int().tolist(), "sims": s.tolist()},
    }


def _paired(d: Tensor) -> tuple[float, float]:
    d = d.double()
    n = d.numel()
    return float(d.mean()), float(d.std() / math.sqrt(n)) if n > 1 else 0.0


def _diffs(base: dict, lora: dict) -> tuple[Tensor, Tensor]:
    """Per-image ``lora - base`` of the hit indicator and of the cosine (the rows share prompts and noise)."""
    b, lo = base["per_image"], lora["per_image"]
    if len(b["hits"]) != len(lo["hits"]):
        raise ValueError(f"rows {base['name']!r} and {lora['name']!r} have different numbers of images")
    dh = torch.tensor(lo["hits"], dtype=torch.float64) - torch.tensor(b["hits"], dtype=torch.float64)
    ds = torch.tensor(lo["sims"], dtype=torch.float64) - torch.tensor(b["sims"], dtype=torch.float64)
    return dh, ds


def _summary(dh: Tensor, ds: Tensor) -> dict:
    (sh, sh_se), (si, si_se) = _paired(dh), _paired(ds)
    return {"share": sh, "share_se": sh_se, "similarity": si, "similarity_se": si_se}


def paired_shift(base: dict, lora: dict) -> dict:
    """``lora - base`` of the share and the similarity, with the s.e. of the paired per-image differences."""
    return _summary(*_diffs(base, lora))


def shift_difference(teacher: dict, teacher_lora: dict, student: dict, student_lora: dict) -> dict:
    """Student shift minus teacher shift (share and similarity), paired over the same prompts and seeds."""
    (th, ts), (sh, ss) = _diffs(teacher, teacher_lora), _diffs(student, student_lora)
    return _summary(sh - th, ss - ts)
