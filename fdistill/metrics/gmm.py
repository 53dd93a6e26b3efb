"""Exact metrics for students of the analytic Gaussian-mixture teacher (docs/math.md C8, C11).

- ``modes_covered``: components whose share of student samples (nearest-component assignment under the
  teacher's own posterior) reaches at least a fifth of their weight.
- ``mode_weight_error``: total variation between the component weights and those shares.
- ``teacher_nll``: mean ``-log p_0(x)`` of student samples (exact).
- ``off_mode``: share of samples farther than 3 of its stds from every component mean (``off_mode_floor``:
  the teacher's own share, 1.1% in 2-D).
- ``energy_distance``: ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` between student and fresh teacher samples
  (Szekely & Rizzo 2013), with ``energy_distance_floor`` the same statistic for two independent teacher
  sample sets of the same size: a student is indistinguishable at this sample size when it is near the
  floor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fdistill.teachers.gmm import GaussianMixtureTeacher


def _mean_pairwise(a: Tensor, b: Tensor, same: bool) -> Tensor:
    d = torch.cdist(a.double(), b.double())
    if same:
        n = a.shape[0]
        return d.sum() / (n * (n - 1))
    return d.mean()


def energy_distance(x: Tensor, y: Tensor) -> float:
    """Unbiased (U-statistic) energy distance between two sample sets."""
    return float(2 * _mean_pairwise(x, y, False) - _mean_pairwise(x, x, True) - _mean_pairwise(y, y, True))


def off_mode_fraction(teacher: GaussianMixtureTeacher, x: Tensor, k_std: float = 3.0) -> float:
    """Share of rows of ``x`` farther than ``k_std`` component stds from every component mean."""
    z = torch.cdist(x.float(), teacher.means.to(x.device)) / teacher.stds.to(x.device)[None]
    return float((z.min(1).values > k_std).float().mean())


def component_shares(teacher: GaussianMixtureTeacher, x: Tensor) -> Tensor:
    """Share of samples assigned to each component by the teacher's posterior at sigma = 0."""
    logp, _ = teacher._log_resp(x, torch.zeros(x.shape[0], device=x.device))
    counts = torch.bincount(logp.argmax(1), minlength=teacher.num_components).float()
    return counts / counts.sum()


@torch.no_grad()
def gmm_metrics(teacher: GaussianMixtureTeacher, samples: Tensor, seed: int = 0) -> dict[str, float]:
    samples = samples.float()
    n = samples.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    real_a = teacher.sample_data(n, generator=gen, device=samples.device)
    real_b = teacher.sample_data(n, generator=gen, device=samples.device)
    shares = component_shares(teacher, samples)
    weights = teacher.weights.to(shares.device)
    finite = torch.isfinite(samples).all(1)
    return {
        "modes_covered": int((shares >= weights / 5).sum()),
        "num_modes": teacher.num_components,
        "mode_weight_error": float(0.5 * (shares - weights).abs().sum()),
        "teacher_nll": float(-teacher.log_prob(samples[finite]).mean()),
        "teacher_nll_floor": float(-teacher.log_prob(real_a).mean()),
        "energy_distance": energy_distance(samples[finite], real_a),
        "energy_distance_floor": energy_distance(real_b, real_a),
        "off_mode": off_mode_fraction(teacher, samples[finite]),
        "off_mode_floor": off_mode_fraction(teacher, real_a),
        "nonfinite_samples": int((~finite).sum()),
    }
