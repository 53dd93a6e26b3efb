"""What every ``fdistill eval-t2i`` row shares: the :class:`T2IGenerator` interface and the equal-noise contract.

Batch ``b`` of every generator starts from ``batch_noise(shape, seed + b, device)``, the first draw of
``torch.Generator(device).manual_seed(seed + b)``: exactly what the teacher's EDM Heun sampler (Karras et al. 2022,
Alg. 1, :func:`fdistill.core.sampling.edm_heun_sampler`) draws first, and what a one-step student maps; so rows are
equal-noise comparisons.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


class EvalT2ISetupError(ValueError):
    """A bad argument, a missing or incompatible folder: one line naming the value or path."""


@dataclass
class T2IGenerator:
    """One row of the table.

    ``encode(prompts)`` makes the prompt conditioning (untimed); ``sample(conditioning, seed)`` makes the images of
    one batch from the noise of ``seed`` (timed), in about ``[-1, 1]`` on any device.
    """

    name: str
    kind: str  # "teacher" or "student"
    nfe: int  # denoiser evaluations per image
    unet_evals: int  # UNet evaluations per image (x2 with CFG)
    cfg: float | None  # teacher CFG scale (1 = off); None for students (no CFG)
    encode: Callable[[list[str]], Any]
    sample: Callable[[Any, int], Tensor]
    info: dict = field(default_factory=dict)


def batch_noise(shape: tuple[int, ...], seed: int, device: torch.device | str) -> Tensor:
    """The noise a batch starts from: the first draw of ``torch.Generator(device).manual_seed(seed)`` — exactly what
    :func:`fdistill.core.sampling.edm_heun_sampler` draws first with that generator."""
    device = torch.device(device)
    return torch.randn(shape, generator=torch.Generator(device).manual_seed(seed), device=device)
