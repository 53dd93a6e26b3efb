"""``fdistill bench NAME``: benchmarks that print ratios and tables measured side by side in one run."""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "gmm": "fdistill.bench.gmm",
    "image": "fdistill.bench.image",
    "image-fid": "fdistill.bench.image_fid",
    "inception-speed": "fdistill.bench.inception_speed",
    "demo-load": "fdistill.bench.demo_load",
    "demo-soak": "fdistill.bench.demo_soak",
    "gpu": "fdistill.bench.gpu",
    "diversity": "fdistill.bench.diversity",
    "lora-transfer": "fdistill.bench.lora_transfer",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHES:
        print(f"usage: fdistill bench {{{','.join(BENCHES)}}} [--help]", file=sys.stderr if argv else sys.stdout)
        return 2 if argv and argv[0] not in ("-h", "--help") else 0
    return int(importlib.import_module(BENCHES[argv[0]]).main(argv[1:]) or 0)
