"""Load exported students and their teachers for serving and evaluation, with one-line errors.

An exported student is either a :class:`fdistill.export.pipeline.OneStepPipeline` folder (class-conditional or
unconditional pixel student, its teacher an :class:`fdistill.nets.unet.EDMUNet` folder) or a stock diffusers
``StableDiffusionPipeline`` folder from :mod:`fdistill.export.stable_diffusion` (text-to-image, one or K steps at
the timesteps ``t_1..t_K`` its ``fdistill_export.json`` records; docs/math.md §1.2 for the VP timestep axis, §2.10
for the K-step chain), whose teacher is the SD-style folder it was distilled from, sampled with a deterministic
DPM-Solver++ 2M scheduler.

Every problem found while loading is a :class:`CheckpointLoadError` whose message is one line naming the path or
value, so the demo and ``fdistill eval-t2i`` can print it and exit.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import fdistill.export.pipeline as pipelines
from fdistill.export.stable_diffusion import EXPORT_FILE, student_call_kwargs
from fdistill.nets.text_encoders import PACKAGED_MARKER, WEIGHTS_FILE, load_text_encoder
from fdistill.nets.unet import EDMUNet
from fdistill.teachers.latent import transformers_class

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

    from fdistill.export.pipeline import OneStepPipeline

__all__ = [
    "SD_LAYOUT",
    "SD_PIPELINE",
    "CheckpointLoadError",
    "is_sd_folder",
    "load_sd_pipeline",
    "load_sd_teacher",
    "load_student_checkpoint",
    "load_teacher_checkpoint",
    "one_line",
    "pick_device",
    "sd_one_step_call",
    "sd_student_call",
]

SD_PIPELINE = "StableDiffusionPipeline"
SD_LAYOUT = "model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/"
HOW_TO_GET = (
    "make one with `fdistill distill configs/fmnist_*.yaml` (it exports RUN_DIR/student) "
    "or use the shipped checkpoints/ folder"
)


class CheckpointLoadError(RuntimeError):
    """A checkpoint or device problem found at start; its message is one line that names the path or value."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line (whitespace collapsed, long messages cut) for start-up and request errors."""
    text = " ".join(str(e).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def pick_device(spec: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise CheckpointLoadError(f"unknown device {spec!r}; accepted: auto, cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise CheckpointLoadError(f"unsupported device {spec!r}; accepted: auto, cpu, cuda, cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointLoadError(f"device {spec!r} requested but CUDA is not available here; use --device cpu or auto")
    return device


def is_sd_folder(path: Path) -> bool:
    """Whether ``path`` is a diffusers Stable-Diffusion folder: a ``model_index.json`` naming a UNet and a text
    encoder (the layout of a latent teacher, :mod:`fdistill.train.teacher.latent_recipe`, and of an exported
    student)."""
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(index, dict) and "unet" in index and "text_encoder" in index


def sd_student_call(path: Path) -> dict[str, Any]:
    """The call that makes an exported ``StableDiffusionPipeline`` student its generator, as its
    ``fdistill_export.json`` records it: ``num_inference_steps=K, timesteps=[t_1..t_K], guidance_scale=0.0``
    (strictly decreasing integer timesteps; K = 1 for a one-step student)."""
    try:
        call = student_call_kwargs(path)
        timesteps = call["timesteps"]
        if not timesteps or any(isinstance(t, bool) or not isinstance(t, int) for t in timesteps):
            raise ValueError(f"timesteps must be [t_1, ..., t_K] with integer t_k, got {timesteps!r}")
        if any(b >= a for a, b in zip(timesteps, timesteps[1:], strict=False)):
            raise ValueError(f"timesteps must be strictly decreasing, got {timesteps!r}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointLoadError(
            f"{path} is a {SD_PIPELINE} folder without a valid {EXPORT_FILE} recording the student's timesteps "
            f"[t_init, ..., t_K] ({one_line(e)}); export the student with "
            "fdistill.export.stable_diffusion.export_sd_student"
        ) from e
    return call


sd_one_step_call = sd_student_call  # the name from before K-step students; a one-step folder's call is unchanged


def load_student_checkpoint(path: Path, device: torch.device) -> OneStepPipeline | StableDiffusionPipeline:
    """Load an exported student folder as the pipeline class its ``model_index.json`` names.

    ``StableDiffusionPipeline`` (a text-to-image student exported by :mod:`fdistill.export.stable_diffusion`) loads
    with the stock diffusers class, after checking that its ``fdistill_export.json`` records the student's call
    (:func:`sd_student_call`). Any other class is looked up in :mod:`fdistill.export.pipeline` (``OneStepPipeline``),
    and the ``fdistill.*`` modules its components name are imported first: diffusers only instantiates components
    from modules that are already imported."""
    if not path.is_dir():
        raise CheckpointLoadError(f"no student checkpoint at {path} (an exported OneStepPipeline folder); {HOW_TO_GET}")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise CheckpointLoadError(f"{path} is not an exported student (no model_index.json); {HOW_TO_GET}")
    try:
        index = json.loads(index_file.read_text())
        name = index.get("_class_name", "OneStepPipeline")
        if name == SD_PIPELINE:
            sd_student_call(path)  # a CheckpointLoadError of its own before any weights load
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
    except CheckpointLoadError:
        raise
    except Exception as e:  # a broken folder surfaces as any of json/safetensors/diffusers errors
        raise CheckpointLoadError(f"cannot load the student checkpoint {path}: {one_line(e)}; {HOW_TO_GET}") from e


def load_teacher_checkpoint(path: Path, device: torch.device) -> EDMUNet:
    """The EDMUNet teacher of a class-conditional/unconditional student (a ``config.json`` folder)."""
    if not (path / "config.json").is_file():
        raise CheckpointLoadError(
            f"no teacher checkpoint at {path} (an EDMUNet folder with config.json); "
            "train one with `fdistill train-teacher configs/fmnist_teacher.yaml`, "
            "or pass --no-teacher"
        )
    try:
        return EDMUNet.from_pretrained(path).eval().to(device)
    except Exception as e:
        raise CheckpointLoadError(f"cannot load the teacher checkpoint {path}: {one_line(e)}") from e


def packaged_text_encoder(path: Path) -> nn.Module | None:
    """The text encoder of a folder whose ``text_encoder/`` weights were left out because they are the installed
    all-MiniLM-L6-v2 package's (:func:`fdistill.nets.text_encoders.strip_packaged_text_encoder`), else ``None``."""
    folder = path / "text_encoder"
    if not (folder / PACKAGED_MARKER).is_file() or (folder / WEIGHTS_FILE).is_file():
        return None
    cls = transformers_class(str(path), None, "text_encoder", "AutoModel")
    return load_text_encoder(folder, cls).eval()


def float32_outputs(module: nn.Module) -> None:
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
    """Silence ``LCMScheduler``'s per-call warnings that the first custom timestep is not T-1 and that the others are
    off LCM's own 50-step grid: an exported student's timesteps are exactly what
    :mod:`fdistill.export.stable_diffusion` intends."""
    lcm_log = logging.getLogger("diffusers.schedulers.scheduling_lcm")
    if not any(isinstance(f, _DropMessage) for f in lcm_log.filters):
        lcm_log.addFilter(_DropMessage("on the custom timestep schedule is"))
        lcm_log.addFilter(_DropMessage("not on the original training/distillation timestep schedule"))


def load_sd_pipeline(path: Path, device: torch.device) -> StableDiffusionPipeline:
    """A stock ``StableDiffusionPipeline`` from an SD-style folder: float32 weights on ``device``, no safety checker,
    progress bar off; a text encoder stripped of the packaged MiniLM weights takes them from the package."""
    from diffusers import StableDiffusionPipeline  # the heavy pipeline classes load on first use

    extra: dict[str, Any] = {}
    text_encoder = packaged_text_encoder(path)
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
        float32_outputs(pipe.unet)
    return pipe


def load_sd_teacher(path: Path, device: torch.device) -> StableDiffusionPipeline:
    """The SD-style teacher folder of a text-to-image student, as a stock ``StableDiffusionPipeline`` with a
    deterministic DPM-Solver++ 2M scheduler built from the folder's scheduler config (``timestep_spacing="trailing"``:
    the first of any number of steps is t = T-1, pure noise, where the distillation's teacher samples start too)."""
    from diffusers import DPMSolverMultistepScheduler  # the heavy scheduler classes load on first use

    if not is_sd_folder(path):
        raise CheckpointLoadError(f"no Stable-Diffusion teacher folder at {path} ({SD_LAYOUT})")
    try:
        pipe = load_sd_pipeline(path, device)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing"
        )
        return pipe
    except Exception as e:
        raise CheckpointLoadError(f"cannot load the teacher checkpoint {path}: {one_line(e)}") from e
