"""The f-divergence registry (docs/math.md §3): h(r) = f''(r) r^2 and h'(r) checked against autograd of f.

Everything is float64 on r in [0.05, 20]; autograd derivatives of the closed-form f are exact up to
rounding, so the tolerances (rtol 1e-9) only absorb floating-point error of a few ops.
"""

from __future__ import annotations

import pytest
import torch

from fdistill.core import divergences

EXPECTED_NAMES = ["alpha", "jf", "js", "kl", "neyman", "pearson", "rkl", "sf", "sh"]
# (name, params) pairs covering every registered factory, alpha at several orders (incl. negative/ >1)
CASES = [(n, {}) for n in EXPECTED_NAMES if n != "alpha"] + [
    ("alpha", {}),
    ("alpha", {"alpha": 0.3}),
    ("alpha", {"alpha": 2.0}),
    ("alpha", {"alpha": -1.0}),
    ("alpha", {"alpha": 1.7}),
]


def _r_grid() -> torch.Tensor:
    return torch.logspace(torch.log10(torch.tensor(0.05)), torch.log10(torch.tensor(20.0)), 301, dtype=torch.float64)


def _derivatives_of_f(f, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f', f'', f''' by nested autograd (elementwise f, so grad of the sum is the elementwise derivative)."""
    r = r.clone().requires_grad_(True)
    d1 = torch.autograd.grad(f(r).sum(), r, create_graph=True)[0]
    d2 = torch.autograd.grad(d1.sum(), r, create_graph=True)[0]
    d3 = torch.autograd.grad(d2.sum(), r)[0]
    return d1.detach(), d2.detach(), d3.detach()


def test_names_exact():
    assert divergences.names() == EXPECTED_NAMES


def test_unknown_name_raises_with_accepted_list():
    with pytest.raises(KeyError) as err:
        divergences.get("not-a-divergence")
    msg = str(err.value)
    assert "not-a-divergence" in msg
    for n in EXPECTED_NAMES:
        assert n in msg


@pytest.mark.parametrize("name,params", CASES, ids=[f"{n}{p.get('alpha', '')}" for n, p in CASES])
def test_h_equals_fpp_r2_and_h_prime_equals_dh_dr(name, params):
    div = divergences.get(name, **params)
    r = _r_grid()
    _, f2, f3 = _derivatives_of_f(div.f, r)
    h_ref = f2 * r**2
    hp_ref = f3 * r**2 + 2 * r * f2  # d/dr (f'' r^2)
    h = div.h(r)
    hp = div.h_prime(r)
    assert h.shape == r.shape and hp.shape == r.shape
    assert h.dtype == torch.float64
    torch.testing.assert_close(h, h_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(hp, hp_ref, rtol=1e-9, atol=1e-10)
    # h_prime is also the autograd derivative of the implementation's own h (where h depends on r)
    rr = r.clone().requires_grad_(True)
    out = div.h(rr)
    if out.requires_grad:
        (dh,) = torch.autograd.grad(out.sum(), rr)
        torch.testing.assert_close(hp, dh, rtol=1e-9, atol=1e-12)
    else:  # constant weighting (rkl): derivative must be exactly zero
        assert torch.all(hp == 0)


@pytest.mark.parametrize("name,params", CASES, ids=[f"{n}{p.get('alpha', '')}" for n, p in CASES])
def test_f_is_a_valid_f_divergence_generator(name, params):
    """f(1) = 0 (D_f(p||p) = 0) and f convex (h > 0) on the grid."""
    div = divergences.get(name, **params)
    one = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(div.f(one), torch.zeros_like(one), rtol=0, atol=1e-14)
    assert torch.all(div.h(_r_grid()) > 0)


def test_table_values():
    """Spot values of h from docs/math.md §3 (independent of f)."""
    r = torch.tensor([0.25, 1.0, 4.0], dtype=torch.float64)
    table = {
        "rkl": torch.ones_like(r),
        "kl": r,
        "js": r / (1 + r),
        "sh": 0.5 * r.sqrt(),
        "jf": r + 1,
        "sf": 1 / (1 + r),
        "neyman": 2 / r,
        "pearson": 2 * r**2,
        "alpha": r**0.5,
    }
    for name, expected in table.items():
        torch.testing.assert_close(divergences.get(name).h(r), expected, rtol=1e-12, atol=0)


def test_alpha_parameter():
    r = _r_grid()
    # default alpha is 0.5, and alpha = 1/2 is twice the squared Hellinger distance (§3 table)
    a_default = divergences.get("alpha")
    a_half = divergences.get("alpha", alpha=0.5)
    sh = divergences.get("sh")
    torch.testing.assert_close(a_default.h(r), a_half.h(r), rtol=0, atol=0)
    torch.testing.assert_close(a_half.f(r), 2 * sh.f(r), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a_half.h(r), 2 * sh.h(r), rtol=1e-12, atol=0)
    # alpha = 2 is half Pearson; alpha = -1 is half Neyman
    torch.testing.assert_close(divergences.get("alpha", alpha=2.0).f(r), 0.5 * divergences.get("pearson").f(r))
    torch.testing.assert_close(divergences.get("alpha", alpha=-1.0).f(r), 0.5 * divergences.get("neyman").f(r))
    # the parameter really is used: h = r^alpha
    torch.testing.assert_close(divergences.get("alpha", alpha=0.3).h(r), r**0.3, rtol=1e-12, atol=0)
    # limits alpha -> 0 (reverse KL, up to the affine term r - 1 that integrates to 0) and alpha -> 1 (KL);
    # the O(alpha) error of the limit is ~1e-5 * |log r|^2 on this grid
    f0 = divergences.get("alpha", alpha=1e-6).f(r)
    torch.testing.assert_close(f0, -torch.log(r) + r - 1, rtol=1e-4, atol=1e-4)
    f1 = divergences.get("alpha", alpha=1 - 1e-6).f(r)
    torch.testing.assert_close(f1, r * torch.log(r) - r + 1, rtol=1e-4, atol=1e-4)
    # degenerate orders are refused
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError):
            divergences.get("alpha", alpha=bad)


def test_repr_and_registry_returns_fresh_objects():
    d = divergences.get("js")
    assert d.name == "js" and "js" in repr(d)
    assert divergences.get("alpha", alpha=0.3).h(torch.tensor([4.0], dtype=torch.float64)).item() == pytest.approx(
        4.0**0.3
    )
