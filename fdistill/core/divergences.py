"""The f-divergence registry of f-distill (Xu, Nie & Vahdat 2025, arXiv 2502.15681, Table 1).

``D_f(p || q) = E_q[f(p/q)]`` with ``r = p/q``. The generator gradient of ``D_f(p_t || q_t)`` is
``E[h(r) (s_q - s_p) . dx_t/dtheta]`` with the weighting ``h(r) = f''(r) r^2`` (docs/math.md I5, §3);
Uni-Instruct's expanded divergence also needs ``h'(r)`` (§2.7). Every entry gives torch functions
``f``, ``h`` and ``h_prime``; a test checks ``h`` and ``h_prime`` against autograd of ``f``.

Adding a divergence is one ``register(Divergence(...))`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Fn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Divergence:
    name: str
    f: Fn
    h: Fn
    h_prime: Fn
    description: str = ""

    def __repr__(self) -> str:
        return f"Divergence({self.name!r})"


_REGISTRY: dict[str, Callable[..., Divergence]] = {}


def register(name: str) -> Callable[[Callable[..., Divergence]], Callable[..., Divergence]]:
    """Register a factory ``(**params) -> Divergence`` under ``name``."""

    def deco(factory: Callable[..., Divergence]) -> Callable[..., Divergence]:
        _REGISTRY[name] = factory
        return factory

    return deco


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str, **params: float) -> Divergence:
    """The divergence ``name``; ``alpha`` takes ``alpha=...`` (default 0.5)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown divergence {name!r}; accepted: {', '.join(names())}")
    return _REGISTRY[name](**params)


def _const(value: float) -> Fn:
    return lambda r: torch.full_like(r, value)


@register("rkl")
def _rkl() -> Divergence:
    return Divergence("rkl", lambda r: -torch.log(r), _const(1.0), _const(0.0), "reverse KL(q||p): DI/DMD")


@register("kl")
def _kl() -> Divergence:
    return Divergence("kl", lambda r: r * torch.log(r), lambda r: r, _const(1.0), "forward KL(p||q), mode covering")


@register("js")
def _js() -> Divergence:
    return Divergence(
        "js",
        lambda r: r * torch.log(r) - (r + 1) * torch.log((r + 1) / 2),
        lambda r: r / (1 + r),
        lambda r: 1 / (1 + r) ** 2,
        "Jensen-Shannon (unscaled), f-distill's default",
    )


@register("sh")
def _sh() -> Divergence:
    return Divergence(
        "sh", lambda r: (r.sqrt() - 1) ** 2, lambda r: 0.5 * r.sqrt(), lambda r: 0.25 / r.sqrt(), "squared Hellinger"
    )


@register("jf")
def _jf() -> Divergence:
    return Divergence("jf", lambda r: (r - 1) * torch.log(r), lambda r: r + 1, _const(1.0), "Jeffreys = KL + RKL")


@register("sf")
def _sf() -> Divergence:
    return Divergence(
        "sf",
        lambda r: (r + 1) * torch.log((r + 1) / (2 * r)),
        lambda r: 1 / (1 + r),
        lambda r: -1 / (1 + r) ** 2,
        "softened reverse KL",
    )


@register("neyman")
def _neyman() -> Divergence:
    return Divergence(
        "neyman", lambda r: (1 - r) ** 2 / r, lambda r: 2 / r, lambda r: -2 / r**2, "Neyman chi-square, mode seeking"
    )


@register("pearson")
def _pearson() -> Divergence:
    return Divergence("pearson", lambda r: (r - 1) ** 2, lambda r: 2 * r**2, lambda r: 4 * r, "Pearson chi-square")


@register("alpha")
def _alpha(alpha: float = 0.5) -> Divergence:
    a = float(alpha)
    if a in (0.0, 1.0):
        raise ValueError("alpha-divergence needs alpha not in {0, 1}: use 'rkl' (alpha->0) or 'kl' (alpha->1)")
    return Divergence(
        "alpha",
        lambda r: (r**a - a * r - (1 - a)) / (a * (a - 1)),
        lambda r: r**a,
        lambda r: a * r ** (a - 1),
        f"alpha-divergence, alpha={a:g}",
    )
