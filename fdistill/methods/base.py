"""The method interface and registry.

A method is a small ``nn.Module`` (modules so that any running statistics, like f-distill's per-noise-level
ratio means, are saved in checkpoints) registered by name. Its :meth:`Method.generator_loss` maps the
tensors and frozen callables of one generator step (:class:`GeneratorInputs`) to an **unreduced
per-sample loss** whose gradient with respect to the generator parameters is the method's gradient
(NVlabs/edm ``training/loss.py`` style); the trainer reduces, scales, steps. Nothing here knows about
accelerate, devices, checkpoints or logging.

Precision: the generator step runs under the trainer's bf16 autocast, where a network may return bf16. Every
network output is lifted to float32 (:func:`fp32`) before a method touches it, and every reduction over C x H x W
runs in float32, so loss weights, normalisers and per-sample losses are float32 (as in NVIDIA's FastGen); float64
inputs (the exact tests) stay float64.

Every method shares the fake-score loss (EDM denoising score matching, docs/math.md §1.3) and, where it
uses a density ratio or a GAN term, the discriminator loss: non-saturating BCE, real (teacher / data)
versus generated, both noised at the same sigma, whose optimal logit is ``log p_sigma / q_sigma``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fdistill.core.noise import SigmaSampler, append_dims

DenoiseFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
LogitFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
RewardFn = Callable[[Tensor, "Tensor | None"], Tensor]


def _identity_sum(x: Tensor) -> Tensor:
    return x


@dataclass
class GeneratorInputs:
    """Everything one generator step hands to a method.

    ``teacher``/``fake`` are frozen denoisers (guidance already applied to the teacher): a method calls
    them under ``torch.no_grad()`` when its gradient does not pass through the networks (DI, DMD,
    f-distill) and without it when it does (SiD, SIM, Uni-Instruct, DI*). ``logit`` is the frozen
    discriminator, ``logit(x_t, sigma, cond) ~ log p_sigma(x_t) / q_sigma(x_t)``, differentiable in its
    input. ``all_reduce_sum`` sums a tensor over processes (identity on one process).
    """

    x0: Tensor
    sigma: Tensor
    eps: Tensor
    teacher: DenoiseFn
    fake: DenoiseFn
    cond: Tensor | None = None
    logit: LogitFn | None = None
    reward: RewardFn | None = None
    all_reduce_sum: Callable[[Tensor], Tensor] = _identity_sum

    @property
    def x_t(self) -> Tensor:
        return self.x0 + append_dims(self.sigma, self.x0.ndim) * self.eps


@dataclass
class MethodOutput:
    loss: Tensor  # (B,) per-sample generator loss
    logs: dict[str, Tensor] = field(default_factory=dict)


class Method(nn.Module):
    """Base class. Subclasses set ``name``, ``default_sigma`` and implement :meth:`generator_loss`."""

    name: str = ""
    default_sigma: SigmaSampler = SigmaSampler("lognormal")
    #: config fields of ``MethodConfig`` this method reads (the trainer warns about others being set)
    uses: tuple[str, ...] = ()

    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg = cfg

    @property
    def needs_discriminator(self) -> bool:
        return False

    @property
    def teacher_guidance(self) -> float:
        return float(self.cfg.guidance)

    def generator_loss(self, b: GeneratorInputs) -> MethodOutput:
        raise NotImplementedError

    @staticmethod
    def discriminator_loss(logit_real: Tensor, logit_fake: Tensor) -> Tensor:
        """Per-sample BCE ``softplus(-l_real) + softplus(l_fake)``: optimum logit = log p/q."""
        return F.softplus(-logit_real) + F.softplus(logit_fake)


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> type[Method]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(names())}")
    return _REGISTRY[name]


def build(cfg) -> Method:
    """Instantiate the method named ``cfg.name`` with its ``MethodConfig``."""
    return get(cfg.name)(cfg)


# ---- small tensor helpers shared by the losses -------------------------------------------------


def fp32(x: Tensor) -> Tensor:
    """``x`` in at least float32: bf16/fp16 (a network's output under autocast) is lifted, float64 stays."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def mean_chw(x: Tensor) -> Tensor:
    return fp32(x).flatten(1).mean(1)


def sum_chw(x: Tensor) -> Tensor:
    return fp32(x).flatten(1).sum(1)


def l1_normalizer(x0: Tensor, d_p: Tensor, floor: float = 1e-5) -> Tensor:
    """DMD/SiD per-sample normaliser ``sg(mean_chw |x0 - D_p|)`` (float32 at least) broadcast to x0's shape."""
    return append_dims(mean_chw((fp32(x0) - fp32(d_p)).abs()).detach().clamp_min(floor), x0.ndim)


def pseudo_target_loss(x0: Tensor, direction: Tensor) -> Tensor:
    """``0.5 mean_chw (x0 - sg(x0 - g))^2``: its gradient w.r.t. x0 is ``g / numel`` (DMD2 form). In float32 at
    least: in bf16, ``x0 - (x0 - g)`` would round a small ``g`` away."""
    x0, direction = fp32(x0), fp32(direction)
    return 0.5 * mean_chw((x0 - (x0 - direction).detach()) ** 2)


def gan_generator_loss(b: GeneratorInputs, logit: Tensor | None = None) -> Tensor:
    """Non-saturating generator GAN loss ``softplus(-logit(x_t))`` through the frozen discriminator; pass
    ``logit`` when the method already ran the discriminator on ``x_t`` (one forward for GAN and ratio)."""
    if logit is None:
        assert b.logit is not None, "this method needs a discriminator (method.gan_weight > 0)"
        logit = b.logit(b.x_t, b.sigma, b.cond)
    return F.softplus(-fp32(logit))
