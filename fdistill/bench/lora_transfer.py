"""``fdistill bench lora-transfer``: does a LoRA trained on the teacher control the distilled student unchanged?

"Distilling Diversity and Control in Diffusion Models" (Gandikota & Bau 2025; docs/math.md §2.11) claims that
controls trained on the teacher, LoRAs among them, transfer to the distilled student as they are. Measured here:

1. a rank-``--rank`` LoRA on the teacher's UNet (:data:`fdistill.teachers.latent.LORA_TARGETS`, base frozen) is
   fitted with the teacher's own DSM objective to the images of ONE category, the captions that contain
   ``--keyword`` as a word (default ``flag``: the emoji set's 270 flags and 5 other captions with "flag"),
   for ``--steps`` steps (:mod:`fdistill.bench.lora_transfer_train`);
2. the same adapter file is loaded, unchanged, into the teacher's UNet and into the student's stock
   ``StableDiffusionPipeline`` (``load_lora_weights``); teacher (EDM Heun, ``--teacher-nfe``, each CFG ``w`` of
   ``--cfg``) and student (its recorded one-step call) sample with and without it, ``--num-prompts`` captions NOT
   of that category (spread evenly over the rest of the table) x ``--seeds`` seeds, every row from the same noise;
3. the caption-match model classifies every image zero-shot among the data set's category names
   (:mod:`fdistill.bench.lora_transfer_rows`): share sent to the LoRA's category +- binomial s.e., mean cosine to
   its name; real images of the category and of the evaluation prompts calibrate the classifier. The reading
   compares the student's shift with the teacher's (paired s.e.; "inside the noise" = within 2 s.e.).

Example (the shipped emoji pair, CPU)::

    fdistill bench lora-transfer --steps 300 --num-prompts 64 --seeds 4 --out runs/bench_lora_transfer

Writes ``table.md``, ``results.json``, ``grid.png`` (first 8 prompts of the first seed, one row per generator) and
the adapter ``lora/pytorch_lora_weights.safetensors`` in ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch

from fdistill.bench.lora_transfer_rows import (
    ZeroShot,
    paired_shift,
    score_row,
    shift_difference,
    student_generator,
    teacher_generator,
)
from fdistill.bench.lora_transfer_train import category_mask, fit_lora, save_lora
from fdistill.bench.outputs import write_report
from fdistill.data.emoji import load_emoji
from fdistill.eval.t2i.base import EvalT2ISetupError
from fdistill.eval.t2i.generators import generate, load_teacher
from fdistill.eval.t2i.inputs import select_prompts
from fdistill.export.loading import CheckpointLoadError
from fdistill.metrics.plots import image_grid
from fdistill.rewards import PreferenceReward


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fdistill bench lora-transfer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--teacher", default="checkpoints/emoji_teacher", help="SD-style latent teacher folder")
    p.add_argument("--student", default="checkpoints/emoji_student", help="exported one-step student folder")
    p.add_argument("--caption-match", default="checkpoints/emoji_caption_match", help="caption-match model folder")
    p.add_argument("--data-root", default=None, help="emoji package folder (default: the fdistill cache)")
    p.add_argument("--keyword", default="flag", help="the LoRA's category: captions with this word (default: flag)")
    p.add_argument("--labels", default=None,
                   help="zero-shot category names, comma list, the LoRA's first (default: the data set's "
                   "categories, lower-cased; the LoRA's = the commonest among the keyword's captions)")  # fmt: skip
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (default: 8; alpha = rank)")
    p.add_argument("--steps", type=int, default=300, help="LoRA training steps (default: 300, ~4 CPU-minutes)")
    p.add_argument("--batch-size", type=int, default=32, help="LoRA training batch (default: 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (default: 1e-3)")
    p.add_argument("--label-dropout", type=float, default=0.1, help="empty-prompt dropout (default: 0.1, as trained)")
    p.add_argument("--num-prompts", type=int, default=64, help="evaluation prompts outside the category (default: 64)")
    p.add_argument("--seeds", type=int, default=4, help="seeds per prompt (default: 4)")
    p.add_argument("--teacher-nfe", type=int, default=25, help="teacher EDM Heun evaluations (default: 25, its card)")
    p.add_argument("--cfg", type=_floats, default=[3.0, 1.0],
                   help="teacher CFG scales w, comma list (default: 3,1: the card's two; 1 = off)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the LoRA fit and of the sampling noise (default: 0)")
    p.add_argument("--device", default="cpu", help="device (default: cpu)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads, 0 = torch's default (default: 1)")
    p.add_argument("--out", default="runs/bench_lora_transfer", help="folder for table.md, results.json, grid.png")
    return p


def category_labels(categories: list[str], mask: torch.Tensor, spec: str | None) -> tuple[list[str], int]:
    """The zero-shot label texts and the index of the LoRA's: ``spec`` (comma list, the LoRA's first), else the
    data set's categories lower-cased with the commonest category among the keyword's captions as the target."""
    if spec:
        labels = [s.strip() for s in spec.split(",") if s.strip()]
        if len(labels) < 2:
            raise ValueError(f"--labels {spec!r}: give at least two category names (the LoRA's first)")
        return labels, 0
    names = list(dict.fromkeys(c.lower() for c in categories))
    if len(names) < 2:
        raise ValueError("the data set has fewer than two categories: give --labels")
    target = Counter(c.lower() for c, m in zip(categories, mask.tolist(), strict=True) if m).most_common(1)[0][0]
    return names, names.index(target)


def _fit(args: argparse.Namespace, teacher, images: torch.Tensor, captions: list[str], out: Path):
    fit = fit_lora(teacher, images, captions, rank=args.rank, steps=args.steps, batch_size=args.batch_size,
                   lr=args.lr, label_dropout=args.label_dropout, seed=args.seed)  # fmt: skip
    first, last = fit.loss_summary()
    print(f"LoRA: {fit.steps} steps in {fit.seconds:.0f} s, loss {first} -> {last}", file=sys.stderr)
    return fit, save_lora(fit.unet, out / "lora")


def run(args: argparse.Namespace, out: Path) -> dict:
    """Fit, apply, sample and score (see the module docstring); the result dict behind ``table.md``."""
    device = torch.device(args.device)
    teacher = load_teacher(args.teacher, device=device)
    size = teacher.image_size if teacher.image_size in (16, 32, 64) else 64
    data = load_emoji(args.data_root, size=size, download=args.data_root is None)
    captions = list(data.prompts)
    mask = category_mask(captions, args.keyword)
    if not 0 < int(mask.sum()) < len(captions):
        raise ValueError(f"--keyword {args.keyword!r} matches {int(mask.sum())} of {len(captions)} captions")
    labels, target = category_labels(list(data.categories), mask, args.labels)
    in_cat = [c for c, m in zip(captions, mask.tolist(), strict=True) if m]
    fit, lora = _fit(args, teacher, data.images[mask], in_cat, out)
    others = [i for i, m in enumerate(mask.tolist()) if not m]
    chosen = [others[i] for i in select_prompts(others, args.num_prompts)]
    prompts = [captions[i] for i in chosen]
    zs = ZeroShot(PreferenceReward.from_pretrained(args.caption_match, device=device), labels, target)
    rows = [score_row(f"real: {labels[target]} images", *zs.classify(data.images[mask])),
            score_row("real: evaluation prompts' images", *zs.classify(data.images[chosen]))]  # fmt: skip
    gens = [teacher_generator(teacher, x, args.teacher_nfe, w, device) for w in args.cfg for x in (None, lora)]
    gens += [student_generator(args.student, x, device) for x in (None, lora)]
    grid = []
    for gen in gens:
        images, seconds = generate(gen, prompts * args.seeds, len(prompts), args.seed, device)
        rows.append(score_row(gen.name, *zs.classify(images), seconds))
        grid.append(images[:8])
    image_grid(grid, labels=[g.name for g in gens]).save(out / "grid.png")
    first, last = fit.loss_summary()
    return {
        "keyword": args.keyword, "labels": labels, "target": labels[target], "category_captions": len(in_cat),
        "category_examples": in_cat[:3] + in_cat[-3:], "rank": args.rank, "steps": args.steps,
        "batch_size": args.batch_size, "lr": args.lr, "label_dropout": args.label_dropout,
        "fit_seconds": fit.seconds, "loss_first": first, "loss_last": last, "lora": str(lora),
        "num_prompts": len(prompts), "seeds": args.seeds, "seed": args.seed, "prompts": prompts,
        "teacher": args.teacher, "teacher_nfe": args.teacher_nfe, "cfg": args.cfg, "student": args.student,
        "student_call": gens[-1].info["call"], "caption_match": args.caption_match, "rows": rows,
        **shifts(rows),
    }  # fmt: skip


def _floats(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one CFG scale")
    return values


def shifts(rows: list[dict]) -> dict:
    """``shifts``: each model's LoRA - base (teacher per w, student); ``differences``: student - teacher per w."""
    by = {r["name"]: r for r in rows}
    bases = [n for n in by if n + " + LoRA" in by]
    out = {"shifts": {n: paired_shift(by[n], by[n + " + LoRA"]) for n in bases}}
    pair = (by["student"], by["student + LoRA"])
    out["differences"] = {n: shift_difference(by[n], by[n + " + LoRA"], *pair) for n in bases if n != "student"}
    return out


def _pm(v: float, se: float, digits: int = 3) -> str:
    return f"{v:+.{digits}f} +- {se:.{digits}f}"


def reading(result: dict) -> list[str]:
    """The plain-words answer per teacher row: does the student's shift match the teacher's, inside the noise
    (2 paired s.e.)?"""
    cat, s = result["target"], result["shifts"]["student"]
    ss, out = _pm(s["share"], s["share_se"]), []
    for name, d in result["differences"].items():
        t = result["shifts"][name]
        ts, ds = _pm(t["share"], t["share_se"]), _pm(d["share"], d["share_se"])
        if abs(t["share"]) <= 2 * t["share_se"]:
            out.append(f"Against the {name}: the LoRA did not move the teacher measurably (share of {cat!r} {ts}, "
                       f"inside 2 s.e.) while the student moved {ss}: no teacher shift to transfer at this budget; "
                       "whatever the student does, it is not the teacher's shift.")  # fmt: skip
            continue
        head = (f"Against the {name}: teacher shift {ts}, student shift {ss} (ratio {s['share'] / t['share']:.2f}); "
                f"student - teacher {ds}: ")  # fmt: skip
        if abs(d["share"]) <= 2 * d["share_se"]:
            out.append(head + "the difference is inside the noise (< 2 s.e.): the shift TRANSFERS unchanged.")
        elif s["share"] * t["share"] > 0 and abs(s["share"]) > 2 * s["share_se"]:
            out.append(head + "the student moves the same way, significantly, but by a different amount (outside "
                       "the noise): the shift transfers PARTLY.")  # fmt: skip
        else:
            out.append(head + "the student does not move the same way beyond the noise: the shift does NOT transfer.")
    return out


def table(result: dict) -> str:
    cat, n = result["target"], result["num_prompts"] * result["seeds"]
    ws = ", ".join(f"{w:g}" for w in result["cfg"])
    lines = [
        f"### LoRA transfer: rank {result['rank']}, {result['steps']} steps on the {result['category_captions']} "
        f"captions with the word {result['keyword']!r} (zero-shot category {cat!r})",
        "",
        f"{result['num_prompts']} evaluation prompts outside the category x {result['seeds']} seeds = {n} images a "
        f"generated row (same noise in every row); teacher EDM Heun NFE {result['teacher_nfe']}, CFG "
        f"w={ws}; student `pipe(prompt, {_call(result['student_call'])})`. share = images whose "
        f"best-matching of {len(result['labels'])} category names is {cat!r} (+- binomial s.e.); similarity = mean "
        f"cosine to {cat!r}. LoRA loss (first / last 20 steps): {_f(result['loss_first'])} / "
        f"{_f(result['loss_last'])}.",
        "",
        "| rows | share +- s.e. | hits / n | mean similarity | n images | ms/img |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        ms = "-" if r["ms_per_image"] is None else f"{r['ms_per_image']:.3g}"
        lines.append(f"| {r['name']} | {r['share']:.3f} +- {r['share_se']:.3f} | {r['hits']} / {r['n']} | "
                     f"{r['similarity']:.4f} | {r['n']} | {ms} |")  # fmt: skip
    lines += ["", "| shift (LoRA - base, paired s.e.) | share | similarity |", "|---|---|---|"]
    named = list(result["shifts"].items())
    named += [(f"student - {n}", v) for n, v in result["differences"].items()]
    for name, v in named:
        lines.append(f"| {name} | {_pm(v['share'], v['share_se'])} | {_pm(v['similarity'], v['similarity_se'], 4)} |")
    lines += ["", *reading(result)]
    return "\n".join(lines) + "\n"


def _call(call: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in call.items())


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, out)
    except (ValueError, FileNotFoundError, EvalT2ISetupError, CheckpointLoadError) as e:
        print(f"fdistill bench lora-transfer: {e}", file=sys.stderr)
        return 2
    write_report(out, table(result), result)
    print(f"wrote {out / 'table.md'}, {out / 'results.json'}, {out / 'grid.png'} and {result['lora']}")
    return 0
