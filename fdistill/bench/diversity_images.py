"""The Fashion-MNIST half of ``fdistill bench diversity`` (Gandikota & Bau 2025; docs/math.md §2.11).

Every row samples the same balanced labels (``i % num_classes``) batch by batch, batch ``b`` from seed
``seed * SEED_STRIDE + b``: the teacher (a pixel EDMUNet / UNet2DModel folder) with the EDM Heun sampler at each
NFE, each exported student (:class:`fdistill.export.pipeline.OneStepPipeline`) with its own K steps, and the hybrid
(:func:`fdistill.apps.sample.hybrid_sample`: the teacher's first N Heun steps, then the student). With the labels
given, the student's pipeline and the hybrid with N = 0 draw the same ``z`` and re-noising noise: the same images.

Metrics (on the TF-FID Inception pool3 features of :mod:`fdistill.metrics.inception`, looked up at call time so
that tests can substitute a cheap extractor): FID, FID +- s over splits, KID, precision / recall against the
reference (``fdistill eval``'s :func:`fdistill.eval.fid_eval.score_features`), and the intra-class diversity of
:func:`fdistill.metrics.diversity.intra_class_diversity` against the reference's real images of each class.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fdistill.apps.sample import HybridOutput, hybrid_sample
from fdistill.core.sampling import heun_steps_for_nfe
from fdistill.data.fashion_mnist import load_fashion_mnist
from fdistill.eval.fid_eval import flat_row, score_features
from fdistill.eval.references import Reference, reference_stats
from fdistill.eval.student_sources import SEED_STRIDE
from fdistill.export.pipeline import OneStepPipeline
from fdistill.metrics import inception
from fdistill.metrics.diversity import intra_class_diversity
from fdistill.metrics.inception import quantize_uint8
from fdistill.teachers.diffusers import UNetTeacher


@dataclass
class ImageOptions:
    """What every row shares: sample count, batching, device, seed and the metrics' settings."""

    num_samples: int = 10000
    batch_size: int = 64
    device: str = "cpu"
    seed: int = 0
    reference: str = "fashion_mnist:test"
    num_reference: int | None = None
    splits: int = 3
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    k: int = 3
    inception_weights: str | None = None
    use_cache: bool = True


#: ``(m, labels, seed) -> (images in [-1, 1], info)`` of one batch; ``info``: ``teacher_nfe``, ``student_nfe`` per
#: image, and for hybrids ``handover_sigma`` / ``student_start`` (:class:`fdistill.apps.sample.HybridOutput`'s)
BatchSampler = Callable[[int, list[int] | None, int], tuple[Tensor, dict]]


def _info(out: HybridOutput) -> dict:
    return {"teacher_nfe": out.teacher_nfe, "student_nfe": out.student_nfe, "handover_sigma": out.handover_sigma,
            "student_start": out.student_start}  # fmt: skip


def teacher_batches(teacher: UNetTeacher, nfe: int) -> BatchSampler:
    steps = heun_steps_for_nfe(nfe)

    def sample(m: int, labels: list[int] | None, seed: int) -> tuple[Tensor, dict]:
        out = hybrid_sample(None, teacher, m, steps, nfe=nfe, class_labels=labels, seed=seed)
        return out.images, {"teacher_nfe": out.teacher_nfe, "student_nfe": 0}

    return sample


def student_batches(pipe: OneStepPipeline) -> BatchSampler:
    def sample(m: int, labels: list[int] | None, seed: int) -> tuple[Tensor, dict]:
        images = pipe(batch_size=m, class_labels=labels, seed=seed, output_type="pt").images
        return images, {"teacher_nfe": 0, "student_nfe": pipe.num_steps}

    return sample


def hybrid_batches(pipe: OneStepPipeline, teacher: UNetTeacher, steps: int, nfe: int) -> BatchSampler:
    def sample(m: int, labels: list[int] | None, seed: int) -> tuple[Tensor, dict]:
        out = hybrid_sample(pipe, teacher, m, steps, nfe=nfe, class_labels=labels, seed=seed)
        return out.images, _info(out)

    return sample


def balanced_labels(n: int, num_classes: int) -> Tensor | None:
    return torch.arange(n) % num_classes if num_classes else None


def generate(sampler: BatchSampler, labels: Tensor | None, opts: ImageOptions) -> tuple[Tensor, dict, float]:
    """All ``num_samples`` images (uint8, CPU) batch by batch, the sampler's info and the wall seconds it took (after
    one untimed warm-up batch of the first batch's shape: first-call costs are not the sampler's)."""
    n, out, info = opts.num_samples, [], {}
    m = min(opts.batch_size, n)
    sampler(m, None if labels is None else labels[:m].tolist(), opts.seed)[0].cpu()
    t0 = time.perf_counter()
    for b, start in enumerate(range(0, n, opts.batch_size)):
        m = min(opts.batch_size, n - start)
        lab = None if labels is None else labels[start : start + m].tolist()
        images, info = sampler(m, lab, opts.seed * SEED_STRIDE + b)
        out.append(quantize_uint8(images.cpu()))  # .cpu(): the device has finished the batch
    return torch.cat(out), info, time.perf_counter() - t0


def real_labels(reference: str, num_reference: int | None) -> Tensor:
    """The labels of the reference's images, in the order :func:`fdistill.eval.references.reference_stats` reads
    them (the first ``num_reference`` of the split)."""
    name, _, split = reference.partition(":")
    if name != "fashion_mnist":
        raise ValueError(f"--reference {reference!r}: the intra-class statistic needs fashion_mnist:test or :train")
    labels = load_fashion_mnist(split, pad_to=None).labels
    return labels[:num_reference] if num_reference else labels


class ImageScorer:
    """The Inception extractor, the reference statistics and its labels, built once for every row."""

    def __init__(self, opts: ImageOptions, sample_hw: tuple[int, int]) -> None:
        self.opts = opts
        self.extractor = inception.InceptionFeatureExtractor(opts.inception_weights).to(opts.device)
        self.ref: Reference = reference_stats(opts.reference, self.extractor, sample_hw, opts.num_reference,
                                              opts.batch_size, opts.use_cache)  # fmt: skip
        self.real_labels = real_labels(opts.reference, opts.num_reference)

    def score(self, images: Tensor, labels: Tensor | None) -> dict:
        o = self.opts
        feats = self.extractor.extract(images, o.batch_size)
        row = score_features(feats, self.ref, self.extractor.protocol, o.splits, o.kid_subsets, o.kid_subset_size,
                             o.k, o.seed)  # fmt: skip
        out = flat_row(row)
        out.pop("seconds", None)
        if labels is not None:
            intra = intra_class_diversity(feats.numpy(), labels.numpy(), self.ref.stats.features,
                                          self.real_labels.numpy())  # fmt: skip
            out["intra_class"] = intra
        return out


def image_rows(
    teacher_dir: str | Path,
    student_dirs: list[str | Path],
    opts: ImageOptions,
    teacher_nfe: list[int],
    hybrid: list[int],
    hybrid_nfe: int,
) -> list[dict]:
    """Every row of the Fashion-MNIST table: the teacher at each NFE, each student, its hybrids."""
    teacher = UNetTeacher.from_pretrained(teacher_dir).to(opts.device)
    pipes = [(Path(s).name, OneStepPipeline.from_pretrained(s).to(opts.device)) for s in student_dirs]
    labels = balanced_labels(opts.num_samples, teacher.num_classes)
    scorer = ImageScorer(opts, tuple(teacher.sample_shape[-2:]))
    jobs: list[tuple[str, BatchSampler, dict]] = [
        (f"teacher, NFE {nfe}", teacher_batches(teacher, nfe), {}) for nfe in teacher_nfe
    ]
    for name, pipe in pipes:
        jobs.append((f"student {name}, NFE {pipe.num_steps}", student_batches(pipe), {"student": name}))
        for steps in hybrid:
            jobs.append((f"hybrid N={steps} + student {name}", hybrid_batches(pipe, teacher, steps, hybrid_nfe),
                         {"student": name, "hybrid_steps": steps, "hybrid_nfe": hybrid_nfe}))  # fmt: skip
    rows = []
    for model, sampler, extra in jobs:
        images, info, seconds = generate(sampler, labels, opts)
        rows.append({"model": model, "nfe": info["teacher_nfe"] + info["student_nfe"], **info,
                     "num_samples": int(images.shape[0]), "seconds_per_image": seconds / images.shape[0], **extra,
                     **scorer.score(images, labels)})  # fmt: skip
    return rows
