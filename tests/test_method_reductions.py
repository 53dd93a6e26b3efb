"""Exact reductions between methods (docs/math.md §2.9, §4), per-noise-level ratio normalisation, and
non-finite handling.

Everything runs in float64 on a random tiny MLP generator and random frozen MLP denoisers /
discriminator (parameters requires_grad=False, differentiable in their input), image-shaped samples
(B, 3, 2, 2) so that mean/sum over non-batch dims matter. Equalities are algebraic identities, so
per-sample losses and generator gradients must agree to rounding: rtol 1e-10 (a few float64 ops;
the float32 cast of r inside FDistill is only involved where noted, with its own tolerance).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fdistill.config import MethodConfig
from fdistill.core.noise import SIGMA_MAX, SIGMA_MIN
from fdistill.methods import GeneratorInputs, build
from fdistill.methods.base import Method
from fdistill.methods.f_distill import PerNoiseLevelMean

DT = torch.float64
SHAPE = (3, 2, 2)
NUMEL = 12
EXACT = dict(rtol=1e-10, atol=1e-12)


class FrozenNet(nn.Module):
    """Random frozen MLP on (flattened x_t, log sigma) -> out_dim (or the x shape)."""

    def __init__(self, out_dim: int | None, seed: int, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(NUMEL + 1, 32, generator=g, dtype=DT) / math.sqrt(NUMEL)
        self.w2 = torch.randn(32, out_dim or NUMEL, generator=g, dtype=DT) / math.sqrt(32) * scale
        self.out_dim = out_dim

    def forward(self, x_t, sigma, cond=None):
        inp = torch.cat([x_t.flatten(1), sigma.log()[:, None].to(x_t.dtype)], 1)
        out = torch.tanh(inp @ self.w1) @ self.w2
        return out[:, 0] if self.out_dim == 1 else out.reshape(x_t.shape)


class World:
    """A tiny MLP generator, frozen denoisers, a frozen logit net and a differentiable reward."""

    def __init__(self, batch: int = 16, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.gen = nn.Sequential(nn.Linear(5, 24), nn.Tanh(), nn.Linear(24, NUMEL)).double()
        g = torch.Generator().manual_seed(seed + 1)
        self.z = torch.randn(batch, 5, generator=g, dtype=DT)
        self.eps = torch.randn(batch, *SHAPE, generator=g, dtype=DT)
        self.sigma = torch.exp(-0.5 + 1.2 * torch.randn(batch, generator=g, dtype=DT))
        teacher_net, fake_net = FrozenNet(None, seed + 2), FrozenNet(None, seed + 3)
        # denoiser = residual around x_t so that D - x_t is O(1)
        self.teacher = lambda x, s, c=None: x + teacher_net(x, s)
        self.fake = lambda x, s, c=None: x + fake_net(x, s)
        self.logit_net = FrozenNet(1, seed + 4, scale=3.0)
        self.target = torch.randn(*SHAPE, generator=g, dtype=DT)

    def reward(self, x0, cond=None):
        return -((x0 - self.target) ** 2).flatten(1).sum(1) + torch.sin(x0).flatten(1).sum(1)

    def inputs(self, teacher=None, logit=None):
        x0 = self.gen(self.z).reshape(-1, *SHAPE)
        b = GeneratorInputs(
            x0=x0,
            sigma=self.sigma,
            eps=self.eps,
            teacher=teacher or self.teacher,
            fake=self.fake,
            logit=logit or self.logit_net,
            reward=self.reward,
        )
        return b

    def run(self, cfg: MethodConfig, method: Method | None = None, **kw):
        """(per-sample loss, generator-parameter gradients of loss.sum(), d loss.sum() / d x0, b)."""
        method = method or build(cfg)
        b = self.inputs(**kw)
        out = method.generator_loss(b)
        params = list(self.gen.parameters())
        grads = torch.autograd.grad(out.loss.sum(), [b.x0, *params], allow_unused=True)
        return out.loss.detach(), [g for g in grads[1:]], grads[0], b


def assert_grads_close(ga, gb, scale=1.0, **tol):
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, scale * b, **(tol or EXACT))


@pytest.fixture(scope="module")
def world():
    return World()


# ------------------------------------------------------------------------------------------------
# exact reductions
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
def test_uni_instruct_rkl_is_twice_sid_half(world, normalize):
    """§2.7: h = 1 gives |u|^2 + 2 u.(s_q - grad log q) = 2 x SiD(alpha = 0.5)."""
    la, ga, _, _ = world.run(MethodConfig(name="uni_instruct", divergence="rkl", normalize=normalize))
    lb, gb, _, _ = world.run(MethodConfig(name="sid", alpha=0.5, normalize=normalize))
    torch.testing.assert_close(la, 2 * lb, **EXACT)
    assert_grads_close(ga, gb, 2.0)


@pytest.mark.parametrize("normalize", [True, False])
def test_sim_l2_is_twice_sid_one(world, normalize):
    """§2.5: d = |.|^2 (d' = 2u) gives 2 x SiD(alpha = 1)."""
    la, ga, _, _ = world.run(MethodConfig(name="sim", distance="l2", normalize=normalize))
    lb, gb, _, _ = world.run(MethodConfig(name="sid", alpha=1.0, normalize=normalize))
    torch.testing.assert_close(la, 2 * lb, **EXACT)
    assert_grads_close(ga, gb, 2.0)


@pytest.mark.parametrize("name", ["sid", "sim", "uni_instruct"])
def test_l1_normaliser_is_a_stop_gradient_per_sample_weight(world, name):
    """SiD-family weighting: normalize=True divides each sample's loss by sg(mean_chw|x0 - D_p|) (§2.4);
    the weight is detached, so the gradient is sum_i grad(loss_i) / wf_i."""
    extra = {"alpha": 1.2} if name == "sid" else {}
    la, ga, _, b = world.run(MethodConfig(name=name, normalize=True, **extra))
    method = build(MethodConfig(name=name, normalize=False, **extra))
    b2 = world.inputs()
    wf = (b2.x0 - world.teacher(b2.x_t, b2.sigma)).abs().mean((1, 2, 3)).detach().clamp_min(1e-5)
    loss = method.generator_loss(b2).loss
    torch.testing.assert_close(la, (loss / wf).detach(), **EXACT)
    gb = torch.autograd.grad((loss / wf).sum(), list(world.gen.parameters()))
    assert_grads_close(ga, gb)


@pytest.mark.parametrize("extra", [dict(ratio_bins=0, normalize_h=False), dict()], ids=["norm-off", "defaults"])
def test_fdistill_rkl_is_dmd(world, extra):
    """§2.6: f-distill with RKL (h = 1) is DMD (L1 normaliser on in both)."""
    la, ga, _, _ = world.run(MethodConfig(name="fdistill", divergence="rkl", normalize=True, **extra))
    lb, gb, _, _ = world.run(MethodConfig(name="dmd", normalize=True))
    torch.testing.assert_close(la, lb, **EXACT)
    assert_grads_close(ga, gb)


@pytest.mark.parametrize("name", ["kl", "js", "jf", "sh", "sf", "neyman", "alpha"])
@pytest.mark.parametrize("ratio_bins", [0, 10])
def test_fdistill_constant_ratio_with_h_normalisation_is_dmd(world, name, ratio_bins):
    """§3 normalisation step (3): h / batch-mean(h) makes any divergence reduce to DMD when r is constant
    (here logit = 0.7 everywhere; with bins, r / bin-mean(r) = 1). The only deviations are the absolute
    +1e-6 in the denominators (relative 1e-6 / h, h >= 0.33 here: <= 3e-6 on the gradient, twice that on
    the loss, which is quadratic in h) and the float32 h: rtol 1e-5 / 2e-5."""
    cfg = MethodConfig(name="fdistill", divergence=name, normalize=True, ratio_bins=ratio_bins, normalize_h=True)
    const = lambda x, s, c=None: torch.full((x.shape[0],), 0.7, dtype=x.dtype)  # noqa: E731
    la, ga, _, _ = world.run(cfg, logit=const)
    lb, gb, _, _ = world.run(MethodConfig(name="dmd", normalize=True))
    torch.testing.assert_close(la, lb, rtol=2e-5, atol=1e-12)  # loss ~ h^2
    assert_grads_close(ga, gb, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("distance", ["pseudo_huber", "l2"])
def test_di_star_without_reward_is_sim(world, distance):
    la, ga, _, _ = world.run(MethodConfig(name="di_star", distance=distance, huber_c=0.3, alpha_rev=0.0))
    lb, gb, _, _ = world.run(MethodConfig(name="sim", distance=distance, huber_c=0.3))
    torch.testing.assert_close(la, lb, **EXACT)
    assert_grads_close(ga, gb)


def test_di_star_reward_term(world):
    """L_DI* = L_SIM - alpha_rev R(x0): loss and gradient differ by exactly -alpha_rev (R, grad R)."""
    alpha_rev = 2.5
    la, ga, _, b = world.run(MethodConfig(name="di_star", distance="pseudo_huber", alpha_rev=alpha_rev))
    lb, gb, _, _ = world.run(MethodConfig(name="sim", distance="pseudo_huber"))
    x0 = world.gen(world.z).reshape(-1, *SHAPE)
    reward = world.reward(x0)
    g_r = torch.autograd.grad(reward.sum(), list(world.gen.parameters()))
    torch.testing.assert_close(la, lb - alpha_rev * reward.detach(), **EXACT)
    for a, bb, r in zip(ga, gb, g_r, strict=True):
        torch.testing.assert_close(a, bb - alpha_rev * r, **EXACT)
    # CFG omega folded into the reference score: guidance w = 1 + omega (§2.8)
    assert build(MethodConfig(name="di_star", alpha_cfg=7.5)).teacher_guidance == 8.5
    assert build(MethodConfig(name="sim", guidance=3.0)).teacher_guidance == 3.0


def test_di_gradient_is_dq_minus_dp(world):
    """§2.1: d/dx0 of the DI loss is D_q - D_p (w = sigma^2 in score form), no backprop through nets."""
    loss, _, g_x0, b = world.run(MethodConfig(name="di"))
    x_t = b.x_t.detach()
    expected = world.fake(x_t, b.sigma) - world.teacher(x_t, b.sigma)
    torch.testing.assert_close(g_x0, expected, **EXACT)
    torch.testing.assert_close(loss, (expected * b.x0.detach()).flatten(1).sum(1), **EXACT)


@pytest.mark.parametrize("normalize", [True, False])
def test_dmd_gradient(world, normalize):
    """§2.3: d/dx0 of the per-sample DMD loss is (D_q - D_p) / mean_chw|x0 - D_p| / numel (numel = C*H*W,
    the pseudo-target loss is a per-sample mean); no backprop through the networks."""
    _, _, g_x0, b = world.run(MethodConfig(name="dmd", normalize=normalize))
    x0, x_t = b.x0.detach(), b.x_t.detach()
    d_p, d_q = world.teacher(x_t, b.sigma), world.fake(x_t, b.sigma)
    g = d_q - d_p
    if normalize:
        g = g / (x0 - d_p).abs().mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(g_x0, g / NUMEL, **EXACT)


def assert_plus_gan_term(world, with_gan, without_gan, weight: float, sida: bool = False) -> None:
    """Loss and generator gradient of ``with_gan`` are those of ``without_gan`` plus ``weight`` times the
    non-saturating GAN term ``softplus(-logit(x_t))`` (and its gradient) on the same batch; for SiDA times
    ``numel / sg(mean |x0 - D_p|)`` per sample, the SiD term's scale."""
    (la, ga), (lb, gb) = with_gan, without_gan
    b = world.inputs()
    gan = torch.nn.functional.softplus(-world.logit_net(b.x_t, b.sigma))
    if sida:
        wf = (b.x0 - world.teacher(b.x_t, b.sigma)).abs().flatten(1).mean(1).detach()
        gan = gan * b.x0[0].numel() / wf
    g_gan = torch.autograd.grad(gan.sum(), list(world.gen.parameters()))
    torch.testing.assert_close(la, lb + weight * gan.detach(), **EXACT)
    for a, bb, gg in zip(ga, gb, g_gan, strict=True):
        torch.testing.assert_close(a, bb + weight * gg, **EXACT)


@pytest.mark.parametrize(
    "cfg",
    [
        MethodConfig(name="dmd"),
        MethodConfig(name="fdistill", divergence="js", ratio_bins=0),
        MethodConfig(name="fdistill", divergence="rkl"),
        MethodConfig(name="uni_instruct", divergence="sf"),
        MethodConfig(name="sid", alpha=1.0),
        MethodConfig(name="di_star", distance="pseudo_huber", alpha_rev=2.5),
    ],
    ids=["dmd", "fdistill-js", "fdistill-rkl", "uni_instruct-sf", "sida", "di_star-sida"],
)
def test_gan_term(world, cfg):
    """DMD2-style + gan_weight * softplus(-logit(x_t)), gradient through the frozen discriminator; SiDA (sid) and
    DI* with SiDA's term: times numel / wf."""
    from dataclasses import replace

    la, ga, _, _ = world.run(replace(cfg, gan_weight=0.3))
    lb, gb, _, _ = world.run(replace(cfg, gan_weight=0.0))
    assert build(replace(cfg, gan_weight=0.3)).needs_discriminator
    assert_plus_gan_term(world, (la, ga), (lb, gb), weight=0.3, sida=cfg.name in ("sid", "di_star"))


def test_uni_instruct_h_normalisation_is_a_batch_constant(world):
    """normalize_h divides h and h - r h' by the same stop-gradient batch mean of h (docstring): the
    per-sample loss and the gradient scale by exactly 1 / (mean h + 1e-6)."""
    from fdistill.core import divergences

    base = dict(name="uni_instruct", divergence="js", ratio_min=1e-6, ratio_max=1e6, logit_clip=50.0)
    la, ga, _, b = world.run(MethodConfig(normalize_h=True, **base))
    lb, gb, _, _ = world.run(MethodConfig(normalize_h=False, **base))
    h = divergences.get("js").h(world.logit_net(b.x_t.detach(), b.sigma).exp())
    scale = h.mean() + 1e-6
    torch.testing.assert_close(la, lb / scale, rtol=1e-6, atol=1e-12)  # float32 r inside: rtol 1e-6
    # the r-branch (h, h - r h' and their derivative through the logit) runs in float32 inside the
    # method, so gradient entries carry ~1e-7 x the size of the terms that cancel in them: compare with
    # an absolute tolerance of 1e-5 x the largest entry of each tensor
    for a, bb in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, bb / scale.item(), rtol=1e-6, atol=1e-5 * bb.abs().max().item())


def test_ratio_methods_require_a_discriminator(world):
    for cfg in (MethodConfig(name="fdistill", divergence="js"), MethodConfig(name="uni_instruct", divergence="kl")):
        method = build(cfg)
        assert method.needs_discriminator
        b = world.inputs()
        b.logit = None
        with pytest.raises(AssertionError):
            method.generator_loss(b)
    assert not build(MethodConfig(name="fdistill", divergence="rkl")).needs_discriminator
    assert build(MethodConfig(name="fdistill", divergence="rkl", gan_weight=0.1)).needs_discriminator
    assert build(MethodConfig(name="sid", gan_weight=0.01)).needs_discriminator  # SiDA
    assert not build(MethodConfig(name="sid")).needs_discriminator


@pytest.mark.parametrize("name", ["kl", "js", "sh"])
def test_fdistill_weighting_with_clipping_and_h_normalisation(world, name):
    """d/dx0 = h(r)/mean(h) (D_q - D_p)/mean|x0 - D_p|/numel with r = clip(exp(clamp(logit, +-c)), r_min,
    r_max) (FastGen's guards, §2.6). The logits span about +-6, so the clamp (c = 2) and the r clip
    ([0.5, 3]) both bind. float32 r inside the method: rtol 1e-6."""
    from fdistill.core import divergences

    cfg = MethodConfig(name="fdistill", divergence=name, normalize=True, ratio_bins=0, normalize_h=True,
                       logit_clip=2.0, ratio_min=0.5, ratio_max=3.0)  # fmt: skip
    _, _, g_x0, b = world.run(cfg)
    x0, x_t = b.x0.detach(), b.x_t.detach()
    logit = world.logit_net(x_t, b.sigma)
    assert logit.max() > 2 and logit.min() < -2  # the guards are exercised
    r = logit.clamp(-2, 2).exp().clamp(0.5, 3.0)
    assert (r == 0.5).any() and (r == 3.0).any()
    h = divergences.get(name).h(r)
    h = h / (h.mean() + 1e-6)
    d_p, d_q = world.teacher(x_t, b.sigma), world.fake(x_t, b.sigma)
    g = (d_q - d_p) / (x0 - d_p).abs().mean((1, 2, 3), keepdim=True) * h[:, None, None, None]
    torch.testing.assert_close(g_x0, g / NUMEL, rtol=1e-6, atol=1e-12)


def test_discriminator_bce_optimum_is_log_ratio():
    """Per-x expected BCE, p softplus(-l) + q softplus(l), built from the library's per-sample loss, is
    minimised at l = log(p/q): the ratio f-distill / Uni-Instruct read off the logit (§2.6). The
    objective is strictly convex in l, so a zero derivative at log(p/q) identifies the minimiser."""
    p = torch.tensor([0.05, 0.3, 1.0, 2.0, 7.0], dtype=DT)
    q = torch.tensor([1.0, 0.9, 1.0, 0.25, 0.5], dtype=DT)
    inf = torch.full_like(p, float("inf"))

    def objective(l):
        # discriminator_loss(real, fake) = softplus(-real) + softplus(fake); a +-inf argument switches a half off
        return p * Method.discriminator_loss(l, -inf) + q * Method.discriminator_loss(inf, l)

    l_star = torch.log(p / q).requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(l_star).sum(), l_star)
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-14)
    for delta in (-0.1, 0.1):
        assert torch.all(objective(l_star.detach() + delta) > objective(l_star.detach()))


# ------------------------------------------------------------------------------------------------
# per-noise-level ratio normalisation (FastGen step (2), log-sigma bins)
# ------------------------------------------------------------------------------------------------


def _bin(sigma: torch.Tensor, n_bins: int = 10) -> torch.Tensor:
    lo, hi = math.log(SIGMA_MIN), math.log(SIGMA_MAX)
    return ((sigma.log() - lo) / (hi - lo) * n_bins).floor().long().clamp(0, n_bins - 1)


def _sigma_in_bins(bins: list[int], per_bin: int, seed: int) -> torch.Tensor:
    """sigma drawn inside the given log-uniform bins (away from the edges)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = math.log(SIGMA_MIN), math.log(SIGMA_MAX)
    width = (hi - lo) / 10
    out = [torch.exp(lo + width * (k + 0.05 + 0.9 * torch.rand(per_bin, generator=g, dtype=DT))) for k in bins]
    return torch.cat(out)


def _ratio_inputs(sigma: torch.Tensor, seed: int):
    g = torch.Generator().manual_seed(seed)
    n = sigma.shape[0]
    # make the raw mean of r differ strongly between bins
    logit = torch.randn(n, generator=g, dtype=DT) + 0.3 * _bin(sigma).to(DT) - 1.0
    b = GeneratorInputs(
        x0=torch.zeros(n, 2, dtype=DT), sigma=sigma, eps=torch.zeros(n, 2, dtype=DT), teacher=None, fake=None
    )
    return b, logit


def _ratio_cfg(ema: float) -> MethodConfig:
    # kl: h = r, so the returned h shows the normalised r directly; wide clip so only normalisation acts
    return MethodConfig(name="fdistill", divergence="kl", ratio_bins=10, ratio_ema=ema, normalize_h=False,
                        ratio_min=1e-4, ratio_max=1e4, logit_clip=20.0)  # fmt: skip


def test_bins_are_uniform_in_log_sigma():
    m = PerNoiseLevelMean(10, 0.0)
    sigma = torch.exp(torch.linspace(math.log(1e-4), math.log(500.0), 2001, dtype=DT))
    assert torch.equal(m.bin_of(sigma), _bin(sigma))
    assert m.bin_of(torch.tensor([SIGMA_MIN, SIGMA_MAX], dtype=DT)).tolist() == [0, 9]


def _ratio_method(ema: float, min_count: float):
    method = build(_ratio_cfg(ema))
    method.ratio_means.min_count = min_count  # not a config key: the pooling threshold of sparse bins
    return method


def test_ratio_normalisation_mean_one_per_bin():
    """ema 0 and bins holding min_count samples: FastGen's per-bin mean of the current batch (test_ratio_
    normalization.py covers small batches, where bins below min_count pool with their neighbours)."""
    method = _ratio_method(ema=0.0, min_count=50)
    sigma = _sigma_in_bins([1, 4, 8], per_bin=50, seed=0)
    b, logit = _ratio_inputs(sigma, seed=1)
    h, r = method.weights(b, logit)
    torch.testing.assert_close(h, r.to(h.dtype))
    idx = _bin(sigma)
    r_raw = logit.exp()
    stats = method.ratio_means
    for k in range(10):
        rows = idx == k
        if rows.any():
            # E_q[r] = 1 in every occupied bin (up to the +1e-6: 1e-5)
            assert r[rows].double().mean().item() == pytest.approx(1.0, abs=1e-5)
            expected = r_raw[rows] / (r_raw[rows].mean() + 1e-6)
            torch.testing.assert_close(r[rows].double(), expected, rtol=1e-6, atol=0)
            assert stats.bin_means()[k].item() == pytest.approx(r_raw[rows].mean().item(), rel=1e-12)
            assert stats.counts[k].item() == 50 and stats.sums[k].item() == pytest.approx(r_raw[rows].sum().item())
        else:
            assert stats.counts[k].item() == 0 and stats.sums[k].item() == 0


def test_ratio_normalisation_ema_and_state_dict():
    """Decayed sums and counts: after two batches a bin's mean is (ema S1 + S2) / (ema C1 + C2)."""
    method = _ratio_method(ema=0.5, min_count=0)
    s1 = _sigma_in_bins([2, 5], per_bin=40, seed=2)
    s2 = _sigma_in_bins([5, 9], per_bin=40, seed=3)
    b1, l1 = _ratio_inputs(s1, seed=4)
    b2, l2 = _ratio_inputs(s2, seed=5)
    method.weights(b1, l1)
    m1 = {k: l1.exp()[_bin(s1) == k].mean().item() for k in (2, 5)}
    m2 = {k: l2.exp()[_bin(s2) == k].mean().item() for k in (5, 9)}
    _, r2 = method.weights(b2, l2)
    means = method.ratio_means.bin_means()
    # a bin seen only once is its batch mean; bin 5: (0.5 * 40 m1 + 40 m2) / (0.5 * 40 + 40)
    expected = {2: m1[2], 5: (m1[5] + 2 * m2[5]) / 3, 9: m2[9]}
    for k, v in expected.items():
        assert means[k].item() == pytest.approx(v, rel=1e-12)
    idx2 = _bin(s2)
    for k in (5, 9):
        rows = idx2 == k
        torch.testing.assert_close(r2[rows].double(), l2.exp()[rows] / (expected[k] + 1e-6), rtol=1e-6, atol=0)
    # the running statistics are module state: saved and restored with the method
    state = method.state_dict()
    assert {"ratio_means.sums", "ratio_means.counts"} <= set(state)
    restored = _ratio_method(ema=0.5, min_count=0)
    restored.load_state_dict(state)
    b3, l3 = _ratio_inputs(_sigma_in_bins([2, 9], per_bin=10, seed=6), seed=7)
    torch.testing.assert_close(restored.weights(b3, l3), method.weights(b3, l3), rtol=0, atol=0)
    fresh = _ratio_method(ema=0.5, min_count=0)
    assert not torch.allclose(fresh.weights(b3, l3)[1], restored.weights(b3, l3)[1])


def test_ratio_normalisation_loads_a_checkpoint_of_the_former_per_batch_means():
    """A checkpoint with the former buffers (means, seen) loads; the statistics start afresh."""
    method = build(_ratio_cfg(0.5))
    method.load_state_dict({"ratio_means.means": torch.full((10,), 3.0), "ratio_means.seen": torch.ones(10).bool()})
    assert method.ratio_means.counts.sum().item() == 0 and method.ratio_means.bin_means().tolist() == [1.0] * 10


def test_ratio_normalisation_reaches_the_generator_gradient(world):
    """Through generator_loss: d/dx0 = r / mean(r) (D_q - D_p) / numel for kl (normalize=False); 16 samples are
    far below min_count, so every bin pools to the global mean of the batch."""
    cfg = _ratio_cfg(ema=0.0)
    _, _, g_x0, b = world.run(cfg)
    x_t = b.x_t.detach()
    r = world.logit_net(x_t, b.sigma).exp()
    norm = r.mean() + 1e-6
    cfg_dir = (world.fake(x_t, b.sigma) - world.teacher(x_t, b.sigma)) / (
        (b.x0.detach() - world.teacher(x_t, b.sigma)).abs().mean((1, 2, 3), keepdim=True)
    )
    expected = cfg_dir * (r / norm)[:, None, None, None] / NUMEL
    torch.testing.assert_close(g_x0, expected, rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# non-finite rows
# ------------------------------------------------------------------------------------------------

BAD = 3


def _bad_teacher(world, value):
    bad = torch.zeros(16, *SHAPE, dtype=DT)
    bad[BAD, 0, 0, 0] = value
    return lambda x, s, c=None: world.teacher(x, s) + bad


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("normalize", [True, False])
def test_sid_drops_nonfinite_rows_loss(world, normalize, value):
    """SiD drops samples with non-finite values: that row's loss is 0, the other rows are unchanged."""
    cfg = MethodConfig(name="sid", alpha=1.2, normalize=normalize)
    clean, _, _, _ = world.run(cfg)
    out = build(cfg).generator_loss(world.inputs(teacher=_bad_teacher(world, value)))
    loss = out.loss.detach()
    assert loss[BAD].item() == 0.0
    keep = torch.arange(16) != BAD
    torch.testing.assert_close(loss[keep], clean[keep], rtol=0, atol=0)
    assert out.logs["dropped"].item() == 1.0


CFGS_NAN = {
    "sid": MethodConfig(name="sid", alpha=1.2),
    "sim": MethodConfig(name="sim"),
    # normalize_h off: with it the batch mean of h is over the kept rows (test_nonfinite_rows.py)
    "uni_instruct": MethodConfig(name="uni_instruct", divergence="js", normalize_h=False),
    "di_star": MethodConfig(name="di_star"),
    "dmd": MethodConfig(name="dmd"),
    "dmd_unnormalized": MethodConfig(name="dmd", normalize=False),
    "fdistill": MethodConfig(name="fdistill", divergence="js", ratio_bins=0),
    "di": MethodConfig(name="di"),
}


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("name", list(CFGS_NAN))
def test_nonfinite_rows_do_not_poison_the_gradient(world, name, value):
    """A sample whose teacher output is non-finite must contribute nothing to the generator gradient:
    the gradient w.r.t. x0 is finite, zero on that row (for DI and unnormalised DMD, which have no
    per-sample row logic, only a finite, O(1) gradient is required there) and unchanged on the other
    rows, so the parameter gradient is finite. SiD's reference drops NaN rows by indexing *before* the
    loss; a NaN/inf that reaches the backward pass turns every parameter gradient non-finite, and the
    trainer then skips the whole step (fdistill/train/distill.py ``_grads_finite``) instead of dropping
    one sample."""
    cfg = CFGS_NAN[name]
    keep = torch.arange(16) != BAD
    _, _, g_clean, _ = world.run(cfg)
    loss, grads, g_x0, _ = world.run(cfg, teacher=_bad_teacher(world, value))
    assert torch.isfinite(loss).all(), f"{name}: non-finite loss {loss.tolist()}"
    bad_rows = (~torch.isfinite(g_x0)).flatten(1).any(1).nonzero().flatten().tolist()
    assert not bad_rows, f"{name}: non-finite x0-gradient on rows {bad_rows}"
    # clean gradients are O(1); nan_to_num's default maps +-inf to +-1.8e308, which is not "dropping"
    assert g_x0.abs().max() < 1e6, f"{name}: x0-gradient of magnitude {g_x0.abs().max().item():.3g}"
    if name not in ("di", "dmd_unnormalized"):  # no per-sample row logic there
        assert torch.all(g_x0[BAD] == 0)
    torch.testing.assert_close(g_x0[keep], g_clean[keep], **EXACT)
    assert all(torch.isfinite(g).all() for g in grads), f"{name}: non-finite generator-parameter gradient"


# ------------------------------------------------------------------------------------------------
# one discriminator forward per generator step
# ------------------------------------------------------------------------------------------------


class CountingLogit:
    def __init__(self, fn) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, x_t, sigma, cond=None):
        self.calls += 1
        return self.fn(x_t, sigma, cond)


@pytest.mark.parametrize(
    "cfg",
    [
        MethodConfig(name="fdistill", divergence="js", gan_weight=0.3),
        MethodConfig(name="fdistill", divergence="js", gan_weight=0.3, ratio_bins=0),
        MethodConfig(name="uni_instruct", divergence="js", gan_weight=0.3),
    ],
    ids=["fdistill-js-bins", "fdistill-js", "uni_instruct-js"],
)
def test_gan_term_and_ratio_share_one_discriminator_forward(world, cfg):
    """With gan_weight > 0 and a ratio divergence the logit is computed once: the GAN term differentiates it and
    the ratio weight uses it (detached for f-distill). Loss and gradient equal the two-forward version: the ratio
    part alone (gan_weight = 0) plus gan_weight * softplus(-logit(x_t)) from a separate forward."""
    from dataclasses import replace

    counter = CountingLogit(world.logit_net)
    la, ga, _, _ = world.run(cfg, logit=counter)
    assert counter.calls == 1
    counter0 = CountingLogit(world.logit_net)
    lb, gb, _, _ = world.run(replace(cfg, gan_weight=0.0), logit=counter0)
    assert counter0.calls == 1
    assert_plus_gan_term(world, (la, ga), (lb, gb), weight=0.3, sida=cfg.name == "sid")
