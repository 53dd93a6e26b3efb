"""``fdistill sample``: write an image grid from a one-step student or a teacher.

A student folder (``model_index.json`` of :class:`fdistill.pipeline.OneStepPipeline`) is sampled with one
network evaluation; a teacher folder (an ``EDMUNet`` ``config.json``) with the EDM Heun sampler at
``--nfe`` evaluations. Same ``--seed``, same images.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from fdistill.plots import image_grid


def _labels(spec: str | None, n: int, names: list[str]) -> list[int] | None:
    if spec is None:
        return None
    out = []
    for item in spec.split(","):
        item = item.strip()
        if item.isdigit():
            out.append(int(item))
        elif item in names:
            out.append(names.index(item))
        else:
            raise ValueError(f"unknown class {item!r}; accepted: 0..{len(names) - 1} or {', '.join(names)}")
    return (out * n)[:n]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fdistill sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("source", help="student pipeline folder or teacher EDMUNet folder")
    p.add_argument("--num", type=int, default=64, help="number of images (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--classes", default=None, help="comma list of class ids or names, repeated (default: random)")
    p.add_argument("--nfe", type=int, default=35, help="teacher sampler evaluations (default: 35)")
    p.add_argument("--guidance", type=float, default=1.0, help="teacher CFG scale, 1 = off (default: 1)")
    p.add_argument("--out", default="samples.png", help="output PNG (default: samples.png)")
    args = p.parse_args(argv)
    src = Path(args.source)
    if not src.is_dir():
        print(f"fdistill sample: {src} is not a folder (expected a student pipeline or a teacher)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if (src / "model_index.json").is_file():
        from fdistill.pipeline import OneStepPipeline

        pipe = OneStepPipeline.from_pretrained(src)
        labels = _labels(args.classes, args.num, pipe.config.class_names)
        images = pipe(batch_size=args.num, class_labels=labels, seed=args.seed, output_type="pt").images
        what = "student, NFE 1"
    else:
        from fdistill.nets.unet import EDMUNet
        from fdistill.sampling import edm_heun_sampler

        net = EDMUNet.from_pretrained(src).eval()
        gen = torch.Generator().manual_seed(args.seed)
        labels = _labels(args.classes, args.num, [])
        cond = torch.tensor(labels) if labels else (torch.randint(0, net.num_classes, (args.num,), generator=gen)
                                                    if net.num_classes else None)  # fmt: skip

        def denoise(x, s):
            d_c = net(x, s, cond)
            if args.guidance == 1.0 or cond is None:
                return d_c
            return d_c + (args.guidance - 1.0) * (d_c - net(x, s, None))

        with torch.no_grad():
            images = edm_heun_sampler(denoise, (args.num, *net.sample_shape), args.nfe, gen)
        what = f"teacher, NFE {args.nfe}"
    image_grid([images]).save(args.out)
    print(f"wrote {args.out}: {args.num} images ({what}) in {time.perf_counter() - t0:.1f} s")
    return 0
