"""f-distill's per-noise-level density-ratio normaliser (FastGen step (2), docs/math.md §2.6, §3) at small batch.

A 2-D mixture with a known density ratio: p and q share component means and stds and differ only in their
weights, so ``r_sigma = p_sigma / q_sigma`` is exact in closed form and ``E_{q_sigma}[r_sigma] = 1`` at every
sigma. Fed batches of 32 drawn from q (sigma on f-distill's Karras grid), the normaliser -- the divisor of r --
must stay close to 1 in every bin, and the normalised r must keep its per-sample variation. The old per-batch
bin mean failed both at batch 32: bins holding one sample divide r by itself (r = 1 exactly: DMD).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fdistill.config import MethodConfig
from fdistill.core.noise import SIGMA_MAX, SIGMA_MIN, SigmaSampler
from fdistill.methods import GeneratorInputs, build
from fdistill.methods.f_distill import PerNoiseLevelMean

DT = torch.float64
MEANS = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=DT)
STD = 0.25  # well separated at small sigma: r is bimodal (7/3 or 3/7), std(r) = 0.87 there
W_P = torch.tensor([0.7, 0.3], dtype=DT)
W_Q = torch.tensor([0.3, 0.7], dtype=DT)
RATIO_EMA = 0.99  # the recommended default of method.ratio_ema at batch 32 (memory ~100 steps, 3200 samples)
FDISTILL_SIGMA = SigmaSampler("karras_grid", grid_lo=2, grid_hi=998)


def mixture_log_prob(x: torch.Tensor, sigma: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``log sum_k w_k N(x; mu_k, (STD^2 + sigma^2) I)`` for x of shape (B, 2), sigma (B,)."""
    v = STD**2 + sigma[:, None] ** 2  # (B, 1)
    sq = ((x[:, None, :] - MEANS[None]) ** 2).sum(-1)  # (B, K)
    return torch.logsumexp(weights.log()[None] - 0.5 * sq / v - torch.log(2 * math.pi * v), dim=1)


def draw_from_q(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma, exact log p_sigma(x_t) / q_sigma(x_t)) for x0 ~ q, x_t = x0 + sigma eps."""
    sigma = FDISTILL_SIGMA(n, gen).to(DT)
    comp = (torch.rand(n, generator=gen, dtype=DT) < W_Q[1]).long()
    x0 = MEANS[comp] + STD * torch.randn(n, 2, generator=gen, dtype=DT)
    x_t = x0 + sigma[:, None] * torch.randn(n, 2, generator=gen, dtype=DT)
    return sigma, mixture_log_prob(x_t, sigma, W_P) - mixture_log_prob(x_t, sigma, W_Q)


def inputs(sigma: torch.Tensor) -> GeneratorInputs:
    z = torch.zeros(sigma.shape[0], 2, dtype=DT)
    return GeneratorInputs(x0=z, sigma=sigma, eps=z, teacher=None, fake=None)


def bins_of(sigma: torch.Tensor, n_bins: int = 10) -> torch.Tensor:
    lo, hi = math.log(SIGMA_MIN), math.log(SIGMA_MAX)
    return ((sigma.log() - lo) / (hi - lo) * n_bins).floor().long().clamp(0, n_bins - 1)


def sigma_in_bin(k: int, n: int) -> torch.Tensor:
    lo, hi = math.log(SIGMA_MIN), math.log(SIGMA_MAX)
    return torch.exp(lo + (hi - lo) / 10 * (k + torch.linspace(0.1, 0.9, n, dtype=DT)))


def test_exact_ratio_has_mean_one_under_q():
    """The setup: E_q[r] = 1 per bin (Monte-Carlo, 4 standard errors), and r really varies at small sigma."""
    sigma, log_r = draw_from_q(200_000, torch.Generator().manual_seed(1))
    r, idx = log_r.exp(), bins_of(sigma)
    for k in range(10):
        rk = r[idx == k]
        assert abs(rk.mean().item() - 1) < 4 * rk.std().item() / math.sqrt(rk.numel()), k
    assert r[idx == 0].std() > 0.8 and r[idx == 9].std() < 0.05


def test_normaliser_stays_near_one_in_every_bin_at_batch_32():
    """Default config (10 log-sigma bins, r clip [0.1, 20] -- never binding here) at ratio_ema = RATIO_EMA:
    after a burn-in of 100 steps the divisor applied to every sample, and the divisor of every bin, is within 5 %
    of 1, and the normalised r keeps the per-sample variation of the true r."""
    method = build(MethodConfig(name="fdistill", divergence="kl", normalize_h=False, ratio_ema=RATIO_EMA))
    gen = torch.Generator().manual_seed(0)
    burn, steps = 100, 400
    r_true, r_norm, divisors = [], [], []
    for step in range(steps):
        sigma, log_r = draw_from_q(32, gen)
        _, r = method.weights(inputs(sigma), log_r)
        if step >= burn:
            r_true.append(log_r.exp())
            r_norm.append(r)
            divisors.append(log_r.exp() / r - 1e-6)  # r / (divisor + 1e-6)
    dev = (torch.cat(divisors) - 1).abs().max().item()
    assert dev < 0.05, f"the divisor applied to a sample deviates from 1 by {dev:.3f}"
    corr = torch.corrcoef(torch.stack([torch.cat(r_true), torch.cat(r_norm)]))[0, 1].item()
    assert corr > 0.99, f"normalised r lost its per-sample variation: correlation {corr:.4f} with the true r"
    bin_dev = 0.0
    for _ in range(100):  # every bin, also those the batch misses
        sigma, log_r = draw_from_q(32, gen)
        method.weights(inputs(sigma), log_r)
        bin_dev = max(bin_dev, (method.ratio_means.bin_means() - 1).abs().max().item())
    assert bin_dev < 0.05, f"a per-bin divisor deviates from 1 by {bin_dev:.3f}"


def sent_by(module: PerNoiseLevelMean, values: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """What ``module`` hands to ``all_reduce_sum`` for this batch (on a copy: the module is left as it is)."""
    sent = []
    copy.deepcopy(module).update_and_lookup(values, sigma, lambda t: sent.append(t.clone()) or t)
    return sent[0]


def test_every_call_and_every_process_accumulates():
    """Decayed sums and counts: two calls (micro-batches) give (ema S1 + S2) / (ema C1 + C2) per bin, and the
    statistics of another process (through all_reduce_sum) count like samples of this one."""
    ema = 0.7
    s1 = torch.cat([sigma_in_bin(2, 5), sigma_in_bin(7, 3)])
    s2 = torch.cat([sigma_in_bin(2, 4), sigma_in_bin(7, 6)])
    v1, v2 = torch.linspace(0.5, 2.0, 8, dtype=DT), torch.linspace(3.0, 0.2, 10, dtype=DT)
    m = PerNoiseLevelMean(10, ema, min_count=0)
    m.update_and_lookup(v1, s1, lambda t: t)
    m.update_and_lookup(v2, s2, lambda t: t)
    means = m.bin_means()
    for k in (2, 7):
        a, b = v1[bins_of(s1) == k], v2[bins_of(s2) == k]
        expected = (ema * a.sum() + b.sum()) / (ema * a.numel() + b.numel())
        assert means[k].item() == pytest.approx(expected.item(), rel=1e-12)

    # two processes: B's local statistics reach A through the all-reduce, and vice versa
    a_mod, b_mod, single = (PerNoiseLevelMean(10, ema, min_count=0) for _ in range(3))
    for sa, va, sb, vb in ((s1, v1, s2, v2), (s2, v2, s1, v1)):
        from_a, from_b = sent_by(a_mod, va, sa), sent_by(b_mod, vb, sb)
        out_a = a_mod.update_and_lookup(va, sa, lambda t, other=from_b: t + other)
        out_b = b_mod.update_and_lookup(vb, sb, lambda t, other=from_a: t + other)
        out = single.update_and_lookup(torch.cat([va, vb]), torch.cat([sa, sb]), lambda t: t)
        torch.testing.assert_close(torch.cat([out_a, out_b]), out, rtol=1e-12, atol=0)
    for name, buf in single.named_buffers():
        torch.testing.assert_close(dict(a_mod.named_buffers())[name], buf, rtol=1e-12, atol=0)
        torch.testing.assert_close(dict(b_mod.named_buffers())[name], buf, rtol=1e-12, atol=0)


def test_bins_with_little_history_pool_with_their_neighbours():
    """A bin below min_count uses the smallest window of bins around it (clamped at the ends) that reaches
    min_count; with too few samples everywhere, the global mean."""
    m = PerNoiseLevelMean(10, 0.0, min_count=10)
    sigma = torch.cat([sigma_in_bin(2, 50), sigma_in_bin(6, 5)])
    values = torch.cat([torch.full((50,), 2.0, dtype=DT), torch.full((5,), 1.0, dtype=DT)])
    out = m.update_and_lookup(values, sigma, lambda t: t)
    means = m.bin_means()
    # bins 0..3: the window reaches bin 2 (50 samples, value 2) first; bin 4 at radius 2 takes bins 2..6, and
    # bins 5..9 (bin 6 alone has 5 < 10) reach bin 2 only with a window that also holds bin 6
    assert means[:4].tolist() == [2.0] * 4
    torch.testing.assert_close(means[4:], torch.full((6,), 105 / 55, dtype=DT), rtol=1e-12, atol=0)
    torch.testing.assert_close(out, means[bins_of(sigma)], rtol=0, atol=0)
    few = PerNoiseLevelMean(10, 0.0, min_count=100)
    few.update_and_lookup(values, sigma, lambda t: t)
    torch.testing.assert_close(few.bin_means(), torch.full((10,), 105 / 55, dtype=DT), rtol=1e-12, atol=0)


def test_non_finite_values_do_not_enter_the_statistics():
    m = PerNoiseLevelMean(10, 0.5, min_count=0)
    sigma = sigma_in_bin(3, 4)
    m.update_and_lookup(torch.tensor([1.0, float("nan"), 3.0, float("inf")], dtype=DT), sigma, lambda t: t)
    assert m.bin_means()[3].item() == 2.0
    assert all(torch.isfinite(b).all() for b in m.buffers())


def test_ratio_clip_happens_before_normalisation():
    """r = clip(exp(clamp(logit, +-logit_clip)), ratio_min, ratio_max) enters the statistics and is divided by
    their mean (one bin, fresh state: the mean of the clipped batch)."""
    cfg = MethodConfig(name="fdistill", divergence="kl", normalize_h=False, logit_clip=3.0,
                       ratio_min=0.5, ratio_max=4.0)  # fmt: skip
    method = build(cfg)
    logit = torch.linspace(-5.0, 5.0, 16, dtype=DT)
    sigma = sigma_in_bin(4, 16)
    _, r = method.weights(inputs(sigma), logit)
    clipped = logit.clamp(-3, 3).exp().clamp(0.5, 4.0)
    assert (clipped == 0.5).sum() > 2 and (clipped == 4.0).sum() > 2  # the clip binds on both sides
    torch.testing.assert_close(r, clipped / (clipped.mean() + 1e-6), rtol=1e-6, atol=0)
    assert not torch.allclose(r, logit.exp() / (logit.exp().mean() + 1e-6))


def test_state_is_saved_and_restored_bit_exactly():
    """The running statistics are module buffers (float64): saved with the method and restored bit-exactly."""
    cfg = MethodConfig(name="fdistill", divergence="js", ratio_ema=RATIO_EMA)
    method = build(cfg)
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        sigma, log_r = draw_from_q(32, gen)
        method.weights(inputs(sigma), log_r)
    state = method.state_dict()
    assert {"ratio_means.sums", "ratio_means.counts"} <= set(state)
    restored = build(cfg)
    restored.load_state_dict(state)
    sigma, log_r = draw_from_q(32, gen)
    a, b = method.weights(inputs(sigma), log_r), restored.weights(inputs(sigma), log_r)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    for (name, x), y in zip(method.state_dict().items(), restored.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    fresh = build(cfg)
    assert not torch.allclose(fresh.weights(inputs(sigma), log_r)[1], b[1])
