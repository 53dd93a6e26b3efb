"""``fdistill bench diversity``: quality and diversity side by side, teacher vs students vs the hybrid sampler.

"Distilling Diversity and Control in Diffusion Models" (Gandikota & Bau 2025; docs/math.md §2.11): distilled
students lose diversity, and letting the teacher take the first step(s) before the student (the hybrid,
:func:`fdistill.apps.sample.hybrid_sample`) restores it. One table per data set; rows: the teacher at each
``--teacher-nfe`` (and, on a mixture, its exact samples), each student at its own NFE, and each student's hybrid
with ``--hybrid`` N teacher Heun steps of the ``--hybrid-nfe`` schedule; every row with its NFE and wall time per
image (sampling only, not the metrics).

Mixtures (``--data gmm8`` or ``ring8w``; :mod:`fdistill.bench.diversity_gmm`): modes covered, mode-weight error,
energy distance (with its floor: two exact teacher sets) and k-NN precision / recall (k = 3) against the teacher's
exact samples. The students are a one-step and a 4-step run trained here at ``--steps`` (``--set`` adds config
overrides, e.g. ``method.name=dmd``), or ``--student RUN_DIR`` distill run folders (repeatable)::

    fdistill bench diversity --data gmm8 --steps 2000 --out runs/bench_diversity_gmm8
    fdistill bench diversity --data ring8w --student runs/ring_1step --student runs/ring_4step

Fashion-MNIST (``--data fmnist``; :mod:`fdistill.bench.diversity_images`): FID (+- s over splits), precision /
recall against ``fashion_mnist:test`` (``fdistill eval``'s functions) and the intra-class diversity (mean pairwise
distance of Inception features within each class, averaged over classes, +- its std over classes; and the mean
+- std over classes of its ratio to the same statistic on the real test images of the class)::

    fdistill bench diversity --data fmnist --teacher checkpoints/fmnist_teacher --student checkpoints/fmnist_student \\
        --student runs/fmnist_4step/student --num-samples 10000 --device cuda --out runs/bench_diversity_fmnist

Emoji text-to-image (``--data emoji``; :mod:`fdistill.bench.diversity_t2i`): ``fdistill eval-t2i``'s caption match,
FD of caption-match features against real emoji, and the diversity across ``--seeds`` seeds of each of
``--num-prompts`` prompts (mean pairwise ``1 - cos``, +- std over prompts); the teacher with CFG ``--guidance``,
``--teacher`` / ``--student`` / ``--reward`` default to the shipped emoji checkpoints::

    fdistill bench diversity --data emoji --teacher-nfe 9,25 --num-prompts 100 --seeds 4 --out runs/div_emoji

Writes ``table.md`` and ``results.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from fdistill.bench.diversity_gmm import load_student, mixture_rows, mixture_teacher, train_student
from fdistill.bench.diversity_images import ImageOptions, image_rows
from fdistill.bench.diversity_t2i import T2IOptions, t2i_rows, t2i_table
from fdistill.bench.gmm import MIXTURES
from fdistill.bench.outputs import write_report
from fdistill.eval.fid_eval import fmt_value

#: the students trained in-process on a mixture: (name, train.student_steps)
TRAINED = (("1-step", 1), ("4-step", 4))


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _cell(v, digits: int = 4) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return fmt_value(v, digits)


def _pm(mean, std, digits: int = 3) -> str:
    return "-" if mean is None else f"{mean:.{digits}f} +- {std:.{digits}f}"


def _nfe(row: dict) -> str:
    if row["nfe"] is None:
        return "exact"
    if row.get("hybrid_steps"):
        return f"{row['nfe']} ({row['teacher_nfe']} + {row['student_nfe']})"
    return str(row["nfe"])


def _handover(row: dict) -> str:
    sigma = row.get("handover_sigma")
    return "-" if sigma is None else f"{sigma:.3g}"


def mixture_table(result: dict) -> str:
    rows = result["rows"]
    n, first = rows[0]["num_samples"], rows[0]
    lines = [
        f"### {result['data']}: {n} samples per row, seed {result['seed']}",
        "",
        f"energy distance floor (two exact teacher sets of {n}): {first['energy_distance_floor']:.4g}; precision / "
        f"recall: k = {first['pr_k']} nearest-neighbour manifolds against {n} exact teacher samples; hybrids: the "
        f"teacher's first N Heun steps of its NFE-{result['hybrid_nfe']} schedule, NFE = total (teacher + student)",
        "",
        "| model | NFE | ms/image | hand-over sigma | modes | weight error | energy distance | precision | recall | "
        "mean pairwise dist |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {_nfe(r)} | {r['seconds_per_image'] * 1e3:.3g} | {_handover(r)} | "
            f"{r['modes_covered']}/{r['num_modes']} | {_cell(r['mode_weight_error'])} | "
            f"{_cell(r['energy_distance'])} | {_cell(r['precision'])} | {_cell(r['recall'])} | "
            f"{_cell(r['mean_pairwise_distance'])} |"
        )
    ref = first["reference_mean_pairwise_distance"]
    return "\n".join([*lines, "", f"mean pairwise distance of the exact teacher reference: {ref:.4f}"]) + "\n"


def image_table(result: dict) -> str:
    rows = result["rows"]
    first = rows[0]
    intra = first.get("intra_class") or {}
    lines = [
        f"### fmnist: {first['num_samples']} samples per row (balanced labels), seed {result['seed']}, reference "
        f"{result['reference']}",
        "",
        f"FID +- s: mean +- sample std over {result['splits']} disjoint splits; intra-class: mean pairwise distance "
        f"of Inception features within a class, mean +- std over {intra.get('classes', '-')} classes (real test "
        f"images: {_pm(intra.get('real_mean'), intra.get('real_std'), 2)}), and the per-class ratio to the real "
        f"images', mean +- std; hybrids: NFE-{result['hybrid_nfe']} teacher schedule",
        "",
        "| model | NFE | ms/image | hand-over sigma | FID | FID +- s | precision | recall | intra-class dist | "
        "ratio to real |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        ic = r.get("intra_class") or {}
        lines.append(
            f"| {r['model']} | {_nfe(r)} | {r['seconds_per_image'] * 1e3:.3g} | {_handover(r)} | {_cell(r['fid'])} | "
            f"{_pm(r.get('fid_split_mean'), r.get('fid_split_std'), 2)} | {_cell(r['precision'])} | "
            f"{_cell(r['recall'])} | {_pm(ic.get('mean'), ic.get('std'), 2)} | "
            f"{_pm(ic.get('ratio_mean'), ic.get('ratio_std'))} |"
        )
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fdistill bench diversity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--data", default="gmm8", choices=[*MIXTURES, "fmnist", "emoji"], help="data set (default: gmm8)")
    p.add_argument("--student", action="append", default=[], metavar="DIR",
                   help="a student (repeatable): a distill run folder (mixtures) or an exported pipeline folder "
                   "(fmnist); mixtures default to a one-step and a 4-step student trained here")  # fmt: skip
    p.add_argument("--teacher", default=None, metavar="DIR",
                   help="fmnist: the pixel teacher folder (required); emoji: the SD-style teacher "
                   "(default: checkpoints/emoji_teacher; the student default: checkpoints/emoji_student)")  # fmt: skip
    p.add_argument("--reward", default="checkpoints/emoji_caption_match", metavar="DIR",
                   help="emoji: the caption-match model (default: checkpoints/emoji_caption_match)")  # fmt: skip
    p.add_argument("--guidance", type=float, default=3.0, help="emoji: the teacher's CFG scale w (default: 3)")
    p.add_argument("--num-prompts", type=int, default=100, help="emoji: prompts per row (default: 100)")
    p.add_argument("--seeds", type=int, default=4, help="emoji: seeds per prompt for the diversity (default: 4)")
    p.add_argument("--steps", type=int, default=None,
                   help="mixtures: training steps of each in-process student (default: the mixture's)")  # fmt: skip
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="mixtures: a config override for the in-process students (repeatable)")  # fmt: skip
    p.add_argument("--num-samples", type=int, default=None,
                   help="samples per row (default: 5000 on a mixture, 10000 on fmnist)")  # fmt: skip
    p.add_argument("--teacher-nfe", default="9,17,35", help="the teacher's rows, comma list (default: 9,17,35)")
    p.add_argument("--hybrid", default="1,2", help="teacher steps N of the hybrid rows, comma list (default: 1,2)")
    p.add_argument("--hybrid-nfe", type=int, default=9,
                   help="the teacher's schedule for the hand-over (default: 9: its first two steps end at sigma "
                   "17.5 and 2.5; at 35 they end at 57.6 and 40.8)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--device", default="cpu", help="fmnist, emoji: device (default: cpu)")
    p.add_argument("--batch-size", type=int, default=64, help="fmnist, emoji: batch size (default: 64)")
    p.add_argument(
        "--num-reference", type=int, default=None, help="fmnist, emoji: the first N reference (real) images (all)"
    )
    p.add_argument("--splits", type=int, default=3, help="fmnist: splits of FID +- s (default: 3)")
    p.add_argument("--kid-subsets", type=int, default=100, help="fmnist: KID subsets (default: 100)")
    p.add_argument("--inception-weights", default=None, help="fmnist: Inception weights file (default: found)")
    p.add_argument("--out", default="runs/bench_diversity", help="folder for table.md and results.json")
    return p


def run_mixture(args: argparse.Namespace, out: Path) -> dict:
    teacher = mixture_teacher(args.data)
    if args.student:
        students = [(Path(s).name, load_student(Path(s), teacher, out / f"loaded_{i}_{Path(s).name}"))
                    for i, s in enumerate(args.student)]  # fmt: skip
    else:
        students = [(name, train_student(args.data, args.steps, k, out / f"student_{name}", args.extra))
                    for name, k in TRAINED]  # fmt: skip
    rows = mixture_rows(teacher, students, args.num_samples or 5000, args.seed, _ints(args.teacher_nfe),
                        _ints(args.hybrid), args.hybrid_nfe)  # fmt: skip
    return {"data": args.data, "seed": args.seed, "hybrid_nfe": args.hybrid_nfe, "rows": rows}


def run_images(args: argparse.Namespace) -> dict:
    opts = ImageOptions(num_samples=args.num_samples or 10000, batch_size=args.batch_size, device=args.device,
                        seed=args.seed, num_reference=args.num_reference, splits=args.splits,
                        kid_subsets=args.kid_subsets, inception_weights=args.inception_weights)  # fmt: skip
    rows = image_rows(args.teacher, args.student, opts, _ints(args.teacher_nfe), _ints(args.hybrid), args.hybrid_nfe)
    return {"data": "fmnist", "seed": args.seed, "hybrid_nfe": args.hybrid_nfe, "reference": opts.reference,
            "splits": opts.splits, "rows": rows}  # fmt: skip


def run_t2i(args: argparse.Namespace) -> dict:
    opts = T2IOptions(num_prompts=args.num_prompts, seeds=args.seeds, guidance=args.guidance, reward=args.reward,
                      num_real=args.num_reference, batch_size=args.batch_size, seed=args.seed,
                      device=args.device)  # fmt: skip
    opts.teacher = args.teacher or opts.teacher
    opts.student = args.student[0] if args.student else opts.student
    return t2i_rows(opts, _ints(args.teacher_nfe), _ints(args.hybrid), args.hybrid_nfe)


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.data == "fmnist" and (args.teacher is None or not args.student):
        p.error("--data fmnist needs --teacher DIR and at least one --student DIR")
    if args.data == "emoji" and len(args.student) > 1:
        p.error("--data emoji takes one --student (an exported one-step SD student folder)")
    if len(args.student) > 2:
        p.error("at most two --student folders (a one-step and a few-step student)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        run = {"fmnist": run_images, "emoji": run_t2i}.get(args.data)
        result = run(args) if run else run_mixture(args, out)
    except (ValueError, FileNotFoundError) as e:
        print(f"fdistill bench diversity: {e}", file=sys.stderr)
        return 2
    table = {"fmnist": image_table, "emoji": t2i_table}.get(args.data, mixture_table)
    write_report(out, table(result), result)
    print(f"wrote {out / 'table.md'} and {out / 'results.json'}")
    return 0
