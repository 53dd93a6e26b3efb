"""FID, KID and precision/recall of a sample source against a reference (``fdistill eval``'s computation).

FID (Heusel et al. 2017), KID (Binkowski et al. 2018, cubic polynomial kernel, mean and std over subsets) and
improved precision/recall (Kynkaanniemi et al. 2019, k=3) on the pool3 features of the TF-FID Inception-v3
(:mod:`fdistill.metrics.fid`, :mod:`fdistill.metrics.inception`); with ``teacher_nfe`` the source's teacher is
evaluated at each NFE on the same reference into a teacher-vs-student ``table``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor

from fdistill.eval.references import Reference, reference_stats
from fdistill.eval.source_types import SampleSource, SourceOptions, check_uint8
from fdistill.eval.sources import resolve_source
from fdistill.metrics import inception
from fdistill.metrics.fid import FeatureStats, compare_to_reference

SMALL_SAMPLE = 2048  # below the Inception's feature dimension, FID is biased upwards


def _metrics_row(
    images: Tensor,
    ref: Reference,
    extractor: inception.InceptionFeatureExtractor,
    batch_size: int,
    kid_subsets: int,
    kid_subset_size: int,
    k: int,
    seed: int,
) -> dict:
    t0 = time.perf_counter()
    feats = extractor.extract(images, batch_size, progress=True)
    fake = FeatureStats.from_features(feats, extractor.protocol)
    out = compare_to_reference(fake, ref.stats, kid_subsets, kid_subset_size, k, seed)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _flat(row: dict) -> dict:
    kid = row.get("kid") or {}
    return {"fid": row["fid"], "kid_mean": kid.get("mean"), "kid_std": kid.get("std"),
            "precision": row["precision"], "recall": row["recall"], "seconds": row.get("seconds")}  # fmt: skip


def evaluate(
    source: str | SampleSource,
    reference: str = "fashion_mnist:test",
    num_samples: int = 10000,
    batch_size: int = 64,
    device: str = "cpu",
    seed: int = 0,
    teacher_nfe: Sequence[int] = (),
    num_reference: int | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    k: int = 3,
    inception_weights: str | None = None,
    use_cache: bool = True,
    save_reference_stats: str | None = None,
    channels_last: bool = False,
) -> dict:
    """FID / KID / precision / recall of SOURCE against REF; returns the JSON-ready result."""
    t_start = time.perf_counter()
    src = source if isinstance(source, SampleSource) else resolve_source(source, SourceOptions(device, batch_size))
    n = min(num_samples, src.size) if src.size is not None else num_samples
    if n < 2:
        raise ValueError(f"need at least 2 samples, got {n}")
    if teacher_nfe and src.teacher is None:
        raise ValueError(f"--teacher-nfe needs a source with a teacher; {src.name} has none (folder/npz sources)")
    images = check_uint8(src.generate(n, seed), src.name)
    if images.shape[0] != n:
        raise ValueError(f"{src.name} returned {images.shape[0]} images for n={n}")
    # looked up on the module at call time, so that tests can substitute a cheap feature extractor
    extractor = inception.InceptionFeatureExtractor(inception_weights, channels_last=channels_last).to(device)
    ref = reference_stats(reference, extractor, tuple(images.shape[-2:]), num_reference, batch_size, use_cache)
    if save_reference_stats:
        ref.stats.save(save_reference_stats)
    metric_args = (ref, extractor, batch_size, kid_subsets, kid_subset_size, k, seed)
    row = _metrics_row(images.cpu(), *metric_args)
    result: dict = {
        "fid": row["fid"],
        "kid": row["kid"],
        "precision": row["precision"],
        "recall": row["recall"],
        "protocol": extractor.protocol,
        "num_samples": n,
        "num_reference": int(ref.stats.n),
        "source": src.name,
        "reference": ref.name,
        "reference_cache": ref.cached,
        "inception_weights": extractor.weights_path,
        "channels_last": channels_last,
        "image_shape": list(images.shape[1:]),
        "seed": seed,
        "kid_subsets": kid_subsets,
        "kid_subset_size": min(kid_subset_size, n, int(ref.stats.n)),
        "pr_k": k,
        "source_info": src.info,
        "device": str(device),
        "torch": torch.__version__,
    }
    if n < SMALL_SAMPLE:
        result["note"] = f"{n} samples < 2048 features: FID is biased upwards; compare only at equal sample sizes"
    if teacher_nfe:
        table = [{"model": "student", "nfe": src.info.get("nfe", 1), **_flat(row)}]
        for nfe in teacher_nfe:
            tsrc = src.teacher(int(nfe))
            t_images = check_uint8(tsrc.generate(n, seed), tsrc.name)
            table.append({"model": "teacher", "nfe": int(nfe), **_flat(_metrics_row(t_images.cpu(), *metric_args))})
        result["table"] = table
    result["seconds"] = round(time.perf_counter() - t_start, 2)
    return result


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def format_table(result: dict) -> str:
    """A plain-text summary (and the teacher/student table when present)."""
    kid = result.get("kid") or {}
    lines = [
        f"source     {result['source']}",
        f"reference  {result['reference']}  (n={result['num_reference']})",
        f"samples    {result['num_samples']}  seed {result['seed']}",
        f"protocol   {result['protocol']}",
        "",
        f"{'metric':<12}{'value':>14}",
        f"{'fid':<12}{_fmt(result['fid']):>14}",
        f"{'kid':<12}{_fmt(kid.get('mean'), 5) + ' +- ' + _fmt(kid.get('std'), 2):>14}",
        f"{'precision':<12}{_fmt(result['precision']):>14}",
        f"{'recall':<12}{_fmt(result['recall']):>14}",
    ]
    if result.get("table"):
        cols = ["model", "nfe", "fid", "kid_mean", "kid_std", "precision", "recall", "seconds"]
        lines += ["", "  ".join(f"{c:>10}" for c in cols)]
        lines += ["  ".join(f"{_fmt(r.get(c)):>10}" for c in cols) for r in result["table"]]
    if result.get("note"):
        lines += ["", f"note: {result['note']}"]
    return "\n".join(lines)
