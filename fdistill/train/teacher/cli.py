"""``fdistill train-teacher CONFIG [key=value ...] [--resume latest|PATH] [--dry-run] [--export DEST]``: train a
teacher (EDM DSM, Karras et al. 2022, docs/math.md §1.3; or an SD-style latent teacher) or export its model card.
``--help`` lists every key of :class:`~fdistill.config.teacher.TeacherTrainConfig`, generated from the schema."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from fdistill.config.schema import ConfigError, options_help
from fdistill.config.teacher import TeacherTrainConfig, load_teacher_config, teacher_config_yaml
from fdistill.train.checkpoint import DiskFullError
from fdistill.train.loop import NonFiniteError
from fdistill.train.teacher.card import export_card, export_latent_card
from fdistill.train.teacher.trainer import train_teacher

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fdistill train-teacher",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train an EDM-preconditioned UNet teacher (EDMUNet) by denoising score matching.\n"
            "Config = schema defaults <- CONFIG (YAML) <- key=value overrides (dotted keys)."
        ),
        epilog="options (key=value):\n" + options_help(TeacherTrainConfig) + "\n\nexample:\n"
        "  fdistill train-teacher configs/fmnist_teacher.yaml steps=200 output_dir=runs/try\n"
        "  accelerate launch -m fdistill train-teacher configs/fmnist_teacher.yaml   # several GPUs",
    )
    p.add_argument("config", nargs="?", default=None, help="YAML preset (e.g. configs/fmnist_teacher.yaml)")
    p.add_argument("overrides", nargs="*", default=[], help="key=value overrides, e.g. steps=1000 data.name=mnist5k")
    p.add_argument(
        "--resume",
        default=None,
        metavar="latest|PATH",
        help="continue from the newest checkpoint of output_dir ('latest') or from a checkpoint folder",
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--export",
        default=None,
        metavar="DEST",
        help="no training: copy output_dir/teacher (EMA export of the latest checkpoint) to DEST with a README card",
    )
    p.add_argument(
        "--proxy-samples",
        type=int,
        default=0,
        metavar="N",
        help="with --export: also measure the proxy FID of N teacher samples per NFE (default 0 = skip)",
    )
    p.add_argument("--proxy-nfe", default="9,17", help="with --proxy-samples: comma-separated NFEs (default 9,17)")
    return p


def _export(cfg: TeacherTrainConfig, args: argparse.Namespace, config: str | None, overrides: list[str]) -> Path:
    """``--export DEST``: the pixel card (:func:`export_card`) or the latent one (:func:`export_latent_card`)."""
    run_dir = Path(cfg.output_dir)
    if cfg.model != "sd_latent":
        nfes = [int(v) for v in args.proxy_nfe.split(",") if v]
        return export_card(run_dir, args.export, proxy_samples=args.proxy_samples, proxy_nfes=nfes, preset=config)
    info_file = run_dir / "teacher" / "training_info.json"
    if not info_file.is_file():
        raise FileNotFoundError(f"{run_dir / 'teacher'} holds no exported teacher yet")
    command = "fdistill train-teacher " + " ".join([config or "", *overrides]).strip()
    info = json.loads(info_file.read_text())
    return export_latent_card(run_dir, Path(args.export), info, teacher_config_yaml(cfg), command)


def main(argv: Sequence[str] | None = None) -> int:
    """``fdistill train-teacher CONFIG [key=value ...] [--resume latest|PATH] [--dry-run]``."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).is_file():
        config, overrides = None, [config, *overrides]
    try:
        cfg = load_teacher_config(config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(teacher_config_yaml(cfg), end="")
        return 0
    if args.export is not None:
        try:
            dest = _export(cfg, args, config, overrides)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"exported {cfg.output_dir}/teacher -> {dest}")
        return 0
    try:
        train_teacher(cfg, resume=args.resume)
    except (ConfigError, FileNotFoundError, ImportError) as e:  # CheckpointError (a damaged --resume) included
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DiskFullError, NonFiniteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
