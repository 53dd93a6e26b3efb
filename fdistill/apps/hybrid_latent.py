"""Latent (Stable-Diffusion-style) pairs for hybrid sampling and DT-visualisation (Gandikota & Bau 2025;
docs/math.md §2.11, the VP <-> EDM axis of §1.2).

The teacher is a :class:`fdistill.teachers.latent.LatentTeacher` (the EDM Heun sampler in latent space, CFG
``D_u + w (D_c - D_u)``); the student an exported stock ``StableDiffusionPipeline`` + ``LCMScheduler`` folder
(:mod:`fdistill.export.stable_diffusion`) whose ``fdistill_export.json`` records its call ``timesteps=[t_1..t_K],
guidance_scale=0``. :class:`LatentStudent` shows that folder with the interface
:func:`fdistill.apps.sample.hybrid_sample` uses for :class:`fdistill.export.pipeline.OneStepPipeline` students:

- its levels are ``sigma_k = sqrt((1 - abar_{t_k}) / abar_{t_k})`` of its scheduler (:func:`ddpm_sigmas`);
- level k is the recorded stock call at the single timestep ``t_k`` on the UNet input
  ``x_vp = x / sqrt(1 + sigma_k^2)`` of the chain's VE state ``x = x0 + sigma_k eps``, i.e.
  ``x_vp = sqrt(abar) x0 + sqrt(1 - abar) eps``; its latent output (LCM's ``c_out x0 + c_skip x_vp``, ``c_skip``
  about 1e-8 at ``t >= 20``) is that level's x0. The first input is ``sqrt(1 + sigma_1^2) z``: the pipeline sees
  ``z`` (LCM's ``init_noise_sigma = 1``), so N = 0 is the student's own call on ``z`` (to float rounding);
- conditioning is a prompt id of the shared prompt table (the student's ``prompts.txt`` must equal the teacher's),
  encoded by the student's own text encoder as its pipeline does;
- latents decode through the student's VAE (the teacher's for the teacher's steps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fdistill.core.schedules import ddpm_sigmas
from fdistill.eval.t2i.generators import load_teacher
from fdistill.export.loading import CheckpointLoadError, is_sd_folder, load_sd_pipeline, one_line, sd_one_step_call
from fdistill.export.stable_diffusion import EXPORT_FILE
from fdistill.nets.generator import run_chain
from fdistill.teachers.autoencoder import vae_decode
from fdistill.teachers.latent import LatentTeacher
from fdistill.teachers.prompts import read_prompts

__all__ = ["LatentStudent", "decoder_for", "is_latent", "is_latent_student", "load_latent_teacher_folder"]


def is_latent_student(path: Path) -> bool:
    """An SD-style folder with the ``fdistill_export.json`` of an exported student (a teacher folder has none)."""
    return is_sd_folder(path) and (path / EXPORT_FILE).is_file()


def load_latent_teacher_folder(path: Path) -> LatentTeacher:
    """The SD-style teacher folder (with its ``prompts.txt``) as a float32 CPU teacher; any problem is one
    ``ValueError`` line."""
    try:
        return load_teacher(path)
    except Exception as e:
        raise ValueError(f"cannot load the latent (SD-style) teacher {path}: {one_line(e)}") from None


class LatentStudent:
    """An exported SD student folder's pipeline seen as a K-level student chain (see the module docstring)."""

    def __init__(self, pipe: Any, call: dict[str, Any], prompts: Sequence[str]) -> None:
        self.pipe, self.call = pipe, dict(call)
        self.timesteps = [int(t) for t in call["timesteps"]]
        sigmas = ddpm_sigmas(pipe.scheduler.alphas_cumprod)
        self.student_sigmas = [float(sigmas[t]) for t in self.timesteps]
        self.prompts = list(prompts)

    @classmethod
    def from_folder(cls, path: str | Path, device: str | torch.device = "cpu") -> LatentStudent:
        """Load ``path`` (:func:`is_latent_student`) with the call its ``fdistill_export.json`` records; one
        ``ValueError`` line for a broken folder."""
        path = Path(path)
        try:
            call = sd_one_step_call(path)
            prompts = read_prompts(path / "prompts.txt") if (path / "prompts.txt").is_file() else []
            return cls(load_sd_pipeline(path, torch.device(device)), call, prompts)
        except CheckpointLoadError as e:
            raise ValueError(str(e)) from None
        except Exception as e:
            raise ValueError(f"cannot load the latent (SD-style) student {path}: {one_line(e)}") from None

    @property
    def unet(self) -> torch.nn.Module:
        return self.pipe.unet

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def num_classes(self) -> int:
        return len(self.prompts)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        size = self.unet.config.sample_size
        return (int(self.unet.config.in_channels), *((size, size) if isinstance(size, int) else tuple(size)))

    def first_input(self, z: Tensor) -> Tensor:
        """The chain's VE input at level 1 whose UNet input is ``z``: ``sqrt(1 + sigma_1^2) z``."""
        return (1 + self.student_sigmas[0] ** 2) ** 0.5 * z

    def _labels(self, n: int, prompts: int | str | Sequence[int | str] | None, gen: torch.Generator) -> Tensor:
        """Prompt ids: given (ids or prompt texts of the table, one for all or ``n``), else drawn uniformly."""
        if not self.prompts:
            raise ValueError("the student folder has no prompts.txt: its prompt ids mean nothing")
        if prompts is None:
            return torch.randint(0, len(self.prompts), (n,), generator=gen)
        items = [prompts] * n if isinstance(prompts, int | str) else list(prompts)
        if len(items) != n:
            raise ValueError(f"got {len(items)} prompts for {n} samples")
        ids = []
        for p in items:
            if isinstance(p, str) and p not in self.prompts:
                raise ValueError(f"prompt {p!r} is not in the student's prompts.txt ({len(self.prompts)} prompts)")
            ids.append(self.prompts.index(p) if isinstance(p, str) else int(p))
        if any(not 0 <= i < len(self.prompts) for i in ids):
            raise ValueError(f"prompt ids {ids} out of range 0..{len(self.prompts) - 1}")
        return torch.tensor(ids, dtype=torch.long)

    @torch.no_grad()
    def embeddings(self, ids: Tensor) -> Tensor:
        """The pipeline's own prompt encoding of the prompts ``ids`` name."""
        texts = [self.prompts[int(i)] for i in ids.tolist()]
        return self.pipe.encode_prompt(texts, self.unet.device, 1, False)[0]

    @torch.no_grad()
    def denoise(self, x: Tensor, level: int, embeds: Tensor) -> Tensor:
        """The recorded stock call at ``t_level`` on ``x / sqrt(1 + sigma^2)``: the level's x0 (float32 latents)."""
        x_vp = x.float().to(self.unet.device) * (1 + self.student_sigmas[level] ** 2) ** -0.5
        call = {**self.call, "num_inference_steps": 1, "timesteps": [self.timesteps[level]]}
        return self.pipe(prompt_embeds=embeds, latents=x_vp, output_type="latent", **call).images.float()

    def chain(
        self,
        x: Tensor,
        labels: Tensor,
        gen: torch.Generator,
        start: int = 0,
        stop: int | None = None,
        callback: Callable[[int, float, Tensor, Tensor], None] | None = None,
    ) -> Tensor:
        """:func:`fdistill.nets.generator.run_chain` over the levels (re-noising draws from ``gen`` on the CPU, as
        :meth:`fdistill.export.pipeline.OneStepPipeline.chain`); returns the last x0 latents."""
        embeds = self.embeddings(labels)
        shape, device = tuple(x.shape), self.unet.device

        def noise(_k: int) -> Tensor:
            return torch.randn(shape, generator=gen).to(device)

        return run_chain(lambda xx, k: self.denoise(xx, k, embeds), x.to(device), self.student_sigmas, noise, start,
                         stop, callback)  # fmt: skip

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images in about ``[-1, 1]`` through the student's VAE (its pipeline's decoding, not clamped)."""
        return vae_decode(self.pipe.vae, latents.to(self.unet.device))


def is_latent(model: Any) -> bool:
    """Whether a loaded student or teacher works in a VAE's latent space."""
    return isinstance(model, LatentStudent | LatentTeacher)


def check_latent_pair(student: Any, teacher: Any) -> None:
    """A latent student needs a latent teacher with the same prompt table (and a pixel one a pixel one)."""
    if student is None or teacher is None:
        return
    if is_latent(student) != is_latent(teacher):
        kinds = {True: "latent (SD-style)", False: "pixel"}
        raise ValueError(
            f"the student is {kinds[is_latent(student)]} but the teacher {kinds[is_latent(teacher)]}: "
            "hybrid sampling needs a student and the teacher it was distilled from"
        )
    if is_latent(student) and list(student.prompts) != list(teacher.prompts):
        raise ValueError(
            f"the student's prompts.txt ({len(student.prompts)} prompts) is not the teacher's "
            f"({len(teacher.prompts)}): their prompt ids differ"
        )


def decoder_for(who: str, student: Any, teacher: Any) -> Callable[[Tensor], Tensor] | None:
    """The VAE decoder of a latent x0 from ``who`` ("student": the student's; "teacher" / "handover": the
    teacher's); None for pixel pairs."""
    if not is_latent(teacher if teacher is not None else student):
        return None
    return student.decode if who == "student" or teacher is None else teacher.decode
