"""The demo's two model backends: what loads, warms up and runs the student and its teacher.

- :class:`PixelBackend`: a :class:`fdistill.export.pipeline.OneStepPipeline` student (class-conditional,
  unconditional or text-conditional) next to its :class:`fdistill.nets.unet.EDMUNet` teacher, sampled with the EDM
  Heun sampler (Karras et al. 2022, Alg. 1; :func:`fdistill.core.sampling.edm_heun_sampler`) from ``sigma_max * z``
  with classifier-free guidance ``D_u + w (D_c - D_u)`` (:func:`fdistill.core.guidance.combine`, docs/math.md §1.2),
  both branches in one batch of 2N.
  A K-step student (docs/math.md §2.10) runs ``num_inference_steps = n`` of its K levels; hybrid sampling
  (docs/math.md §2.11, :func:`fdistill.apps.sample.hybrid_sample`) lets the teacher take the first N Heun steps
  from ``sigma_max * z`` and hands its x0 prediction, re-noised, to the student.
- :class:`SDBackend`: a stock ``StableDiffusionPipeline`` student (:mod:`fdistill.export.stable_diffusion`) run with
  the one-step call its ``fdistill_export.json`` records, next to the SD-style folder it was distilled from, run by
  the stock pipeline with DPM-Solver++ 2M (:func:`fdistill.export.loading.load_sd_teacher`). Its hybrid is
  :func:`~fdistill.apps.sample.hybrid_sample` on the same networks seen as a latent pair
  (:class:`fdistill.teachers.latent.LatentTeacher`, EDM Heun in latent space, and
  :class:`fdistill.apps.hybrid_latent.LatentStudent`, the recorded call on the VP re-noising), each with the
  one-prompt table ``[prompt]``, so any prompt text works as in the other two galleries.

Both start from the same ``z`` (:func:`initial_noise`), so the two galleries compare like for like.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from fdistill.apps.hybrid_latent import LatentStudent
from fdistill.apps.sample import HybridOutput, hybrid_sample
from fdistill.core.guidance import combine
from fdistill.core.sampling import edm_heun_sampler
from fdistill.export.loading import (
    SD_LAYOUT,
    SD_PIPELINE,
    CheckpointLoadError,
    is_sd_folder,
    load_sd_teacher,
    load_student_checkpoint,
    load_teacher_checkpoint,
    one_line,
    sd_one_step_call,
)
from fdistill.export.pipeline import OneStepPipeline
from fdistill.export.stable_diffusion import EXPORT_FILE
from fdistill.teachers.diffusers import UNetTeacher
from fdistill.teachers.latent import LatentTeacher

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

STUDENT_ENV = "FDISTILL_STUDENT"
TEACHER_ENV = "FDISTILL_TEACHER"
DEFAULT_STUDENT = "checkpoints/fmnist_student"
DEFAULT_TEACHER = "checkpoints/fmnist_teacher"
REPO_ROOT = Path(__file__).resolve().parents[3]  # fdistill/apps/demo/backends.py -> the source checkout
EDM_SAMPLER = "EDM Heun"
SD_SAMPLER = "DPM-Solver++ 2M"


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


def recorded_teacher(student_path: Path, card: dict[str, Any]) -> Path | None:
    """The teacher folder an exported SD student records: ``teacher`` in its ``fdistill_export.json``, else in its
    ``card.json`` (``latent:PATH``, as the trainer writes it). A relative path is tried from the working directory,
    then from the repository root; the first recorded path is returned even when it is not here (``None``: none)."""
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


def initial_noise(n: int, seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``z``: the first CPU draw of ``seed``, ``(n, *shape)``, the starting noise of student and teacher."""
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def _hw(size: Any) -> tuple[int, int]:
    """A diffusers ``sample_size`` (an int or a pair) as ``(height, width)``."""
    return (int(size), int(size)) if isinstance(size, int | float) else (int(size[0]), int(size[1]))


def _per_request(pipe: StableDiffusionPipeline) -> StableDiffusionPipeline:
    """A pipeline sharing ``pipe``'s networks with its own scheduler: the stock pipeline keeps per-call state (the
    scheduler's timesteps and step index, the guidance scale) on itself, so concurrent requests must not share one."""
    clone = type(pipe)(**{**pipe.components, "scheduler": copy.deepcopy(pipe.scheduler)}, requires_safety_checker=False)
    clone.set_progress_bar_config(disable=True)
    return clone


class Backend:
    """A loaded student (and optional teacher) of one kind; subclasses fill in the loading and the two runs.

    Attributes set by a subclass: ``text_conditional``, ``num_classes``, ``class_names``, ``latent_shape`` (the
    noise ``z``), ``image_shape``, ``student_call`` (the recorded one-step call of a stock pipeline, else ``{}``),
    ``student_sigmas`` (a pixel student's K levels, one for a one-step student; ``[]`` for a stock SD student)."""

    sd: ClassVar[bool] = False
    sampler: ClassVar[str] = EDM_SAMPLER
    min_cfg: ClassVar[float] = 0.0  # the smallest teacher CFG scale the sampler accepts
    default_kind: ClassVar[str] = "default"  # how a teacher the user did not name is described
    text_conditional: bool
    num_classes: int
    class_names: list[str]
    latent_shape: tuple[int, ...]
    image_shape: tuple[int, ...]
    student_sigmas: list[float]

    def __init__(self, pipe: Any, student_path: Path, device: torch.device) -> None:
        self.pipe, self.student_path, self.device = pipe, student_path, device
        self.student_call: dict[str, Any] = {}
        self.teacher: Any = None
        self.teacher_path: Path | None = None
        self.teacher_note = "not loaded (--no-teacher)"

    @property
    def num_steps(self) -> int:
        """K, the student's number of steps (1 for a one-step student)."""
        return len(self.student_sigmas) or 1

    @property
    def hybrid_sigmas(self) -> list[float]:
        """The student's levels a hybrid hands over to (its K levels)."""
        return self.student_sigmas

    # -- teacher setup
    def find_teacher(self, teacher_path: str | Path | None, card: dict[str, Any]) -> tuple[Path | None, bool]:
        """The teacher folder to try and whether the user named it."""
        return resolve_checkpoint(teacher_path, TEACHER_ENV, DEFAULT_TEACHER)

    def teacher_found(self, path: Path) -> bool:
        raise NotImplementedError

    def load_teacher(self, path: Path) -> Any:
        raise NotImplementedError

    def describe_teacher(self, path: Path) -> str:
        raise NotImplementedError

    def check_teacher(self) -> None:
        """Raise :class:`CheckpointLoadError` when the loaded teacher does not fit the student."""
        raise NotImplementedError

    def attach_teacher(self, teacher_path: str | Path | None, card: dict[str, Any]) -> None:
        """Load the teacher: a path the user names must load and match; the default one is optional (when it is
        absent or belongs to another student the comparison is off, and ``teacher_note`` says why)."""
        path, named = self.find_teacher(teacher_path, card)
        self.teacher_path = path
        if self.text_conditional and not self.sd:
            self.teacher_note = "not used with a text-conditional student"
            return
        if path is None:
            self.teacher_note = "none recorded in the student's card: the comparison is off (start with --teacher PATH)"
            return
        if not (named or self.teacher_found(path)):
            self.teacher_note = f"none found at `{path}`: the comparison is off (start with --teacher PATH)"
            return
        self.teacher = self.load_teacher(path)
        self.teacher_note = self.describe_teacher(path)
        try:
            self.check_teacher()
        except CheckpointLoadError as e:
            if named:  # the user asked for this teacher: refuse to start
                raise
            # the default teacher belongs to another student: serve the student alone and say why
            self.teacher, self.teacher_note = None, f"off: the {self.default_kind} {e}"

    # -- running
    @contextlib.contextmanager
    def precision(self) -> Iterator[None]:
        """bf16 autocast on CUDA, float32 on the CPU; no autograd either way."""
        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    yield
            else:
                yield

    def run_student(
        self, n: int, labels: list[int] | None, seed: int, prompt: str | None, steps: int | None = None
    ) -> torch.Tensor:
        """``n`` student images in [-1, 1] (NCHW, on the device) for ``seed``, with ``steps`` of its K (None: K)."""
        raise NotImplementedError

    def run_hybrid(
        self, n: int, labels: list[int] | None, seed: int, hybrid_steps: int, nfe: int, cfg_scale: float,
        steps: int | None = None, prompt: str | None = None,
    ) -> HybridOutput:  # fmt: skip
        """The teacher's first ``hybrid_steps`` Heun steps of its ``nfe`` schedule, then the student (``steps`` of
        its levels) on the same ``z`` (docs/math.md §2.11), for ``labels`` (or a text-to-image student's ``prompt``)."""
        raise NotImplementedError

    def run_teacher(
        self, n: int, labels: list[int] | None, seed: int, nfe: int, cfg_scale: float, prompt: str | None
    ) -> torch.Tensor:
        """``n`` teacher images in [-1, 1] for the same ``seed`` (and so the same ``z``) at ``nfe`` evaluations."""
        raise NotImplementedError

    def warm_up(self, examples: list[str]) -> None:
        """One tiny call per network: fails at start (not on the first user) and keeps lazy init out of latencies."""
        labels = [0] if self.num_classes else None
        prompt = (examples or ["warm up"])[0] if self.sd else None
        checks: list[tuple[Path | None, Any]] = []
        if not self.text_conditional or self.sd:
            checks.append((self.student_path, lambda: self.run_student(1, labels, 0, prompt)))
        if self.teacher is not None:
            checks.append((self.teacher_path, lambda: self.run_teacher(1, labels, 0, 1, 1.0, prompt)))
        for path, run in checks:
            try:
                run()
            except Exception as e:
                raise CheckpointLoadError(f"the checkpoint {path} loads but does not run: {one_line(e)}") from e


class PixelBackend(Backend):
    """A ``OneStepPipeline`` student and its ``EDMUNet`` teacher (EDM Heun; CFG branches in one batch of 2N)."""

    def __init__(self, pipe: Any, student_path: Path, device: torch.device) -> None:
        super().__init__(pipe, student_path, device)
        cfg = pipe.config
        self.text_conditional = bool(cfg.get("text_conditional", False))
        self.num_classes = 0 if self.text_conditional else int(pipe.num_classes)
        names = list(cfg.get("class_names", None) or [])
        if self.num_classes and len(names) != self.num_classes:
            names = [str(i) for i in range(self.num_classes)]  # a student exported without names: use the ids
        self.class_names = names if self.num_classes else []
        unet_cfg = pipe.unet.config
        self.image_shape = (int(unet_cfg.in_channels), int(unet_cfg.sample_size), int(unet_cfg.sample_size))
        self.latent_shape = self.image_shape
        self.student_sigmas = [float(s) for s in getattr(pipe, "student_sigmas", [cfg.get("sigma_init", 2.5)])]
        self._views: dict[int, OneStepPipeline] = {}
        self._hybrid_teacher: UNetTeacher | None = None

    def teacher_found(self, path: Path) -> bool:
        return (path / "config.json").is_file()

    def load_teacher(self, path: Path) -> Any:
        net = load_teacher_checkpoint(path, self.device)
        self._hybrid_teacher = UNetTeacher(net)  # the same network as hybrid_sample's Teacher (made once, here)
        return net

    def describe_teacher(self, path: Path) -> str:
        return f"`{path}` ({EDM_SAMPLER} sampler)"

    def check_teacher(self) -> None:
        t = self.teacher
        if tuple(t.sample_shape) != self.image_shape:
            raise CheckpointLoadError(
                f"teacher {self.teacher_path} makes {tuple(t.sample_shape)} images but the student "
                f"{self.student_path} makes {self.image_shape}; pass the teacher it was distilled from (--teacher)"
            )
        if t.num_classes != self.num_classes:
            raise CheckpointLoadError(
                f"teacher {self.teacher_path} has {t.num_classes} classes but the student "
                f"{self.student_path} has {self.num_classes}; pass the teacher it was distilled from (--teacher)"
            )

    def run_student(
        self, n: int, labels: list[int] | None, seed: int, prompt: str | None, steps: int | None = None
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {"prompt": [prompt] * n} if self.text_conditional else {"class_labels": labels}
        if steps is not None and self.num_steps > 1:  # a K-step student: its first `steps` levels
            kwargs["num_inference_steps"] = steps
        with self.precision():
            return self.pipe(batch_size=n, seed=seed, output_type="pt", **kwargs).images.float()

    def run_teacher(
        self, n: int, labels: list[int] | None, seed: int, nfe: int, cfg_scale: float, prompt: str | None
    ) -> torch.Tensor:
        """EDM Heun from ``sigma_max * z``. The sampler's state lives on the CPU (so the noise is identical on every
        device); each evaluation runs on the device, the conditional and unconditional CFG branches in one batch
        (the null class is the id ``num_classes``)."""
        net, dev = self.teacher, self.device
        cond = None if labels is None else torch.tensor(labels, device=dev)
        guided = cond is not None and cfg_scale != 1.0
        null = torch.full_like(cond, self.num_classes) if guided else None

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            x, sigma = x.to(dev), sigma.to(dev)
            if not guided:
                return net(x, sigma, cond).float().cpu()
            d_c, d_u = net(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, null])).float().chunk(2)
            return combine(d_c, d_u, cfg_scale).cpu()

        z = initial_noise(n, seed, self.image_shape)
        with self.precision():
            x = edm_heun_sampler(denoise, (n, *self.image_shape), nfe=nfe, device="cpu", z=z)
        return x.float().clamp(-1, 1)

    def student_view(self, steps: int | None) -> OneStepPipeline:
        """The student limited to its first ``steps`` levels (sharing its network): what ``num_inference_steps =
        steps`` samples, as a pipeline :func:`~fdistill.apps.sample.hybrid_sample` can hand over to."""
        if steps is None or steps == self.num_steps:
            return self.pipe
        if steps not in self._views:
            cfg = self.pipe.config
            self._views[steps] = OneStepPipeline(
                self.pipe.unet, cfg.sigma_init, cfg.class_names, cfg.get("input_scaling", "ve"),
                self.student_sigmas[:steps],
            )  # fmt: skip
        return self._views[steps]

    def run_hybrid(
        self, n: int, labels: list[int] | None, seed: int, hybrid_steps: int, nfe: int, cfg_scale: float,
        steps: int | None = None, prompt: str | None = None,
    ) -> HybridOutput:  # fmt: skip
        """:func:`~fdistill.apps.sample.hybrid_sample` with the seed's generator: its first draw is the same ``z``
        as the student's and the teacher's (labels are given, so none is drawn); N = 0 is the student's own call."""
        if self.teacher is None or self._hybrid_teacher is None:
            raise ValueError("hybrid sampling needs the teacher, which is not loaded")
        with self.precision():
            out = hybrid_sample(self.student_view(steps), self._hybrid_teacher, n, hybrid_steps, nfe=nfe,
                                class_labels=labels, seed=seed, guidance=cfg_scale)  # fmt: skip
        out.images = out.images.float()
        return out


class SDBackend(Backend):
    """A stock ``StableDiffusionPipeline`` student (its recorded one-step call) and its SD-style teacher folder
    (stock pipeline, DPM-Solver++ 2M at ``nfe`` steps, ``guidance_scale = w``: diffusers guides only for w > 1)."""

    sd = True
    sampler = SD_SAMPLER
    min_cfg = 1.0
    default_kind = "recorded"

    def __init__(self, pipe: Any, student_path: Path, device: torch.device) -> None:
        super().__init__(pipe, student_path, device)
        self.student_call = sd_one_step_call(student_path)
        self.text_conditional, self.num_classes, self.class_names = True, 0, []
        h, w = _hw(pipe.unet.config.sample_size)
        f = int(pipe.vae_scale_factor)
        self.latent_shape = (int(pipe.unet.config.in_channels), h, w)
        self.image_shape = (int(pipe.vae.config.out_channels), h * f, w * f)
        self.student_sigmas = []  # one step at the recorded t_init (a K-step SD export is not supported)
        self._hybrid_sigmas = LatentStudent(pipe, self.student_call, []).student_sigmas  # sigma(t_init)

    @property
    def hybrid_sigmas(self) -> list[float]:
        """``[sigma(t_init)]`` (``sqrt((1 - abar) / abar)`` at the recorded timestep): where a hybrid hands over."""
        return self._hybrid_sigmas

    def find_teacher(self, teacher_path: str | Path | None, card: dict[str, Any]) -> tuple[Path | None, bool]:
        """A teacher the user names (``--teacher`` or ``$FDISTILL_TEACHER``), else the one the student records."""
        if (teacher_path is not None and str(teacher_path) != "") or os.environ.get(TEACHER_ENV):
            return super().find_teacher(teacher_path, card)
        return recorded_teacher(self.student_path, card), False

    def teacher_found(self, path: Path) -> bool:
        return is_sd_folder(path)

    def load_teacher(self, path: Path) -> Any:
        if not is_sd_folder(path):
            kind = "an EDMUNet folder" if (path / "config.json").is_file() else "no Stable-Diffusion folder"
            raise CheckpointLoadError(
                f"teacher {path} is {kind}, but the student {self.student_path} is a text-to-image {SD_PIPELINE}: "
                f"pass the SD-style teacher folder it was distilled from ({SD_LAYOUT}) with --teacher, "
                "or --no-teacher"
            )
        return load_sd_teacher(path, self.device)

    def describe_teacher(self, path: Path) -> str:
        return f"`{path}` (stock {SD_PIPELINE}, {SD_SAMPLER})"

    def check_teacher(self) -> None:
        t, hint = self.teacher, "pass the teacher it was distilled from (--teacher)"
        latent = (int(t.unet.config.in_channels), *_hw(t.unet.config.sample_size))
        if latent != self.latent_shape:
            raise CheckpointLoadError(
                f"teacher {self.teacher_path} makes {latent} latents but the student {self.student_path} makes "
                f"{self.latent_shape}; {hint}"
            )
        widths = [getattr(p.text_encoder.config, "hidden_size", None) for p in (t, self.pipe)]
        if widths[0] != widths[1]:
            raise CheckpointLoadError(
                f"teacher {self.teacher_path} has a text encoder of hidden size {widths[0]} but the student "
                f"{self.student_path} has {widths[1]}; {hint}"
            )

    def run_student(
        self, n: int, labels: list[int] | None, seed: int, prompt: str | None, steps: int | None = None
    ) -> torch.Tensor:
        """The stock pipeline with the exact call ``fdistill_export.json`` records, on ``z``."""
        pipe, z = _per_request(self.pipe), initial_noise(n, seed, self.latent_shape).to(self.device)
        with self.precision():
            images = pipe([prompt] * n, latents=z, output_type="pt", **self.student_call).images
        return images.float() * 2 - 1  # [0, 1] -> the demo's [-1, 1]

    def run_teacher(
        self, n: int, labels: list[int] | None, seed: int, nfe: int, cfg_scale: float, prompt: str | None
    ) -> torch.Tensor:
        pipe, z = _per_request(self.teacher), initial_noise(n, seed, self.latent_shape).to(self.device)
        with self.precision():
            images = pipe(
                [prompt] * n, latents=z, num_inference_steps=nfe, guidance_scale=cfg_scale, output_type="pt"
            ).images
        return images.float() * 2 - 1

    def run_hybrid(
        self, n: int, labels: list[int] | None, seed: int, hybrid_steps: int, nfe: int, cfg_scale: float,
        steps: int | None = None, prompt: str | None = None,
    ) -> HybridOutput:  # fmt: skip
        """:func:`~fdistill.apps.sample.hybrid_sample` of the latent pair the loaded networks make (no second load):
        the teacher's components as a :class:`~fdistill.teachers.latent.LatentTeacher` (its first ``hybrid_steps``
        EDM Heun steps in latent space, CFG ``cfg_scale``), the student's pipeline (a per-request copy) as a
        :class:`~fdistill.apps.hybrid_latent.LatentStudent`, both with the prompt table ``[prompt]`` (prompt id 0,
        given, so the seed's first draw is ``z``): any prompt text works. N = 0 is the student's own call on ``z``."""
        if self.teacher is None:
            raise ValueError("hybrid sampling needs the teacher, which is not loaded")
        if not prompt:
            raise ValueError("the hybrid of a text-to-image student needs a prompt")
        t = self.teacher
        teacher = LatentTeacher(t.unet, t.vae, t.text_encoder, t.tokenizer, dict(t.scheduler.config), [prompt])
        student = LatentStudent(_per_request(self.pipe), self.student_call, [prompt])
        with self.precision():
            out = hybrid_sample(student, teacher, n, hybrid_steps, nfe=nfe, class_labels=0, seed=seed,
                                guidance=cfg_scale)  # fmt: skip
        out.images = out.images.float()
        return out


def load_backend(student_path: Path, device: torch.device) -> Backend:
    """The student folder loaded (:func:`fdistill.export.loading.load_student_checkpoint`) into its backend."""
    pipe = load_student_checkpoint(student_path, device)
    cls = SDBackend if type(pipe).__name__ == SD_PIPELINE else PixelBackend
    return cls(pipe, student_path, device)
