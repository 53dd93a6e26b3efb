"""The per-sample shape of SiD, SIM and Uni-Instruct on image-shaped samples (docs/math.md §2.4, §2.5, §2.7, §4).

The closed-form tests (test_method_gradients.py) are 1-D with one sigma for the whole batch, where a norm is an
absolute value and a mean over dims is the identity. Here x0 has shape (3, 2, 4, 4) with a different sigma per
sample, the frozen denoisers and the logit are arbitrary smooth functions, and each method's per-sample loss and
its gradient w.r.t. x0 are compared with a reference written from docs/math.md one sample at a time, in score
form: ``s = (D - x_t) / sigma^2``, ``u = s_p - s_q`` over the whole sample (C*H*W), ``grad log q(x_t | x0) =
-(x_t - x0) / sigma^2``, weight ``sigma^4 / wf`` with ``wf = sg(mean |x0 - D_p|)`` (the docstrings' weighting).
A per-element pseudo-Huber, a mean inside a norm, one sigma for the batch or a wrong sigma power all fail.
"""

from __future__ import annotations

import pytest
import torch

from fdistill.config import MethodConfig
from fdistill.methods import GeneratorInputs, build

DT = torch.float64
SHAPE = (3, 2, 4, 4)
SIGMA = torch.tensor([0.5, 1.3, 5.0], dtype=DT)
WIDE = dict(ratio_min=1e-6, ratio_max=1e6, logit_clip=50.0, normalize_h=False)


def _data():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(SHAPE, generator=g, dtype=DT)
    eps = torch.randn(SHAPE, generator=g, dtype=DT)
    pattern = torch.randn(SHAPE[1:], generator=g, dtype=DT)
    return x0, eps, pattern


X0, EPS, PATTERN = _data()


def _s(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def d_p(x, sigma, cond=None):
    return 1.3 * x * torch.tanh(x) / (1 + _s(sigma, x))


def d_q(x, sigma, cond=None):
    s = _s(sigma, x)
    return 0.7 * x / (1 + s**2) + 0.4 * torch.sin(x + s) / (1 + s)


def logit(x, sigma, cond=None):
    return (0.4 * torch.tanh(x) * PATTERN).flatten(1).sum(1) / (1 + sigma) - 0.2


H = {  # h(r), h'(r) from docs/math.md §3
    "rkl": (lambda r: 1.0 + 0 * r, lambda r: 0 * r),
    "kl": (lambda r: r, lambda r: 1.0 + 0 * r),
    "js": (lambda r: r / (1 + r), lambda r: 1 / (1 + r) ** 2),
}


def reference(kind: str, i: int, normalize: bool, **p) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss_i, dloss_i / dx0_i) for sample i alone, straight from docs/math.md."""
    x0 = X0[i].clone().requires_grad_(True)
    s = SIGMA[i]
    x_t = x0 + s * EPS[i]
    one = s.reshape(1)
    dp, dq = d_p(x_t[None], one)[0], d_q(x_t[None], one)[0]
    s_p, s_q = (dp - x_t) / s**2, (dq - x_t) / s**2
    cond_score = -(x_t - x0) / s**2
    u = s_p - s_q  # (C, H, W): one vector per sample
    wf = (x0 - dp).abs().mean().detach().clamp_min(1e-5) if normalize else 1.0
    if kind == "sid":  # §2.4: sigma^4 [u.(s_q - grad log q) + (1 - alpha) |u|^2] / wf
        loss = s**4 * ((u * (s_q - cond_score)).sum() + (1 - p["alpha"]) * (u**2).sum()) / wf
    elif kind == "sim":  # §2.5: sigma^4 / wf d'(u).(s_q - grad log q), d'(u) = u / sqrt(|u|^2 + c^2) or 2u
        grad_d = u / torch.sqrt((u**2).sum() + p["c"] ** 2) if p["distance"] == "pseudo_huber" else 2 * u
        loss = s**4 / wf * (grad_d * (s_q - cond_score)).sum()
    else:  # §2.7: sigma^4 / wf [(h - r h') |u|^2 + 2 h u.(s_q - grad log q)], r = exp(logit(x_t))
        r = logit(x_t[None], one)[0].exp()
        h, h_prime = (f(r) for f in H[p["divergence"]])
        loss = s**4 / wf * ((h - r * h_prime) * (u**2).sum() + 2 * h * (u * (s_q - cond_score)).sum())
    (grad,) = torch.autograd.grad(loss, x0)
    return loss.detach(), grad


def method_loss_and_grads(cfg: MethodConfig) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-sample loss of the batch and d loss_i / d x0 (full batch shape) for each i."""
    x0 = X0.clone().requires_grad_(True)
    b = GeneratorInputs(x0=x0, sigma=SIGMA, eps=EPS, teacher=d_p, fake=d_q, logit=logit)
    loss = build(cfg).generator_loss(b).loss
    assert loss.shape == (SHAPE[0],)
    grads = [torch.autograd.grad(loss[i], x0, retain_graph=True)[0] for i in range(SHAPE[0])]
    return loss.detach(), grads


CASES = {
    "sid-1.2": ("sid", dict(alpha=1.2)),
    "sid-0.5": ("sid", dict(alpha=0.5)),
    "sim-pseudo_huber-c1": ("sim", dict(distance="pseudo_huber", c=1.0)),
    "sim-pseudo_huber-c0.3": ("sim", dict(distance="pseudo_huber", c=0.3)),
    "sim-l2": ("sim", dict(distance="l2", c=1.0)),
    "di_star-pseudo_huber": ("di_star", dict(distance="pseudo_huber", c=1.0)),
    "uni_instruct-rkl": ("uni_instruct", dict(divergence="rkl")),
    "uni_instruct-kl": ("uni_instruct", dict(divergence="kl")),
    "uni_instruct-js": ("uni_instruct", dict(divergence="js")),
}


def _cfg(name: str, normalize: bool, p: dict) -> MethodConfig:
    if name == "sid":
        return MethodConfig(name="sid", alpha=p["alpha"], normalize=normalize)
    if name in ("sim", "di_star"):
        return MethodConfig(name=name, distance=p["distance"], huber_c=p["c"], normalize=normalize)
    return MethodConfig(name="uni_instruct", divergence=p["divergence"], normalize=normalize, **WIDE)


@pytest.mark.parametrize("normalize", [True, False], ids=["wf", "no-wf"])
@pytest.mark.parametrize("case", list(CASES))
def test_per_sample_loss_and_gradient_match_the_per_sample_reference(case, normalize):
    name, p = CASES[case]
    loss, grads = method_loss_and_grads(_cfg(name, normalize, p))
    kind = "sim" if name == "di_star" else name
    for i in range(SHAPE[0]):
        ref_loss, ref_grad = reference(kind, i, normalize, **p)
        assert loss[i].item() == pytest.approx(ref_loss.item(), rel=1e-9, abs=1e-12), f"{case}: loss of sample {i}"
        others = torch.arange(SHAPE[0]) != i
        assert torch.all(grads[i][others] == 0), f"{case}: loss of sample {i} depends on other samples"
        torch.testing.assert_close(grads[i][i], ref_grad, rtol=1e-9, atol=1e-12, msg=f"{case}: sample {i}")


def test_the_setup_exercises_both_pseudo_huber_regimes():
    """|u|^2 spans the quadratic (|u| << c) and linear (|u| >> c) regimes of the pseudo-Huber distance across the
    three sigmas at c = 1, and no per-element |u_j| is comparable to the per-sample norm: a per-element d' or a
    mean inside the norm gives a visibly different gradient."""
    x_t = X0 + SIGMA[:, None, None, None] * EPS
    u = (d_p(x_t, SIGMA) - d_q(x_t, SIGMA)) / SIGMA[:, None, None, None] ** 2
    sq = (u**2).flatten(1).sum(1)
    assert sq.max() > 10 and sq.min() < 0.3, sq.tolist()
    r = logit(x_t, SIGMA).exp()
    assert (r.max() / r.min()) > 1.5, r.tolist()  # h(r) differs between samples
