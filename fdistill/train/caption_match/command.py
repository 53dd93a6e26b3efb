"""``fdistill train-caption-match`` / ``python -m fdistill.train.caption_match``: the command line of
:func:`~fdistill.train.caption_match.loop.train_caption_match`, one flag per field of
:class:`fdistill.config.caption_match.CaptionMatchConfig`; errors are one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from fdistill.config.args import ArgumentError, OneLineArgumentParser, one_line
from fdistill.config.caption_match import CaptionMatchConfig, check_config
from fdistill.config.schema import add_flags, from_flags
from fdistill.data.emoji import load_emoji
from fdistill.train.caption_match.loop import train_caption_match
from fdistill.train.loop import NonFiniteError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser: the description, an example and the flags generated from :class:`CaptionMatchConfig`."""
    p = OneLineArgumentParser(
        prog="python -m fdistill.train.caption_match",
        description="Train the emoji caption-match model (CLIP with a locked MiniLM text tower, LiT) used as a "
        "Diff-Instruct* reward: reward.kind=preference reward.path=OUT.",
        epilog="example: OMP_NUM_THREADS=1 python -m fdistill.train.caption_match --out "
        "checkpoints/emoji_caption_match --steps 1000 --max-minutes 6.5 --threads 1 --fit-on all",
    )
    return add_flags(p, CaptionMatchConfig)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fdistill.train.caption_match --out DIR [options]``; errors: one line on stderr, exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = from_flags(build_parser().parse_args(argv), CaptionMatchConfig)
    except ArgumentError as e:
        print(f"error: {one_line(e)} (see --help)", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    try:
        check_config(cfg)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        ds = load_emoji(size=cfg.size)
        out = train_caption_match(
            cfg.out,
            ds.images,
            list(ds.prompts),
            cfg,
            command="python -m fdistill.train.caption_match " + " ".join(argv),
        )
    except (ValueError, FileNotFoundError, OSError, ImportError, NonFiniteError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    info = json.loads((out / "training_info.json").read_text())
    m = info["metrics"]
    summary = ", ".join(f"{k} top1 {m[k]['top1']:.3f} top5 {m[k]['top5']:.3f}" for k in ("train", "heldout") if k in m)
    if info.get("stopped_by_signal"):
        print(f"stopped by signal at step {info['steps']}; saved the model trained so far and a checkpoint, "
              "continue with --resume latest")  # fmt: skip
    print(f"saved {out} ({info['steps']} steps, {info['seconds']:.0f} s): {summary}")
    return 0
