"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from its four IDX files, held in memory as tensors.

The default source is the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``,
see shared/RESOURCES.md); any directory holding the same four files (``.gz`` or uncompressed) works through
``root``, and ``download=True`` fetches them from the canonical URL only when asked. Images are mapped to
``[-1, 1]`` and zero-padded from 28x28 to 32x32 with the background value ``-1`` so that a UNet can halve
the resolution three times. No torchvision: the IDX format is parsed here.
"""

from __future__ import annotations

import gzip
import os
import struct
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CACHE_ROOT = Path(os.environ.get("FDISTILL_DATA", Path.home() / ".cache" / "fdistill")) / "fashion-mnist"
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# IDX type codes (third magic byte) -> numpy big-endian dtypes
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic ``00 00 TYPE NDIM``, NDIM big-endian uint32 sizes, data.

    Image files (NDIM 3) have a 16-byte header and label files (NDIM 1) an 8-byte one.
    """
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise ValueError(f"{path}: header says {dims} ({expected} bytes of data) but the file holds {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def uint8_to_tensor(images: np.ndarray, pad_to: int | None = 32) -> Tensor:
    """(N, H, W) uint8 -> (N, 1, S, S) float32 in [-1, 1], zero-padded (background -1) to ``pad_to``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)[:, None]
    if pad_to is not None and pad_to != x.shape[-1]:
        extra = pad_to - x.shape[-1]
        if extra < 0 or extra % 2:
            raise ValueError(f"pad_to={pad_to} must be >= {x.shape[-1]} and differ from it by an even number")
        x = torch.nn.functional.pad(x, (extra // 2,) * 4, value=-1.0)
    return x.contiguous()


class ImageTensorDataset(Dataset):
    """An in-memory labelled image set: ``images`` float32 (N, C, H, W) in [-1, 1], ``labels`` int64 (N,).

    ``dataset[i]`` returns ``(image, label)``; the whole tensors are public for batched indexing and for
    FID reference statistics.
    """

    def __init__(self, images: Tensor, labels: Tensor, class_names: Sequence[str]) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images
        self.labels = labels.long()
        self.class_names = list(class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _download(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for stems in FILES.values():
        for stem in stems:
            if _find(root, stem) is None:
                urllib.request.urlretrieve(URL + stem + ".gz", root / (stem + ".gz"))  # noqa: S310


def resolve_root(root: str | Path | None = None, download: bool = False) -> Path:
    """The directory holding the four IDX files; raises one clear :class:`FileNotFoundError` otherwise."""
    candidates = [Path(root).expanduser()] if root is not None else [DEBIAN_ROOT, CACHE_ROOT]
    for cand in candidates:
        if all(_find(cand, stem) for stems in FILES.values() for stem in stems):
            return cand
    if download:
        target = candidates[0] if root is not None else CACHE_ROOT
        _download(target)
        return target
    where = " or ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"Fashion-MNIST not found in {where} (need the four *-ubyte.gz IDX files): install it with "
        "`apt-get install dataset-fashion-mnist`, or pass root=DIR (config: data.root=DIR) pointing at a folder "
        "holding train/t10k-images-idx3-ubyte.gz and train/t10k-labels-idx1-ubyte.gz, or download=True"
    )


def load_fashion_mnist(
    split: str = "train", root: str | Path | None = None, download: bool = False, pad_to: int | None = 32
) -> ImageTensorDataset:
    """Fashion-MNIST ``split`` ('train': 60k, 'test': 10k) as (N, 1, 32, 32) images in [-1, 1] + int64 labels."""
    if split not in FILES:
        raise ValueError(f"split={split!r}; accepted: {', '.join(FILES)}")
    base = resolve_root(root, download)
    img_stem, lbl_stem = FILES[split]
    images = read_idx(_find(base, img_stem))  # type: ignore[arg-type]
    labels = read_idx(_find(base, lbl_stem))  # type: ignore[arg-type]
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(f"{base}: expected (N, H, W) images and (N,) labels, got {images.shape} and {labels.shape}")
    return ImageTensorDataset(uint8_to_tensor(images, pad_to), torch.from_numpy(labels.astype(np.int64)), CLASS_NAMES)


class FashionMNIST(ImageTensorDataset):
    """``FashionMNIST(root=None, train=True, download=False)`` in the familiar torchvision-like shape."""

    def __init__(
        self, root: str | Path | None = None, train: bool = True, download: bool = False, pad_to: int | None = 32
    ) -> None:
        ds = load_fashion_mnist("train" if train else "test", root, download, pad_to)
        super().__init__(ds.images, ds.labels, CLASS_NAMES)
