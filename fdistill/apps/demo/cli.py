"""``fdistill demo [options]`` (and ``python app/app.py``): the command line that builds and serves the demo page.

A bad checkpoint, device or port is one line on stderr and exit status 2 (no traceback); see
:mod:`fdistill.apps.demo` for what a request does (the teacher's CFG: docs/math.md §1.2).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence

from fdistill.apps.demo.backends import DEFAULT_STUDENT, DEFAULT_TEACHER, STUDENT_ENV, TEACHER_ENV
from fdistill.apps.demo.ui import DEFAULT_CACHE_TTL, create_demo, launch_demo
from fdistill.export.loading import CheckpointLoadError, one_line

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fdistill demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve the Gradio demo of a one-step student: class (or prompt), seed and count in, a gallery\n"
        "out, and optionally the teacher's gallery for the same seed with both latencies and the speed-up.",
        epilog="examples:\n"
        f"  fdistill demo                  # {DEFAULT_STUDENT} next to {DEFAULT_TEACHER}\n"
        "  fdistill demo --checkpoint checkpoints/emoji_student --teacher checkpoints/emoji_teacher\n"
        "                                 # text-to-image: a prompt box, the stock StableDiffusionPipeline\n"
        "  fdistill demo --checkpoint runs/x/student --teacher runs/t/ema --port 7861\n"
        "\n"
        "The same page runs with `python app/app.py [options]`. Offline defaults: HF_HUB_OFFLINE=1,\n"
        "GRADIO_ANALYTICS_ENABLED=False (set them in the environment to override). API:\n"
        "gradio_client.Client(URL).predict(class_name, prompt, seed, num_images, run_teacher, teacher_nfe,\n"
        'cfg_scale, hybrid, hybrid_steps, student_steps, api_name="/generate") (the last three optional).',
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="exported student: a OneStepPipeline folder, or a text-to-image StableDiffusionPipeline folder "
        f"from fdistill.export.stable_diffusion (default: ${STUDENT_ENV}, else {DEFAULT_STUDENT} in the working "
        "directory or "
        "the repository)",
    )
    p.add_argument(
        "--teacher",
        default=None,
        metavar="PATH",
        help="teacher for the side-by-side comparison: an EDMUNet folder, or the SD-style teacher folder of a "
        f"text-to-image student (default: ${TEACHER_ENV}, else {DEFAULT_TEACHER} if it exists, or for a "
        "text-to-image student the teacher its fdistill_export.json/card.json records; without one the "
        "comparison is off)",
    )
    p.add_argument("--no-teacher", action="store_true", help="do not load a teacher (default: load it)")
    p.add_argument(
        "--host",
        default=None,
        help="address to bind; 0.0.0.0 exposes the demo on the network (default: $GRADIO_SERVER_NAME, else 127.0.0.1)",
    )
    p.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT, else 7860)")
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA with bf16 autocast when available, else CPU float32), cpu, cuda or cuda:N (default: auto)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="requests computed at the same time; the rest wait in the queue (default: 2)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="requests allowed to wait; more are refused with a 'queue full' error (default: 64)",
    )
    p.add_argument(
        "--display-scale",
        type=int,
        default=4,
        help="nearest-neighbour upscaling of the images in the page (default: 4)",
    )
    p.add_argument(
        "--cache-ttl",
        type=int,
        default=DEFAULT_CACHE_TTL,
        metavar="SECONDS",
        help="delete result images from Gradio's cache ($GRADIO_TEMP_DIR) once older than SECONDS, checked every "
        "SECONDS/4 (default: %(default)s)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``fdistill demo [options]``: returns 2 with one line on stderr for a bad checkpoint, device or port."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    for name in ("concurrency", "max_queue", "display_scale", "cache_ttl"):
        if getattr(args, name) < 1:
            print(f"fdistill demo: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(ImportError):
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    try:
        import gradio  # noqa: F401  # optional dependency: only checked for here
    except ImportError:
        print("fdistill demo: gradio is not installed; pip install 'fdistill[demo]'", file=sys.stderr)
        return 2
    try:
        demo = create_demo(
            args.checkpoint,
            args.teacher,
            args.device,
            load_teacher=not args.no_teacher,
            concurrency_limit=args.concurrency,
            max_queue=args.max_queue,
            display_scale=args.display_scale,
            cache_ttl=args.cache_ttl,
        )
    except CheckpointLoadError as e:
        print(f"fdistill demo: {e}", file=sys.stderr)
        return 2
    try:
        launch_demo(demo, args.host, args.port)
    except OSError as e:  # port in use / cannot bind
        print(
            f"fdistill demo: cannot serve on host {args.host or '(default)'} port {args.port or '(default)'}: "
            f"{one_line(e)}",
            file=sys.stderr,
        )
        return 2
    return 0
