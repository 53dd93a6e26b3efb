"""SiD-family methods drop a sample whose frozen-network output is non-finite *exactly*, including a NaN that
arises inside a network's forward (SiD's reference drops such samples before the loss, docs/math.md §2.4).

The backward through a network that produced NaN for one row multiplies that row's zero upstream gradient by
NaN; without a mask on the gradient reaching x_t this NaN flows into x0 and every generator parameter. Here a
tiny trainable generator makes x0 for a batch of 4 and one frozen per-sample network (teacher, fake score or
discriminator) multiplies row 0's hidden activation by NaN before its nonlinearity: the generator-parameter
gradients of the summed loss must be finite and equal to those of the same batch without row 0.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fdistill.config import MethodConfig
from fdistill.methods import GeneratorInputs, build

DT = torch.float64
D = 2


class PerSampleNet(nn.Module):
    """Frozen MLP on (x_t, log sigma): a residual denoiser, or a logit (``logit=True``). The hidden activation
    of the rows in ``nan_rows`` is multiplied by NaN before the tanh (a NaN inside the forward)."""

    def __init__(self, seed: int, logit: bool = False, nan_rows: tuple[int, ...] = ()) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(D + 1, 16, generator=g, dtype=DT)
        self.w2 = torch.randn(16, 1 if logit else D, generator=g, dtype=DT) / 4
        self.logit, self.nan_rows = logit, list(nan_rows)

    def forward(self, x, sigma, cond=None):
        hidden = torch.cat([x, sigma.log()[:, None]], 1) @ self.w1
        scale = torch.ones(x.shape[0], 1, dtype=DT)
        scale[self.nan_rows] = float("nan")
        out = torch.tanh(hidden * scale) @ self.w2
        return out[:, 0] if self.logit else x + out


def generator() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, D)).double()


CASES = {
    "sid": (MethodConfig(name="sid", alpha=1.2), ("teacher", "fake")),
    "sim": (MethodConfig(name="sim", huber_c=0.5), ("teacher", "fake")),
    "uni_instruct-rkl": (MethodConfig(name="uni_instruct", divergence="rkl"), ("teacher", "fake")),
    "uni_instruct-js": (MethodConfig(name="uni_instruct", divergence="js", gan_weight=0.1),
                        ("teacher", "fake", "logit")),
    "di_star": (MethodConfig(name="di_star", alpha_rev=0.5), ("teacher", "fake")),
}  # fmt: skip
PARAMS = [(name, bad) for name, (_, bads) in CASES.items() for bad in bads]


def run(cfg: MethodConfig, rows: slice, bad: str | None):
    """Per-sample loss and generator-parameter gradients of its sum on the given rows of one fixed batch."""
    gen = generator()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 3, generator=g, dtype=DT)[rows]
    eps = torch.randn(4, D, generator=g, dtype=DT)[rows]
    sigma = torch.tensor([0.3, 0.7, 1.5, 4.0], dtype=DT)[rows]
    nets = {"teacher": (2, False), "fake": (3, False), "logit": (4, True)}
    fn = {k: PerSampleNet(seed, logit, (0,) if k == bad else ()) for k, (seed, logit) in nets.items()}
    target = torch.tensor([0.5, -0.5], dtype=DT)
    b = GeneratorInputs(
        x0=gen(z),
        sigma=sigma,
        eps=eps,
        teacher=fn["teacher"],
        fake=fn["fake"],
        logit=fn["logit"],
        reward=lambda x, c=None: -((x - target) ** 2).sum(1),
    )
    out = build(cfg).generator_loss(b)
    grads = torch.autograd.grad(out.loss.sum(), list(gen.parameters()))
    return out, grads


@pytest.mark.parametrize(("name", "bad"), PARAMS, ids=[f"{n}-nan-in-{b}" for n, b in PARAMS])
def test_nan_inside_a_network_drops_the_row_exactly(name, bad):
    cfg = CASES[name][0]
    out, grads = run(cfg, slice(None), bad)
    ref, ref_grads = run(cfg, slice(1, None), None)
    assert all(torch.isfinite(g).all() for g in grads), f"{name}: NaN in {bad} reached the generator parameters"
    loss = out.loss.detach()
    assert loss[0].item() == 0.0 and torch.isfinite(loss).all()
    torch.testing.assert_close(loss[1:], ref.loss.detach(), rtol=1e-12, atol=1e-14)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert out.logs["dropped"].item() == 1.0
