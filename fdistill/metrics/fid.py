"""FID, KID and precision/recall on feature sets, and the reference-statistics cache.

- FID (Heusel et al. 2017, Eq. 6): ``|mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})``. The trace of the
  matrix square root is computed as ``sum sqrt(eigvalsh(L^T S_2 L))`` with ``S_1 = L L^T`` (Cholesky),
  a symmetric matrix similar to ``S_1 S_2``: the same number as pytorch-fid's ``scipy.linalg.sqrtm(S_1 S_2)``
  (agreement ~1e-9 relative, see tests/test_metrics_fid.py and scripts/validate_fid.py) without imaginary
  parts to discard or an ``eps * I`` retry, and an order of magnitude faster on a small CPU (2048-d: seconds
  instead of a minute). With fewer samples than features on both sides the covariances are singular and the
  trace is the nuclear norm of the centred cross-product of the features (exact). Everything is float64;
  :func:`frechet_distance_sqrtm` keeps the pytorch-fid formula for cross-checking.
- KID (Binkowski et al. 2018, Sec. 3 / Eq. 6): the unbiased MMD^2 estimator with the cubic polynomial
  kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over ``num_subsets`` random subsets of ``subset_size``
  (100 x 1000 as torch-fidelity and torchmetrics); mean and standard deviation (ddof=1, as torchmetrics)
  over subsets.
- Improved precision and recall (Kynkaanniemi et al. 2019, Eqs. 1-3): each set's manifold is the union of
  balls around its samples with radius the distance to their k-th nearest neighbour (k = 3, self
  excluded); precision = share of generated samples inside the real manifold, recall = share of real
  samples inside the generated manifold.

Reference statistics are cached as ``.npz`` (``mu``, ``sigma``, ``n``, ``protocol`` and optionally
``features`` for precision/recall); loading one made under another protocol raises
:class:`ProtocolMismatchError` rather than silently mixing numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

ArrayLike = np.ndarray | Tensor


class ProtocolMismatchError(ValueError):
    """A statistics file was made under another feature protocol (network, resize, quantisation, ...)."""


def _np64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def cache_dir() -> Path:
    """``$FDISTILL_CACHE/fid_stats`` (default ``~/.cache/fdistill/fid_stats``)."""
    root = Path(os.environ.get("FDISTILL_CACHE", Path.home() / ".cache" / "fdistill"))
    return root / "fid_stats"


@dataclass
class FeatureStats:
    """Mean and covariance (float64) of ``n`` feature vectors and the protocol that made them.

    ``features`` (float32) are kept when KID and precision/recall will be needed; ``extra`` holds any other named
    arrays (saved as ``extra_NAME``).
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    protocol: str
    features: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_features(cls, features: ArrayLike, protocol: str, keep_features: bool = True) -> FeatureStats:
        f = _np64(features)
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"need at least 2 feature vectors of shape (N, D), got {f.shape}")
        return cls(
            mu=f.mean(0),
            sigma=np.cov(f, rowvar=False),
            n=f.shape[0],
            protocol=protocol,
            features=f.astype(np.float32) if keep_features else None,
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"mu": self.mu, "sigma": self.sigma, "n": np.int64(self.n), "protocol": np.array(self.protocol)}
        if self.features is not None:
            arrays["features"] = self.features.astype(np.float32)
        arrays.update({f"extra_{k}": np.asarray(v) for k, v in self.extra.items()})
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, protocol: str | None = None) -> FeatureStats:
        """Read a stats ``.npz``; with ``protocol`` given, refuse one made under any other protocol."""
        with np.load(path, allow_pickle=False) as z:
            missing = {"mu", "sigma"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: not a statistics file (missing {sorted(missing)}; has {z.files})")
            found = str(z["protocol"]) if "protocol" in z.files else "<none recorded>"
            if protocol is not None and found != protocol:
                raise ProtocolMismatchError(
                    f"{path} was computed under protocol\n  {found!r}\nbut this evaluation uses\n  {protocol!r}\n"
                    "statistics from different networks or preprocessing are not comparable: delete the file or "
                    "recompute it with this version"
                )
            feats = z["features"] if "features" in z.files else None
            n = int(z["n"]) if "n" in z.files else (feats.shape[0] if feats is not None else -1)
            extra = {k[len("extra_") :]: z[k] for k in z.files if k.startswith("extra_")}
            mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
            return cls(mu=mu, sigma=sigma, n=n, protocol=found, features=feats, extra=extra)


def trace_sqrt_product(sigma1: ArrayLike, sigma2: ArrayLike) -> float:
    """``tr((S_1 S_2)^{1/2})`` for symmetric PSD ``S_1``, ``S_2`` (float64).

    With ``S_1 = L L^T`` (Cholesky), ``S_1 S_2`` is similar to the symmetric PSD ``L^T S_2 L``, so the trace is
    the sum of the square roots of its eigenvalues: one Cholesky factorisation and one symmetric eigenvalue
    computation without eigenvectors (the eigenvector routines are ~10x slower on small CPUs). Needs one of
    the two positive definite (more samples than features); if both are singular, falls back to a PSD square
    root from a full eigendecomposition (slow but exact; :func:`fid_from_features` avoids it).
    """
    t1, t2 = torch.from_numpy(_np64(sigma1)), torch.from_numpy(_np64(sigma2))
    t1, t2 = (t1 + t1.T) / 2, (t2 + t2.T) / 2
    for a, b in ((t1, t2), (t2, t1)):
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            m = chol.T @ b @ chol
            return float(torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum())
    w, v = torch.linalg.eigh(t1)
    root = (v * w.clamp(min=0).sqrt()) @ v.T
    m = root @ t2 @ root
    return float(torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum())


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) in float64 (see :func:`trace_sqrt_product`)."""
    mu1, mu2, s1, s2 = _np64(mu1), _np64(mu2), _np64(sigma1), _np64(sigma2)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2))


def frechet_distance_sqrtm(
    mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike, eps: float = 1e-6
) -> float:
    """pytorch-fid's formula (``scipy.linalg.sqrtm`` of ``S_1 S_2``, ``eps * I`` retry), for cross-checks."""
    from scipy import linalg

    mu1, mu2, s1, s2 = _np64(mu1), _np64(mu2), _np64(sigma1), _np64(sigma2)
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def fid_from_features(feats1: ArrayLike, feats2: ArrayLike) -> float:
    """FID of two feature sets. When both have no more samples than dimensions (singular covariances), uses
    ``tr((S_1 S_2)^{1/2}) = ||A B^T||_*`` with ``A``, ``B`` the centred features over ``sqrt(n - 1)`` (the
    nonzero eigenvalues of ``A^T A B^T B`` are the squared singular values of ``A B^T``): exact and cheap."""
    a, b = _np64(feats1), _np64(feats2)
    mu1, mu2 = a.mean(0), b.mean(0)
    if max(a.shape[0], b.shape[0]) > a.shape[1]:
        return frechet_distance(mu1, np.cov(a, rowvar=False), mu2, np.cov(b, rowvar=False))
    ca, cb = (a - mu1) / np.sqrt(a.shape[0] - 1), (b - mu2) / np.sqrt(b.shape[0] - 1)
    nuclear = float(torch.linalg.svdvals(torch.from_numpy(ca @ cb.T)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + (ca * ca).sum() + (cb * cb).sum() - 2 * nuclear)


def polynomial_mmd2(x: np.ndarray, y: np.ndarray, degree: int = 3, coef: float = 1.0) -> float:
    """Unbiased MMD^2 with ``k(a, b) = (a.b / d + coef)^degree`` (Binkowski et al. 2018)."""
    d = x.shape[1]
    kxx = (x @ x.T / d + coef) ** degree
    kyy = (y @ y.T / d + coef) ** degree
    kxy = (x @ y.T / d + coef) ** degree
    m, n = x.shape[0], y.shape[0]
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


KID_PRECOMPUTE_MAX = 5000 * 5000  # n_real * n_fake up to which the kernel matrices are computed once (<= 600 MB)


def _poly(a: np.ndarray, b: np.ndarray, degree: int = 3, coef: float = 1.0) -> np.ndarray:
    return (a @ b.T / a.shape[1] + coef) ** degree


def kernel_inception_distance(
    real: ArrayLike, fake: ArrayLike, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID mean and std over ``num_subsets`` subsets of ``min(subset_size, n_real, n_fake)`` samples each.

    For moderate set sizes the three kernel matrices are computed once and each subset's unbiased MMD^2 is read
    from them (the same numbers as recomputing per subset, ~30x less arithmetic for 100 subsets).
    """
    r, f = _np64(real), _np64(fake)
    size = min(subset_size, r.shape[0], f.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {r.shape[0]} real and {f.shape[0]} fake")
    rng = np.random.default_rng(seed)
    subsets = [(rng.choice(r.shape[0], size, replace=False), rng.choice(f.shape[0], size, replace=False))
               for _ in range(num_subsets)]  # fmt: skip
    mmds = []
    if r.shape[0] * f.shape[0] <= KID_PRECOMPUTE_MAX:
        k_rr, k_ff, k_rf = _poly(r, r), _poly(f, f), _poly(r, f)
        norm = size * (size - 1)
        for ri, fi in subsets:
            a, b = k_rr[np.ix_(ri, ri)], k_ff[np.ix_(fi, fi)]
            xy = k_rf[np.ix_(ri, fi)].mean()
            mmds.append((a.sum() - np.trace(a)) / norm + (b.sum() - np.trace(b)) / norm - 2 * xy)
    else:
        mmds = [polynomial_mmd2(r[ri], f[fi]) for ri, fi in subsets]
    mmds = np.array(mmds)
    return float(mmds.mean()), float(mmds.std(ddof=1)) if num_subsets > 1 else 0.0


def _kth_nn_radius(x: Tensor, k: int, batch: int) -> Tensor:
    radii = []
    for chunk in x.split(batch):
        d = torch.cdist(chunk, x)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # +1: the sample itself is at distance 0
    return torch.cat(radii)


def _coverage(points: Tensor, centres: Tensor, radii: Tensor, batch: int) -> float:
    inside = []
    for chunk in points.split(batch):
        inside.append((torch.cdist(chunk, centres) <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real: ArrayLike, fake: ArrayLike, k: int = 3, batch: int = 1024) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` against ``real`` with k-NN manifolds (Kynkaanniemi et al. 2019)."""
    r = torch.as_tensor(_np64(real))
    f = torch.as_tensor(_np64(fake))
    if min(r.shape[0], f.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    r_rad, f_rad = _kth_nn_radius(r, k, batch), _kth_nn_radius(f, k, batch)
    return _coverage(f, r, r_rad, batch), _coverage(r, f, f_rad, batch)


def compare_to_reference(
    fake: FeatureStats,
    reference: FeatureStats,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    k: int = 3,
    seed: int = 0,
) -> dict:
    """FID always; KID and precision/recall when both sides kept their features (else ``None``)."""
    if fake.protocol != reference.protocol:
        raise ProtocolMismatchError(f"features made under {fake.protocol!r} vs reference {reference.protocol!r}")
    have = fake.features is not None and reference.features is not None
    small = max(fake.n, reference.n) <= fake.mu.shape[0]  # both covariances singular: use the features
    fid = (fid_from_features(fake.features, reference.features) if have and small
           else frechet_distance(fake.mu, fake.sigma, reference.mu, reference.sigma))  # fmt: skip
    out: dict = {"fid": fid}
    if have:
        mean, std = kernel_inception_distance(reference.features, fake.features, kid_subsets, kid_subset_size, seed)
        p, r = precision_recall(reference.features, fake.features, k=k)
    out["kid"] = {"mean": mean, "std": std} if have else None
    out["precision"] = p if have else None
    out["recall"] = r if have else None
    return out
