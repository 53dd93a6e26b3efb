"""``fdistill eval --reference REF``: Inception statistics of the reference set (mean, covariance, features).

REF is ``fashion_mnist:test`` or ``fashion_mnist:train`` (rendered at the samples' resolution: 28x28 as stored,
or zero-padded with the background as the data loader feeds the models; cached under
``$FDISTILL_CACHE/fid_stats``), an image folder, an ``.npz`` of images, or an ``.npz`` of statistics (``mu``,
``sigma``, ``n``, ``protocol``; precision/recall and KID need its ``features`` too). The statistics are those of
FID (Heusel et al. 2017) under the protocol of :mod:`fdistill.metrics.inception`, checked on load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fdistill.data.fashion_mnist import load_fashion_mnist
from fdistill.eval.image_files import is_stats_npz, load_image_folder, load_npz_images
from fdistill.metrics.fid import FeatureStats, ProtocolMismatchError, cache_dir
from fdistill.metrics.inception import InceptionFeatureExtractor

log = logging.getLogger(__name__)

FMNIST_SPLITS = ("train", "test")


@dataclass
class Reference:
    """Reference statistics, a readable name, and the cache file they came from or went to (if any)."""

    stats: FeatureStats
    name: str
    cached: str | None = None


def _fmnist_images(split: str, pad_to: int | None, limit: int | None) -> Tensor:
    """Fashion-MNIST as uint8 (N, 1, S, S), background-padded to ``pad_to`` (data loader convention)."""
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


def _fmnist_reference(
    spec: str,
    split: str,
    extractor: InceptionFeatureExtractor,
    sample_hw: tuple[int, int],
    num_reference: int | None,
    batch_size: int,
    use_cache: bool,
    keep_features: bool,
    progress: bool,
) -> Reference:
    if split not in FMNIST_SPLITS:
        raise ValueError(f"reference {spec!r}: accepted fashion_mnist:test or fashion_mnist:train")
    protocol = extractor.protocol
    pad = fmnist_pad_for(sample_hw)
    name = f"{spec} ({pad or 28}px)"
    path = cache_dir() / f"inception_fashion_mnist_{split}_{pad or 28}px_{num_reference or 'all'}.npz"
    if use_cache and path.is_file():
        try:
            stats = FeatureStats.load(path, protocol=protocol)
            if stats.features is not None or not keep_features:
                return Reference(stats, name, str(path))
        except ProtocolMismatchError as e:
            log.warning("recomputing the cached reference: %s", e)
    images = _fmnist_images(split, pad, num_reference)
    stats = FeatureStats.from_features(extractor.extract(images, batch_size, progress), protocol, keep_features)
    if use_cache:
        stats.save(path)
    return Reference(stats, name, str(path) if use_cache else None)


def reference_stats(
    spec: str,
    extractor: InceptionFeatureExtractor,
    sample_hw: tuple[int, int],
    num_reference: int | None = None,
    batch_size: int = 64,
    use_cache: bool = True,
    keep_features: bool = True,
    progress: bool = True,
) -> Reference:
    """Inception statistics (with features) of REF; data-set references are cached on disk."""
    name, _, split = spec.partition(":")
    if name == "fashion_mnist":
        return _fmnist_reference(
            spec, split, extractor, sample_hw, num_reference, batch_size, use_cache, keep_features, progress
        )
    path = Path(spec)
    if path.is_dir():
        images = load_image_folder(path, limit=num_reference)
    elif path.suffix == ".npz" and path.is_file():
        if is_stats_npz(path):
            return Reference(FeatureStats.load(path, protocol=extractor.protocol), f"stats:{spec}", str(path))
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
    return Reference(FeatureStats.from_features(feats, extractor.protocol, keep_features), spec, None)
