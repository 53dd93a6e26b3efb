"""``fdistill sample``: write an image grid from a student (one-step or K-step), a teacher, or both (hybrid).

A student folder (``model_index.json`` of :class:`fdistill.export.pipeline.OneStepPipeline`) is sampled with its own
K steps (NFE K; ``--student-steps n`` uses its first n levels); a teacher folder (an ``EDMUNet`` ``config.json``)
with the EDM Heun sampler at ``--nfe`` evaluations. Same ``--seed``, same images.

Hybrid ("diversity distillation", Gandikota & Bau 2025; docs/math.md §2.11): ``STUDENT --teacher TEACHER
--hybrid-steps N`` lets the teacher take the first N Heun steps of its ``--nfe`` schedule from pure noise
``sigma_max z``, reaching ``x_N`` at the schedule's ``sigma_N``; the teacher's x0 prediction there,
``x0_hat = D_teacher(x_N, sigma_N)`` (one more teacher evaluation), is handed to the student at the first level of
its schedule at or below ``sigma_N`` (if none is, its last level; a one-step student: always ``sigma_init``),
re-noised with fresh noise, ``x = x0_hat + sigma_j eps``, exactly the form of input the student's own chain
gives step j, and the student runs its remaining steps j..K. N = 0 is the student's own sampling (same seed,
same images), N = the teacher's number of steps its own sample. Whether a one-step student, trained only on
``sigma_init z``, generalises to ``x0_hat + sigma_init eps`` is an empirical question: measure it
(``fdistill eval`` / ``fdistill dt-vis``), do not assume it.

Latent (Stable-Diffusion-style) pairs (:mod:`fdistill.apps.hybrid_latent`): the teacher folder is a
:class:`fdistill.teachers.latent.LatentTeacher` (the same Heun steps in latent space), the student an exported
``StableDiffusionPipeline`` folder run level by level with its recorded call on the VP input
``sqrt(abar) x0_hat + sqrt(1 - abar) eps`` at its timestep; ``--classes`` / ``--prompts`` are prompt ids or
prompts of the teacher's ``prompts.txt`` (random ones by default) and the latents decode through the VAE. Either
folder alone samples too (the student's recorded call; the teacher's Heun sampler).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fdistill.apps.hybrid_latent import (
    LatentStudent,
    check_latent_pair,
    decoder_for,
    is_latent,
    is_latent_student,
    load_latent_teacher_folder,
)
from fdistill.core.guidance import guided
from fdistill.core.sampling import edm_heun_sampler, edm_sigmas, heun_steps_for_nfe
from fdistill.export.loading import is_sd_folder
from fdistill.export.pipeline import OneStepPipeline
from fdistill.metrics.plots import image_grid
from fdistill.nets.unet import EDMUNet
from fdistill.teachers.diffusers import UNetTeacher
from fdistill.train.run_eval import grid_labels

#: ``callback(who, index, sigma, x0)``: ``who`` is "teacher" (its i-th Heun step), "handover" (the teacher's x0
#: prediction handed to the student, index N) or "student" (level index j..K-1 of the student's schedule)
StepCallback = Callable[[str, int, float, Tensor], None]


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
            listed = ", ".join(names) if len(names) <= 20 else f"one of the {len(names)} names (prompts)"
            raise ValueError(f"unknown class {item!r}; accepted: 0..{len(names) - 1} or {listed}")
    return (out * n)[:n]


@dataclass
class HybridOutput:
    """``images``: the samples (N x C x H x W, clamped to [-1, 1] unless ``clamp=False``); ``labels`` their labels;
    ``handover_sigma``: the teacher's sigma after N steps (0 = the teacher finished; None for N = 0);
    ``student_start``: the student's first level used (0-based; None when the teacher finished); the NFEs spent;
    ``latents``: a latent pair's last x0 / sample before the VAE decoder (None for pixel pairs)."""

    images: Tensor
    labels: Tensor | None
    handover_sigma: float | None
    student_start: int | None
    teacher_nfe: int
    student_nfe: int
    latents: Tensor | None = None


def handover_level(student_sigmas: Sequence[float], sigma: float) -> int:
    """The student's level (0-based) that continues from the teacher's ``sigma``: the first at or below it (relative
    tolerance 1e-6), else the last one (a one-step student: always its ``sigma_init``)."""
    for j, s in enumerate(student_sigmas):
        if s <= sigma * (1 + 1e-6):
            return j
    return len(student_sigmas) - 1


def _load(student_pipe, teacher):
    if isinstance(student_pipe, str | Path):
        path = Path(student_pipe)
        student_pipe = LatentStudent.from_folder(path) if is_sd_folder(path) else OneStepPipeline.from_pretrained(path)
    if isinstance(teacher, str | Path):
        teacher = _load_teacher(Path(teacher))
    if student_pipe is not None and not isinstance(student_pipe, OneStepPipeline | LatentStudent):
        raise TypeError(
            f"hybrid sampling needs a OneStepPipeline or LatentStudent student, got {type(student_pipe).__name__}"
        )
    check_latent_pair(student_pipe, teacher)
    return student_pipe, teacher


def _load_teacher(path: Path):
    """A pixel teacher folder (EDMUNet or UNet2DModel) as a :class:`fdistill.teachers.diffusers.UNetTeacher`, a
    latent (SD-style) one as a :class:`fdistill.teachers.latent.LatentTeacher`."""
    index = path / "model_index.json"
    if index.is_file() and "vae" in json.loads(index.read_text()):
        return load_latent_teacher_folder(path)
    return UNetTeacher.from_pretrained(path)


def label_names(student, teacher) -> list[str]:
    """What ``--classes`` may name: a latent pair's prompts, a pixel student's class names (else none)."""
    if is_latent(teacher) or is_latent(student):
        return list((student if student is not None else teacher).prompts)
    return list(student.config.class_names) if student is not None else []


@torch.no_grad()
def hybrid_sample(
    student_pipe,
    teacher,
    n: int,
    hybrid_steps: int,
    *,
    nfe: int | None = None,
    class_labels: int | str | Sequence[int | str] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    guidance: float = 1.0,
    clamp: bool = True,
    callback: StepCallback | None = None,
) -> HybridOutput:
    """Teacher for the first ``hybrid_steps`` Heun steps, then the student (module docstring: the hand-over).

    Args:
        student_pipe: a :class:`fdistill.export.pipeline.OneStepPipeline`, a
            :class:`fdistill.apps.hybrid_latent.LatentStudent` (or either's folder); may be None when
            ``hybrid_steps`` is the teacher's full schedule.
        teacher: a pixel :class:`fdistill.teachers.base.Teacher` or a
            :class:`fdistill.teachers.latent.LatentTeacher` (or its folder); may be None when ``hybrid_steps`` is 0.
        nfe: the teacher's sampler budget, which fixes its schedule (default: the teacher's ``sample_nfe``).
        class_labels: as :class:`OneStepPipeline`'s (ids or class names; a latent pair's prompt ids or prompts;
            None = drawn at random).
        seed / generator: one CPU generator for every draw, in order: labels (when drawn), ``z``, the hand-over
            noise, the student's re-noising draws. Same seed, same images; the student's draws are exactly those of
            ``student_pipe(...)`` when ``hybrid_steps == 0``, the teacher's those of ``teacher.sample`` when it
            finishes.
        guidance: the teacher's CFG scale (1 = off).
        clamp: clamp the result to [-1, 1] (the pipeline's images); False returns the raw last x0 / sample (a latent
            pair's decoded through the VAE; its latents are ``latents``).
        callback: ``callback(who, index, sigma, x0)`` for every x0 prediction (DT-visualisation; a latent pair's
            x0 are latents).
    """
    student_pipe, teacher = _load(student_pipe, teacher)
    nfe = int(nfe if nfe is not None else getattr(teacher, "sample_nfe", 35))
    steps = heun_steps_for_nfe(nfe)
    if not 0 <= hybrid_steps <= steps:
        raise ValueError(f"hybrid_steps={hybrid_steps} is out of range: nfe={nfe} is {steps} Heun steps (0..{steps})")
    if student_pipe is None and hybrid_steps < steps:
        raise ValueError(f"hybrid_steps={hybrid_steps} < {steps} (the teacher's steps) needs a student")
    if teacher is None and hybrid_steps > 0:
        raise ValueError(f"hybrid_steps={hybrid_steps} > 0 needs a teacher")
    shape = (n, *(teacher or student_pipe).sample_shape)
    if student_pipe is not None and teacher is not None:
        if tuple(student_pipe.sample_shape) != tuple(teacher.sample_shape):
            raise ValueError(f"student samples {student_pipe.sample_shape} but teacher {teacher.sample_shape}")
        if student_pipe.num_classes != teacher.num_classes:
            raise ValueError(f"student has {student_pipe.num_classes} classes but teacher {teacher.num_classes}")
    gen = generator or torch.Generator().manual_seed(int(seed) if seed is not None else torch.seed())
    if student_pipe is not None:
        labels = student_pipe._labels(n, class_labels, gen)
    else:
        labels = _teacher_labels(teacher, n, class_labels, gen)
    z = torch.randn(shape, generator=gen)

    def student_cb(level: int, sigma: float, _x: Tensor, x0: Tensor) -> None:
        if callback is not None:
            callback("student", level, sigma, x0)

    if hybrid_steps == 0:
        out = student_pipe.chain(student_pipe.first_input(z), labels, gen, callback=student_cb)
        result = HybridOutput(out, labels, None, 0, 0, student_pipe.num_steps)
    else:
        device = next(iter(teacher.parameters()), torch.zeros(0)).device
        cond = None if labels is None else labels.to(device)
        calls = [0]

        def denoise(x: Tensor, s: Tensor) -> Tensor:
            calls[0] += 1
            return teacher.denoise(x, s, cond, guidance)

        def teacher_cb(i: int, sigma: float, _x: Tensor, x0: Tensor) -> None:
            if callback is not None:
                callback("teacher", i, sigma, x0)

        x = edm_heun_sampler(denoise, shape, nfe, None, device, teacher.sigma_min, teacher.sigma_max, z=z,
                             stop_after=hybrid_steps, callback=teacher_cb)  # fmt: skip
        sigma_h = float(edm_sigmas(nfe, teacher.sigma_min, teacher.sigma_max)[hybrid_steps].float())
        if hybrid_steps == steps:
            result = HybridOutput(x, labels, 0.0, None, calls[0], 0)
        else:
            x0_hat = denoise(x, torch.full((n,), sigma_h, device=device))
            if callback is not None:
                callback("handover", hybrid_steps, sigma_h, x0_hat)
            j = handover_level(student_pipe.student_sigmas, sigma_h)
            eps = torch.randn(shape, generator=gen)
            x_j = x0_hat.float().to(student_pipe.unet.device) + student_pipe.student_sigmas[j] * eps.to(
                student_pipe.unet.device
            )
            out = student_pipe.chain(x_j, labels, gen, start=j, callback=student_cb)
            result = HybridOutput(out, labels, sigma_h, j, calls[0], student_pipe.num_steps - j)
    decode = decoder_for("teacher" if result.student_start is None else "student", student_pipe, teacher)
    if decode is not None:
        result.latents, result.images = result.images, decode(result.images)
    if clamp:
        result.images = result.images.clamp(-1, 1)
    return result


def _teacher_labels(teacher, n: int, class_labels, gen: torch.Generator) -> Tensor | None:
    if not teacher.num_classes:
        return None
    if class_labels is None:
        return torch.randint(0, teacher.num_classes, (n,), generator=gen)
    if isinstance(class_labels, int):
        class_labels = [class_labels] * n
    labels = torch.tensor([int(c) for c in class_labels], dtype=torch.long)
    if labels.numel() != n or not bool(((labels >= 0) & (labels < teacher.num_classes)).all()):
        raise ValueError(f"need {n} class labels in 0..{teacher.num_classes - 1}, got {labels.tolist()}")
    return labels


HYBRID_HELP = (
    "hybrid sampling with --teacher: the teacher takes the first N Heun steps of its --nfe schedule from pure "
    "noise, its x0 prediction at the sigma it reached is re-noised (fresh noise) to the first student level at or "
    "below that sigma (a one-step student: sigma_init) and the student finishes; 0 = the student alone, the "
    "teacher's step count = the teacher alone (default: off)"
)
CLASSES_HELP = (
    "comma list of class ids or names, repeated; for a latent (SD-style) pair prompt ids or prompts of the "
    "teacher's prompts.txt (default: random)"
)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fdistill sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("source", help="student folder (OneStepPipeline or exported SD) or teacher folder (EDMUNet or SD)")
    p.add_argument("--num", type=int, default=64, help="number of images (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--classes", "--prompts", dest="classes", default=None, help=CLASSES_HELP)
    p.add_argument("--nfe", type=int, default=35, help="teacher sampler evaluations (default: 35)")
    p.add_argument("--guidance", type=float, default=1.0, help="teacher CFG scale, 1 = off (default: 1)")
    p.add_argument("--student-steps", type=int, default=None,
                   help="student steps, 1..K (default: K, all the steps it was trained for)")  # fmt: skip
    p.add_argument("--teacher", default=None, help="teacher folder for --hybrid-steps (default: none)")
    p.add_argument("--hybrid-steps", type=int, default=None, metavar="N", help=HYBRID_HELP)
    p.add_argument("--beside-teacher", default=None, metavar="TEACHER",
                   help="one grid of TEACHER's samples at --nfe above the student's, same seed and labels, each block "
                        "labelled with its NFE (a model card's samples.png; default: off)")  # fmt: skip
    p.add_argument("--out", default="samples.png", help="output PNG (default: samples.png)")
    args = p.parse_args(argv)
    src = Path(args.source)
    if not src.is_dir():
        print(f"fdistill sample: {src} is not a folder (expected a student pipeline or a teacher)", file=sys.stderr)
        return 2
    is_student = (src / "model_index.json").is_file() and (is_latent_student(src) or not is_sd_folder(src))
    if (args.teacher is None) != (args.hybrid_steps is None) or (args.teacher is not None and not is_student):
        print("fdistill sample: --teacher and --hybrid-steps go together, with a student folder as SOURCE",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.beside_teacher is not None and (not is_student or args.teacher is not None):
        print("fdistill sample: --beside-teacher takes a student folder as SOURCE and no --teacher/--hybrid-steps",
              file=sys.stderr)  # fmt: skip
        return 2
    t0 = time.perf_counter()
    labels = None
    try:
        if args.beside_teacher is not None:
            rows, labels = _beside_teacher(src, args)
            what = f"{' above '.join(labels)}, {args.num} images each"
        else:
            images, what = (_sample_student if is_student else _sample_teacher)(src, args)
            rows, what = [images], f"{args.num} images ({what})"
    except ValueError as e:
        print(f"fdistill sample: {e}", file=sys.stderr)
        return 2
    image_grid(rows, labels=labels).save(args.out)
    print(f"wrote {args.out}: {what} in {time.perf_counter() - t0:.1f} s")
    return 0


def _load_student(src: Path) -> OneStepPipeline | LatentStudent:
    """A student folder: an exported SD-style latent student or a pixel :class:`OneStepPipeline`."""
    return LatentStudent.from_folder(src) if is_latent_student(src) else OneStepPipeline.from_pretrained(src)


def _sample_student(src: Path, args) -> tuple[Tensor, str]:
    pipe = _load_student(src)
    pipe, teacher = _load(pipe, None if args.hybrid_steps is None else args.teacher)
    labels = _labels(args.classes, args.num, label_names(pipe, teacher))
    if args.hybrid_steps is not None:
        out = hybrid_sample(pipe, teacher, args.num, args.hybrid_steps, nfe=args.nfe, class_labels=labels,
                            seed=args.seed, guidance=args.guidance)  # fmt: skip
        where = "teacher finished" if out.student_start is None else (
            f"hand-over at sigma {out.handover_sigma:.3g} to student level {out.student_start + 1}/{pipe.num_steps}"
        )  # fmt: skip
        nfes = f"NFE {out.teacher_nfe} teacher + {out.student_nfe} student"
        return out.images, f"hybrid, {args.hybrid_steps} teacher steps, {where}, {nfes}"
    if isinstance(pipe, LatentStudent):
        if args.student_steps not in (None, pipe.num_steps):
            raise ValueError(f"--student-steps {args.student_steps}: this latent student runs its {pipe.num_steps}")
        return hybrid_sample(pipe, None, args.num, 0, class_labels=labels, seed=args.seed).images, (
            f"student, NFE {pipe.num_steps}"
        )  # fmt: skip
    images = pipe(batch_size=args.num, class_labels=labels, seed=args.seed, output_type="pt",
                  num_inference_steps=args.student_steps).images  # fmt: skip
    return images, f"student, NFE {args.student_steps or pipe.num_steps}"


def _beside_teacher(src: Path, args) -> tuple[list[Tensor], list[str]]:
    """The teacher's samples (its full Heun schedule at ``--nfe``) and the student's, from the same seed: the same
    labels and the same starting noise ``z``, labelled as a run's ``samples.png`` is."""
    pipe = _load_student(src)
    pipe, teacher = _load(pipe, args.beside_teacher)
    labels = _labels(args.classes, args.num, label_names(pipe, teacher))
    both = [hybrid_sample(pipe, teacher, args.num, n, nfe=args.nfe, class_labels=labels, seed=args.seed,
                          guidance=args.guidance).images for n in (heun_steps_for_nfe(args.nfe), 0)]  # fmt: skip
    return both, grid_labels(args.nfe, pipe.num_steps)


def _sample_teacher(src: Path, args) -> tuple[Tensor, str]:
    if is_sd_folder(src):  # a latent teacher: its Heun sampler in latent space, decoded
        teacher = load_latent_teacher_folder(src)
        labels = _labels(args.classes, args.num, teacher.prompts)
        out = hybrid_sample(None, teacher, args.num, heun_steps_for_nfe(args.nfe), nfe=args.nfe, class_labels=labels,
                            seed=args.seed, guidance=args.guidance)  # fmt: skip
        return out.images, f"teacher, NFE {args.nfe}"
    net = EDMUNet.from_pretrained(src).eval()
    gen = torch.Generator().manual_seed(args.seed)
    labels = _labels(args.classes, args.num, [])
    cond = torch.tensor(labels) if labels else (torch.randint(0, net.num_classes, (args.num,), generator=gen)
                                                if net.num_classes else None)  # fmt: skip

    with torch.no_grad():
        images = edm_heun_sampler(lambda x, s: guided(net, x, s, cond, args.guidance),
                                  (args.num, *net.sample_shape), args.nfe, gen)  # fmt: skip
    return images, f"teacher, NFE {args.nfe}"
