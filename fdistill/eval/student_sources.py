"""Built-in ``fdistill eval`` sources for distilled students: an exported one-step pipeline folder or a run directory.

``fdistill eval runs/X/student --reference fashion_mnist:test`` samples the student (NFE 1, labels drawn
uniformly); with ``--teacher-nfe 1,2,4,8,35`` the teacher named in the student's ``card.json``
(``teacher_path``) is sampled with the EDM Heun sampler (Karras et al. 2022, Alg. 1) at each NFE for the
teacher-vs-student table. A run directory resolves to its ``student`` folder. :mod:`fdistill.eval.sources` tries
this source after the registered ones and before ``.npz`` files and image folders.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from fdistill.eval.source_types import SampleSource, SourceOptions
from fdistill.export.pipeline import OneStepPipeline
from fdistill.metrics.plots import to_uint8
from fdistill.teachers.diffusers import UNetTeacher

SEED_STRIDE = 100_003  # batch b of seed s draws from seed s * SEED_STRIDE + b


def student_dir(spec: str) -> Path | None:
    """The exported ``OneStepPipeline`` folder of SOURCE (itself or its ``student`` subfolder), else None."""
    path = Path(spec)
    for cand in (path, path / "student"):
        index = cand / "model_index.json"
        if index.is_file() and json.loads(index.read_text()).get("_class_name") == "OneStepPipeline":
            return cand
    return None


def is_student(spec: str) -> bool:
    return student_dir(spec) is not None


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2).contiguous()


def teacher_sampler(teacher: UNetTeacher, num_classes: int, options: SourceOptions) -> Callable[[int], SampleSource]:
    """``nfe -> SampleSource`` of a loaded pixel teacher, sampled with ``nfe`` evaluations (labels uniform)."""
    on_cpu = torch.device(options.device).type == "cpu"

    def at(nfe: int) -> SampleSource:
        def generate(n: int, seed: int) -> torch.Tensor:
            gen, out = torch.Generator().manual_seed(seed), []
            for start in range(0, n, options.batch_size):
                m = min(options.batch_size, n - start)
                cond = torch.randint(0, num_classes, (m,), generator=gen).to(options.device) if num_classes else None
                if not on_cpu:  # a CPU generator cannot draw CUDA noise: seed the device instead
                    torch.manual_seed(seed * SEED_STRIDE + start)
                x = teacher.sample(m, cond, nfe=nfe, generator=gen if on_cpu else None, device=options.device)
                out.append(_uint8(x.cpu()))
            return torch.cat(out)

        return SampleSource(f"teacher@{nfe}", generate, info={"nfe": nfe})

    return at


def teacher_source(teacher_path: str, num_classes: int, options: SourceOptions) -> Callable[[int], SampleSource]:
    """``nfe -> SampleSource`` of the pixel teacher folder, sampled with ``nfe`` evaluations (labels uniform)."""
    return teacher_sampler(UNetTeacher.from_pretrained(teacher_path).to(options.device), num_classes, options)


def load_student(spec: str, options: SourceOptions) -> SampleSource:
    """The exported student of SOURCE as a generator source, with its card's teacher (if present on disk)."""
    folder = student_dir(spec)
    pipe = OneStepPipeline.from_pretrained(folder).to(options.device)
    card_file = folder / "card.json"
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}

    def generate(n: int, seed: int) -> torch.Tensor:
        out = []
        for i, start in enumerate(range(0, n, options.batch_size)):
            m = min(options.batch_size, n - start)
            out.append(_uint8(pipe(batch_size=m, seed=seed * SEED_STRIDE + i, output_type="pt").images))
        return torch.cat(out)

    teacher, teacher_path = None, card.get("teacher_path") or card.get("teacher", ":").split(":", 1)[1]
    if teacher_path and Path(teacher_path).exists():
        teacher = teacher_source(teacher_path, pipe.num_classes, options)
    info = {"nfe": pipe.num_steps, "method": card.get("method", "?"), "student": str(folder)}
    return SampleSource(str(folder), generate, teacher=teacher, info=info)
