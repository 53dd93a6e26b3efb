"""Diversity statistics of a sample set ("Distilling Diversity and Control in Diffusion Models", Gandikota & Bau
2025; docs/math.md §2.11: distilled students lose diversity, the teacher's first steps restore it).

- :func:`mean_pairwise_distance`: ``E |X - X'|`` over distinct pairs (the U-statistic: the ``i = j`` zeros left
  out), in whatever feature space the rows live (Inception pool3 features for images, the plane for a mixture).
- :func:`intra_class_diversity`: that statistic within each class, averaged over classes (with its std over
  classes), and the per-class ratio to the same statistic on real images of the class (1 = as diverse as the
  data; a mode-collapsed student is well below 1).
- :func:`mixture_diversity`: the exact mixture metrics of :mod:`fdistill.metrics.gmm` (modes covered, mode-weight
  error, energy distance) and the k-NN manifold precision / recall (Kynkaanniemi et al. 2019,
  :func:`fdistill.metrics.fid.precision_recall`) against the teacher's exact samples: recall is the share of the
  teacher's samples inside the student's manifold, the mixture's diversity statistic.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from fdistill.metrics.fid import precision_recall
from fdistill.metrics.gmm import gmm_metrics
from fdistill.teachers.gmm import GaussianMixtureTeacher


def mean_pairwise_distance(x: ArrayLike, batch: int = 1024) -> float:
    """Mean Euclidean distance over the ``n (n - 1)`` ordered pairs of distinct rows of ``x`` (n >= 2), in float64,
    ``batch`` rows at a time."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    n = t.shape[0]
    if t.ndim != 2 or n < 2:
        raise ValueError(f"mean pairwise distance needs at least 2 rows of shape (N, D), got {tuple(t.shape)}")
    total = sum(float(torch.cdist(chunk, t).sum()) for chunk in t.split(batch))
    return total / (n * (n - 1))


def intra_class_diversity(
    features: ArrayLike, labels: ArrayLike, real_features: ArrayLike, real_labels: ArrayLike
) -> dict:
    """Mean pairwise distance within each class present (with at least 2 rows) on both sides, and its ratio to the
    real rows' of that class.

    Returns ``mean`` / ``std`` (over classes, ddof=0) of the samples' statistic, ``real_mean`` / ``real_std`` of the
    real one, ``ratio_mean`` / ``ratio_std`` of the per-class ratios, ``classes`` (how many), ``per_class``
    (``{label: {"samples", "real", "ratio", "n", "n_real"}}``)."""
    f, y = np.asarray(features), np.asarray(labels).reshape(-1)
    r, ry = np.asarray(real_features), np.asarray(real_labels).reshape(-1)
    if f.shape[0] != y.shape[0] or r.shape[0] != ry.shape[0]:
        raise ValueError(f"features and labels differ in length: {f.shape[0]} vs {y.shape[0]}, {r.shape[0]} vs "
                         f"{ry.shape[0]}")  # fmt: skip
    per_class = {}
    for c in sorted(set(y.tolist()) & set(ry.tolist())):
        fc, rc = f[y == c], r[ry == c]
        if min(fc.shape[0], rc.shape[0]) < 2:
            continue
        d, d_real = mean_pairwise_distance(fc), mean_pairwise_distance(rc)
        per_class[int(c)] = {"samples": d, "real": d_real, "ratio": d / d_real if d_real > 0 else float("nan"),
                             "n": int(fc.shape[0]), "n_real": int(rc.shape[0])}  # fmt: skip
    if not per_class:
        raise ValueError("no class holds at least 2 samples and 2 real images: raise the sample counts")
    stats = {key: np.array([v[key] for v in per_class.values()]) for key in ("samples", "real", "ratio")}
    return {
        "mean": float(stats["samples"].mean()),
        "std": float(stats["samples"].std()),
        "real_mean": float(stats["real"].mean()),
        "real_std": float(stats["real"].std()),
        "ratio_mean": float(stats["ratio"].mean()),
        "ratio_std": float(stats["ratio"].std()),
        "classes": len(per_class),
        "per_class": per_class,
    }


@torch.no_grad()
def mixture_diversity(teacher: GaussianMixtureTeacher, samples: Tensor, reference: Tensor, k: int = 3,
                      seed: int = 0) -> dict:  # fmt: skip
    """:func:`fdistill.metrics.gmm.gmm_metrics` of ``samples`` plus k-NN ``precision`` / ``recall`` against
    ``reference`` (the teacher's exact samples) and the ``mean_pairwise_distance`` of both; non-finite rows are left
    out of the latter three (``gmm_metrics`` counts them)."""
    samples = samples.float().cpu()
    out = gmm_metrics(teacher, samples, seed=seed)
    finite = samples[torch.isfinite(samples).all(1)]
    precision, recall = precision_recall(reference.float().cpu(), finite, k=k)
    out.update(precision=precision, recall=recall, pr_k=k, mean_pairwise_distance=mean_pairwise_distance(finite),
               reference_mean_pairwise_distance=mean_pairwise_distance(reference.float().cpu()))  # fmt: skip
    return out
