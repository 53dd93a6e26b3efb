"""The ``fdistill`` command: distill | train-teacher | train-vae | train-caption-match | eval | report | sample |
dt-vis | plan | demo | bench.

Works as ``fdistill distill CONFIG key=value ...`` and as
``accelerate launch -m fdistill distill CONFIG key=value ...`` (one GPU, DDP or FSDP via
``accelerate config``; templates in ``configs/accelerate/``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from fdistill.config import Config, ConfigError, load_config, options_help, to_yaml
from fdistill.config.args import ArgumentError, OneLineArgumentParser, one_line
from fdistill.train.checkpoint import DiskFullError
from fdistill.train.distill import NonFiniteError, distill

DISTILL_EPILOG_HEAD = """\
overrides are dotted key=value pairs applied on top of CONFIG, e.g.
  fdistill distill configs/gmm8.yaml method.name=fdistill method.divergence=js train.steps=2000
null recipe keys take the method's reference recipe (fdistill/methods/recipes.py); --dry-run prints the resolved
values. The run directory (output_dir) receives config.yaml, metrics.jsonl, TensorBoard logs, checkpoints/,
samples.png and metrics.json; `--resume latest` continues a killed run exactly where it stopped.

keys (key=value), with their defaults:
"""


def distill_epilog() -> str:
    """The ``fdistill distill --help`` epilog: every key of the schema with its help and default."""
    return DISTILL_EPILOG_HEAD + options_help(Config, width=28)


def _distill(argv: list[str]) -> int:
    p = OneLineArgumentParser(
        prog="fdistill distill",
        description="Distill a teacher diffusion model into a one-step generator with any registered method.",
        epilog=distill_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML preset, e.g. configs/gmm8.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides (default: none)")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder (default: start fresh)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    try:
        args = p.parse_intermixed_args(argv)
    except ArgumentError as e:
        print(f"fdistill: distill: {one_line(e)} (see fdistill distill --help)", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"fdistill: config error: {one_line(e)}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(to_yaml(cfg), end="")
        return 0
    try:
        run_dir = distill(cfg, resume=args.resume)
    except ConfigError as e:  # bad input found while starting, e.g. a damaged --resume checkpoint (CheckpointError)
        print(f"fdistill: {one_line(e)}", file=sys.stderr)
        return 2
    except (NonFiniteError, FileNotFoundError, DiskFullError) as e:
        print(f"fdistill: {one_line(e)}", file=sys.stderr)
        return 1
    print(f"run directory: {run_dir}")
    return 0


def _delegate(module: str) -> callable:
    def run(argv: list[str]) -> int:
        import importlib

        return int(importlib.import_module(module).main(argv) or 0)

    return run


COMMANDS = {
    "distill": (_distill, "distill a teacher into a one-step generator"),
    "train-teacher": (_delegate("fdistill.train.teacher"), "train a teacher (pixel EDM, or SD-style text-to-image)"),
    "train-vae": (_delegate("fdistill.train.vae"), "train a small AutoencoderKL for a latent teacher"),
    "train-caption-match": (
        _delegate("fdistill.train.caption_match"),
        "train a small CLIP-like caption-match reward model",
    ),
    "eval": (_delegate("fdistill.eval.images"), "FID/KID/precision/recall of a student, folder or .npz"),
    "eval-t2i": (_delegate("fdistill.eval.t2i"), "text-to-image metrics: caption match, R-precision, FD, diversity"),
    "report": (_delegate("fdistill.apps.report"), "Markdown report with curves and sample grids of a run"),
    "sample": (_delegate("fdistill.apps.sample"), "write samples of a student or teacher"),
    "dt-vis": (_delegate("fdistill.apps.dt_vis"), "grid of each step's x0 prediction: teacher, student, hybrid"),
    "plan": (_delegate("fdistill.apps.plan"), "per-GPU memory of a run (DDP / FSDP / LoRA), planned before it starts"),
    "demo": (_delegate("fdistill.apps.demo"), "serve the Gradio demo of a one-step student"),
    "bench": (
        _delegate("fdistill.bench"),
        "benchmarks: gmm, image, image-fid, gpu, diversity, ... (fdistill bench lists them all)",
    ),
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("accelerate", "matplotlib", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = "\n".join(f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items())
        msg = f"usage: fdistill COMMAND [options]  (fdistill COMMAND --help for each)\n\ncommands:\n{lines}\n"
        if argv and argv[0] not in ("-h", "--help"):
            print(f"fdistill: unknown command {argv[0]!r}\n\n{msg}", file=sys.stderr)
            return 2
        print(msg)
        return 0
    fn, _ = COMMANDS[argv[0]]
    return fn(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
