"""The mixture half of ``fdistill bench diversity`` (Gandikota & Bau 2025; docs/math.md §2.11, C8, C11).

The analytic teacher (configs/gmm8.yaml, or ``ring8w`` of :mod:`fdistill.bench.gmm`) is sampled with its EDM Heun
sampler at each NFE and exactly; the students are distillation runs trained here (a one-step and a 4-step student,
``train.student_steps=4``, at ``--steps``) or loaded from run folders (``config.yaml`` + ``checkpoints/``).

:func:`fdistill.apps.sample.hybrid_sample` needs a :class:`fdistill.export.pipeline.OneStepPipeline` (an image UNet)
and a pixel teacher, so the mixture's hand-over is :func:`mixture_hybrid`, the same one on the run's
:class:`fdistill.nets.generator.OneStepGenerator`: the teacher's first N Heun steps of its ``nfe`` schedule from
``sigma_max z``, its x0 prediction at the sigma reached, re-noised with fresh noise at the student's level
(:func:`fdistill.apps.sample.handover_level`), the student's remaining steps. Draws from one CPU generator, in
order: ``z``, the labels (a conditional mixture), the hand-over noise, the student's re-noising draws; with N = 0
these are exactly :meth:`fdistill.train.distill.Distiller.sample_student`'s, so the hybrid is the student itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fdistill.apps.sample import handover_level
from fdistill.bench.gmm import MIXTURES
from fdistill.config import load_config
from fdistill.core.sampling import edm_heun_sampler, edm_sigmas, heun_steps_for_nfe
from fdistill.metrics.diversity import mixture_diversity
from fdistill.nets.generator import OneStepGenerator, run_chain
from fdistill.teachers import build_teacher
from fdistill.teachers.gmm import GaussianMixtureTeacher
from fdistill.train.checkpoint import resolve_resume
from fdistill.train.distill import Distiller

CONFIG = "configs/gmm8.yaml"


@dataclass
class MixtureSamples:
    """``samples`` (N, D) on the CPU; the NFEs spent per sample; the hand-over sigma and student level (hybrids)."""

    samples: Tensor
    teacher_nfe: int
    student_nfe: int
    handover_sigma: float | None = None
    student_start: int | None = None


def mixture_teacher(data: str) -> GaussianMixtureTeacher:
    return build_teacher(load_config(CONFIG, MIXTURES[data]))


def train_student(data: str, steps: int | None, student_steps: int, out: Path, extra: list[str]) -> Distiller:
    """A distillation run on the mixture with ``student_steps`` levels, trained in ``out`` to ``steps`` (None: the
    mixture's own budget)."""
    budget = [] if steps is None else [f"train.steps={steps}"]
    cfg = load_config(CONFIG, [*MIXTURES[data], *extra, *budget, f"train.student_steps={student_steps}",
                               f"output_dir={out}", "train.checkpoint_every=1000000"])  # fmt: skip
    d = Distiller(cfg)
    d.run()
    return d


def load_student(run: Path, teacher: GaussianMixtureTeacher, work: Path) -> Distiller:
    """The run's newest complete checkpoint, loaded into a Distiller whose own files (config, logs) go to ``work``:
    the run's files are not touched. Its teacher must be ``teacher``."""
    ckpt = resolve_resume(run, "latest")
    if ckpt is None:
        raise FileNotFoundError(f"--student {run}: no checkpoint in {run / 'checkpoints'} (a distill run folder)")
    cfg = load_config(run / "config.yaml", [f"output_dir={work}"])
    d = Distiller(cfg, resume=str(ckpt))
    t = d.teacher
    same = t.means.shape == teacher.means.shape and all(
        torch.allclose(a.cpu(), b) for a, b in ((t.means, teacher.means), (t.stds, teacher.stds),
                                                (t.weights, teacher.weights)))  # fmt: skip
    if not same:
        raise ValueError(f"--student {run}: its mixture is not --data's (means, stds or weights differ)")
    return d


def _timed(fn: Callable[[], MixtureSamples]) -> tuple[MixtureSamples, float]:
    """``fn()`` and its wall seconds, timed on a second call (first-call costs are not the sampler's; the samples
    come back on the CPU, so the device has finished)."""
    fn()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def teacher_heun(teacher: GaussianMixtureTeacher, n: int, nfe: int, seed: int) -> MixtureSamples:
    """EDM Heun samples of the analytic teacher at ``nfe`` evaluations (unconditional)."""
    gen = torch.Generator().manual_seed(seed)
    x = edm_heun_sampler(lambda x, s: teacher.denoise(x, s), (n, *teacher.sample_shape), nfe, gen,
                         sigma_min=teacher.sigma_min, sigma_max=teacher.sigma_max)  # fmt: skip
    return MixtureSamples(x.cpu(), nfe, 0)


def teacher_exact(teacher: GaussianMixtureTeacher, n: int, seed: int) -> MixtureSamples:
    return MixtureSamples(teacher.sample_data(n, generator=torch.Generator().manual_seed(seed)), 0, 0)


@torch.no_grad()
def mixture_hybrid(
    student: OneStepGenerator, teacher: GaussianMixtureTeacher, n: int, hybrid_steps: int, nfe: int, seed: int
) -> MixtureSamples:
    """The teacher's first ``hybrid_steps`` Heun steps of its ``nfe`` schedule, then the student (module docstring)."""
    steps = heun_steps_for_nfe(nfe)
    if not 0 <= hybrid_steps <= steps:
        raise ValueError(f"hybrid_steps={hybrid_steps} is out of range: nfe={nfe} is {steps} Heun steps (0..{steps})")
    device = next(student.parameters()).device
    teacher = teacher.to(device)
    gen = torch.Generator().manual_seed(seed)
    shape = (n, *teacher.sample_shape)
    z = torch.randn(shape, generator=gen).to(device)
    cond = teacher.sample_labels(n, gen, "cpu")
    cond = None if cond is None else cond.to(device)
    sigmas = list(student.sigmas)

    def noise(_k: int) -> Tensor:
        return torch.randn(shape, generator=gen).to(device)

    if hybrid_steps == 0:
        draws = torch.stack([noise(k) for k in range(len(sigmas) - 1)]) if len(sigmas) > 1 else None
        return MixtureSamples(student(z, cond, noise=draws).float().cpu(), 0, len(sigmas), None, 0)
    calls = [0]

    def denoise(x: Tensor, s: Tensor) -> Tensor:
        calls[0] += 1
        return teacher.denoise(x, s, cond)

    x = edm_heun_sampler(denoise, shape, nfe, None, device, teacher.sigma_min, teacher.sigma_max, z=z,
                         stop_after=hybrid_steps)  # fmt: skip
    sigma_h = float(edm_sigmas(nfe, teacher.sigma_min, teacher.sigma_max)[hybrid_steps])
    if hybrid_steps == steps:
        return MixtureSamples(x.float().cpu(), calls[0], 0, 0.0, None)
    x0_hat = denoise(x, torch.full((n,), sigma_h, device=device))
    j = handover_level(sigmas, sigma_h)
    x_j = x0_hat + sigmas[j] * noise(-1)

    def student_d(xx: Tensor, k: int) -> Tensor:
        return student.net(xx, torch.full((n,), sigmas[k], device=device, dtype=xx.dtype), cond)

    out = run_chain(student_d, x_j, sigmas, noise, start=j)
    return MixtureSamples(out.float().cpu(), calls[0], len(sigmas) - j, sigma_h, j)


def _row(model: str, got: MixtureSamples, seconds: float, teacher, reference: Tensor, seed: int, **extra) -> dict:
    n = got.samples.shape[0]
    nfe = got.teacher_nfe + got.student_nfe or None  # None: exact samples, no network evaluation
    return {"model": model, "nfe": nfe, "teacher_nfe": got.teacher_nfe, "student_nfe": got.student_nfe,
            "handover_sigma": got.handover_sigma, "student_start": got.student_start, "num_samples": n,
            "seconds_per_image": seconds / n, **extra,
            **mixture_diversity(teacher, got.samples, reference, seed=seed)}  # fmt: skip


def mixture_rows(
    teacher: GaussianMixtureTeacher,
    students: list[tuple[str, Distiller]],
    n: int,
    seed: int,
    teacher_nfe: list[int],
    hybrid: list[int],
    hybrid_nfe: int,
) -> list[dict]:
    """Every row of the mixture table: the teacher at each NFE and exact, each student, its hybrids. Samples use
    seed ``seed + 1`` (the teacher's at NFE use ``seed + 1`` too: same ``z``); the recall reference (exact teacher
    samples) ``seed + 2``; the energy distance's fresh teacher samples ``seed`` (:func:`gmm_metrics`)."""
    teacher = teacher.cpu()
    reference = teacher.sample_data(n, generator=torch.Generator().manual_seed(seed + 2))
    rows = []
    for nfe in teacher_nfe:
        got, s = _timed(lambda nfe=nfe: teacher_heun(teacher, n, nfe, seed + 1))
        rows.append(_row(f"teacher, NFE {nfe}", got, s, teacher, reference, seed))
    got, s = _timed(lambda: teacher_exact(teacher, n, seed + 1))
    rows.append(_row("teacher (exact)", got, s, teacher, reference, seed))
    for name, d in students:
        k = d.ema.model.steps
        got, s = _timed(lambda d=d, k=k: MixtureSamples(d.sample_student(n, seed + 1)[0].cpu(), 0, k, None, 0))
        rows.append(_row(f"student {name}, NFE {k}", got, s, teacher, reference, seed, student=name))
        for steps in hybrid:
            got, s = _timed(lambda d=d, steps=steps: mixture_hybrid(d.ema.model, d.teacher, n, steps, hybrid_nfe,
                                                                     seed + 1))  # fmt: skip
            rows.append(_row(f"hybrid N={steps} + student {name}", got, s, teacher, reference, seed, student=name,
                             hybrid_steps=steps, hybrid_nfe=hybrid_nfe))  # fmt: skip
    return rows
