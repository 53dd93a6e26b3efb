"""Analytic Gaussian-mixture teacher (docs/math.md C8, C9): exact score, denoiser, Tweedie, CFG.

All exact checks run in float64 with dyadic means/stds (exactly representable in the float32 buffers
the teacher stores), so tolerances are ~1e-10 and only absorb rounding. Monte-Carlo checks use fixed
seeds and a tolerance of 5 standard errors computed from the same samples.
"""

from __future__ import annotations

import math

import pytest
import torch

from fdistill.core.noise import append_dims
from fdistill.teachers.base import Teacher
from fdistill.teachers.gmm import GaussianMixtureTeacher

MEANS = [[-1.5, 0.5], [1.0, 1.25], [0.25, -2.0]]
STDS = [0.25, 0.5, 1.0]
WEIGHTS = [0.5, 0.25, 0.25]


def _teacher(conditional: bool = False) -> GaussianMixtureTeacher:
    return GaussianMixtureTeacher(MEANS, STDS, WEIGHTS, conditional=conditional, hidden=8, depth=2).double()


def _inputs(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 2.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    sigma = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(0.01), math.log(20.0), generator=g))
    return x, sigma


def _ref_mixture(x: torch.Tensor, sigma: torch.Tensor, comps: list[int] | None = None):
    """Independent closed forms: log p_sigma(x), posterior weights and D(x) of the (sub-)mixture."""
    mu = torch.tensor(MEANS, dtype=torch.float64)
    s = torch.tensor(STDS, dtype=torch.float64)
    pi = torch.tensor(WEIGHTS, dtype=torch.float64)
    idx = list(range(len(MEANS))) if comps is None else comps
    mu, s, pi = mu[idx], s[idx], pi[idx] / pi[idx].sum()
    d = x.shape[1]
    v = s[None] ** 2 + sigma[:, None] ** 2  # (B, K)
    logn = torch.stack(
        [
            -0.5 * ((x - mu[k]) ** 2).sum(1) / v[:, k] - 0.5 * d * torch.log(2 * math.pi * v[:, k])
            for k in range(len(idx))
        ],
        1,
    )
    joint = torch.log(pi)[None] + logn
    w = torch.softmax(joint, 1)
    post = torch.stack(
        [(sigma[:, None] ** 2 * mu[k] + s[k] ** 2 * x) / v[:, k : k + 1] for k in range(len(idx))], 1
    )  # (B, K, d)
    return torch.logsumexp(joint, 1), (w[..., None] * post).sum(1)


def test_log_prob_matches_closed_form_and_is_normalised():
    t = _teacher()
    x, sigma = _inputs()
    logp_ref, _ = _ref_mixture(x, sigma)
    torch.testing.assert_close(t.log_prob(x, sigma), logp_ref, rtol=1e-12, atol=1e-12)
    # normalisation in 1-D (a 1-D mixture built from the first coordinates), trapezoid on a fine grid:
    t1 = GaussianMixtureTeacher([[m[0]] for m in MEANS], STDS, WEIGHTS).double()
    grid = torch.linspace(-30, 30, 12001, dtype=torch.float64)[:, None]
    for s in (0.0, 0.3, 3.0):
        mass = torch.trapezoid(t1.log_prob(grid, s).exp(), grid[:, 0])
        assert mass.item() == pytest.approx(1.0, abs=1e-8)


def test_denoiser_matches_closed_form_mixture():
    t = _teacher()
    x, sigma = _inputs()
    _, d_ref = _ref_mixture(x, sigma)
    torch.testing.assert_close(t.denoise(x, sigma), d_ref, rtol=1e-10, atol=1e-12)


def test_single_isotropic_gaussian_denoiser_closed_form():
    mu, s = torch.tensor([0.75, -1.25, 2.0], dtype=torch.float64), 0.5
    t = GaussianMixtureTeacher([mu.tolist()], [s], hidden=8, depth=2).double()
    g = torch.Generator().manual_seed(1)
    x = 3 * torch.randn(50, 3, generator=g, dtype=torch.float64)
    sigma = torch.linspace(0.002, 80.0, 50, dtype=torch.float64)
    expected = (append_dims(sigma, 2) ** 2 * mu + s**2 * x) / (s**2 + append_dims(sigma, 2) ** 2)
    torch.testing.assert_close(t.denoise(x, sigma), expected, rtol=1e-12, atol=1e-12)
    # scalar (0-dim) sigma broadcasts over the batch
    torch.testing.assert_close(
        t.denoise(x, torch.tensor(0.7, dtype=torch.float64)), (0.49 * mu + s**2 * x) / (s**2 + 0.49)
    )


def test_score_is_grad_log_prob_and_tweedie():
    """C8: s_p = grad_x log p_sigma (autograd) and s_p = (D - x)/sigma^2 (Tweedie)."""
    t = _teacher()
    x, sigma = _inputs(128, seed=3)
    xr = x.clone().requires_grad_(True)
    (grad_logp,) = torch.autograd.grad(t.log_prob(xr, sigma).sum(), xr)
    score = t.score(x, sigma)
    torch.testing.assert_close(score, grad_logp, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(score, (t.denoise(x, sigma) - x) / append_dims(sigma, 2) ** 2, rtol=1e-12, atol=0)


def test_denoiser_is_posterior_mean_monte_carlo():
    """D(x_t) = E[x0 | x_t]: the residual x0 - D(x_t) is orthogonal to any function of x_t, and D beats
    a perturbed denoiser in DSM loss. Samples from the teacher's own sampler (also checked here)."""
    t = _teacher()
    g = torch.Generator().manual_seed(7)
    n, sigma = 200_000, 0.9
    x0 = t.sample_data(n, generator=g).double()
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x_t = x0 + sigma * eps
    sig = torch.full((n,), sigma, dtype=torch.float64)
    res = x0 - t.denoise(x_t, sig)
    for feat in (torch.ones_like(x_t), x_t, torch.tanh(x_t[:, :1]) * x_t[:, 1:]):
        prod = (res * feat).sum(1)
        se = prod.std() / math.sqrt(n)
        assert abs(prod.mean().item()) < 5 * se.item()
    # DSM optimality against a small perturbation
    base = (res**2).sum(1).mean()
    pert = ((x0 - t.denoise(x_t, sig) - 0.05 * torch.tanh(x_t)) ** 2).sum(1).mean()
    assert pert > base
    # sample moments of p_0 (mixture mean), 5 standard errors
    mu = torch.tensor(MEANS, dtype=torch.float64)
    pi = torch.tensor(WEIGHTS, dtype=torch.float64)
    mean_ref = (pi[:, None] * mu).sum(0)
    se = x0.std(0) / math.sqrt(n)
    assert torch.all((x0.mean(0) - mean_ref).abs() < 5 * se)


def test_conditional_components_are_exact():
    t = _teacher(conditional=True)
    assert t.num_classes == 3
    x, sigma = _inputs(60, seed=4)
    cond = torch.arange(60) % 3
    for k in range(3):
        rows = cond == k
        _, d_k = _ref_mixture(x[rows], sigma[rows], comps=[k])
        torch.testing.assert_close(t.denoise_cond(x[rows], sigma[rows], cond[rows]), d_k, rtol=1e-12, atol=1e-12)
        v = STDS[k] ** 2 + sigma[rows] ** 2
        mu = torch.tensor(MEANS[k], dtype=torch.float64)
        logn = -0.5 * ((x[rows] - mu) ** 2).sum(1) / v - torch.log(2 * math.pi * v)
        torch.testing.assert_close(t.log_prob(x[rows], sigma[rows], cond[rows]), logn, rtol=1e-12, atol=1e-12)
    # cond=None is the unconditional mixture
    _, d_u = _ref_mixture(x, sigma)
    torch.testing.assert_close(t.denoise_cond(x, sigma, None), d_u, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("w", [1.0, 0.0, 1.75, 4.5])
def test_cfg_guidance_arithmetic_and_score_space(w):
    """D_w = D_u + w (D_c - D_u) (w = 1 off, §1.2), with D_u the *mixture* denoiser; the guided score is
    s_u + w (s_c - s_u) with both scores from autograd of log_prob; eps-space CFG gives the same D."""
    t = _teacher(conditional=True)
    x, sigma = _inputs(90, seed=5)
    cond = torch.arange(90) % 3
    _, d_u = _ref_mixture(x, sigma)
    d_c = torch.cat([_ref_mixture(x[i : i + 1], sigma[i : i + 1], comps=[int(cond[i])])[1] for i in range(90)])
    d_w = t.denoise(x, sigma, cond, guidance=w)
    torch.testing.assert_close(d_w, d_u + w * (d_c - d_u), rtol=1e-9, atol=1e-10)
    # score space, through autograd of the exact log-densities
    xr = x.clone().requires_grad_(True)
    (s_u,) = torch.autograd.grad(t.log_prob(xr, sigma).sum(), xr)
    (s_c,) = torch.autograd.grad(t.log_prob(xr, sigma, cond).sum(), xr)
    torch.testing.assert_close(t.score(x, sigma, cond, guidance=w), s_u + w * (s_c - s_u), rtol=1e-8, atol=1e-8)
    # eps-space CFG: eps = (x - D)/sigma, eps_w = eps_u + w (eps_c - eps_u)  =>  same D
    s = append_dims(sigma, 2)
    e_u, e_c = (x - d_u) / s, (x - d_c) / s
    torch.testing.assert_close(d_w, x - s * (e_u + w * (e_c - e_u)), rtol=1e-8, atol=1e-9)
    # no cond => guidance ignored
    torch.testing.assert_close(t.denoise(x, sigma, None, guidance=w), d_u, rtol=1e-10, atol=1e-12)


class _TwoGaussians(Teacher):
    """p(x | c) = N(mu_c, s^2 I), p(x) = N(mu_u, s^2 I): C9's equal-variance setting."""

    sample_shape = (2,)

    def __init__(self, mu_u, mu_c, s):
        super().__init__()
        self.mu_u, self.mu_c, self.s = mu_u, mu_c, s
        self.num_classes = mu_c.shape[0]

    def denoise_cond(self, x_t, sigma, cond):
        mu = self.mu_u if cond is None else self.mu_c[cond]
        s2 = append_dims(sigma, x_t.ndim) ** 2
        return (self.s**2 * x_t + s2 * mu) / (self.s**2 + s2)


def test_cfg_c9_equal_variance_gaussians():
    """C9: guided denoiser == denoiser of N(mu_u + w (mu_c - mu_u), s^2 I) at every sigma (Teacher.denoise)."""
    mu_u = torch.tensor([0.5, -0.25], dtype=torch.float64)
    mu_c = torch.tensor([[2.0, 1.0], [-1.0, 0.75]], dtype=torch.float64)
    s = 0.6
    t = _TwoGaussians(mu_u, mu_c, s)
    x, sigma = _inputs(40, seed=6)
    cond = torch.arange(40) % 2
    for w in (1.0, 2.0, 7.5):
        mu_w = mu_u + w * (mu_c[cond] - mu_u)
        s2 = append_dims(sigma, 2) ** 2
        torch.testing.assert_close(
            t.denoise(x, sigma, cond, guidance=w), (s**2 * x + s2 * mu_w) / (s**2 + s2), rtol=1e-12, atol=1e-12
        )


def test_the_mlp_generator_has_no_denoiser_skip_path():
    """``network.generator=mlp``: the generator predicts x0 with no ``c_skip x`` term (docs/math.md §5.1), starts as
    a small blob at the origin, and still reads the level (K-step students call it at every level)."""
    from fdistill.nets.mlp import MLPDenoiser, MLPGenerator

    teacher = GaussianMixtureTeacher(MEANS, STDS, WEIGHTS, hidden=16, depth=3, generator="mlp")
    assert isinstance(GaussianMixtureTeacher(MEANS, STDS, WEIGHTS).make_generator_network(), MLPDenoiser)  # default
    with pytest.raises(ValueError, match="generator"):
        GaussianMixtureTeacher(MEANS, STDS, WEIGHTS, generator="unet")
    torch.manual_seed(0)
    gen_net, fake_net = teacher.make_generator_network(), teacher.make_network()
    assert isinstance(gen_net, MLPGenerator) and isinstance(fake_net, MLPDenoiser)
    x, sigma = 4.0 * torch.randn(256, 2), torch.full((256,), 4.0)
    # the old generator (a denoiser) passes c_skip x through; the plain MLP's output does not grow with x that way
    with torch.no_grad():
        for m in (gen_net.out[1], fake_net.out[1]):
            m.weight.zero_()
            m.bias.zero_()
        assert torch.count_nonzero(gen_net(x, sigma)) == 0
        c_skip = teacher.sigma_data**2 / (16.0 + teacher.sigma_data**2)
        assert torch.allclose(fake_net(x, sigma), c_skip * x)
    fresh = teacher.make_generator_network()
    from fdistill.config import load_config
    from fdistill.teachers import build_teacher

    ring = build_teacher(load_config("configs/gmm8.yaml", ["network.generator=mlp"]))
    assert isinstance(ring.make_generator_network(), MLPGenerator)
    with torch.no_grad():
        blob = fresh(4.0 * torch.randn(1024, 2), torch.full((1024,), 4.0))
        other_level = fresh(4.0 * torch.randn(1024, 2), torch.full((1024,), 0.3))
    assert blob.std() < 0.2 * teacher.sigma_data  # a small start, not the noise passed through
    assert not torch.allclose(blob.mean(0), other_level.mean(0), atol=1e-6)  # the level is an input


def test_image_teachers_keep_the_teacher_copy_as_generator():
    """Every other teacher kind: the generator's network is :meth:`make_network` (the teacher's weights)."""
    assert Teacher.make_generator_network is not GaussianMixtureTeacher.make_generator_network
    from fdistill.teachers.diffusers import UNetTeacher
    from fdistill.teachers.latent import LatentTeacher

    for kind in (UNetTeacher, LatentTeacher):
        assert kind.make_generator_network is Teacher.make_generator_network
