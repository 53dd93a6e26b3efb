"""The method interface and registry.

A method is a small ``nn.Module`` (modules so that any running statistics, like f-distill's per-noise-level
ratio means, are saved in checkpoints) registered by name. Its :meth:`Method.generator_loss` maps the
tensors and frozen callables of one generator step (:class:`GeneratorInputs`) to an **unreduced
per-sample loss** whose gradient with respect to the generator parameters is the method's gradient
(NVlabs/edm ``training/loss.py`` style); the trainer reduces, scales, steps. Nothing here knows about
accelerate, devices, checkpoints or logging.

Every method shares the fake-score loss (EDM denoising score matching, docs/math.md §1.3) and, where it
uses a density ratio or a GAN term, the discriminator loss: non-saturating BCE, real (teacher / data)
versus generated, both noised at the same sigma, whose optimal logit is ``log p_sigma / q_sigma``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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


def mean_chw(x: Tensor) -> Tensor:
    return x.flatten(1).mean(1)


def sum_chw(x: Tensor) -> Tensor:
    return x.flatten(1).sum(1)


def l1_normalizer(x0: Tensor, d_p: Tensor, floor: float = 1e-5) -> Tensor:
    """DMD/SiD per-sample normaliser ``sg(mean_chw |x0 - D_p|)`` broadcast to x0's shape."""
    return append_dims(mean_chw((x0 - d_p).abs()).detach().clamp_min(floor), x0.ndim)


def pseudo_target_loss(x0: Tensor, direction: Tensor) -> Tensor:
    """``0.5 mean_chw (x0 - sg(x0 - g))^2``: its gradient w.r.t. x0 is ``g / numel`` (DMD2 form)."""
    return 0.5 * mean_chw((x0 - (x0 - direction).detach()) ** 2)


def gan_generator_loss(b: GeneratorInputs, logit: Tensor | None = None) -> Tensor:
    """Non-saturating generator GAN loss ``softplus(-logit(x_t))`` through the frozen discriminator; pass
    ``logit`` when the method already ran the discriminator on ``x_t`` (one forward for GAN and ratio)."""
    if logit is None:
        assert b.logit is not None, "this method needs a discriminator (method.gan_weight > 0)"
        logit = b.logit(b.x_t, b.sigma, b.cond)
    return F.softplus(-logit)
