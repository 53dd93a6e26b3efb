"""Score identity Distillation (Zhou et al., ICML 2024), ALGORITHMS.md §2.4.

Per-sample loss ``(D_p - D_q) . ((D_p - x0) - alpha (D_p - D_q)) / wf`` with ``wf = sg(mean|x0 - D_p|)``
and the frozen networks differentiated through ``x_t``. In score form this is
``sigma^4 [u.(s_q - grad log q(x_t|x0)) + (1 - alpha) |u|^2] / wf`` with ``u = s_p - s_q``:
``alpha = 0.5`` is the exact Fisher-divergence gradient, ``alpha = 1`` freezes the sampling
distribution (= SIM with ``d = |.|^2``, up to a factor 2). Samples with non-finite values are dropped.
"""

from __future__ import annotations

import torch

from fdistill.methods.base import GeneratorInputs, Method, MethodOutput, l1_normalizer, register, sum_chw
from fdistill.noise import SigmaSampler, append_dims


def frozen_denoisers(b: GeneratorInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x0, D_p, D_q, keep)`` with gradients flowing through ``x_t`` into both frozen networks.

    Rows with a non-finite value are replaced by zeros *before* any arithmetic (``keep`` marks the
    others), so a dropped row contributes an exact zero to the gradient instead of ``0 * nan``.
    """
    x_t = b.x_t
    d_p, d_q = b.teacher(x_t, b.sigma, b.cond), b.fake(x_t, b.sigma, b.cond)
    keep = finite_rows(b.x0, d_p, d_q)
    m = append_dims(keep, b.x0.ndim)
    return torch.where(m, b.x0, 0.0), torch.where(m, d_p, 0.0), torch.where(m, d_q, 0.0), keep


def finite_rows(*tensors: torch.Tensor) -> torch.Tensor:
    """Per-sample mask of rows whose values are all finite (SiD's NaN-sample dropping)."""
    mask = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        mask &= torch.isfinite(t.detach()).flatten(1).all(1)
    return mask


def sid_weight(x0: torch.Tensor, d_p: torch.Tensor, normalize: bool) -> torch.Tensor:
    return l1_normalizer(x0, d_p) if normalize else torch.ones_like(x0)


@register
class SiD(Method):
    name = "sid"
    default_sigma = SigmaSampler("karras", t_max=0.8)
    uses = ("alpha", "normalize", "guidance", "sigma")

    def generator_loss(self, b: GeneratorInputs) -> MethodOutput:
        x0, d_p, d_q, keep = frozen_denoisers(b)
        diff = d_p - d_q
        loss = sum_chw(diff * ((d_p - x0) - self.cfg.alpha * diff) / sid_weight(x0, d_p, self.cfg.normalize))
        return MethodOutput(torch.where(keep, loss, 0.0), {"dropped": (~keep).sum().float()})
