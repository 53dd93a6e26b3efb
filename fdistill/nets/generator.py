"""The student generator: one-step ``x = G(z, cond) = D_theta(sigma_init z, sigma_init, cond)`` (DESIGN.md), or a
K-step student on a schedule ``sigma_1 = sigma_init > sigma_2 > ... > sigma_K`` (docs/math.md §2.10).

``D_theta`` is a trainable copy of the teacher's denoiser network (SiD: sigma_init = 2.5; DMD2/FastGen:
80; Diff-Instruct: 1), so the generator starts as the teacher's one-step denoiser at that noise level.

K-step sampling (DMD2 multi-step, FastGen ``student_sample_steps``; the consistency-style re-noising of LCM)::

    x = sigma_1 z                       (VE input; ``input_scaling=vp``: sqrt(1 + sigma_1^2) z, the UNet sees z)
    for k = 1..K:  x0 = D_theta(x, sigma_k);  if k < K:  x = x0 + sigma_{k+1} eps_k     (fresh eps_k ~ N(0, I))

Only the first input depends on ``input_scaling``; the re-noised inputs are VE noisy samples ``x0 + sigma eps``,
which every denoiser network of this code base reads natively. With K = 1 the generator is exactly the one-step
``D_theta(scale z, sigma_init)`` and draws no extra noise.

Training by **backward simulation** (DMD2): :meth:`OneStepGenerator.forward` with ``step=k`` runs the chain's steps
``1..k-1`` without gradients (the network in eval mode: the input the student sees at sampling time) and returns
``D_theta(x_k, sigma_k)`` with gradients; ``k`` may differ per sample. Everything happens inside one ``forward``, so
a DDP / FSDP wrapper sees one forward per backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from fdistill.core.noise import karras_sigma


def default_student_sigmas(sigma_init: float, steps: int, sigma_data: float = 0.5, sigma_min: float = 0.002) -> list:
    """The default K-level schedule of a K-step student: ``sigma_init`` followed by ``K - 1`` levels Karras-spaced
    (rho = 7, EDM's sampler spacing) down to ``sigma_last = min(0.5 sigma_data, 0.5 sigma_init)`` (kept above the
    teacher's ``sigma_min``), both ends included.

    E.g. sigma_data = 0.5: sigma_init = 80, K = 4 -> [80, 18.8, 3.0, 0.25]; sigma_init = 2.5, K = 4 ->
    [2.5, 1.26, 0.59, 0.25]. The last level is where the student's final x0 is predicted; DMD2's SD schedule
    (t = 999, 749, 499, 249) ends at sigma ~ 0.6 sigma_data, our half sigma_data is a little lower (finer detail,
    still far from the regime where x0 ~ x_t and the step does nothing)."""
    if steps < 1:
        raise ValueError(f"student steps must be >= 1, got {steps}")
    if steps == 1:
        return [float(sigma_init)]
    last = max(min(0.5 * sigma_data, 0.5 * sigma_init), sigma_min)
    t = torch.linspace(0, 1, steps, dtype=torch.float64)
    levels = karras_sigma(t, last, float(sigma_init)).tolist()
    levels[0], levels[-1] = float(sigma_init), last  # the ends exact, not through the rho-th root
    return [float(s) for s in levels]


def check_student_sigmas(sigmas: Sequence[float], sigma_init: float | None = None) -> list[float]:
    """``sigmas`` as floats, or a ``ValueError`` naming what is wrong (empty, not positive, not strictly decreasing,
    first level not ``sigma_init``)."""
    out = [float(s) for s in sigmas]
    if not out:
        raise ValueError("student sigmas must hold at least one level")
    if any(not math.isfinite(s) or s <= 0 for s in out):
        raise ValueError(f"student sigmas must be finite and > 0, got {out}")
    if any(b >= a for a, b in zip(out, out[1:], strict=False)):
        raise ValueError(f"student sigmas must be strictly decreasing, got {out}")
    if sigma_init is not None and not math.isclose(out[0], float(sigma_init), rel_tol=1e-6):
        raise ValueError(f"the first student sigma ({out[0]}) must equal sigma_init ({sigma_init})")
    return out


def input_scale(sigma: float, input_scaling: str) -> float:
    """Scale of the first input ``x_1 = scale * z``: ``sigma`` (VE) or ``sqrt(1 + sigma^2)`` (VP: the UNet sees z)."""
    if input_scaling not in ("ve", "vp"):
        raise ValueError(f"input_scaling={input_scaling!r}; accepted: ve, vp")
    return float(sigma) if input_scaling == "ve" else math.sqrt(1 + float(sigma) ** 2)


def run_chain(
    denoise: Callable[[Tensor, int], Tensor],
    x: Tensor,
    sigmas: Sequence[float],
    noise: Callable[[int], Tensor],
    start: int = 0,
    stop: int | None = None,
    callback: Callable[[int, float, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """The K-step chain from level ``start`` (0-based) to ``stop`` (exclusive; default all): ``x`` is the VE input at
    ``sigmas[start]``; ``denoise(x, k)`` returns ``D_theta(x, sigmas[k])``; ``noise(k)`` the fresh ``eps`` that takes
    the x0 of level ``k`` to level ``k + 1``. ``callback(k, sigma_k, x_k, x0_k)`` sees every step. Returns the last
    x0 (a plain x0: the chain ends with a prediction, never with added noise)."""
    stop = len(sigmas) if stop is None else stop
    if not 0 <= start < stop <= len(sigmas):
        raise ValueError(f"chain levels {start}..{stop} out of range for {len(sigmas)} levels")
    x0 = x
    for k in range(start, stop):
        x0 = denoise(x, k)
        if callback is not None:
            callback(k, float(sigmas[k]), x, x0)
        if k + 1 < stop:
            x = x0 + sigmas[k + 1] * noise(k)
    return x0


class OneStepGenerator(nn.Module):
    """The student: a trainable denoiser ``net`` used at the levels ``sigmas`` (default ``[sigma_init]``: one step).

    The class keeps its name for every K (checkpoints and the latent export refer to it); ``steps`` is K.
    """

    def __init__(
        self, net: nn.Module, sigma_init: float, input_scaling: str = "ve", sigmas: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        self.net = net
        self.sigma_init = float(sigma_init)
        self.input_scaling = input_scaling
        self.input_scale = input_scale(self.sigma_init, input_scaling)
        self.sigmas = tuple(check_student_sigmas(sigmas if sigmas is not None else [sigma_init], sigma_init))

    @property
    def steps(self) -> int:
        return len(self.sigmas)

    def forward(
        self, z: Tensor, cond: Tensor | None = None, noise: Tensor | None = None, step: Tensor | int | None = None
    ) -> Tensor:
        """``x0`` of the student from unit noise ``z``.

        Args:
            noise: ``(K - 1, *z.shape)`` fresh re-noising draws, ``noise[k - 1]`` taking step k's x0 to level k + 1
                (required when K > 1; unused when K = 1).
            step: None = the full K-step chain (sampling, evaluation: no gradient tricks). An int or a per-sample
                LongTensor ``k`` in 1..K = backward simulation: steps ``1..k-1`` without gradients (eval mode), then
                ``D_theta(x_k, sigma_k)`` with gradients. With K = 1 both are the one-step
                ``D_theta(scale z, sigma_init)``.
        """
        if self.steps == 1:
            sigma = torch.full((z.shape[0],), self.sigma_init, device=z.device, dtype=z.dtype)
            return self.net(self.input_scale * z, sigma, cond)
        if noise is None or noise.shape[0] < self.steps - 1 or noise.shape[1:] != z.shape:
            got = None if noise is None else tuple(noise.shape)
            want = (self.steps - 1, *z.shape)
            raise ValueError(f"a {self.steps}-step generator needs noise of shape {want}, got {got}")
        n = z.shape[0]
        if step is None:
            return run_chain(lambda x, k: self._denoise(x, k, cond), self.input_scale * z, self.sigmas,
                             lambda k: noise[k])  # fmt: skip
        k = torch.as_tensor(step, device=z.device).long().reshape(-1).expand(n)
        if bool(((k < 1) | (k > self.steps)).any()):
            raise ValueError(f"step must be in 1..{self.steps}, got {sorted(set(k.tolist()))}")
        x = self.input_scale * z
        if int(k.max()) > 1:
            x = self._simulate(x, k, cond, noise)
        sigma = torch.tensor(self.sigmas, device=z.device, dtype=z.dtype)[k - 1]
        return self.net(x, sigma, cond)

    @torch.no_grad()
    def _simulate(self, x: Tensor, k: Tensor, cond: Tensor | None, noise: Tensor) -> Tensor:
        """Inputs ``x_k`` of each row's step ``k`` from the student's own chain (no gradients, eval mode)."""
        was_training = self.net.training
        self.net.eval()
        try:
            x = x.clone()
            for j in range(1, int(k.max())):  # step j (1-based) takes rows with k > j from level j to j + 1
                rows = (k > j).nonzero().squeeze(1)
                sub_cond = None if cond is None else cond[rows]
                sigma = torch.full((rows.numel(),), self.sigmas[j - 1], device=x.device, dtype=x.dtype)
                x0 = self.net(x[rows], sigma, sub_cond)
                x[rows] = (x0 + self.sigmas[j] * noise[j - 1][rows]).to(x.dtype)
        finally:
            self.net.train(was_training)
        return x

    def _denoise(self, x: Tensor, k: int, cond: Tensor | None) -> Tensor:
        sigma = torch.full((x.shape[0],), self.sigmas[k], device=x.device, dtype=x.dtype)
        return self.net(x, sigma, cond)
