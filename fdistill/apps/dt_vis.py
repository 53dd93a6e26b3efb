"""``fdistill dt-vis``: DT-visualisation (Gandikota & Bau 2025; docs/math.md §2.11) of teacher, student and hybrid.

For the same labels and the same unit noise ``z``, every sampler's x0 prediction ``D(x_t, sigma_t)`` at each of its
steps, one cell per step, left to right:

- **teacher**: the EDM Heun sampler from ``sigma_max z`` at ``--nfe`` (one cell per Heun step: its first
  evaluation; the last cell, at sigma_min, is the sample);
- **student**: its K steps from ``sigma_1 z`` (a one-step student: one cell);
- **hybrid** (``--hybrid-steps N``, :func:`fdistill.apps.sample.hybrid_sample`): the teacher's first N cells, then
  the x0 prediction it hands over at the sigma it reached (equal to the teacher row's next cell), then the
  student's cells from its hand-over level on.

Rows go sample by sample (``--num`` samples): teacher, student, hybrid for each; a row shorter than the longest one
is padded with white. ``OUT.json`` lists each row's sampler, label and the sigma of each cell.

Pixel pairs (EDMUNet / UNet2DModel teacher folders, e.g. checkpoints/fmnist_teacher, and ``OneStepPipeline``
students) and latent (SD-style) pairs (e.g. checkpoints/emoji_teacher and the exported ``StableDiffusionPipeline``
student checkpoints/emoji_student, :mod:`fdistill.apps.hybrid_latent`): there every x0 prediction is a latent,
decoded through the VAE for its cell (the student's for the student's cells, the teacher's for the others), and
``--classes`` / ``--prompts`` are prompt ids or prompts of the teacher's ``prompts.txt``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fdistill.apps.hybrid_latent import decoder_for, is_latent_student
from fdistill.apps.sample import CLASSES_HELP, HYBRID_HELP, _labels, _load, hybrid_sample, label_names
from fdistill.config.args import ArgumentError, OneLineArgumentParser
from fdistill.core.sampling import heun_steps_for_nfe
from fdistill.export.stable_diffusion import EXPORT_FILE
from fdistill.metrics.plots import to_uint8


@dataclass
class DTRow:
    """One sampler on one sample: its name, label and, per step, ``(who, sigma, x0 image C x H x W)``."""

    sampler: str
    sample: int
    label: int | None
    cells: list[tuple[str, float, Tensor]] = field(default_factory=list)


def dt_trajectories(
    teacher,
    student=None,
    hybrid_steps: int | None = None,
    n: int = 4,
    nfe: int = 35,
    class_labels=None,
    seed: int = 0,
    guidance: float = 1.0,
) -> list[DTRow]:
    """The rows of the grid (sample-major: teacher, student, hybrid), each run with the same seed, so the same
    labels and ``z`` (see :func:`fdistill.apps.sample.hybrid_sample` for the order of draws)."""
    student, teacher = _load(student, teacher)
    runs = [("teacher", heun_steps_for_nfe(nfe))]
    if student is not None:
        runs.append(("student", 0))
        if hybrid_steps is not None:
            runs.append((f"hybrid N={hybrid_steps}", hybrid_steps))
    elif hybrid_steps is not None:
        raise ValueError("--hybrid-steps needs --student")
    per_run: list[list[DTRow]] = []
    for name, steps in runs:
        rows: list[DTRow] = [DTRow(name, i, None) for i in range(n)]

        def record(who: str, _index: int, sigma: float, x0: Tensor, rows=rows) -> None:
            decode = decoder_for(who, student, teacher)  # a latent pair's cells are the VAE's images
            x0 = x0 if decode is None else decode(x0)
            for i, row in enumerate(rows):
                row.cells.append((who, sigma, x0[i].detach().float().cpu()))

        out = hybrid_sample(student, teacher, n, steps, nfe=nfe, class_labels=class_labels, seed=seed,
                            guidance=guidance, callback=record)  # fmt: skip
        for i, row in enumerate(rows):
            row.label = None if out.labels is None else int(out.labels[i])
        per_run.append(rows)
    return [run[i] for i in range(n) for run in per_run]


def dt_grid(rows: list[DTRow], pad: int = 2, zoom: int = 1) -> Image.Image:
    """``len(rows)`` x (longest row) cells of ``zoom``-times upscaled images, ``pad`` white pixels between them."""
    cols = max(len(r.cells) for r in rows)
    c, h, w = rows[0].cells[0][2].shape
    h, w = h * zoom, w * zoom
    canvas = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for r, row in enumerate(rows):
        images = torch.stack([cell[2] for cell in row.cells])
        if zoom > 1:
            images = images.repeat_interleave(zoom, -2).repeat_interleave(zoom, -1)
        for k, arr in enumerate(to_uint8(images)):
            y, x = pad + r * (h + pad), pad + k * (w + pad)
            canvas[y : y + h, x : x + w] = arr
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)


def _check_student(path: Path) -> None:
    index = path / "model_index.json"
    name = json.loads(index.read_text()).get("_class_name") if index.is_file() else None
    if name != "OneStepPipeline" and not is_latent_student(path):
        what = f"a {name} folder without {EXPORT_FILE}" if name else "not an exported student (no model_index.json)"
        raise ValueError(
            f"--student {path}: {what}; dt-vis takes OneStepPipeline students and exported SD students "
            "(fdistill.export.stable_diffusion)"
        )


def main(argv: list[str]) -> int:
    p = OneLineArgumentParser(prog="fdistill dt-vis", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--teacher", required=True, help="teacher folder (EDMUNet / UNet2DModel, or SD-style latent)")
    p.add_argument("--student", default=None,
                   help="exported student folder (OneStepPipeline, or exported SD student; default: none)")  # fmt: skip
    hybrid_help = HYBRID_HELP.replace(" with --teacher", "") + "; needs --student"
    p.add_argument("--hybrid-steps", type=int, default=None, metavar="N", help=hybrid_help)
    p.add_argument("--out", default="dt_vis.png", help="output PNG (default: dt_vis.png); OUT.json gets the sigmas")
    p.add_argument("--nfe", type=int, default=35, help="teacher sampler evaluations (default: 35, 18 Heun steps)")
    p.add_argument("--num", type=int, default=4, help="samples, one block of rows each (default: 4)")
    p.add_argument("--classes", "--prompts", dest="classes", default=None, help=CLASSES_HELP)
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--guidance", type=float, default=1.0, help="teacher CFG scale, 1 = off (default: 1)")
    p.add_argument("--zoom", type=int, default=2, help="integer upscaling of each cell (default: 2)")
    try:
        args = p.parse_args(argv)
        if args.num < 1 or args.zoom < 1:
            raise ArgumentError(f"--num ({args.num}) and --zoom ({args.zoom}) must be >= 1")
        if args.student is not None:
            _check_student(Path(args.student))
        student, teacher = _load(args.student, args.teacher)
        labels = _labels(args.classes, args.num, label_names(student, teacher))
        rows = dt_trajectories(teacher, student, args.hybrid_steps, args.num, args.nfe, labels, args.seed,
                               args.guidance)  # fmt: skip
    except (ArgumentError, ValueError, FileNotFoundError, OSError) as e:
        print(f"fdistill dt-vis: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    dt_grid(rows, zoom=args.zoom).save(out)
    legend = [{"sampler": r.sampler, "sample": r.sample, "label": r.label,
               "cells": [{"who": who, "sigma": sigma} for who, sigma, _ in r.cells]} for r in rows]  # fmt: skip
    out.with_suffix(out.suffix + ".json").write_text(json.dumps(legend, indent=2))
    cols = max(len(r.cells) for r in rows)
    print(f"wrote {out}: {len(rows)} rows x {cols} columns (x0 prediction per step)")
    for r in rows[: len(rows) // args.num]:
        print(f"  {r.sampler:<14} sigma " + " ".join(f"{s:.3g}" for _, s, _ in r.cells))
    return 0
