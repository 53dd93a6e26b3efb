"""``fdistill eval STUDENT --against-teacher TEACHER --teacher-nfe 9,17,35``: is the student as good as the teacher?

Both models draw the same number N of samples (same seed); each is scored against the same reference as FID of
all N and as FID +- s, the mean and sample std of the FIDs of S disjoint splits of N/S samples (Heusel et al.
2017), with KID (Binkowski et al. 2018) and precision/recall (Kynkaanniemi et al. 2019) of all N beside it. The
teacher (EDM Heun sampler, Karras et al. 2022, Alg. 1, at each NFE) is read from its cache
(:mod:`fdistill.eval.teacher_cache`) or sampled and cached. The verdict for each teacher row: the difference of
the mean split FIDs is larger than the noise when ``|diff| > 2 sqrt(s_student^2 + s_teacher^2)``.
``fdistill eval TEACHER --teacher-nfe 35 --cache-stats`` fills the cache without a student.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fdistill import __version__
from fdistill.eval.fid_eval import beyond_noise, fid_pm, flat_row, fmt_value, score_features, split_header
from fdistill.eval.model_folders import is_pixel_teacher
from fdistill.eval.references import Reference, reference_stats
from fdistill.eval.source_types import SampleSource, SourceOptions, check_uint8
from fdistill.eval.sources import resolve_source
from fdistill.eval.student_sources import teacher_sampler
from fdistill.eval.teacher_cache import (
    LABELS,
    SAMPLER,
    cache_path,
    load_cache,
    save_cache,
    sha256_of,
    teacher_weight_files,
    weights_identity,
)
from fdistill.metrics import inception
from fdistill.teachers.diffusers import UNetTeacher

RULE = (
    "rule: a difference is larger than the noise when |diff| > 2 * sqrt(s_student^2 + s_teacher^2), "
    "diff = student - teacher mean split FID, s = sample std of the split FIDs"
)


@dataclass
class CompareOptions:
    """The protocol of a comparison (``fdistill eval``'s flags of the same names)."""

    reference: str = "fashion_mnist:test"
    num_samples: int = 10000
    splits: int = 3
    batch_size: int = 64
    device: str = "cpu"
    seed: int = 0
    num_reference: int | None = None
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    k: int = 3
    inception_weights: str | None = None
    use_cache: bool = True  # the reference statistics cache
    channels_last: bool = False
    recompute: bool = False  # rebuild the teacher caches


@dataclass
class _Context:
    opts: CompareOptions
    extractor: inception.InceptionFeatureExtractor
    ref: Reference

    def score(self, images: Tensor) -> tuple[dict, Tensor]:
        o = self.opts
        feats = self.extractor.extract(images.cpu(), o.batch_size, progress=True)
        row = score_features(feats, self.ref, self.extractor.protocol, o.splits, o.kid_subsets, o.kid_subset_size,
                             o.k, o.seed)  # fmt: skip
        return row, feats


def teacher_protocol(teacher_sha256: str, nfe: int, ctx: _Context) -> dict:
    """What a teacher cache must have been made under to be reused (``teacher_cache.PROTOCOL_FIELDS``)."""
    o = ctx.opts
    return {
        "teacher_sha256": teacher_sha256, "nfe": int(nfe), "sampler": SAMPLER, "guidance": 1.0, "labels": LABELS,
        "num_samples": o.num_samples, "splits": o.splits, "seed": o.seed, "reference": ctx.ref.name,
        "num_reference": int(ctx.ref.stats.n), "inception_protocol": ctx.extractor.protocol,
        "inception_weights": weights_identity(ctx.extractor.weights_path), "kid_subsets": o.kid_subsets,
        "kid_subset_size": o.kid_subset_size, "pr_k": o.k, "fdistill_version": __version__,
    }  # fmt: skip


def _teacher_row(teacher: str, sample_at, sha: str, nfe: int, ctx: _Context) -> dict:
    """One teacher row: from its cache, or sampled, scored and cached (``--recompute`` always samples)."""
    o, t0 = ctx.opts, time.perf_counter()
    protocol, path = teacher_protocol(sha, nfe, ctx), cache_path(teacher, nfe, o.num_samples, o.seed)
    if path.is_file() and not o.recompute:
        row, origin = load_cache(path, protocol), "cache"
    else:
        images = check_uint8(sample_at(nfe).generate(o.num_samples, o.seed), f"teacher@{nfe}")
        row, feats = ctx.score(images)
        size = row["fid_split"]["size"]
        means = np.stack([feats[i * size : (i + 1) * size].double().mean(0).numpy() for i in range(o.splits)])
        info = {"teacher": str(teacher), "device": str(o.device), "batch_size": o.batch_size}
        save_cache(path, protocol, row, means, {**info, "torch": torch.__version__})
        origin = "computed"
    seconds = round(time.perf_counter() - t0, 2)
    return {"model": "teacher", "nfe": int(nfe), **flat_row({**row, "seconds": seconds}),
            "fid_splits": row["fid_split"]["values"], "from": origin, "cache": str(path)}  # fmt: skip


def _student_row(student: str | SampleSource, ctx: _Context, hw: tuple[int, int]) -> tuple[dict, str]:
    o, t0 = ctx.opts, time.perf_counter()
    options = SourceOptions(o.device, o.batch_size)
    src = student if isinstance(student, SampleSource) else resolve_source(student, options)
    if src.size is not None and src.size < o.num_samples:
        raise ValueError(f"{src.name} holds {src.size} images; the comparison needs --num-samples {o.num_samples}")
    images = check_uint8(src.generate(o.num_samples, o.seed), src.name)
    if tuple(images.shape[-2:]) != hw:
        raise ValueError(f"student images are {tuple(images.shape[-2:])}, the teacher's {hw}: not comparable")
    row, _ = ctx.score(images)
    seconds = round(time.perf_counter() - t0, 2)
    return {"model": "student", "nfe": src.info.get("nfe", "-"), **flat_row({**row, "seconds": seconds}),
            "fid_splits": row["fid_split"]["values"], "from": "sampled"}, src.name  # fmt: skip


def verdict(student: dict, teacher: dict) -> dict:
    """Whether the student-minus-teacher mean split FID exceeds ``2 sqrt(s_student^2 + s_teacher^2)``."""
    diff, noise, beyond = beyond_noise(*({"mean": r["fid_split_mean"], "std": r["fid_split_std"]}
                                         for r in (student, teacher)))  # fmt: skip
    plain = (f"larger than the noise: the student is {'worse' if diff > 0 else 'better'}" if beyond
             else "within the noise: no detectable difference")  # fmt: skip
    text = f"teacher NFE {teacher['nfe']}: diff {diff:+.2f}, noise {noise:.2f}, {plain}"
    return {"nfe": teacher["nfe"], "diff": diff, "noise": noise, "beyond_noise": beyond, "text": text}


def compare_with_teacher(
    student: str | SampleSource | None, teacher: str, teacher_nfe: Sequence[int], options: CompareOptions
) -> dict:
    """Teacher rows at each NFE (cached), the student's row (if any) and the verdicts; the JSON-ready result."""
    o, t_start = options, time.perf_counter()
    if not teacher_nfe:
        raise ValueError("--against-teacher / --cache-stats need --teacher-nfe, e.g. --teacher-nfe 9,17,35")
    if o.splits < 2 or o.num_samples // o.splits < 2:
        raise ValueError(f"--splits {o.splits} of --num-samples {o.num_samples}: need >= 2 splits of >= 2 samples")
    if not is_pixel_teacher(Path(teacher)):
        raise ValueError(f"{teacher} is not a pixel teacher folder (EDMUNet / UNet2DModel config.json)")
    sha = sha256_of(teacher_weight_files(teacher))
    net = UNetTeacher.from_pretrained(teacher).to(o.device)
    sample_at = teacher_sampler(net, net.num_classes, SourceOptions(o.device, o.batch_size))
    hw = tuple(net.sample_shape[-2:])
    # looked up on the module at call time, so that tests can substitute a cheap feature extractor
    extractor = inception.InceptionFeatureExtractor(o.inception_weights, channels_last=o.channels_last).to(o.device)
    ref = reference_stats(o.reference, extractor, hw, o.num_reference, o.batch_size, o.use_cache)
    ctx = _Context(o, extractor, ref)
    table = [_teacher_row(teacher, sample_at, sha, int(nfe), ctx) for nfe in teacher_nfe]
    name = None
    if student is not None:
        row, name = _student_row(student, ctx, hw)
        table.append(row)
    verdicts = [verdict(table[-1], t) for t in table[:-1]] if student is not None else []
    return {
        "table": table, "verdicts": verdicts, "rule": RULE, "student": name, "teacher": str(teacher),
        "teacher_sha256": sha, "protocol": extractor.protocol, "inception_weights": extractor.weights_path,
        "reference": ref.name, "num_reference": int(ref.stats.n), "num_samples": o.num_samples, "splits": o.splits,
        "split_size": o.num_samples // o.splits, "seed": o.seed, "kid_subsets": o.kid_subsets, "pr_k": o.k,
        "device": str(o.device), "seconds": round(time.perf_counter() - t_start, 2),
    }  # fmt: skip


def format_comparison(result: dict) -> str:
    """The one table (a row per teacher NFE, then the student) and, last, the plain verdict line."""
    n = result["num_samples"]
    lines = [
        f"teacher    {result['teacher']}  (weights sha256 {result['teacher_sha256'][:12]})",
        f"student    {result['student'] or '-'}",
        f"reference  {result['reference']}  (n={result['num_reference']})",
        f"samples    {n} per model  seed {result['seed']}",
        f"protocol   {result['protocol']}",
        "",
        f"{split_header(result['splits'], result['split_size'])}; FID(all): all {n} samples; KID, precision, "
        f"recall: all {n} samples",
    ]
    cols = [("model", 8), ("NFE", 4), ("FID +- s", 16), ("FID(all)", 9), ("KID", 9), ("precision", 9),
            ("recall", 7), ("from", 9)]  # fmt: skip
    lines.append("  ".join(f"{c:>{w}}" for c, w in cols))
    for r in result["table"]:
        metrics = [fmt_value(r[c], d) for c, d in (("fid", 2), ("kid_mean", 4), ("precision", 3), ("recall", 3))]
        cells = [r["model"], r["nfe"], fid_pm(r["fid_split_mean"], r["fid_split_std"]), *metrics, r["from"]]
        lines.append("  ".join(f"{c!s:>{w}}" for c, (_, w) in zip(cells, cols, strict=True)))
    computed = sorted({r["cache"] for r in result["table"] if r.get("from") == "computed"})
    if computed:
        lines += ["", *[f"cached     {c}" for c in computed]]
    lines.append("")
    if result["verdicts"]:
        lines += [RULE, "verdict: " + "; ".join(v["text"] for v in result["verdicts"])]
    else:
        lines.append("verdict: no student given, teacher rows only (cached for --against-teacher)")
    return "\n".join(lines)
