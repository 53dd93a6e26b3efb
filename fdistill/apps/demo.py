"""``fdistill demo``: a Gradio page that samples a distilled one-step student next to its teacher.

One factory, :func:`create_demo`, builds the page; ``fdistill demo`` (:func:`main`) and ``python app/app.py``
(the Gradio/Spaces convention) both launch it::

    fdistill demo                                   # checkpoints/fmnist_student (+ checkpoints/fmnist_teacher)
    fdistill demo --checkpoint runs/x/student --teacher runs/t/ema --port 7861
    fdistill demo --checkpoint checkpoints/emoji_student --teacher checkpoints/emoji_teacher   # text-to-image
    FDISTILL_STUDENT=runs/x/student python app/app.py

    from fdistill.apps.demo import create_demo, launch_demo
    demo = create_demo(student_path="runs/x/student", device="cpu")
    launch_demo(demo, port=7861, prevent_thread_lock=True)

What a request does. The student (a :class:`fdistill.export.pipeline.OneStepPipeline` folder, NFE 1) generates all
N images in one batched network call; when asked, the teacher (an :class:`fdistill.nets.unet.EDMUNet` folder)
samples the SAME seed and labels with the EDM Heun sampler at the chosen NFE and CFG scale. Both start from
the same noise ``z`` (one CPU ``torch.Generator`` per request, the first draw of the seed): the student maps
``sigma_init * z`` in one step, the teacher integrates from ``sigma_max * z``, so the two galleries are a
like-for-like comparison. Each side's latency is the wall time of its network work only (CUDA synchronised,
PIL conversion excluded); the speed-up is their ratio, measured under whatever load the server has.

Text-to-image students. A student exported by :mod:`fdistill.export.stable_diffusion` is a stock diffusers
``StableDiffusionPipeline`` folder (``LCMScheduler``, ``fdistill_export.json`` recording ``t_init``). It is served
with the exact call that file records, ``pipe(prompt, num_inference_steps=1, timesteps=[t_init],
guidance_scale=0.0, latents=z)``, any prompt text being encoded by the folder's own text encoder; the page shows a
prompt box and a few example prompts from its ``prompts.txt``. Its teacher is the SD-style folder it was distilled
from (``--teacher``; by default the one its ``fdistill_export.json``/``card.json`` records), sampled with the stock
``StableDiffusionPipeline`` and a deterministic DPM-Solver++ 2M scheduler (``timestep_spacing="trailing"``, so the
first step is t = T-1, where the student's training teacher starts too) at ``num_inference_steps = NFE`` and
``guidance_scale = w``. Both pipelines get the same ``z`` (the seed's first CPU draw, latent shaped; LCM's and
DPM-Solver's ``init_noise_sigma`` are 1, so both UNets see ``z`` itself). Teacher NFE counts UNet calls (one per
DPM-Solver step); with CFG (``w > 1``, diffusers' convention: ``w <= 1`` is off, so the slider starts at 1) each
call evaluates the prompt and the empty prompt in one batch of 2N. Both latencies then include the text encoder and
the VAE decoder. The stock pipeline keeps per-call state (scheduler steps, guidance scale) on itself, so every
request runs a shallow copy sharing the networks, with its own scheduler.

Serving. Models load once at start (a missing or broken checkpoint is a :class:`DemoSetupError`, which
``main`` prints as one line and exits 2); the device is picked then (CUDA with bf16 autocast when present,
CPU float32 otherwise; weights are float32 either way, and on CUDA the stock pipelines' UNets hand their output back
in float32 so the schedulers' state stays float32) and shown in the header. Requests go through Gradio's queue
with a concurrency limit (``--concurrency``, default 2: on a small CPU more parallel jobs only split the cores) and
a bounded queue (``--max-queue``). Requests are not merged across users (Gradio ``batch=True``): one bad request
would fail the whole merged batch and a long teacher run would stall the student jobs batched with it; on a CPU
the one-step student is already cheap, and within a request all N images are one batch.

API. The ``generate`` endpoint (``gradio_client.Client(url).predict(..., api_name="/generate")``) takes
``class_name, prompt, seed, num_images, run_teacher, teacher_nfe, cfg_scale`` and returns
``(student_gallery, teacher_gallery, info_markdown, seed_used)``. The input list is the same for every
student, so client code does not change with the checkpoint: a class-conditional student ignores ``prompt``;
a text-to-image student (a ``StableDiffusionPipeline`` folder, or a pipeline whose config says
``text_conditional: true``) shows a prompt box instead of the class dropdown and ignores ``class_name``. Bad
input (a seed or count out of range, an unknown class, an empty prompt) is a ``gr.Error`` shown in the page; the
server keeps serving.

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
import copy  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
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
    from diffusers import StableDiffusionPipeline
    from torch import nn

    from fdistill.export.pipeline import OneStepPipeline
    from fdistill.nets.unet import EDMUNet

__all__ = ["DemoEngine", "DemoSetupError", "GenerationResult", "create_demo", "launch_demo", "main"]

log = logging.getLogger("fdistill.apps.demo")

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
MAX_PROMPT_CHARS = 1000
DEFAULT_CACHE_TTL = 3600  # seconds a result PNG stays in Gradio's cache (swept every half of it)
NUM_EXAMPLES = 8
ALL_CLASSES = "All classes (cycled)"
SD_PIPELINE = "StableDiffusionPipeline"
EDM_SAMPLER = "EDM Heun"
SD_SAMPLER = "DPM-Solver++ 2M"
SD_LAYOUT = "model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/"
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


def load_student_checkpoint(path: Path, device: torch.device) -> OneStepPipeline | StableDiffusionPipeline:
    """Load an exported student folder as the pipeline class its ``model_index.json`` names.

    ``StableDiffusionPipeline`` (a text-to-image student exported by :mod:`fdistill.export.stable_diffusion`) loads
    with the
    stock diffusers class, after checking that its ``fdistill_export.json`` records the one-step call
    (:func:`sd_one_step_call`). Any other class is looked up in :mod:`fdistill.export.pipeline` (``OneStepPipeline``),
    and
    the ``fdistill.*`` modules its components name are imported first: diffusers only instantiates components from
    modules that are already imported."""
    import importlib

    import fdistill.export.pipeline as pipelines

    if not path.is_dir():
        raise DemoSetupError(f"no student checkpoint at {path} (an exported OneStepPipeline folder); {HOW_TO_GET}")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise DemoSetupError(f"{path} is not an exported student (no model_index.json); {HOW_TO_GET}")
    try:
        index = json.loads(index_file.read_text())
        name = index.get("_class_name", "OneStepPipeline")
        if name == SD_PIPELINE:
            sd_one_step_call(path)  # a DemoSetupError of its own before any weights load
            return load_sd_pipeline(path, device)
        cls = getattr(pipelines, name, None)
        if not (isinstance(cls, type) and hasattr(cls, "from_pretrained")):
            raise ValueError(f"pipeline class {name!r} is neither {SD_PIPELINE} nor one of fdistill.export.pipeline's")
        for spec in index.values():
            if isinstance(spec, list) and spec and isinstance(spec[0], str) and spec[0].startswith("fdistill."):
                importlib.import_module(spec[0])
        pipe = cls.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)
    except DemoSetupError:
        raise
    except Exception as e:  # a broken folder surfaces as any of json/safetensors/diffusers errors
        raise DemoSetupError(f"cannot load the student checkpoint {path}: {_one_line(e)}; {HOW_TO_GET}") from e


def load_teacher_checkpoint(path: Path, device: torch.device) -> EDMUNet:
    """The EDMUNet teacher of a class-conditional/unconditional student (a ``config.json`` folder)."""
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


def is_sd_folder(path: Path) -> bool:
    """Whether ``path`` is a diffusers Stable-Diffusion folder: a ``model_index.json`` naming a UNet and a text
    encoder (the layout of a latent teacher, :mod:`fdistill.train.latent_teacher`, and of an exported student)."""
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(index, dict) and "unet" in index and "text_encoder" in index


def sd_one_step_call(path: Path) -> dict[str, Any]:
    """The call that makes an exported ``StableDiffusionPipeline`` student its one-step generator, as its
    ``fdistill_export.json`` records it: ``num_inference_steps=1, timesteps=[t_init], guidance_scale=0.0``."""
    from fdistill.export.stable_diffusion import EXPORT_FILE, one_step_kwargs

    try:
        call = one_step_kwargs(path)
        (t_init,) = call["timesteps"]
        if isinstance(t_init, bool) or not isinstance(t_init, int):
            raise ValueError(f"timesteps must be [t_init] with an integer t_init, got {call['timesteps']!r}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DemoSetupError(
            f"{path} is a {SD_PIPELINE} folder without a valid {EXPORT_FILE} recording the student's one-step "
            f"timestep t_init ({_one_line(e)}); export the student with "
            "fdistill.export.stable_diffusion.export_sd_student"
        ) from e
    return call


def _packaged_text_encoder(path: Path) -> nn.Module | None:
    """The text encoder of a folder whose ``text_encoder/`` weights were left out because they are the installed
    all-MiniLM-L6-v2 package's (:func:`fdistill.nets.text_encoders.strip_packaged_text_encoder`), else ``None``."""
    from fdistill.nets.text_encoders import PACKAGED_MARKER, WEIGHTS_FILE, load_text_encoder
    from fdistill.teachers.latent import _transformers_class

    folder = path / "text_encoder"
    if not (folder / PACKAGED_MARKER).is_file() or (folder / WEIGHTS_FILE).is_file():
        return None
    cls = _transformers_class(str(path), None, "text_encoder", "AutoModel")
    return load_text_encoder(folder, cls).eval()


def _float32_outputs(module: nn.Module) -> None:
    """Under bf16 autocast, hand ``module``'s output tensors back in float32: the stock schedulers cast their
    state to the model output's dtype, and the sampler state stays float32 this way (as the EDM path keeps it)."""

    def hook(_module: nn.Module, _args: Any, out: Any) -> Any:
        if isinstance(out, torch.Tensor):
            return out.float()
        if isinstance(out, tuple):  # the pipelines call the UNet with return_dict=False
            return tuple(o.float() if isinstance(o, torch.Tensor) else o for o in out)
        return out

    module.register_forward_hook(hook)


class _DropMessage(logging.Filter):
    """Drops the log records whose message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _quiet_expected_lcm_warning() -> None:
    """Silence ``LCMScheduler``'s per-call warning that the first custom timestep is not T-1: an exported student's
    single step at ``t_init`` is exactly what :mod:`fdistill.export.stable_diffusion` intends."""
    lcm_log = logging.getLogger("diffusers.schedulers.scheduling_lcm")
    if not any(isinstance(f, _DropMessage) for f in lcm_log.filters):
        lcm_log.addFilter(_DropMessage("on the custom timestep schedule is"))


def load_sd_pipeline(path: Path, device: torch.device) -> StableDiffusionPipeline:
    """A stock ``StableDiffusionPipeline`` from an SD-style folder: float32 weights on ``device``, no safety checker,
    progress bar off; a text encoder stripped of the packaged MiniLM weights takes them from the package."""
    from diffusers import StableDiffusionPipeline

    extra: dict[str, Any] = {}
    text_encoder = _packaged_text_encoder(path)
    if text_encoder is not None:
        extra["text_encoder"] = text_encoder
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False, **extra)
    pipe.set_progress_bar_config(disable=True)
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    if any(p.dtype != torch.float32 for m in modules for p in m.parameters()):  # a half-precision folder
        pipe = pipe.to(torch.float32)
    pipe = pipe.to(device)
    _quiet_expected_lcm_warning()
    if device.type == "cuda":
        _float32_outputs(pipe.unet)
    return pipe


def load_sd_teacher(path: Path, device: torch.device) -> StableDiffusionPipeline:
    """The SD-style teacher folder of a text-to-image student, as a stock ``StableDiffusionPipeline`` with a
    deterministic DPM-Solver++ 2M scheduler built from the folder's scheduler config (``timestep_spacing="trailing"``:
    the first of any number of steps is t = T-1, pure noise, where the distillation's teacher samples start too)."""
    from diffusers import DPMSolverMultistepScheduler

    if not is_sd_folder(path):
        raise DemoSetupError(f"no Stable-Diffusion teacher folder at {path} ({SD_LAYOUT})")
    try:
        pipe = load_sd_pipeline(path, device)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing"
        )
        return pipe
    except Exception as e:
        raise DemoSetupError(f"cannot load the teacher checkpoint {path}: {_one_line(e)}") from e


def _per_request(pipe: StableDiffusionPipeline) -> StableDiffusionPipeline:
    """A pipeline sharing ``pipe``'s networks with its own scheduler: the stock pipeline keeps per-call state (the
    scheduler's timesteps and step index, the guidance scale) on itself, so concurrent requests must not share one."""
    clone = type(pipe)(**{**pipe.components, "scheduler": copy.deepcopy(pipe.scheduler)}, requires_safety_checker=False)
    clone.set_progress_bar_config(disable=True)
    return clone


def _hw(size: Any) -> tuple[int, int]:
    """A diffusers ``sample_size`` (an int or a pair) as ``(height, width)``."""
    return (int(size), int(size)) if isinstance(size, int | float) else (int(size[0]), int(size[1]))


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


def recorded_teacher(student_path: Path, card: dict[str, Any]) -> Path | None:
    """The teacher folder an exported SD student records: ``teacher`` in its ``fdistill_export.json``, else in its
    ``card.json`` (``latent:PATH``, as the trainer writes it). A relative path is tried from the working directory,
    then from the repository root; the first recorded path is returned even when it is not here (``None``: none)."""
    from fdistill.export.stable_diffusion import EXPORT_FILE

    try:
        export = json.loads((student_path / EXPORT_FILE).read_text())
    except (OSError, ValueError):
        export = {}
    first: Path | None = None
    for value in (export.get("teacher") if isinstance(export, dict) else None, card.get("teacher")):
        if not isinstance(value, str) or not value.strip():
            continue
        path = Path(value.strip().removeprefix("latent:")).expanduser()
        for candidate in [path] if path.is_absolute() else [path, REPO_ROOT / path]:
            if is_sd_folder(candidate):
                return candidate
        first = first or path
    return first


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
    teacher_sampler: str | None = None


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


class DemoEngine:
    """The student, the optional teacher, the device, and :meth:`generate` with input validation.

    Thread-safe for concurrent requests: the networks are only read, each request has its own generator, and each
    request to a stock ``StableDiffusionPipeline`` runs its own copy of the pipeline object (own scheduler).

    Args:
        student_path: exported student folder (a ``OneStepPipeline`` folder, or a text-to-image
            ``StableDiffusionPipeline`` folder from :mod:`fdistill.export.stable_diffusion`); ``None``:
            ``$FDISTILL_STUDENT`` or
            ``checkpoints/fmnist_student``.
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
        self.pipe = load_student_checkpoint(self.student_path, self.device)
        self.card = _read_card(self.student_path)
        #: a stock StableDiffusionPipeline student (text-to-image, exported by fdistill.export.stable_diffusion)
        self.sd = type(self.pipe).__name__ == SD_PIPELINE
        self.student_call: dict[str, Any] = {}
        if self.sd:
            self.student_call = sd_one_step_call(self.student_path)
            self.text_conditional, self.num_classes, self.class_names = True, 0, []
            unet_cfg = self.pipe.unet.config
            h, w = _hw(unet_cfg.sample_size)
            f = int(self.pipe.vae_scale_factor)
            self.latent_shape = (int(unet_cfg.in_channels), h, w)
            self.image_shape = (int(self.pipe.vae.config.out_channels), h * f, w * f)
        else:
            cfg = self.pipe.config
            self.text_conditional = bool(cfg.get("text_conditional", False))
            self.num_classes = 0 if self.text_conditional else int(self.pipe.num_classes)
            names = list(cfg.get("class_names", None) or [])
            if self.num_classes and len(names) != self.num_classes:
                names = [str(i) for i in range(self.num_classes)]  # a student exported without names: use the ids
            self.class_names = names if self.num_classes else []
            unet_cfg = self.pipe.unet.config
            self.image_shape = (int(unet_cfg.in_channels), int(unet_cfg.sample_size), int(unet_cfg.sample_size))
            self.latent_shape = self.image_shape
        #: a few fixed prompts of the student's prompts.txt, shown under the prompt box
        self.examples = example_prompts(self.student_path) if self.text_conditional else []

        self.teacher: EDMUNet | StableDiffusionPipeline | None = None
        self.teacher_path: Path | None = None
        self.teacher_sampler = SD_SAMPLER if self.sd else EDM_SAMPLER
        self.teacher_note = "not loaded (--no-teacher)"
        if load_teacher:
            self._load_teacher(teacher_path)

        if self.device.type == "cuda":
            self.device_name = torch.cuda.get_device_name(self.device)
            self.dtype_name = "bf16 autocast"
        else:
            self.device_name = f"CPU ({torch.get_num_threads()} threads)"
            self.dtype_name = "float32"
        self._warm_up()

    # -- setup helpers
    def _load_teacher(self, teacher_path: str | Path | None) -> None:
        named_here = (teacher_path is not None and str(teacher_path) != "") or bool(os.environ.get(TEACHER_ENV))
        path: Path | None
        if self.sd and not named_here:
            path, named = recorded_teacher(self.student_path, self.card), False
        else:
            path, named = resolve_checkpoint(teacher_path, TEACHER_ENV, DEFAULT_TEACHER)
        self.teacher_path = path
        if self.text_conditional and not self.sd:
            self.teacher_note = "not used with a text-conditional student"
            return
        if path is None:
            self.teacher_note = "none recorded in the student's card: the comparison is off (start with --teacher PATH)"
            return
        found = is_sd_folder(path) if self.sd else (path / "config.json").is_file()
        if not (named or found):
            self.teacher_note = f"none found at `{path}`: the comparison is off (start with --teacher PATH)"
            return
        if self.sd:
            self.teacher = self._load_sd_teacher(path)
            self.teacher_note = f"`{path}` (stock {SD_PIPELINE}, {SD_SAMPLER})"
        else:
            self.teacher = load_teacher_checkpoint(path, self.device)
            self.teacher_note = f"`{path}` ({EDM_SAMPLER} sampler)"
        try:
            self._check_teacher()
        except DemoSetupError as e:
            if named:  # the user asked for this teacher: refuse to start
                raise
            # the default teacher belongs to another student: serve the student alone and say why
            self.teacher, self.teacher_note = None, f"off: the {'recorded' if self.sd else 'default'} {e}"

    def _load_sd_teacher(self, path: Path) -> StableDiffusionPipeline:
        if not is_sd_folder(path):
            kind = "an EDMUNet folder" if (path / "config.json").is_file() else "no Stable-Diffusion folder"
            raise DemoSetupError(
                f"teacher {path} is {kind}, but the student {self.student_path} is a text-to-image {SD_PIPELINE}: "
                f"pass the SD-style teacher folder it was distilled from ({SD_LAYOUT}) with --teacher, "
                "or --no-teacher"
            )
        return load_sd_teacher(path, self.device)

    def _check_teacher(self) -> None:
        if self.sd:
            self._check_sd_teacher()
            return
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

    def _check_sd_teacher(self) -> None:
        t, hint = self.teacher, "pass the teacher it was distilled from (--teacher)"
        latent = (int(t.unet.config.in_channels), *_hw(t.unet.config.sample_size))
        if latent != self.latent_shape:
            raise DemoSetupError(
                f"teacher {self.teacher_path} makes {latent} latents but the student {self.student_path} makes "
                f"{self.latent_shape}; {hint}"
            )
        widths = [getattr(p.text_encoder.config, "hidden_size", None) for p in (t, self.pipe)]
        if widths[0] != widths[1]:
            raise DemoSetupError(
                f"teacher {self.teacher_path} has a text encoder of hidden size {widths[0]} but the student "
                f"{self.student_path} has {widths[1]}; {hint}"
            )

    def _warm_up(self) -> None:
        """One tiny call per network: fails at start (not on the first user) and keeps lazy init out of latencies."""
        labels = [0] if self.num_classes else None
        prompt = (self.examples or ["warm up"])[0] if self.sd else None
        checks: list[tuple[Path | None, Any]] = []
        if not self.text_conditional or self.sd:
            checks.append((self.student_path, lambda: self._run_student(1, labels, 0, prompt)))
        if self.teacher is not None:
            checks.append((self.teacher_path, lambda: self._run_teacher(1, labels, 0, 1, 1.0, prompt)))
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
    def min_cfg(self) -> float:
        """The smallest teacher CFG scale: 1 for the stock SD pipeline (diffusers guides only for w > 1), else 0."""
        return 1.0 if self.sd else 0.0

    @property
    def guidable(self) -> bool:
        """Whether the teacher's CFG scale does anything: a conditional (class or text) teacher."""
        return bool(self.num_classes) or self.sd

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
        raise ValueError(f"unknown class {_shown(class_name)}; accepted: {', '.join(map(repr, self.class_choices))}")

    def initial_noise(self, n: int, seed: int) -> torch.Tensor:
        """``z``: the first CPU draw of ``seed``, ``(n, *latent_shape)``, the starting noise of student and teacher."""
        return torch.randn((n, *self.latent_shape), generator=torch.Generator().manual_seed(seed))

    def _run_student(self, n: int, labels: list[int] | None, seed: int, prompt: str | None = None) -> torch.Tensor:
        if self.sd:  # the stock pipeline with the exact call fdistill_export.json records, on z
            pipe, z = _per_request(self.pipe), self.initial_noise(n, seed).to(self.device)
            with torch.inference_mode(), self._precision():
                images = pipe([prompt] * n, latents=z, output_type="pt", **self.student_call).images
            return images.float() * 2 - 1  # [0, 1] -> the demo's [-1, 1]
        kwargs: dict[str, Any] = {"prompt": [prompt] * n} if self.text_conditional else {"class_labels": labels}
        with torch.inference_mode(), self._precision():
            return self.pipe(batch_size=n, seed=seed, output_type="pt", **kwargs).images.float()

    def _run_teacher(
        self, n: int, labels: list[int] | None, seed: int, nfe: int, cfg_scale: float, prompt: str | None = None
    ) -> torch.Tensor:
        """EDM Heun from ``sigma_max * z``, ``z`` the same first CPU draw of ``seed`` as the student's. The sampler's
        state lives on the CPU (so the noise is identical on every device); each evaluation runs on the device,
        with the conditional and unconditional CFG branches in one batch of 2N. An SD teacher runs its stock
        pipeline (DPM-Solver++ 2M, ``nfe`` steps, ``guidance_scale=cfg_scale``) on the student's ``z``."""
        if self.sd:
            pipe, z = _per_request(self.teacher), self.initial_noise(n, seed).to(self.device)
            with torch.inference_mode(), self._precision():
                images = pipe(
                    [prompt] * n, latents=z, num_inference_steps=nfe, guidance_scale=cfg_scale, output_type="pt"
                ).images
            return images.float() * 2 - 1

        from fdistill.core.sampling import edm_heun_sampler

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
            if prompt is not None and not isinstance(prompt, str):
                raise ValueError(f"the prompt must be text, got {_shown(prompt)}")
            prompt = (prompt or "").strip()
            if not prompt:
                raise ValueError("the prompt is empty: describe the image to generate")
            if len(prompt) > MAX_PROMPT_CHARS:
                raise ValueError(
                    f"the prompt is {len(prompt)} characters long; at most {MAX_PROMPT_CHARS} are accepted"
                )
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
            lo = self.min_cfg
            if not _is_real(cfg_scale) or not lo <= cfg_scale <= MAX_CFG:
                why = " (the Stable-Diffusion pipeline guides only above 1)" if self.sd else ""
                raise ValueError(f"CFG scale must be in {lo:g}..{MAX_CFG:g} (1 = off){why}, got {_shown(cfg_scale)}")

        self._sync()
        t0 = time.perf_counter()
        student = self._run_student(n, labels, seed, prompt if self.text_conditional else None)
        self._sync()
        result = GenerationResult(seed, subject, names, captions, student.cpu(), (time.perf_counter() - t0) * 1e3)
        if run_teacher:
            t0 = time.perf_counter()
            result.teacher = self._run_teacher(
                n, labels, seed, nfe, float(cfg_scale), prompt if self.text_conditional else None
            ).cpu()
            self._sync()
            result.teacher_ms = (time.perf_counter() - t0) * 1e3
            result.teacher_nfe, result.cfg_scale = nfe, float(cfg_scale)
            result.teacher_sampler = self.teacher_sampler
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
        else {
            "model": f"teacher ({r.teacher_sampler or EDM_SAMPLER})",
            "nfe": r.teacher_nfe,
            "cfg_scale": r.cfg_scale,
        }
    )
    n = images.shape[0]
    meta = [
        {**model, "seed": r.seed, "num_images": n, "index": i, "class": r.names[i], "request": request_id}
        for i in range(n)
    ]
    return list(zip(to_display(images, scale, meta), r.captions, strict=True))


def info_markdown(r: GenerationResult, engine: DemoEngine) -> str:
    """The seed, the latency table (NFE = network calls) and the speed-up of one request."""
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
        cfg = "off" if r.cfg_scale == 1.0 or not engine.guidable else f"w = {r.cfg_scale:g}, 2 passes per NFE"
        sampler = r.teacher_sampler or EDM_SAMPLER
        rows.append(
            f"| teacher ({sampler}, CFG {cfg}) | {r.teacher_nfe} | {r.teacher_ms:.1f} ms | {r.teacher_ms / n:.2f} ms |"
        )
        same = "prompt" if engine.text_conditional else "labels"
        lines += rows + [
            "",
            f"**Speed-up: {r.teacher_ms / max(r.student_ms, 1e-6):.1f}x** "
            f"(teacher latency / student latency, same seed, {same} and starting noise)",
        ]
        if engine.sd:
            lines += [
                "",
                f"Teacher NFE = {SD_SAMPLER} steps = UNet calls; with CFG each call evaluates the prompt and the "
                "empty prompt in one batch of 2N. Both latencies include the text encoder and the VAE decoder.",
            ]
    else:
        lines += rows + ["", "Tick *also run the teacher* to compare against the multi-step teacher."]
    return "\n".join(lines)


def header_markdown(engine: DemoEngine) -> str:
    card = engine.card
    what = [f"NFE 1, {engine.image_shape[1]}x{engine.image_shape[2]}"]
    if engine.sd:
        t_init = engine.student_call["timesteps"][0]
        what.append(f"text-to-image, stock {SD_PIPELINE} at t_init {t_init}")
    elif engine.text_conditional:
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
    cache_ttl: int = DEFAULT_CACHE_TTL,
) -> gr.Blocks:
    """Build the demo page (queue configured, not launched). See :class:`DemoEngine` for the arguments.

    Every result image is a new PNG in Gradio's cache (``$GRADIO_TEMP_DIR``, else ``<tmp>/gradio``); ``cache_ttl``
    bounds it: the page gets ``delete_cache=(cache_ttl // 2, cache_ttl)`` (every ``cache_ttl / 2`` seconds Gradio
    deletes the files older than ``cache_ttl`` seconds; default 3600: every 30 min, files older than 1 h), and
    :func:`launch_demo` adds :func:`sweep_cache` every ``cache_ttl / 4`` seconds, which keeps going where Gradio 6's
    sweep stops and removes the folders it leaves. A file then lives at most about 1.25 ``cache_ttl``, and the
    cache holds what that long of requests writes.

    Raises :class:`DemoSetupError` (one-line message) for a missing/broken checkpoint or an unusable device.
    The engine is kept as ``demo.engine``. Launch with :func:`launch_demo` (theme, CSS, ``share=False``) or
    ``demo.launch(...)``."""
    if isinstance(cache_ttl, bool) or not isinstance(cache_ttl, int) or cache_ttl < 1:
        raise ValueError(f"cache_ttl must be an integer number of seconds >= 1, got {cache_ttl!r}")
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
            prompt: text prompt (any text); used only by text-conditional students.
            seed: -1 for a random seed, else 0..4294967295; the seed used is returned.
            num_images: number of images, 1..16.
            run_teacher: also sample the multi-step teacher for the same seed and labels (or prompt).
            teacher_nfe: teacher network evaluations, 1..79 (EDM Heun; DPM-Solver++ steps for an SD teacher).
            cfg_scale: teacher classifier-free guidance scale, 0..10 (1 = off; 1..10 for an SD teacher).

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
    # every output file is unique (see `gallery`), so bound the cache (see `sweep_cache`, run by `launch_demo`)
    delete_cache = (max(1, cache_ttl // 2), cache_ttl)
    with gr.Blocks(title="fdistill one-step demo", analytics_enabled=False, delete_cache=delete_cache) as demo:
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
                    placeholder="describe the image (any text)",
                    visible=engine.text_conditional,
                    elem_id="prompt",
                )
                if engine.examples:  # a few prompts of the student's prompts.txt; a click fills the box
                    gr.Examples(
                        [[p] for p in engine.examples],
                        inputs=[prompt],
                        label="Example prompts",
                        elem_id="examples",
                        cache_examples=False,
                        examples_per_page=NUM_EXAMPLES,
                    )
                # no minimum/maximum on the seed: the engine's check names the field and the accepted range
                seed = gr.Number(-1, label="Seed (-1 = random)", precision=0, elem_id="seed")
                num_images = gr.Slider(1, MAX_IMAGES, value=8, step=1, label="Number of images", elem_id="num-images")
                run_teacher = gr.Checkbox(
                    False,
                    label=f"Also run the teacher (same seed and {'prompt' if engine.text_conditional else 'labels'})",
                    interactive=has_teacher,
                    elem_id="run-teacher",
                    info=None if has_teacher else f"teacher {engine.teacher_note.replace('`', '')}",
                )
                teacher_nfe = gr.Slider(
                    1,
                    MAX_NFE,
                    value=DEFAULT_NFE,
                    step=1,
                    label=f"Teacher NFE ({engine.teacher_sampler}{' steps' if engine.sd else ''})",
                    interactive=has_teacher,
                    elem_id="teacher-nfe",
                )
                cfg_scale = gr.Slider(
                    engine.min_cfg,
                    MAX_CFG,
                    value=1.0,
                    step=0.1,
                    label="Teacher CFG scale (1 = off)",
                    interactive=has_teacher and engine.guidable,
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


def _is_hash_name(name: str) -> bool:
    return len(name) >= 32 and all(c in "0123456789abcdef" for c in name)


def remove_empty_cache_dirs(cache_dir: str | Path, min_age: float) -> int:
    """Remove the empty per-file folders of Gradio's cache untouched for ``min_age`` seconds; returns how many.

    Gradio saves each output file as ``<cache>/<sha256 of its bytes>/image.png`` and its ``delete_cache`` sweep
    deletes the file but leaves the folder, so without this every result image would leave an empty folder (an
    inode, 4 KiB on ext4) for good. Only folders named like a content hash directly under ``cache_dir`` are
    considered; ``os.rmdir`` never removes a folder that holds a file, and a folder is left alone until its last
    change is ``min_age`` old (one just created for a file being written is never touched)."""
    removed, now = 0, time.time()
    try:
        entries = list(os.scandir(cache_dir))
    except OSError:
        return 0
    for entry in entries:
        if not _is_hash_name(entry.name):
            continue
        try:
            if entry.is_dir(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > min_age:
                os.rmdir(entry.path)
                removed += 1
        except OSError:  # not empty, or already gone
            continue
    return removed


def sweep_cache(blocks: gr.Blocks, age: float, min_dir_age: float) -> tuple[int, int]:
    """Delete the files ``blocks`` put in Gradio's cache more than ``age`` seconds ago (by ctime, as Gradio goes),
    with their folders, then the empty folders left by anyone else (:func:`remove_empty_cache_dirs`); returns
    ``(files, folders)`` removed.

    The same job as Gradio's ``delete_cache`` sweep, done safely: Gradio 6's walks each live set of the files it
    tracks, so a request finishing during a sweep ("Set changed size during iteration") ends its schedule for good and
    the cache grows from then on. This walks copies, drops deleted files from the sets, and skips the components'
    ``keep_in_cache`` files as Gradio does."""
    cache = Path(blocks.GRADIO_CACHE).resolve()
    keep: set[str] = set()
    for component in list(blocks.blocks.values()):
        keep.update(getattr(component, "keep_in_cache", ()))
    files, now = 0, time.time()
    for temp_set in list(blocks.temp_file_sets):
        for name in list(temp_set):
            if name in keep:
                continue
            path = Path(name)
            try:
                if now - path.lstat().st_ctime <= age:
                    continue
                path.unlink()
                files += 1
            except FileNotFoundError:
                pass
            except OSError:
                continue
            temp_set.discard(name)
            if path.parent.parent == cache and _is_hash_name(path.parent.name):
                with contextlib.suppress(OSError):
                    path.parent.rmdir()
    return files, remove_empty_cache_dirs(cache, min_dir_age)


def _cache_sweeper(blocks: gr.Blocks, frequency: int, age: int) -> Any:
    """A FastAPI lifespan that runs :func:`sweep_cache` twice per ``frequency`` seconds (Gradio's sweep period)
    while serving; a failed sweep is logged and the next one runs on time. Folders changed in the last
    ``min(period, 10)`` seconds are left alone."""
    import asyncio

    period = max(1, frequency // 2)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        async def loop() -> None:
            while True:
                await asyncio.sleep(period)
                try:
                    await asyncio.to_thread(sweep_cache, blocks, age, min(period, 10))
                except Exception:
                    log.exception("cache sweep failed")

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return lifespan


def launch_demo(
    demo: gr.Blocks, host: str | None = None, port: int | None = None, **kwargs: Any
) -> tuple[Any, str, str]:
    """``demo.launch`` with this demo's defaults: ``share=False``, 127.0.0.1 (or ``$GRADIO_SERVER_NAME``), port
    7860 (or ``$GRADIO_SERVER_PORT``), system fonts (no font CDN), pixelated image scaling; ``kwargs`` override.

    With the page's ``delete_cache = (frequency, age)`` set (:func:`create_demo` sets it from ``cache_ttl``), the
    server also runs :func:`sweep_cache` every ``frequency / 2`` seconds (the sweep Gradio's can stop doing, plus the
    empty folders it leaves), unless ``app_kwargs`` brings a lifespan of its own."""
    import gradio as gr

    if getattr(demo, "delete_cache", None):
        frequency, age = demo.delete_cache
        app_kwargs = dict(kwargs.get("app_kwargs") or {})
        app_kwargs.setdefault("lifespan", _cache_sweeper(demo, int(frequency), int(age)))
        kwargs["app_kwargs"] = app_kwargs
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
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve the Gradio demo of a one-step student: class (or prompt), seed and count in, a gallery\n"
        "out, and optionally the teacher's gallery for the same seed with both latencies and the speed-up.",
        epilog="examples:\n"
        f"  fdistill demo                  # {DEFAULT_STUDENT} next to {DEFAULT_TEACHER}\n"
        "  fdistill demo --checkpoint checkpoints/emoji_student --teacher checkpoints/emoji_teacher\n"
        "                                 # text-to-image: a prompt box, the stock StableDiffusionPipeline\n"
        "  fdistill demo --checkpoint runs/x/student --teacher runs/t/ema --port 7861\n"
        "\n"
        "The same page runs with `python app/app.py [options]`. Offline defaults: HF_HUB_OFFLINE=1,\n"
        "GRADIO_ANALYTICS_ENABLED=False (set them in the environment to override). API:\n"
        "gradio_client.Client(URL).predict(class_name, prompt, seed, num_images, run_teacher, teacher_nfe,\n"
        'cfg_scale, api_name="/generate").',
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="exported student: a OneStepPipeline folder, or a text-to-image StableDiffusionPipeline folder "
        f"from fdistill.export.stable_diffusion (default: ${STUDENT_ENV}, else {DEFAULT_STUDENT} in the working "
        "directory or "
        "the repository)",
    )
    p.add_argument(
        "--teacher",
        default=None,
        metavar="PATH",
        help="teacher for the side-by-side comparison: an EDMUNet folder, or the SD-style teacher folder of a "
        f"text-to-image student (default: ${TEACHER_ENV}, else {DEFAULT_TEACHER} if it exists, or for a "
        "text-to-image student the teacher its fdistill_export.json/card.json records; without one the "
        "comparison is off)",
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
    p.add_argument(
        "--cache-ttl",
        type=int,
        default=DEFAULT_CACHE_TTL,
        metavar="SECONDS",
        help="delete result images from Gradio's cache ($GRADIO_TEMP_DIR) once older than SECONDS, checked every "
        "SECONDS/4 (default: %(default)s)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``fdistill demo [options]``: returns 2 with one line on stderr for a bad checkpoint, device or port."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    for name in ("concurrency", "max_queue", "display_scale", "cache_ttl"):
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
            cache_ttl=args.cache_ttl,
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
