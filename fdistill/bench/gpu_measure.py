"""The measurements of ``fdistill bench gpu``: one table row each (docs/math.md §5: one distillation iteration).

- :func:`train_row`: a :class:`fdistill.train.distill.Distiller` for one method, teacher and precision mode; the
  generator step alone (``generator_phase`` + its update) and the full iteration (``train_step``: the fake-score
  updates, then the generator update and its EMA), seconds per call after warm-up (CUDA synchronised).
- :func:`sampling_rows`: the teacher's EDM Heun sampler at its preset NFE vs the one-step student ``G(z)``.
- :func:`demo_rows`: :class:`fdistill.apps.demo.DemoEngine` ``generate`` for the one-step student and its teacher.

Peak memory is the growth over the row: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the peak resident set
(Linux ``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``) minus the resident set at the start (coarse:
memory freed by earlier rows and reused is not counted). Any exception is the row's note, never fatal.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.state import AcceleratorState, GradientState

from fdistill.apps.demo import DEFAULT_NFE, MAX_IMAGES, DemoEngine
from fdistill.bench.gpu_models import TeacherSpec
from fdistill.bench.image import _seconds_per_call
from fdistill.config import apply_recipe, load_config
from fdistill.nets.generator import OneStepGenerator
from fdistill.teachers import build_teacher
from fdistill.train.distill import Distiller

MODES = ("fp32", "bf16", "bf16+compile")


@dataclass
class Row:
    """One line of the table; ``None`` numbers are shown as ``-`` (skipped or failed: ``note`` says why)."""

    section: str
    teacher: str
    what: str
    precision: str
    gen_ms: float | None = None
    iter_ms: float | None = None
    images_per_s: float | None = None
    peak_mb: float | None = None
    ratio: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class Settings:
    device: torch.device
    batch: int
    steps: int
    fake_updates: int = 1
    compile_on_cpu: bool = False


def _error(e: BaseException) -> str:
    last = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
    where = f" ({Path(last[0].filename).name}:{last[0].lineno})" if last else ""
    text = " ".join(str(e).split())
    return f"error: {type(e).__name__}: {text[:160]}{where}"


# ---- peak memory -----------------------------------------------------------------------------------------------


def _status_kb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    raise KeyError(key)


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Yields a dict whose ``mb`` is the region's peak memory growth in MiB once the region ends (nan if unknown)."""
    out = {"mb": math.nan}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        with contextlib.suppress(OSError, AttributeError):  # hand freed heap back, so that reuse shows as growth
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
            base = _status_kb("VmRSS") * 1024
        except (OSError, KeyError):
            base = None
    try:
        yield out
    finally:
        if device.type == "cuda":
            out["mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        elif base is not None:
            out["mb"] = max(_status_kb("VmHWM") * 1024 - base, 0.0) / 2**20


def release(device: torch.device) -> None:
    """Free what the last row left: Python garbage, compiled graphs, the CUDA cache."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- one distillation row ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _fresh_accelerate(device: torch.device) -> Iterator[None]:
    """accelerate keeps one process-wide state (its mixed precision cannot change once set): reset it so that each row
    builds its own ``Accelerator``; on CPU force it there (``ACCELERATE_USE_CPU``) even where CUDA is present."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    saved = os.environ.get("ACCELERATE_USE_CPU")
    if device.type == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("ACCELERATE_USE_CPU", None)
        else:
            os.environ["ACCELERATE_USE_CPU"] = saved
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def distill_config(spec: TeacherSpec, method: str, mode: str, s: Settings, out: str):
    """The preset with the benchmark's overrides: this method and precision, one step's batch, no warm-up phase."""
    precision = "'no'" if mode == "fp32" else "bf16"  # quoted: YAML reads a bare no as false
    over = [*spec.overrides, f"method.name={method}", f"train.batch_size={s.batch}", f"output_dir={out}",
            "train.fake_warmup_steps=0", f"train.fake_updates={s.fake_updates}", "train.grad_accum=1",
            f"train.mixed_precision={precision}"]  # fmt: skip
    if mode == "fp32":
        over.append("teacher.dtype=float32")  # bf16 modes keep the preset's frozen-teacher dtype
    return load_config(str(spec.preset), over)


def compile_skip_reason(mode: str, s: Settings) -> str | None:
    if mode.endswith("compile") and s.device.type == "cpu" and not s.compile_on_cpu:
        return "skipped: torch.compile is not measured on CPU (pass --compile-on-cpu)"
    return None


def train_row(spec: TeacherSpec, method: str, mode: str, s: Settings) -> Row:
    """Generator-step and full-iteration time, images/s and peak memory of one method at one precision mode."""
    row = Row("train", spec.name, method, mode)
    if skip := compile_skip_reason(mode, s):
        row.note = skip
        return row
    try:
        with tempfile.TemporaryDirectory() as out, _fresh_accelerate(s.device), peak_memory(s.device) as mem:
            d = Distiller(distill_config(spec, method, mode, s, out))
            if mode.endswith("compile"):
                d.generator, d.fake = torch.compile(d.generator), torch.compile(d.fake)
            finite = [True]

            def generator_step() -> None:
                d.state.step += 1
                logs = d.generator_phase(d.state.step)
                finite[0] &= d._apply([d.opt_g], {"generator": d.generator}, logs)

            def iteration() -> None:
                d.state.step += 1
                finite[0] &= d.train_step(d.state.step)[0]

            if mode.endswith("compile"):
                iteration()  # compile (and the recompiles of the first alternation of phases) stay out of the timings
            row.gen_ms = 1e3 * _seconds_per_call(generator_step, s.steps, s.device)
            row.iter_ms = 1e3 * _seconds_per_call(iteration, s.steps, s.device)
            row.images_per_s = s.batch / (row.iter_ms / 1e3)
            row.extra = {"fake_updates": d.cfg.train.fake_updates, "device": str(d.accelerator.device)}
            if not finite[0]:
                row.note = "some updates were non-finite (skipped by the trainer; random weights)"
        row.peak_mb = mem["mb"]
    except Exception as e:  # noqa: BLE001 - the row records why it failed, the benchmark goes on
        row.note = _error(e)
    finally:
        release(s.device)
    return row


# ---- sampling: teacher at its NFE vs the one-step student ------------------------------------------------------


def _autocast(device: torch.device, mode: str):
    if mode == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def sampling_rows(spec: TeacherSpec, mode: str, s: Settings) -> list[Row]:
    """The teacher's sampler at the preset's ``teacher.sample_nfe`` (CFG at ``method.guidance``) vs one student call."""
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory() as out:
            cfg = apply_recipe(distill_config(spec, "dmd", mode, s, out))
        nfe, w, dev = cfg.teacher.sample_nfe, cfg.method.guidance, s.device
        teacher = build_teacher(cfg).to(dev).eval().requires_grad_(False)
        student = OneStepGenerator(teacher.make_network(), cfg.train.sigma_init, cfg.train.generator_input)
        student = student.to(dev).eval()
        cond = teacher.sample_labels(s.batch, device=dev)
        z = torch.randn(s.batch, *teacher.sample_shape, device=dev)
        calls: list[tuple[str, Callable[[], object]]] = [
            (f"teacher NFE {nfe}" + (f" CFG {w:g}" if w != 1.0 else ""),
             lambda: teacher.sample(s.batch, cond, nfe=nfe, guidance=w, device=dev)),
            ("student NFE 1", lambda: student(z, cond)),
        ]  # fmt: skip
        for what, fn in calls:
            row = Row("sample", spec.name, what, mode)
            with peak_memory(dev) as mem, torch.no_grad(), _autocast(dev, mode):
                row.iter_ms = 1e3 * _seconds_per_call(fn, s.steps, dev)
            row.peak_mb, row.images_per_s = mem["mb"], s.batch / (row.iter_ms / 1e3)
            rows.append(row)
        rows[0].ratio, rows[1].ratio = 1.0, rows[1].images_per_s / rows[0].images_per_s
    except Exception as e:  # noqa: BLE001 - the row records why it failed
        rows.append(Row("sample", spec.name, "teacher vs student", mode, note=_error(e)))
    finally:
        release(s.device)
    return rows


# ---- the demo on the device ------------------------------------------------------------------------------------


def demo_rows(student: Path, teacher: Path, s: Settings, label: str = "fmnist") -> list[Row]:
    """``DemoEngine.generate`` (the demo's API) for a batch: the student alone, then with the teacher at the demo's
    default NFE; precision as the demo picks it (bf16 autocast on CUDA, float32 on CPU)."""
    dev = s.device
    n = min(s.batch, MAX_IMAGES)
    rows: list[Row] = []
    try:
        with peak_memory(dev) as mem:
            engine = DemoEngine(student, teacher, device=str(dev))
        precision = engine.dtype_name
        load_mb = mem["mb"]
        name = engine.class_names[0] if engine.class_names else None
        for what, ask in (("generate: student NFE 1", False), (f"generate: + teacher NFE {DEFAULT_NFE}", True)):
            extra = {"images": n, "load_peak_mb": load_mb, "student": str(student), "teacher": str(teacher)}
            row = Row("demo", label, what, precision, extra=extra)
            kw = {"class_name": name, "seed": 0, "num_images": n, "run_teacher": ask, "teacher_nfe": DEFAULT_NFE}
            with peak_memory(dev) as mem:
                seconds = _seconds_per_call(lambda kw=kw: engine.generate(**kw), s.steps, dev)
            row.iter_ms, row.peak_mb, row.images_per_s = 1e3 * seconds, mem["mb"], n / seconds
            rows.append(row)
        rows[0].ratio, rows[1].ratio = rows[1].iter_ms / rows[0].iter_ms, 1.0  # with the teacher / student alone
    except Exception as e:  # noqa: BLE001 - the row records why it failed
        rows.append(Row("demo", label, "DemoEngine.generate", "", note=_error(e)))
    finally:
        release(s.device)
    return rows
