"""Image sets on disk as uint8 ``(N, C, H, W)``: image folders and ``.npz`` arrays (the inputs of ``fdistill eval``).

The Inception protocol these feed (uint8 rounding, gray->RGB, TF1 bilinear resize to 299) is
:mod:`fdistill.metrics.inception`; here only files become uint8 tensors: RGBA/LA/P images are composited on
white, float arrays are rounded from the range they are detected in ([-1, 1], [0, 1] or [0, 255]).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
NPZ_IMAGE_KEYS = ("images", "samples", "x", "arr_0")


def image_files(path: Path) -> list[Path]:
    """The image files of a folder, sorted by name; those of its subfolders when there are none at the top."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    return files


def _read_image(file: Path) -> np.ndarray:
    with Image.open(file) as im:
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im).convert("RGB")
        elif im.mode not in ("L", "RGB"):
            im = im.convert("RGB")
        a = np.asarray(im, dtype=np.uint8)
    return a[..., None] if a.ndim == 2 else a


def iter_image_folder(path: str | Path, batch_size: int, limit: int | None = None) -> Iterator[Tensor]:
    """The images of :func:`load_image_folder`, ``batch_size`` files at a time (only one batch in memory). The
    folder is listed now (an empty one raises ``FileNotFoundError`` here); a file whose shape differs from the
    first's raises ``ValueError`` when its batch is read."""
    path = Path(path)
    files = image_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: no image files ({', '.join(IMAGE_EXTS)})")
    files = files[:limit] if limit else files

    def batches() -> Iterator[Tensor]:
        first = None
        for start in range(0, len(files), batch_size):
            arrays = []
            for f in files[start : start + batch_size]:
                a = _read_image(f)
                first = first if first is not None else a.shape
                if a.shape != first:
                    raise ValueError(
                        f"{f}: shape {a.shape} differs from the first image's {first}; resize the folder first"
                    )
                arrays.append(a)
            yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    return batches()


def load_image_folder(path: str | Path, limit: int | None = None) -> Tensor:
    """Image files in a folder (sorted; recursive if none at the top) as uint8 (N, C, H, W), C = 1 or 3."""
    return torch.cat(list(iter_image_folder(path, 256, limit)))


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


def is_stats_npz(path: str | Path) -> bool:
    """Whether an ``.npz`` holds reference statistics (``mu``, ``sigma``) rather than images."""
    with np.load(path, allow_pickle=False) as z:
        return {"mu", "sigma"} <= set(z.files)


def load_npz_images(path: str | Path) -> tuple[Tensor, str]:
    """The image array of an ``.npz`` (key ``images``, ``samples``, ``x``, ``arr_0`` or its only array) as uint8
    NCHW, and a note on the value range read (:func:`array_to_uint8`)."""
    with np.load(path, allow_pickle=False) as z:
        if {"mu", "sigma"} <= set(z.files):
            raise ValueError(f"{path} holds statistics (mu, sigma), not images: it can only be a --reference")
        key = next((k for k in NPZ_IMAGE_KEYS if k in z.files), z.files[0] if len(z.files) == 1 else None)
        if key is None:
            raise ValueError(f"{path}: no image array among {z.files}; expected one of {NPZ_IMAGE_KEYS}")
        return array_to_uint8(z[key], f"{path}[{key}]")
