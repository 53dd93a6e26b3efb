"""Analytic Gaussian-mixture teacher: exact denoiser, score, log-density and samples at every sigma.

``p_sigma = sum_k pi_k N(mu_k, (s_k^2 + sigma^2) I)`` (docs/math.md C8). With posterior component
weights ``w_k(x) = softmax_k(ln pi_k + ln N(x; mu_k, (s_k^2 + sigma^2) I))`` the ideal denoiser is
``D(x) = sum_k w_k (sigma^2 mu_k + s_k^2 x) / (s_k^2 + sigma^2)``. With ``conditional=True`` the label
is the component index and ``p(x | k) = N(mu_k, s_k^2 I)``, so classifier-free guidance is exact too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fdistill.core.noise import append_dims
from fdistill.nets.mlp import MLPDenoiser, MLPGenerator
from fdistill.teachers.base import Teacher

#: ``network.generator``: the denoiser MLP called at sigma_init, or the plain MLP generator (docs/math.md §5.1)
GENERATOR_NETWORKS = ("denoiser", "mlp")


class GaussianMixtureTeacher(Teacher):
    def __init__(
        self,
        means: Sequence[Sequence[float]],
        stds: Sequence[float] | None = None,
        weights: Sequence[float] | None = None,
        conditional: bool = False,
        hidden: int = 256,
        depth: int = 4,
        generator: str = "denoiser",
    ) -> None:
        super().__init__()
        if generator not in GENERATOR_NETWORKS:
            raise ValueError(f"generator={generator!r}; accepted: {', '.join(GENERATOR_NETWORKS)}")
        self._generator = generator
        mu = torch.as_tensor(means, dtype=torch.float32)
        k, d = mu.shape
        std = torch.as_tensor(stds if stds is not None else [0.1] * k, dtype=torch.float32)
        w = torch.as_tensor(weights if weights is not None else [1.0] * k, dtype=torch.float32)
        self.register_buffer("means", mu)
        self.register_buffer("stds", std)
        self.register_buffer("weights", w / w.sum())
        self.sample_shape = (d,)
        self.num_classes = k if conditional else 0
        self._hidden, self._depth = hidden, depth
        # data std (mixture variance averaged over dims), used for EDM preconditioning of students
        mean = (self.weights[:, None] * mu).sum(0)
        var = (self.weights * (std**2 + ((mu - mean) ** 2).mean(1))).sum()
        self.sigma_data = float(var.sqrt())

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def _log_resp(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Per-component log(pi_k N(x; mu_k, v_k I)) and the variances v_k = s_k^2 + sigma^2, shape (B, K)."""
        v = self.stds[None] ** 2 + append_dims(sigma.to(x.dtype), 2) ** 2  # (B, K)
        sq = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)  # (B, K)
        d = x.shape[1]
        logn = -0.5 * sq / v - 0.5 * d * torch.log(2 * math.pi * v)
        return self.weights.log()[None] + logn, v

    def _component_mask(self, cond: Tensor | None, like: Tensor) -> Tensor:
        if cond is None or self.num_classes == 0:
            return torch.zeros_like(like)
        mask = torch.full_like(like, -torch.inf)
        return mask.scatter(1, cond.long()[:, None], 0.0)

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0, cond: Tensor | None = None) -> Tensor:
        """Exact log p_sigma(x | cond), shape (B,)."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        logp, _ = self._log_resp(x, sigma)
        if cond is not None and self.num_classes:
            return logp.gather(1, cond.long()[:, None]).squeeze(1) - self.weights.log()[cond.long()]
        return torch.logsumexp(logp, dim=1)

    def denoise_cond(self, x_t: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
        sigma = sigma.to(x_t.dtype).expand(x_t.shape[0])
        logp, v = self._log_resp(x_t, sigma)
        resp = torch.softmax(logp + self._component_mask(cond, logp), dim=1)  # (B, K)
        s2 = self.stds[None] ** 2  # (1, K)
        post = (append_dims(sigma, 3) ** 2 * self.means[None] + s2[..., None] * x_t[:, None, :]) / v[..., None]
        return (resp[..., None] * post).sum(1)

    def features(self, x_t: Tensor, sigma: Tensor, cond: Tensor | None = None) -> list[Tensor]:
        """The analytic teacher has no encoder: its 'features' are the EDM-scaled input itself, so a
        head on teacher features is a plain MLP discriminator on (x_t, sigma)."""
        c_in = 1 / (append_dims(sigma.to(x_t.dtype), 2) ** 2 + self.sigma_data**2).sqrt()
        return [c_in * x_t]

    def make_network(self) -> MLPDenoiser:
        return MLPDenoiser(self.sample_shape[0], self._hidden, self._depth, self.num_classes, self.sigma_data)

    def make_generator_network(self) -> MLPDenoiser | MLPGenerator:
        """``network.generator``: the denoiser MLP (called at sigma_init) or a plain MLP of the noise (no skip path)."""
        if self._generator == "denoiser":
            return self.make_network()
        return MLPGenerator(self.sample_shape[0], self._hidden, self._depth, self.num_classes)

    @torch.no_grad()
    def sample_data(
        self, n: int, cond: Tensor | None = None, generator: torch.Generator | None = None, device="cpu"
    ) -> Tensor:
        """Exact samples of p_0 (or of component ``cond`` per row)."""
        if cond is None:
            cond_idx = torch.multinomial(self.weights.to(device), n, replacement=True, generator=generator)
        else:
            cond_idx = cond.long()
        noise = torch.randn(n, self.sample_shape[0], generator=generator, device=device)
        return self.means[cond_idx] + self.stds[cond_idx, None] * noise

    @torch.no_grad()
    def sample(self, n, cond=None, nfe=18, guidance=1.0, generator=None, device="cpu") -> Tensor:  # noqa: D102
        if guidance == 1.0:
            return self.sample_data(n, cond, generator, device)
        return super().sample(n, cond, nfe, guidance, generator, device)

    def sample_labels(self, n, generator=None, device="cpu"):
        if self.num_classes == 0:
            return None
        return torch.multinomial(self.weights.to(device), n, replacement=True, generator=generator)


def gaussian_mixture_from_config(t, network) -> GaussianMixtureTeacher:
    """Build from ``TeacherConfig``/``NetworkConfig`` (lists come from YAML)."""
    means = [[float(v) for v in m] for m in t.means]
    stds = [float(s) for s in t.stds] if t.stds is not None else None
    weights = [float(w) for w in t.weights] if t.weights is not None else None
    return GaussianMixtureTeacher(means, stds, weights, t.conditional, network.hidden, network.depth, network.generator)
