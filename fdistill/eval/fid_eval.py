"""FID, KID and precision/recall of a sample source against a reference (``fdistill eval``'s computation).

FID (Heusel et al. 2017), KID (Binkowski et al. 2018, cubic polynomial kernel, mean and std over subsets) and
improved precision/recall (Kynkaanniemi et al. 2019, k=3) on the pool3 features of the TF-FID Inception-v3
(:mod:`fdistill.metrics.fid`, :mod:`fdistill.metrics.inception`); with ``teacher_nfe`` the source's teacher is
evaluated at each NFE on the same reference into a teacher-vs-student ``table``. FID +- s: the N samples are also
scored as ``splits`` disjoint blocks of N // splits (mean and sample std of the block FIDs; FID of all N beside it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from fdistill.eval.references import Reference, reference_stats
from fdistill.eval.source_types import SampleSource, SourceOptions, check_uint8
from fdistill.eval.sources import resolve_source
from fdistill.metrics import inception
from fdistill.metrics.fid import FeatureStats, compare_to_reference

SMALL_SAMPLE = 2048  # below the Inception's feature dimension, FID is biased upwards


def split_fids(features: Tensor, ref: FeatureStats, splits: int, protocol: str) -> list[float]:
    """FID against ``ref`` of each of ``splits`` disjoint consecutive blocks of ``N // splits`` samples."""
    size = features.shape[0] // splits if splits >= 1 else 0
    if size < 2:
        raise ValueError(f"{features.shape[0]} samples cannot make {splits} splits of at least 2")
    blocks = [features[i * size : (i + 1) * size] for i in range(splits)]
    return [compare_to_reference(FeatureStats.from_features(b, protocol, keep_features=False), ref)["fid"]
            for b in blocks]  # fmt: skip


def spread(values: Sequence[float], size: int) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of per-split FIDs of ``size`` samples each."""
    v = np.asarray(values, dtype=np.float64)
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "values": v.tolist(), "splits": int(v.size), "size": int(size)}


def beyond_noise(a: dict, b: dict) -> tuple[float, float, bool]:
    """``(diff, noise, |diff| > noise)`` of two :func:`spread` results: ``diff = mean_a - mean_b``, ``noise = 2
    sqrt(std_a^2 + std_b^2)`` (about a 95% two-sided band for the difference of two split means)."""
    diff = a["mean"] - b["mean"]
    noise = 2 * math.sqrt(a["std"] ** 2 + b["std"] ** 2)
    return diff, noise, abs(diff) > noise


def score_features(
    feats: Tensor,
    ref: Reference,
    protocol: str,
    splits: int,
    kid_subsets: int,
    kid_subset_size: int,
    k: int,
    seed: int,
) -> dict:
    """FID of all N samples, FID +- s over ``splits`` disjoint splits (``None`` when a split would hold fewer
    than 2), and KID / precision / recall of all N, against the reference."""
    fake = FeatureStats.from_features(feats, protocol)
    out = compare_to_reference(fake, ref.stats, kid_subsets, kid_subset_size, k, seed)
    size = feats.shape[0] // splits if splits > 1 else 0
    out["fid_split"] = spread(split_fids(feats, ref.stats, splits, protocol), size) if size >= 2 else None
    return out


def _metrics_row(
    images: Tensor,
    ref: Reference,
    extractor: inception.InceptionFeatureExtractor,
    batch_size: int,
    splits: int,
    kid_subsets: int,
    kid_subset_size: int,
    k: int,
    seed: int,
) -> dict:
    t0 = time.perf_counter()
    feats = extractor.extract(images, batch_size, progress=True)
    out = score_features(feats, ref, extractor.protocol, splits, kid_subsets, kid_subset_size, k, seed)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def flat_row(row: dict) -> dict:
    """A table row's metric columns from a :func:`score_features` row."""
    kid, split = row.get("kid") or {}, row.get("fid_split") or {}
    return {"fid": row["fid"], "fid_split_mean": split.get("mean"), "fid_split_std": split.get("std"),
            "kid_mean": kid.get("mean"), "kid_std": kid.get("std"),
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
    splits: int = 3,
) -> dict:
    """FID (all N, and mean +- sample std over ``splits`` disjoint splits) / KID / precision / recall of SOURCE
    against REF; returns the JSON-ready result."""
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
    metric_args = (ref, extractor, batch_size, splits, kid_subsets, kid_subset_size, k, seed)
    row = _metrics_row(images.cpu(), *metric_args)
    result: dict = {
        "fid": row["fid"],
        "fid_split": row["fid_split"],
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
        "splits": splits,
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
        table = [{"model": "student", "nfe": src.info.get("nfe", 1), **flat_row(row)}]
        for nfe in teacher_nfe:
            tsrc = src.teacher(int(nfe))
            t_images = check_uint8(tsrc.generate(n, seed), tsrc.name)
            table.append({"model": "teacher", "nfe": int(nfe), **flat_row(_metrics_row(t_images.cpu(), *metric_args))})
        result["table"] = table
    result["seconds"] = round(time.perf_counter() - t_start, 2)
    return result


def fmt_value(v, digits: int = 4) -> str:
    """A table cell: ``-`` for None, floats to ``digits`` (significant ones below 1e-3)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def fid_pm(mean: float | None, std: float | None) -> str:
    """``"12.34 +- 0.56"`` (or ``-`` without splits)."""
    return "-" if mean is None else f"{mean:.2f} +- {std:.2f}"


def split_header(splits: int, size: int) -> str:
    """What ``FID +- s`` means, for the line above a table."""
    return f"FID +- s: mean +- sample std (ddof=1) of the FIDs of {splits} disjoint splits of {size} samples each"


def format_table(result: dict) -> str:
    """A plain-text summary (and the teacher/student table when present)."""
    kid, split = result.get("kid") or {}, result.get("fid_split") or {}
    lines = [
        f"source     {result['source']}",
        f"reference  {result['reference']}  (n={result['num_reference']})",
        f"samples    {result['num_samples']}  seed {result['seed']}",
        f"protocol   {result['protocol']}",
        "",
        f"{'metric':<12}{'value':>16}",
        f"{'fid':<12}{fmt_value(result['fid']):>16}",
        f"{'fid +- s':<12}{fid_pm(split.get('mean'), split.get('std')):>16}",
        f"{'kid':<12}{fmt_value(kid.get('mean'), 5) + ' +- ' + fmt_value(kid.get('std'), 2):>16}",
        f"{'precision':<12}{fmt_value(result['precision']):>16}",
        f"{'recall':<12}{fmt_value(result['recall']):>16}",
    ]
    if split:
        lines += ["", f"{split_header(split['splits'], split['size'])}; fid: all {result['num_samples']} samples"]
    if result.get("table"):
        cols = ["model", "nfe", "fid", "fid +- s", "kid_mean", "kid_std", "precision", "recall", "seconds"]
        lines += ["", "  ".join(f"{c:>10}" for c in cols)]
        for r in result["table"]:
            r = {**r, "fid +- s": fid_pm(r.get("fid_split_mean"), r.get("fid_split_std"))}
            lines.append("  ".join(f"{fmt_value(r.get(c)):>10}" for c in cols))
    if result.get("note"):
        lines += ["", f"note: {result['note']}"]
    return "\n".join(lines)
