"""What ``fdistill eval`` evaluates: a :class:`SampleSource` yields uint8 images ``(N, C, H, W)``, C = 1 or 3.

A generator source wraps any ``generate(n, seed)`` callable (a student, a teacher at some NFE); a fixed set of
images (a folder, an ``.npz``) is a :func:`tensor_source`. The metrics themselves (FID, Heusel et al. 2017; KID,
Binkowski et al. 2018; precision/recall, Kynkaanniemi et al. 2019) are in :mod:`fdistill.metrics.fid`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


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


def check_uint8(images: Tensor, what: str) -> Tensor:
    """``images`` unchanged if they are uint8 ``(N, 1|3, H, W)``; a ``ValueError`` naming ``what`` otherwise."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{what}: expected uint8 images (N, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")
    return images


def tensor_source(images: Tensor, name: str = "tensor", info: dict | None = None) -> SampleSource:
    """A fixed set of uint8 images as a source: ``generate(n, seed)`` returns the first ``n`` (``seed`` unused)."""
    images = check_uint8(images, name)

    def generate(n: int, seed: int) -> Tensor:  # noqa: ARG001 - a fixed set ignores the seed
        if n > images.shape[0]:
            raise ValueError(f"{name} holds {images.shape[0]} images, {n} requested")
        return images[:n]

    return SampleSource(name=name, generate=generate, size=images.shape[0], info=dict(info or {}))
