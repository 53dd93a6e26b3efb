"""Every method under bf16 autocast: loss weights and reductions stay in float32 (docs/math.md §2, as FastGen does).

The trainer runs the generator step under ``accelerator.autocast()``; a network's convolutions then return bf16
(~3 significant digits). A method must lift what the networks return to float32 before forming its weights
(SiD's ``wf``, DMD's ``mean|x0 - D_p|``, f-distill's ``h(r)`` and its normaliser, Uni-Instruct's ``h`` and
``h - r h'``, SIM's pseudo-Huber norm, DI*'s reward) and its per-sample sums over C x H x W.

Setup: a 4 x 3 x 8 x 8 batch with one sigma per sample (0.05 to 20), tiny random conv denoisers whose output is
the bf16 result of a convolution (the worst case: no float32 skip connection), the fake a perturbed copy of the
teacher (``D_p - D_q`` small, as in training), a conv logit head and a conv reward. The gradient of the per-sample
loss w.r.t. the generator output x0 is compared per sample as ``|g - g_ref| / |g_ref|`` (norms over C x H x W):

* ``NETWORK_TOL`` (fp32 networks vs bf16 autocast): bf16's rounding of the networks' activations moves every
  gradient by 1.4-1.7e-2 here (measured; the same for every method, it is the networks' noise), so the bound is
  5e-2. This is the end-to-end check the trainer relies on, and the loss must come out float32.
* ``METHOD_TOL`` (the *same* bf16 network outputs fed to the method as they come vs lifted to float64 first):
  the networks' noise cancels and only the method's own arithmetic is left: float32 gives ~1e-7, one bf16
  rounding anywhere in a weight or a reduction gives ~2e-3 (2^-9). The bound is 1e-4, between the two. (The
  methods used to form ``D_p - D_q`` from the bf16 outputs as they came: 1.5e-3 to 1e-2 here.)

Why two checks: torch reduces bf16 tensors with a float32 accumulator and rounds the result once, so a reduction
left in bf16 perturbs the gradient by ~2e-3, far below the network noise: the first check cannot see it (the loss
dtype can, for the final sum). :func:`test_a_bf16_reduction_fails_these_checks` shows the second one does.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fdistill.methods.base as base
from fdistill.config import MethodConfig
from fdistill.core import divergences
from fdistill.methods import GeneratorInputs, build, diff_instruct, names, sid, sim, uni_instruct

SHAPE = (4, 3, 8, 8)
SIGMA = torch.tensor([0.05, 0.4, 2.0, 20.0])
NETWORK_TOL = 5e-2
METHOD_TOL = 1e-4


def _inputs(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
    return torch.cat([x / (1 + s**2).sqrt(), (s.log() / 4).expand(-1, 1, *x.shape[2:])], 1)


class Denoiser(nn.Module):
    """x0-prediction conv net, frozen (differentiable in its input); ``base`` + ``perturb``: a nearby copy."""

    def __init__(self, seed: int, base_net: Denoiser | None = None, perturb: float = 0.3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c1, self.c2 = nn.Conv2d(4, 16, 3, padding=1), nn.Conv2d(16, 3, 3, padding=1)
        if base_net is not None:
            with torch.no_grad():
                for p, q in zip(self.parameters(), base_net.parameters(), strict=True):
                    p.copy_(q + perturb * q.std() * torch.randn_like(q))
        self.requires_grad_(False)

    def forward(self, x, sigma, cond=None):
        return self.c2(F.silu(self.c1(_inputs(x, sigma))))


class Head(nn.Module):
    """Per-sample scalar conv net (a discriminator logit or a reward), frozen."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c1, self.lin = nn.Conv2d(4, 8, 3, padding=1), nn.Linear(8, 1)
        self.requires_grad_(False)

    def forward(self, x, sigma, cond=None):
        return self.lin(F.silu(self.c1(_inputs(x, sigma))).mean((2, 3)))[:, 0]


_g = torch.Generator().manual_seed(0)
X0, EPS = torch.randn(SHAPE, generator=_g), torch.randn(SHAPE, generator=_g)
TEACHER = Denoiser(1)
NETS = {"teacher": TEACHER, "fake": Denoiser(2, TEACHER), "logit": Head(3), "reward": Head(4)}

CASES = {
    "di": dict(name="di"),
    "dmd": dict(name="dmd"),
    "dmd-gan": dict(name="dmd", gan_weight=0.5),
    "sid": dict(name="sid"),
    "sida": dict(name="sid", gan_weight=0.5),
    "sim": dict(name="sim"),
    "sim-l2-no-wf": dict(name="sim", distance="l2", normalize=False),
    "di_star-reward": dict(name="di_star", alpha_rev=0.5),
    **{f"fdistill-{d}": dict(name="fdistill", divergence=d) for d in divergences.names()},
    "fdistill-kl-gan": dict(name="fdistill", divergence="kl", gan_weight=0.5),
    **{f"uni_instruct-{d}": dict(name="uni_instruct", divergence=d) for d in divergences.names()},
    "uni_instruct-kl-gan-no-wf": dict(name="uni_instruct", divergence="kl", gan_weight=0.5, normalize=False),
}


def loss_and_grad(case: str, bf16: bool, lift: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample loss and its gradient w.r.t. x0 (a float32 leaf), the whole step under bf16 autocast when
    ``bf16``; ``lift`` casts every network output to that dtype before the method sees it. A fresh method each
    call (f-distill's running ratio means would otherwise carry over)."""
    x0 = X0.clone().requires_grad_(True)

    def call(net):
        return (lambda *a: net(*a).to(lift)) if lift is not None else net

    reward = call(NETS["reward"])
    b = GeneratorInputs(
        x0=x0,
        sigma=SIGMA,
        eps=EPS,
        teacher=call(NETS["teacher"]),
        fake=call(NETS["fake"]),
        logit=call(NETS["logit"]),
        reward=lambda x, c: reward(x, torch.ones(x.shape[0])),
    )
    method = build(MethodConfig(**CASES[case]))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = method.generator_loss(b).loss
    (grad,) = torch.autograd.grad(loss.sum(), x0)
    return loss, grad


def relative_error(g: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest per-sample ``|g - ref| / |ref|`` over the batch (norms over C x H x W)."""
    return ((g - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).max().item()


def test_every_registered_method_is_covered():
    assert {c["name"] for c in CASES.values()} == set(names())


def test_the_networks_return_bf16_under_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert all(net(X0, SIGMA).dtype == torch.bfloat16 for net in NETS.values())


@pytest.mark.parametrize("case", list(CASES))
def test_gradient_under_bf16_autocast_matches_float32(case):
    loss32, grad32 = loss_and_grad(case, bf16=False)
    loss16, grad16 = loss_and_grad(case, bf16=True)
    assert loss32.dtype == torch.float32 and loss16.dtype == torch.float32, f"{case}: loss is {loss16.dtype}"
    assert torch.isfinite(grad16).all() and grad32.abs().sum() > 0
    err = relative_error(grad16, grad32)
    assert err < NETWORK_TOL, f"{case}: relative gradient error {err:.2e} under bf16 autocast"


def method_reference(case: str) -> torch.Tensor:
    """The gradient on the bf16 network outputs lifted to float64 before the method sees them: the networks' bf16
    noise is the same as in the plain autocast run, the method's arithmetic is exact."""
    return loss_and_grad(case, bf16=True, lift=torch.float64)[1]


@pytest.mark.parametrize("case", list(CASES))
def test_method_arithmetic_stays_float32_under_autocast(case):
    loss, grad = loss_and_grad(case, bf16=True)
    assert loss.dtype == torch.float32, f"{case}: loss is {loss.dtype}"
    err = relative_error(grad, method_reference(case))
    assert err < METHOD_TOL, f"{case}: the method's own arithmetic moves the gradient by {err:.2e} (bf16 inside?)"


def test_a_bf16_reduction_fails_these_checks(monkeypatch):
    """The checks above are sensitive. With the per-sample reductions done in bf16 (the result rounded to bf16, as
    a ``.sum()`` of bf16 values gives): where a reduction feeds a weight (``wf``, the pseudo-Huber norm, DMD's
    normaliser, hence also f-distill and Uni-Instruct), the method's gradient moves by 2e-3 to 1e-2, above
    ``METHOD_TOL`` by 20x or more, while the comparison with float32 networks alone would still pass (that error
    is below the networks' noise); where the reduction is the last op (DI: its gradient is untouched), the loss
    comes out bf16."""

    def bf16_sum(x):
        return x.bfloat16().flatten(1).sum(1)

    def bf16_mean(x):
        return x.bfloat16().flatten(1).mean(1)

    cases = ("dmd", "sid", "sim", "di_star-reward", "fdistill-kl", "uni_instruct-js")
    refs = {case: (loss_and_grad(case, bf16=False)[1], method_reference(case)) for case in cases}  # correct code
    monkeypatch.setattr(base, "mean_chw", bf16_mean)
    for module in (base, diff_instruct, sid, sim, uni_instruct):
        monkeypatch.setattr(module, "sum_chw", bf16_sum)
    for case in cases:
        grad32, ref = refs[case]
        grad = loss_and_grad(case, bf16=True)[1]
        err = relative_error(grad, ref)
        assert err > 10 * METHOD_TOL, f"{case}: a bf16 reduction moves the gradient by only {err:.2e}"
        assert relative_error(grad, grad32) < NETWORK_TOL, case
    assert loss_and_grad("di", bf16=True)[0].dtype == torch.bfloat16
