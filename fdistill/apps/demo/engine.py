"""The demo's engine, independent of Gradio: request validation, seeding, timing and the result of one request.

The models behind it are a :mod:`fdistill.apps.demo.backends` backend (a one-step pixel student with its EDM teacher,
or a stock Stable-Diffusion student with its SD teacher); both sides of a request start from the same noise ``z``
(docs/math.md §1.1: the student maps ``sigma_init * z`` in one step, the teacher integrates from ``sigma_max * z``).
A K-step student (§2.10) runs ``student_steps`` of its K levels; a hybrid request (§2.11) also runs the teacher's
first N Heun steps followed by the student, from the same ``z``, timed on its own.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fdistill.apps.demo.backends import DEFAULT_STUDENT, STUDENT_ENV, Backend, load_backend, resolve_checkpoint
from fdistill.apps.demo.backends import initial_noise as _initial_noise
from fdistill.apps.sample import HybridOutput
from fdistill.core.sampling import heun_steps_for_nfe
from fdistill.export.loading import CheckpointLoadError, pick_device

__all__ = ["ALL_CLASSES", "MAX_HYBRID_STEPS", "DemoEngine", "DemoSetupError", "GenerationResult"]

log = logging.getLogger("fdistill.apps.demo")

#: the demo's name for :class:`fdistill.export.loading.CheckpointLoadError` (a start-up problem, one line)
DemoSetupError = CheckpointLoadError

MAX_IMAGES = 16
MAX_SEED = 2**32 - 1
MAX_NFE = 79
DEFAULT_NFE = 35
MAX_CFG = 10.0
MAX_HYBRID_STEPS = 4  # the teacher's first N Heun steps of a hybrid request: 1..4 (0 = off)
MAX_PROMPT_CHARS = 1000
NUM_EXAMPLES = 8
ALL_CLASSES = "All classes (cycled)"


def example_prompts(path: Path, k: int = NUM_EXAMPLES) -> list[str]:
    """Up to ``k`` fixed prompts spread evenly over the student folder's ``prompts.txt`` (``[]`` without one)."""
    try:
        lines = (path / "prompts.txt").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    prompts = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if len(prompts) <= k:
        return prompts
    return [prompts[i * len(prompts) // k] for i in range(k)]


def _read_card(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "card.json").read_text())
    except (OSError, ValueError):
        return {}


@dataclass
class GenerationResult:
    """One request's output: images in [-1, 1] (NCHW, CPU) and the measured latencies in milliseconds.

    ``student_steps``: the student's steps used (of its ``student_k``); ``hybrid``: the hybrid request's output
    (its images on the CPU, the hand-over and the NFEs spent; ``None`` when not asked), ``hybrid_ms`` its latency,
    ``hybrid_steps`` its N."""

    seed: int
    subject: str
    names: list[str | None]
    captions: list[str | None]
    student: torch.Tensor
    student_ms: float
    teacher: torch.Tensor | None = None
    teacher_ms: float | None = None
    teacher_nfe: int | None = None
    cfg_scale: float | None = None
    teacher_sampler: str | None = None
    student_steps: int = 1
    student_k: int = 1  # K, the student's number of steps
    hybrid: HybridOutput | None = None
    hybrid_ms: float | None = None
    hybrid_steps: int = 0
    hybrid_nfe: int | None = None  # the teacher's schedule (its NFE budget) the hybrid's first steps come from


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for a one-line error message (control characters escaped)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_real(value: Any) -> bool:
    """A finite int or float (not a bool): what a number field of the API accepts."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _as_int(value: Any, name: str, lo: int, hi: int, hint: str = "") -> int:
    if not _is_real(value) or value != int(value):
        raise ValueError(f"{name} must be an integer in {lo}..{hi}{hint}, got {_shown(value)}")
    if not lo <= int(value) <= hi:
        raise ValueError(
            f"{name} must be in {lo}..{hi}{hint}, got {_shown(int(value) if abs(value) < 1e30 else value)}"
        )
    return int(value)


def _check_prompt(prompt: Any) -> str:
    """The stripped prompt; ``ValueError`` for a non-text, empty or too long one."""
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"the prompt must be text, got {_shown(prompt)}")
    prompt = (prompt or "").strip()
    if not prompt:
        raise ValueError("the prompt is empty: describe the image to generate")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt is {len(prompt)} characters long; at most {MAX_PROMPT_CHARS} are accepted")
    return prompt


class DemoEngine:
    """The student, the optional teacher, the device, and :meth:`generate` with input validation.

    Thread-safe for concurrent requests: the networks are only read, each request has its own generator, and each
    request to a stock ``StableDiffusionPipeline`` runs its own copy of the pipeline object (own scheduler).

    Args:
        student_path: exported student folder (a ``OneStepPipeline`` folder, or a text-to-image
            ``StableDiffusionPipeline`` folder from :mod:`fdistill.export.stable_diffusion`); ``None``:
            ``$FDISTILL_STUDENT`` or ``checkpoints/fmnist_student``.
        teacher_path: the teacher: an EDMUNet folder, or for a text-to-image student its SD-style teacher folder;
            ``None``: ``$FDISTILL_TEACHER``, else ``checkpoints/fmnist_teacher`` (the teacher the text-to-image
            student's ``fdistill_export.json``/``card.json`` records, for such a student). The default is optional:
            when it is absent or belongs to another student the teacher comparison is disabled; a path the user
            names must load and match.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        load_teacher: ``False`` skips the teacher altogether.
    """

    def __init__(
        self,
        student_path: str | Path | None = None,
        teacher_path: str | Path | None = None,
        device: str = "auto",
        load_teacher: bool = True,
    ) -> None:
        self.device = pick_device(device)
        self.student_path, _ = resolve_checkpoint(student_path, STUDENT_ENV, DEFAULT_STUDENT)
        self.backend: Backend = load_backend(self.student_path, self.device)
        self.card = _read_card(self.student_path)
        #: a few fixed prompts of the student's prompts.txt, shown under the prompt box
        self.examples = example_prompts(self.student_path) if self.text_conditional else []
        if load_teacher:
            self.backend.attach_teacher(teacher_path, self.card)
        if self.device.type == "cuda":
            self.device_name = torch.cuda.get_device_name(self.device)
            self.dtype_name = "bf16 autocast"
        else:
            self.device_name = f"CPU ({torch.get_num_threads()} threads)"
            self.dtype_name = "float32"
        self.backend.warm_up(self.examples)

    # -- what the backend loaded
    @property
    def pipe(self) -> Any:
        return self.backend.pipe

    @property
    def sd(self) -> bool:
        """A stock StableDiffusionPipeline student (text-to-image, exported by fdistill.export.stable_diffusion)."""
        return self.backend.sd

    @property
    def student_call(self) -> dict[str, Any]:
        return self.backend.student_call

    @property
    def text_conditional(self) -> bool:
        return self.backend.text_conditional

    @property
    def num_classes(self) -> int:
        return self.backend.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.backend.class_names

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.backend.latent_shape

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.backend.image_shape

    @property
    def teacher(self) -> Any:
        return self.backend.teacher

    @property
    def teacher_path(self) -> Path | None:
        return self.backend.teacher_path

    @property
    def teacher_note(self) -> str:
        return self.backend.teacher_note

    @property
    def teacher_sampler(self) -> str:
        return self.backend.sampler

    @property
    def min_cfg(self) -> float:
        """The smallest teacher CFG scale: 1 for the stock SD pipeline (diffusers guides only for w > 1), else 0."""
        return self.backend.min_cfg

    @property
    def student_sigmas(self) -> list[float]:
        """The student's K levels (``[sigma_init]`` for a one-step pixel student; ``[]`` for a stock SD student)."""
        return self.backend.student_sigmas

    @property
    def num_steps(self) -> int:
        """K, the student's number of steps: ``student_steps`` accepts 1..K."""
        return self.backend.num_steps

    @property
    def hybrid_note(self) -> str:
        """Why hybrid sampling is off ("" when the teacher is loaded)."""
        return "" if self.teacher is not None else f"needs a teacher ({self.teacher_note.replace('`', '')})"

    @property
    def guidable(self) -> bool:
        """Whether the teacher's CFG scale does anything: a conditional (class or text) teacher."""
        return bool(self.num_classes) or self.sd

    @property
    def class_choices(self) -> list[str]:
        return [*self.class_names, ALL_CLASSES] if self.num_classes else []

    # -- generation
    def labels_for(self, class_name: str | None, n: int) -> list[int] | None:
        """Class ids for ``n`` images: one class for all, or ``ALL_CLASSES`` cycled; ``None`` if unconditional."""
        if not self.num_classes:
            return None
        if class_name == ALL_CLASSES:
            return [i % self.num_classes for i in range(n)]
        if class_name in self.class_names:
            return [self.class_names.index(class_name)] * n
        raise ValueError(f"unknown class {_shown(class_name)}; accepted: {', '.join(map(repr, self.class_choices))}")

    def initial_noise(self, n: int, seed: int) -> torch.Tensor:
        """``z``: the first CPU draw of ``seed``, ``(n, *latent_shape)``, the starting noise of student and teacher."""
        return _initial_noise(n, seed, self.latent_shape)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _check_teacher_request(self, teacher_nfe: Any, cfg_scale: Any) -> int:
        """The teacher NFE of a request that asks for the teacher; ``ValueError`` for a bad NFE or CFG scale."""
        if self.teacher is None:
            raise ValueError(f"no teacher is loaded ({self.teacher_note.replace('`', '')})")
        nfe = _as_int(teacher_nfe, "teacher NFE", 1, MAX_NFE)
        lo = self.min_cfg
        if not _is_real(cfg_scale) or not lo <= cfg_scale <= MAX_CFG:
            why = " (the Stable-Diffusion pipeline guides only above 1)" if self.sd else ""
            raise ValueError(f"CFG scale must be in {lo:g}..{MAX_CFG:g} (1 = off){why}, got {_shown(cfg_scale)}")
        return nfe

    def _check_hybrid_request(self, hybrid_steps: Any, teacher_nfe: Any, cfg_scale: Any) -> tuple[int, int | None]:
        """``(N, teacher NFE)`` of a request; N = 0 (off) needs no teacher. ``ValueError`` for a bad N, a missing or
        unsupported teacher, or an N beyond the teacher's schedule."""
        n = _as_int(hybrid_steps, "teacher steps (hybrid)", 0, MAX_HYBRID_STEPS, " (0 = off)")
        if n == 0:
            return 0, None
        if self.hybrid_note:
            raise ValueError(f"hybrid sampling is off: {self.hybrid_note}")
        nfe = self._check_teacher_request(teacher_nfe, cfg_scale)
        if n > heun_steps_for_nfe(nfe):
            raise ValueError(
                f"teacher steps (hybrid) must be at most {heun_steps_for_nfe(nfe)}: teacher NFE {nfe} is "
                f"{heun_steps_for_nfe(nfe)} Heun step(s), got {n}"
            )
        return n, nfe

    def generate(
        self,
        class_name: str | None = None,
        prompt: str | None = "",
        seed: int | float = -1,
        num_images: int | float = 4,
        run_teacher: bool = False,
        teacher_nfe: int | float = DEFAULT_NFE,
        cfg_scale: float = 1.0,
        hybrid_steps: int = 0,
        student_steps: int | None = None,
    ) -> GenerationResult:
        """Validate the request, run the student (and the teacher, the hybrid when asked) on the same seed and labels.

        ``hybrid_steps`` = N > 0 also samples the hybrid (the teacher's first N Heun steps of its ``teacher_nfe``
        schedule at ``cfg_scale``, then the student); ``student_steps``: 1..K (None: K). Raises ``ValueError``
        naming the bad value and what is accepted."""
        n = _as_int(num_images, "number of images", 1, MAX_IMAGES)
        seed = _as_int(seed, "seed", -1, MAX_SEED, " (-1 = random)")
        if seed == -1:
            seed = secrets.randbelow(MAX_SEED + 1)
        if self.text_conditional:
            prompt = _check_prompt(prompt)
            labels, subject, names, captions = None, f"“{prompt}”", [prompt] * n, [None] * n
        else:
            prompt, labels = None, self.labels_for(class_name, n)
            # a caption under each tile only where the classes differ; otherwise the info line names the class
            names = [self.class_names[c] for c in labels] if labels else [None] * n
            captions = names if class_name == ALL_CLASSES else [None] * n
            subject = "all classes" if class_name == ALL_CLASSES else (class_name if labels else "unconditional")
        nfe = self._check_teacher_request(teacher_nfe, cfg_scale) if run_teacher else None
        hybrid_n, hybrid_nfe = self._check_hybrid_request(hybrid_steps, teacher_nfe, cfg_scale)
        k = self.num_steps
        steps = k if student_steps is None else _as_int(student_steps, "student steps", 1, k, f" (K = {k})")

        self._sync()
        t0 = time.perf_counter()
        student = self.backend.run_student(n, labels, seed, prompt, steps)
        self._sync()
        result = GenerationResult(seed, subject, names, captions, student.cpu(), (time.perf_counter() - t0) * 1e3)
        result.student_steps, result.student_k = steps, k
        if nfe is not None:
            t0 = time.perf_counter()
            result.teacher = self.backend.run_teacher(n, labels, seed, nfe, float(cfg_scale), prompt).cpu()
            self._sync()
            result.teacher_ms = (time.perf_counter() - t0) * 1e3
            result.teacher_nfe, result.cfg_scale = nfe, float(cfg_scale)
            result.teacher_sampler = self.teacher_sampler
        if hybrid_nfe is not None:
            t0 = time.perf_counter()
            hybrid = self.backend.run_hybrid(n, labels, seed, hybrid_n, hybrid_nfe, float(cfg_scale), steps, prompt)
            hybrid.images = hybrid.images.cpu()
            self._sync()
            result.hybrid, result.hybrid_ms, result.hybrid_steps = hybrid, (time.perf_counter() - t0) * 1e3, hybrid_n
            result.hybrid_nfe, result.cfg_scale = hybrid_nfe, float(cfg_scale)
        log.info(
            "seed=%d n=%d student=%.1fms@%dsteps teacher=%s hybrid=%s",
            seed,
            n,
            result.student_ms,
            steps,
            "off" if result.teacher_ms is None else f"{result.teacher_ms:.1f}ms@NFE{nfe}",
            "off" if result.hybrid_ms is None else f"{result.hybrid_ms:.1f}ms@N{hybrid_n}",
        )
        return result
