"""Teacher scores cached next to the teacher (``TEACHER/eval_stats/nfe35_n10000_seed0.npz``) under a recorded protocol.

Sampling a teacher at NFE 35 for 10k samples is the expensive half of a student-vs-teacher comparison, and its
result only depends on the protocol: the teacher's weights, the sampler (EDM Heun, Karras et al. 2022, Alg. 1)
and its NFE, guidance and labels, the number of samples, splits and seed, the reference set and the Inception
(FID: Heusel et al. 2017; KID: Binkowski et al. 2018; precision/recall: Kynkaanniemi et al. 2019). The cache
records that protocol and is refused, naming the first field that differs, when any of it changed.

What is stored (small: ~25 kB per file at 2048 features): the scores themselves (FID of every split and of all N,
KID mean/std, precision, recall) and each split's Inception mean. Not stored: covariances (16 MB each at 2048-d)
and the 10k x 2048 features (80 MB) — the reference is part of the recorded protocol, so the scores are exactly
what the statistics would give, and KID / precision / recall need all N features, which a subsample would not
reproduce.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from fdistill.eval.fid_eval import spread
from fdistill.eval.model_folders import MODEL_SUFFIXES

CACHE_SUBDIR = "eval_stats"
SAMPLER = "edm-heun (Karras et al. 2022, Alg. 1)"
LABELS = "uniform"
PROTOCOL_FIELDS = (
    "teacher_sha256", "nfe", "sampler", "guidance", "labels", "num_samples", "splits", "seed", "reference",
    "num_reference", "inception_protocol", "inception_weights", "kid_subsets", "kid_subset_size", "pr_k",
    "fdistill_version",
)  # fmt: skip


class TeacherCacheMismatch(ValueError):
    """A teacher cache was made under another protocol or from another teacher file."""


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def teacher_weight_files(teacher: str | Path) -> list[Path]:
    """The weight files of a teacher folder (or of its ``unet/`` in a pipeline folder), sorted by name."""
    folder = Path(teacher)
    if (folder / "model_index.json").is_file() and (folder / "unet").is_dir():
        folder = folder / "unet"
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(MODEL_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{teacher}: no weight file ({', '.join(MODEL_SUFFIXES)}) to identify the teacher by")
    return files


@lru_cache(maxsize=16)
def _sha256_cached(paths: tuple[str, ...], stamps: tuple[tuple[int, int], ...]) -> str:  # noqa: ARG001 - cache key
    return _sha256_files([Path(p) for p in paths])


def sha256_of(paths: list[Path]) -> str:
    """sha256 over the files' names and contents (memoised while their size and mtime stay the same)."""
    stamps = tuple((os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths)
    return _sha256_cached(tuple(str(p) for p in paths), stamps)


def weights_identity(weights_path: str) -> str:
    """The Inception weights' identity: ``sha256:...`` of the file, or the extractor's name if it is not a file."""
    path = Path(weights_path)
    return f"sha256:{sha256_of([path])}" if path.is_file() else str(weights_path)


def cache_path(teacher: str | Path, nfe: int, num_samples: int, seed: int) -> Path:
    return Path(teacher) / CACHE_SUBDIR / f"nfe{nfe}_n{num_samples}_seed{seed}.npz"


def _same(a: object, b: object) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def check_protocol(path: Path, cached: dict, protocol: dict) -> None:
    """Raise :class:`TeacherCacheMismatch` naming the first protocol field that differs."""
    for name in PROTOCOL_FIELDS:
        if not _same(cached.get(name), protocol.get(name)):
            raise TeacherCacheMismatch(
                f"{path}: made under another protocol: {name} differs (cache {cached.get(name)!r}, now "
                f"{protocol.get(name)!r}); rerun with --recompute to rebuild it"
            )


def save_cache(path: Path, protocol: dict, row: dict, split_means: np.ndarray, info: dict | None = None) -> Path:
    """Write the scores (``row`` of :func:`fdistill.eval.fid_eval.score_features`) and the split means."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kid = row["kid"] or {}
    arrays = {
        "protocol_json": np.array(json.dumps(protocol, sort_keys=True)),
        "info_json": np.array(json.dumps(info or {}, sort_keys=True)),
        "fid": np.float64(row["fid"]),
        "fid_splits": np.asarray(row["fid_split"]["values"], dtype=np.float64),
        "split_size": np.int64(row["fid_split"]["size"]),
        "split_mu": np.asarray(split_means, dtype=np.float32),
        **{key: np.float64(np.nan if v is None else v) for key, v in
           (("kid_mean", kid.get("mean")), ("kid_std", kid.get("std")),
            ("precision", row["precision"]), ("recall", row["recall"]))},
    }  # fmt: skip
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def _num(z: np.lib.npyio.NpzFile, key: str) -> float | None:
    v = float(z[key])
    return None if np.isnan(v) else v


def load_cache(path: Path, protocol: dict) -> dict:
    """The cached row (``fid``, ``fid_split``, ``kid``, ``precision``, ``recall``), checked against ``protocol``."""
    with np.load(path, allow_pickle=False) as z:
        if "protocol_json" not in z.files:
            raise TeacherCacheMismatch(f"{path}: not a teacher cache (no protocol recorded); rerun with --recompute")
        check_protocol(path, json.loads(str(z["protocol_json"])), protocol)
        kid_mean, kid_std = _num(z, "kid_mean"), _num(z, "kid_std")
        return {
            "fid": float(z["fid"]),
            "fid_split": spread(z["fid_splits"].tolist(), int(z["split_size"])),
            "kid": None if kid_mean is None else {"mean": kid_mean, "std": kid_std},
            "precision": _num(z, "precision"),
            "recall": _num(z, "recall"),
        }
