"""``fdistill demo``: a Gradio page that samples a distilled one-step student next to its teacher.

One factory, :func:`create_demo`, builds the page; ``fdistill demo`` (:func:`main`) and ``python app/app.py``
(the Gradio/Spaces convention) both launch it::

    fdistill demo                                   # checkpoints/fmnist_student (+ checkpoints/fmnist_teacher)
    fdistill demo --checkpoint runs/x/student --teacher runs/t/ema --port 7861
    FDISTILL_STUDENT=runs/x/student python app/app.py

    from fdistill.demo import create_demo, launch_demo
    demo = create_demo(student_path="runs/x/student", device="cpu")
    launch_demo(demo, port=7861, prevent_thread_lock=True)

What a request does. The student (a :class:`fdistill.pipeline.OneStepPipeline` folder, NFE 1) generates all
N images in one batched network call; when asked, the teacher (an :class:`fdistill.nets.unet.EDMUNet` folder)
samples the SAME seed and labels with the EDM Heun sampler at the chosen NFE and CFG scale. Both start from
the same noise ``z`` (one CPU ``torch.Generator`` per request, the first draw of the seed): the student maps
``sigma_init * z`` in one step, the teacher integrates from ``sigma_max * z``, so the two galleries are a
like-for-like comparison. Each side's latency is the wall time of its network work only (CUDA synchronised,
PIL conversion excluded); the speed-up is their ratio, measured under whatever load the server has.

Serving. Models load once at start (a missing or broken checkpoint is a :class:`DemoSetupError`, which
``main`` prints as one line and exits 2); the device is picked then (CUDA with bf16 autocast when present,
CPU float32 otherwise) and shown in the header. Requests go through Gradio's queue with a concurrency limit
(``--concurrency``, default 2: on a small CPU more parallel jobs only split the cores) and a bounded queue
(``--max-queue``). Requests are not merged across users (Gradio ``batch=True``): one bad request would fail
the whole merged batch and a long teacher run would stall the student jobs batched with it; on a CPU the
one-step student is already cheap, and within a request all N images are one batch.

API. The ``generate`` endpoint (``gradio_client.Client(url).predict(..., api_name="/generate")``) takes
``class_name, prompt, seed, num_images, run_teacher, teacher_nfe, cfg_scale`` and returns
``(student_gallery, teacher_gallery, info_markdown, seed_used)``. The input list is the same for every
student, so client code does not change with the checkpoint: a class-conditional student ignores ``prompt``;
a student whose pipeline config says ``text_conditional: true`` shows a prompt box instead of the class
dropdown and ignores ``class_name`` (its pipeline is then called with ``prompt=``). Bad input (a seed or count
out of range, an unknown class, an empty prompt) is a ``gr.Error`` shown in the page; the server keeps serving.

Offline by default: ``HF_HUB_OFFLINE=1`` and ``GRADIO_ANALYTICS_ENABLED=False`` are set (``setdefault``, so
the environment wins) before Gradio is imported; the page uses system fonts (no font CDN); ``share=False``;
the server binds 127.0.0.1 unless ``--host`` (or ``GRADIO_SERVER_NAME``, as on Spaces) says otherwise.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import secrets  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import torch  # noqa: E402
from PIL import Image  # noqa: E402

if TYPE_CHECKING:
    import gradio as gr

    from fdistill.nets.unet import EDMUNet
    from fdistill.pipeline import OneStepPipeline

__all__ = ["DemoEngine", "DemoSetupError", "GenerationResult", "create_demo", "launch_demo", "main"]

log = logging.getLogger("fdistill.demo")

STUDENT_ENV = "FDISTILL_STUDENT"
TEACHER_ENV = "FDISTILL_TEACHER"
DEFAULT_STUDENT = "checkpoints/fmnist_student"
DEFAULT_TEACHER = "checkpoints/fmnist_teacher"
REPO_ROOT = Path(__file__).resolve().parents[1]

MAX_IMAGES = 16
MAX_SEED = 2**32 - 1
MAX_NFE = 79
DEFAULT_NFE = 35
MAX_CFG = 10.0
ALL_CLASSES = "All classes (cycled)"
HOW_TO_GET = (
    "make one with `fdistill distill configs/fmnist_*.yaml` (it exports RUN_DIR/student) "
    "or use the shipped checkpoints/ folder"
)
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Helvetica", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
CSS = """
#student-gallery img, #teacher-gallery img { image-rendering: pixelated; }
"""


class DemoSetupError(RuntimeError):
    """A checkpoint or device problem found at start; its message is one line that names the path or value."""


# ----------------------------------------------------------------------------------------------------------
# checkpoints and device


def resolve_checkpoint(explicit: str | Path | None, env_var: str, default: str) -> tuple[Path, bool]:
    """The folder to load and whether the user named it (an explicit path or ``env_var``) rather than the default.

    The default is tried relative to the working directory first, then to the repository/package root, so
    ``fdistill demo`` finds ``checkpoints/`` from any directory of a source checkout."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser(), True
    if os.environ.get(env_var):
        return Path(os.environ[env_var]).expanduser(), True
    here = Path(default)
    return (here if here.exists() else REPO_ROOT / default), False


def pick_device(spec: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DemoSetupError(f"unknown device {spec!r}; accepted: auto, cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise DemoSetupError(f"unsupported device {spec!r}; accepted: auto, cpu, cuda, cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DemoSetupError(f"device {spec!r} requested but CUDA is not available here; use --device cpu or auto")
    return device


def _one_line(e: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line (whitespace collapsed, long messages cut) for start-up and request errors."""
    text = " ".join(str(e).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_student_checkpoint(path: Path, device: torch.device) -> OneStepPipeline:
    """Load an exported student folder as the pipeline class its ``model_index.json`` names.

    The class is looked up in :mod:`fdistill.pipeline` (``OneStepPipeline`` today; a text-conditional pipeline
    added there later loads the same way), and the ``fdistill.*`` modules its components name are imported first:
    diffusers only instantiates components from modules that are already imported."""
    import importlib

    import fdistill.pipeline as pipelines

    if not path.is_dir():
        raise DemoSetupError(f"no student checkpoint at {path} (an exported OneStepPipeline folder); {HOW_TO_GET}")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise DemoSetupError(f"{path} is not an exported student (no model_index.json); {HOW_TO_GET}")
    try:
        index = json.loads(index_file.read_text())
        name = index.get("_class_name", "OneStepPipeline")
        cls = getattr(pipelines, name, None)
        if not (isinstance(cls, type) and hasattr(cls, "from_pretrained")):
            raise ValueError(f"pipeline class {name!r} is not one of fdistill.pipeline's")
        for spec in index.values():
            if isinstance(spec, list) and spec and isinstance(spec[0], str) and spec[0].startswith("fdistill."):
                importlib.import_module(spec[0])
        pipe = cls.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)
    except Exception as e:  # a broken folder surfaces as any of json/safetensors/diffusers errors
        raise DemoSetupError(f"cannot load the student checkpoint {path}: {_one_line(e)}; {HOW_TO_GET}") from e


def load_teacher_checkpoint(path: Path, device: torch.device) -> EDMUNet:
    from fdistill.nets.unet import EDMUNet

    if not (path / "config.json").is_file():
        raise DemoSetupError(
            f"no teacher checkpoint at {path} (an EDMUNet folder with config.json); "
            "train one with `fdistill train-teacher configs/fmnist_teacher.yaml`, "
            "or pass --no-teacher"
        )
    try:
        return EDMUNet.from_pretrained(path).eval().to(device)
    except Exception as e:
        raise DemoSetupError(f"cannot load the teacher checkpoint {path}: {_one_line(e)}") from e


def _read_card(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "card.json").read_text())
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------------------------------------
# the engine: models and generation, independent of Gradio


@dataclass
class GenerationResult:
    """One request's output: images in [-1, 1] (NCHW, CPU) and the measured latencies in milliseconds."""

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


def _as_int(value: Any, name: str, lo: int, hi: int, hint: str = "") -> int:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValueError(f"{name} must be an integer in {lo}..{hi}{hint}, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}{hint}, got {int(value)}")
    return int(value)


class DemoEngine:
    """The student, the optional teacher, the device, and :meth:`generate` with input validation.

    Thread-safe for concurrent requests: the networks are only read, and each request has its own generator.

    Args:
        student_path: exported student folder; ``None``: ``$FDISTILL_STUDENT`` or ``checkpoints/fmnist_student``.
        teacher_path: teacher EDMUNet folder; ``None``: ``$FDISTILL_TEACHER`` or ``checkpoints/fmnist_teacher``
            (the default is optional: when it is absent the teacher comparison is disabled; a path the user names
            must load).
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
        self.pipe = load_student_checkpoint(self.student_path, self.device)
        self.card = _read_card(self.student_path)
        cfg = self.pipe.config
        self.text_conditional = bool(cfg.get("text_conditional", False))
        self.num_classes = 0 if self.text_conditional else int(self.pipe.num_classes)
        names = list(cfg.get("class_names", None) or [])
        if self.num_classes and len(names) != self.num_classes:
            names = [str(i) for i in range(self.num_classes)]  # a student exported without names: use the ids
        self.class_names = names if self.num_classes else []
        unet_cfg = self.pipe.unet.config
        self.image_shape = (int(unet_cfg.in_channels), int(unet_cfg.sample_size), int(unet_cfg.sample_size))

        self.teacher: EDMUNet | None = None
        self.teacher_path: Path | None = None
        self.teacher_note = "not loaded (--no-teacher)"
        if load_teacher:
            path, named = resolve_checkpoint(teacher_path, TEACHER_ENV, DEFAULT_TEACHER)
            self.teacher_path = path
            if self.text_conditional:
                self.teacher_note = "not used with a text-conditional student"
            elif named or (path / "config.json").is_file():
                self.teacher = load_teacher_checkpoint(path, self.device)
                self.teacher_note = f"`{path}` (EDM Heun sampler)"
                try:
                    self._check_teacher()
                except DemoSetupError as e:
                    if named:  # the user asked for this teacher: refuse to start
                        raise
                    # the default teacher belongs to another student: serve the student alone and say why
                    self.teacher, self.teacher_note = None, f"off: the default {e}"
            else:
                self.teacher_note = f"none found at `{path}`: the comparison is off (start with --teacher PATH)"

        if self.device.type == "cuda":
            self.device_name = torch.cuda.get_device_name(self.device)
            self.dtype_name = "bf16 autocast"
        else:
            self.device_name = f"CPU ({torch.get_num_threads()} threads)"
            self.dtype_name = "float32"
        self._warm_up()

    # -- setup helpers
    def _check_teacher(self) -> None:
        t = self.teacher
        if tuple(t.sample_shape) != self.image_shape:
            raise DemoSetupError(
                f"teacher {self.teacher_path} makes {tuple(t.sample_shape)} images but the student "
                f"{self.student_path} makes {self.image_shape}; pass the teacher it was distilled from (--teacher)"
            )
        if t.num_classes != self.num_classes:
            raise DemoSetupError(
                f"teacher {self.teacher_path} has {t.num_classes} classes but the student "
                f"{self.student_path} has {self.num_classes}; pass the teacher it was distilled from (--teacher)"
            )

    def _warm_up(self) -> None:
        """One tiny call per network: fails at start (not on the first user) and keeps lazy init out of latencies."""
        labels = [0] if self.num_classes else None
        checks: list[tuple[Path | None, Any]] = []
        if not self.text_conditional:
            checks.append((self.student_path, lambda: self._run_student(1, labels, 0)))
        if self.teacher is not None:
            checks.append((self.teacher_path, lambda: self._run_teacher(1, labels, 0, nfe=1, cfg_scale=1.0)))
        for path, run in checks:
            try:
                run()
            except Exception as e:
                raise DemoSetupError(f"the checkpoint {path} loads but does not run: {_one_line(e)}") from e

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- generation
    @property
    def class_choices(self) -> list[str]:
        return [*self.class_names, ALL_CLASSES] if self.num_classes else []

    def labels_for(self, class_name: str | None, n: int) -> list[int] | None:
        """Class ids for ``n`` images: one class for all, or ``ALL_CLASSES`` cycled; ``None`` if unconditional."""
        if not self.num_classes:
            return None
        if class_name == ALL_CLASSES:
            return [i % self.num_classes for i in range(n)]
        if class_name in self.class_names:
            return [self.class_names.index(class_name)] * n
        raise ValueError(f"unknown class {class_name!r}; accepted: {', '.join(map(repr, self.class_choices))}")

    def _run_student(self, n: int, labels: list[int] | None, seed: int, prompt: str | None = None) -> torch.Tensor:
        kwargs: dict[str, Any] = {"prompt": [prompt] * n} if self.text_conditional else {"class_labels": labels}
        with torch.inference_mode(), self._precision():
            return self.pipe(batch_size=n, seed=seed, output_type="pt", **kwargs).images.float()

    def _run_teacher(self, n: int, labels: list[int] | None, seed: int, nfe: int, cfg_scale: float) -> torch.Tensor:
        """EDM Heun from ``sigma_max * z``, ``z`` the same first CPU draw of ``seed`` as the student's. The sampler's
        state lives on the CPU (so the noise is identical on every device); each evaluation runs on the device,
        with the conditional and unconditional CFG branches in one batch of 2N."""
        from fdistill.sampling import edm_heun_sampler

        net, dev = self.teacher, self.device
        cond = None if labels is None else torch.tensor(labels, device=dev)
        guided = cond is not None and cfg_scale != 1.0
        null = torch.full_like(cond, self.num_classes) if guided else None

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            x, sigma = x.to(dev), sigma.to(dev)
            if not guided:
                return net(x, sigma, cond).float().cpu()
            d_c, d_u = net(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, null])).float().chunk(2)
            return (d_u + cfg_scale * (d_c - d_u)).cpu()

        gen = torch.Generator().manual_seed(seed)
        with torch.inference_mode(), self._precision():
            x = edm_heun_sampler(denoise, (n, *self.image_shape), nfe=nfe, generator=gen, device="cpu")
        return x.float().clamp(-1, 1)

    def generate(
        self,
        class_name: str | None = None,
        prompt: str | None = "",
        seed: int | float = -1,
        num_images: int | float = 4,
        run_teacher: bool = False,
        teacher_nfe: int | float = DEFAULT_NFE,
        cfg_scale: float = 1.0,
    ) -> GenerationResult:
        """Validate the request, run the student (and the teacher when asked) on the same seed and labels.

        Raises ``ValueError`` naming the bad value and what is accepted."""
        n = _as_int(num_images, "number of images", 1, MAX_IMAGES)
        seed = _as_int(seed, "seed", -1, MAX_SEED, " (-1 = random)")
        if seed == -1:
            seed = secrets.randbelow(MAX_SEED + 1)
        if self.text_conditional:
            prompt = (prompt or "").strip()
            if not prompt:
                raise ValueError("the prompt is empty: describe the image to generate")
            labels, subject, names, captions = None, f"“{prompt}”", [prompt] * n, [None] * n
        else:
            labels = self.labels_for(class_name, n)
            # a caption under each tile only where the classes differ; otherwise the info line names the class
            names = [self.class_names[c] for c in labels] if labels else [None] * n
            captions = names if class_name == ALL_CLASSES else [None] * n
            subject = "all classes" if class_name == ALL_CLASSES else (class_name if labels else "unconditional")
        if run_teacher:
            if self.teacher is None:
                raise ValueError(f"no teacher is loaded ({self.teacher_note.replace('`', '')})")
            nfe = _as_int(teacher_nfe, "teacher NFE", 1, MAX_NFE)
            if cfg_scale is None or not 0.0 <= float(cfg_scale) <= MAX_CFG:
                raise ValueError(f"CFG scale must be in 0..{MAX_CFG:g} (1 = off), got {cfg_scale!r}")

        self._sync()
        t0 = time.perf_counter()
        student = self._run_student(n, labels, seed, prompt if self.text_conditional else None)
        self._sync()
        result = GenerationResult(seed, subject, names, captions, student.cpu(), (time.perf_counter() - t0) * 1e3)
        if run_teacher:
            t0 = time.perf_counter()
            result.teacher = self._run_teacher(n, labels, seed, nfe, float(cfg_scale))
            self._sync()
            result.teacher_ms = (time.perf_counter() - t0) * 1e3
            result.teacher_nfe, result.cfg_scale = nfe, float(cfg_scale)
        log.info(
            "seed=%d n=%d student=%.1fms teacher=%s",
            seed,
            n,
            result.student_ms,
            "off" if result.teacher_ms is None else f"{result.teacher_ms:.1f}ms@NFE{nfe}",
        )
        return result


# ----------------------------------------------------------------------------------------------------------
# presentation


def to_display(images: torch.Tensor, scale: int, metadata: Sequence[dict] | None = None) -> list[Image.Image]:
    """[-1, 1] NCHW -> PIL images upscaled ``scale`` x with nearest neighbour (32 px would be a speck on screen).

    ``metadata[i]`` is stored as JSON in image i's ``fdistill`` PNG text chunk (Gradio keeps text chunks when
    it writes PNGs), so a downloaded image says how to reproduce it."""
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if scale > 1:
        arr = arr.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    arr = arr.permute(0, 2, 3, 1).numpy()
    out = [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]
    for im, meta in zip(out, metadata or [], strict=False):
        im.info["fdistill"] = json.dumps(meta, sort_keys=True)
    return out


def gallery(r: GenerationResult, which: str, scale: int, request_id: str) -> list[tuple[Image.Image, str | None]]:
    """``(image, caption)`` pairs for one gallery, each image stamped with its provenance and ``request_id``.

    The request id also makes every file unique: Gradio caches outputs under their content hash and rewrites
    the file in place, so two concurrent requests with the same seed (or a collapsed student's identical
    images) would otherwise race on one file and a browser could fetch it half written."""
    images = r.student if which == "student" else r.teacher
    if images is None:
        return []
    model = (
        {"model": "one-step student", "nfe": 1}
        if which == "student"
        else {"model": "teacher (EDM Heun)", "nfe": r.teacher_nfe, "cfg_scale": r.cfg_scale}
    )
    n = images.shape[0]
    meta = [
        {**model, "seed": r.seed, "num_images": n, "index": i, "class": r.names[i], "request": request_id}
        for i in range(n)
    ]
    return list(zip(to_display(images, scale, meta), r.captions, strict=True))


def info_markdown(r: GenerationResult, engine: DemoEngine) -> str:
    n = r.student.shape[0]
    rows = [
        "| model | NFE | latency | per image |",
        "| --- | --- | --- | --- |",
        f"| one-step student | 1 | {r.student_ms:.1f} ms | {r.student_ms / n:.2f} ms |",
    ]
    lines = [
        f"**Seed used: {r.seed}** · {n} image{'s' * (n > 1)} of {r.subject} · {engine.device_name}, "
        f"{engine.dtype_name}",
        "",
    ]
    if r.teacher_ms is not None:
        cfg = "off" if r.cfg_scale == 1.0 or not engine.num_classes else f"w = {r.cfg_scale:g}, 2 passes per NFE"
        rows.append(
            f"| teacher (EDM Heun, CFG {cfg}) | {r.teacher_nfe} | {r.teacher_ms:.1f} ms | {r.teacher_ms / n:.2f} ms |"
        )
        lines += rows + [
            "",
            f"**Speed-up: {r.teacher_ms / max(r.student_ms, 1e-6):.1f}x** "
            "(teacher latency / student latency, same seed, labels and starting noise)",
        ]
    else:
        lines += rows + ["", "Tick *also run the teacher* to compare against the multi-step teacher."]
    return "\n".join(lines)


def header_markdown(engine: DemoEngine) -> str:
    card = engine.card
    what = [f"NFE 1, {engine.image_shape[1]}x{engine.image_shape[2]}"]
    if engine.text_conditional:
        what.append("text-conditional")
    elif engine.num_classes:
        what.append(f"{engine.num_classes} classes")
    what += [f"{k} {card[k]}" for k in ("method", "divergence") if card.get(k) not in (None, "n/a")]
    what += [f"{k.split(' ')[0]} {v:.2f}" for k, v in card.items() if "fid" in k.lower() and isinstance(v, float)]
    return (
        "# fdistill · one-step generator\n"
        f"**Student** `{engine.student_path}` ({', '.join(what)}) · **Teacher** {engine.teacher_note} · "
        f"**Device** {engine.device_name}, {engine.dtype_name}"
    )


def create_demo(
    student_path: str | Path | None = None,
    teacher_path: str | Path | None = None,
    device: str = "auto",
    *,
    load_teacher: bool = True,
    concurrency_limit: int = 2,
    max_queue: int = 64,
    display_scale: int = 4,
) -> gr.Blocks:
    """Build the demo page (queue configured, not launched). See :class:`DemoEngine` for the arguments.

    Raises :class:`DemoSetupError` (one-line message) for a missing/broken checkpoint or an unusable device.
    The engine is kept as ``demo.engine``. Launch with :func:`launch_demo` (theme, CSS, ``share=False``) or
    ``demo.launch(...)``."""
    engine = DemoEngine(student_path, teacher_path, device, load_teacher=load_teacher)
    import gradio as gr

    def generate(
        class_name: str | None,
        prompt: str | None,
        seed: float | None,
        num_images: float,
        run_teacher: bool,
        teacher_nfe: float,
        cfg_scale: float,
    ) -> tuple[list, list, str, int]:
        """Generate images with the one-step student and, optionally, the teacher on the same seed and labels.

        Args:
            class_name: a class name of the student, or "All classes (cycled)"; ignored by text-conditional students.
            prompt: text prompt; used only by text-conditional students.
            seed: -1 for a random seed, else 0..4294967295; the seed used is returned.
            num_images: number of images, 1..16.
            run_teacher: also sample the multi-step teacher for the same seed and labels.
            teacher_nfe: teacher denoiser evaluations (EDM Heun), 1..79.
            cfg_scale: teacher classifier-free guidance scale, 0..10 (1 = off).

        Returns:
            the student gallery, the teacher gallery (empty unless run_teacher), the info Markdown, the seed used.
        """
        try:
            r = engine.generate(class_name, prompt, seed, num_images, run_teacher, teacher_nfe, cfg_scale)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        except Exception as e:  # never let one request take the page down; the traceback goes to the server log
            log.exception("generation failed")
            raise gr.Error(f"generation failed: {_one_line(e)}") from None
        request_id = uuid.uuid4().hex[:12]
        student = gallery(r, "student", display_scale, request_id)
        teacher = gallery(r, "teacher", display_scale, request_id)
        return student, teacher, info_markdown(r, engine), r.seed

    conditional = bool(engine.num_classes)
    has_teacher = engine.teacher is not None
    # every output file is unique (see `gallery`), so bound the cache: each 30 min drop files older than 1 h
    with gr.Blocks(title="fdistill one-step demo", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(header_markdown(engine), elem_id="header")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                class_name = gr.Dropdown(
                    engine.class_choices,
                    value=engine.class_choices[0] if conditional else None,
                    label="Class",
                    visible=conditional,
                    elem_id="class",
                    info=f"{ALL_CLASSES}: one image per class in turn",
                )
                prompt = gr.Textbox(
                    "",
                    label="Prompt",
                    placeholder="describe the image",
                    visible=engine.text_conditional,
                    elem_id="prompt",
                )
                # no minimum/maximum on the seed: the engine's check names the field and the accepted range
                seed = gr.Number(-1, label="Seed (-1 = random)", precision=0, elem_id="seed")
                num_images = gr.Slider(1, MAX_IMAGES, value=8, step=1, label="Number of images", elem_id="num-images")
                run_teacher = gr.Checkbox(
                    False,
                    label="Also run the teacher (same seed and labels)",
                    interactive=has_teacher,
                    elem_id="run-teacher",
                    info=None if has_teacher else f"teacher {engine.teacher_note.replace('`', '')}",
                )
                teacher_nfe = gr.Slider(
                    1,
                    MAX_NFE,
                    value=DEFAULT_NFE,
                    step=1,
                    label="Teacher NFE (EDM Heun)",
                    interactive=has_teacher,
                    elem_id="teacher-nfe",
                )
                cfg_scale = gr.Slider(
                    0.0,
                    MAX_CFG,
                    value=1.0,
                    step=0.1,
                    label="Teacher CFG scale (1 = off)",
                    interactive=has_teacher and conditional,
                    elem_id="cfg-scale",
                )
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                seed_used = gr.Number(label="Seed used", precision=0, interactive=False, elem_id="seed-used")
            with gr.Column(scale=3):
                gallery_kw: dict[str, Any] = {
                    "columns": 8,
                    "height": 300,
                    "object_fit": "contain",
                    "format": "png",
                    "allow_preview": True,
                    "preview": False,
                }
                student_gallery = gr.Gallery(label="One-step student (NFE 1)", elem_id="student-gallery", **gallery_kw)
                teacher_gallery = gr.Gallery(
                    label="Teacher", elem_id="teacher-gallery", visible=has_teacher, **gallery_kw
                )
                info = gr.Markdown(label="Info", elem_id="info")
        button.click(
            generate,
            inputs=[class_name, prompt, seed, num_images, run_teacher, teacher_nfe, cfg_scale],
            outputs=[student_gallery, teacher_gallery, info, seed_used],
            api_name="generate",
        )
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue)
    demo.engine = engine
    return demo


def launch_demo(
    demo: gr.Blocks, host: str | None = None, port: int | None = None, **kwargs: Any
) -> tuple[Any, str, str]:
    """``demo.launch`` with this demo's defaults: ``share=False``, 127.0.0.1 (or ``$GRADIO_SERVER_NAME``), port
    7860 (or ``$GRADIO_SERVER_PORT``), system fonts (no font CDN), pixelated image scaling; ``kwargs`` override."""
    import gradio as gr

    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    options: dict[str, Any] = {
        "server_name": host or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        "server_port": port or int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        "share": False,
        "show_error": True,
        "theme": theme,
        "css": CSS,
    }
    options.update(kwargs)
    return demo.launch(**options)


# ----------------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fdistill demo",
        description="Serve the Gradio demo of a one-step student: class, seed and count in, a gallery out, and "
        "optionally the teacher's gallery for the same seed with both latencies and the speed-up.",
        epilog="The same page runs with `python app/app.py [options]`. Offline defaults: HF_HUB_OFFLINE=1, "
        "GRADIO_ANALYTICS_ENABLED=False (set them in the environment to override). API: "
        "gradio_client.Client(URL).predict(class_name, prompt, seed, num_images, run_teacher, teacher_nfe, "
        'cfg_scale, api_name="/generate").',
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help=f"exported student (OneStepPipeline folder) (default: ${STUDENT_ENV}, else {DEFAULT_STUDENT} "
        "in the working directory or the repository)",
    )
    p.add_argument(
        "--teacher",
        default=None,
        metavar="PATH",
        help=f"teacher EDMUNet folder for the side-by-side comparison (default: ${TEACHER_ENV}, else "
        f"{DEFAULT_TEACHER} if it exists; without one the comparison is off)",
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``fdistill demo [options]``: returns 2 with one line on stderr for a bad checkpoint, device or port."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    for name in ("concurrency", "max_queue", "display_scale"):
        if getattr(args, name) < 1:
            print(f"fdistill demo: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(ImportError):
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    try:
        import gradio  # noqa: F401
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
        )
    except DemoSetupError as e:
        print(f"fdistill demo: {e}", file=sys.stderr)
        return 2
    try:
        launch_demo(demo, args.host, args.port)
    except OSError as e:  # port in use / cannot bind
        print(
            f"fdistill demo: cannot serve on host {args.host or '(default)'} port {args.port or '(default)'}: "
            f"{_one_line(e)}",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
