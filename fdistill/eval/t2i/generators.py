"""The generators ``fdistill eval-t2i`` compares: the latent teacher at (NFE, CFG w) pairs and one-step students.

The teacher (:class:`fdistill.teachers.latent.LatentTeacher`) samples with the EDM Heun sampler (Karras et al. 2022,
Alg. 1) through :meth:`~fdistill.teachers.base.Teacher.sample` in latent space with CFG ``D_u + w (D_c - D_u)``
(``w = 1`` is off; :mod:`fdistill.core.guidance`) and :meth:`~fdistill.teachers.latent.LatentTeacher.decode`. Its
``NFE`` counts denoiser evaluations as the sampler performs them (``2 * steps - 1``: an even request runs one fewer);
``UNet evals`` doubles that when ``w != 1`` (both branches batched, one UNet call of 2B samples per evaluation). A
student folder (:mod:`fdistill.export.stable_diffusion`) is the stock ``StableDiffusionPipeline`` call its
``fdistill_export.json`` records, on the batch's noise ``z`` (NFE 1, no CFG). :func:`generate_batches` times only
``sample`` (UNet + VAE decoder), with CUDA synchronised around each batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from fdistill.core.sampling import heun_steps_for_nfe
from fdistill.eval.t2i.base import EvalT2ISetupError, T2IGenerator, batch_noise
from fdistill.eval.t2i.inputs import load_prompt_table
from fdistill.export.loading import (
    SD_LAYOUT,
    CheckpointLoadError,
    is_sd_folder,
    load_sd_pipeline,
    one_line,
    sd_one_step_call,
)
from fdistill.teachers.latent import LatentTeacher

log = logging.getLogger("fdistill.eval.t2i")


def load_teacher(
    path: str | Path, prompts_file: str | Path | None = None, device: str | torch.device = "cpu"
) -> LatentTeacher:
    """The SD-style teacher folder as a float32 :class:`~fdistill.teachers.latent.LatentTeacher` on ``device``, with
    the prompt table of ``prompts_file`` (default ``PATH/prompts.txt``). Loaded through
    :func:`fdistill.export.loading.load_sd_pipeline`, so a folder whose MiniLM text-encoder weights were stripped
    (they come from the installed package) loads too."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise EvalT2ISetupError(f"--teacher {path}: no such folder (a Stable-Diffusion-style teacher: {SD_LAYOUT})")
    if not is_sd_folder(path):
        raise EvalT2ISetupError(f"--teacher {path} is not a Stable-Diffusion-style folder ({SD_LAYOUT})")
    prompts = load_prompt_table(Path(prompts_file).expanduser() if prompts_file else path / "prompts.txt")
    try:
        pipe = load_sd_pipeline(path, torch.device("cpu"))
        teacher = LatentTeacher(
            pipe.unet,
            pipe.vae,
            pipe.text_encoder,
            pipe.tokenizer,
            dict(pipe.scheduler.config),
            prompts,
            source=(str(path), None, None),
        )
    except Exception as e:  # a broken folder surfaces as json/safetensors/diffusers/transformers errors
        raise EvalT2ISetupError(f"cannot load the teacher {path}: {one_line(e)}") from e
    for m in (teacher.unet, teacher.vae, teacher.text_encoder):
        m.eval().requires_grad_(False)
    return teacher.to(device)


def heun_evaluations(nfe: int) -> int:
    """Denoiser evaluations :func:`fdistill.core.sampling.edm_heun_sampler` performs for a requested ``nfe``."""
    return 2 * heun_steps_for_nfe(nfe) - 1


def _teacher_generator(teacher: LatentTeacher, nfe: int, evals: int, w: float, device: torch.device) -> T2IGenerator:
    def encode(prompts: list[str]) -> Tensor:
        ids = teacher.prompt_ids(prompts).to(device)
        teacher.prompt_table.embeddings(ids, len(prompts), device)  # fill the cache outside the clock
        teacher.prompt_table.embeddings(None, 1, device)
        return ids

    def sample(ids: Tensor, seed: int) -> Tensor:
        g = torch.Generator(device).manual_seed(seed)
        latents = teacher.sample(ids.shape[0], ids, nfe=nfe, guidance=w, generator=g, device=device)
        return teacher.decode(latents)

    return T2IGenerator(
        name=f"teacher NFE {evals} w={w:g}",
        kind="teacher",
        nfe=evals,
        unet_evals=evals * (1 if w == 1.0 else 2),
        cfg=w,
        encode=encode,
        sample=sample,
        info={"sampler": "EDM Heun (Karras et al. 2022, Alg. 1)", "nfe_requested": nfe},
    )


def teacher_generators(
    teacher: LatentTeacher, nfes: Sequence[int], cfgs: Sequence[float], device: str | torch.device
) -> list[T2IGenerator]:
    """One generator per (NFE, w) pair: EDM Heun in latent space with CFG, then the VAE decoder. Pairs that run the
    same number of evaluations (an even NFE runs one fewer) at the same ``w`` are one generator."""
    device = torch.device(device)
    out, seen = [], set()
    for nfe in nfes:
        evals = heun_evaluations(int(nfe))
        for w in cfgs:
            w = float(w)
            if (evals, w) in seen:
                log.warning("eval-t2i: teacher NFE %d runs %d evaluations at w=%g, already evaluated", nfe, evals, w)
                continue
            seen.add((evals, w))
            out.append(_teacher_generator(teacher, int(nfe), evals, w, device))
    return out


def _default_name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}" if path.name == "student" and path.parent.name else path.name


def load_student_generator(
    path: str | Path,
    device: str | torch.device,
    name: str | None = None,
    latent_shape: tuple[int, ...] | None = None,
) -> T2IGenerator:
    """An exported one-step student folder (:func:`fdistill.export.stable_diffusion.export_sd_student`) as a
    generator: the stock pipeline call its ``fdistill_export.json`` records, on the batch's noise ``z``.
    ``latent_shape`` (the teacher's) is checked against the student UNet's."""
    device = torch.device(device)
    path = Path(path).expanduser()
    if not path.is_dir():
        raise EvalT2ISetupError(f"--student {path}: no such folder (an exported one-step student)")
    if not is_sd_folder(path):
        raise EvalT2ISetupError(f"--student {path} is not a StableDiffusionPipeline folder (export_sd_student)")
    try:
        call = sd_one_step_call(path)
        pipe = load_sd_pipeline(path, device)
    except CheckpointLoadError as e:
        raise EvalT2ISetupError(str(e)) from e
    except Exception as e:
        raise EvalT2ISetupError(f"cannot load the student {path}: {one_line(e)}") from e
    shape = student_latent_shape(pipe)
    if latent_shape is not None and tuple(latent_shape) != shape:
        raise EvalT2ISetupError(
            f"--student {path} makes latents {shape}, the teacher {tuple(latent_shape)}: not the same latent space"
        )
    return pipeline_generator(pipe, call, name or _default_name(path), device, {"path": str(path), "call": call})


def student_latent_shape(pipe) -> tuple[int, ...]:
    """The latent shape ``(C, H, W)`` a student pipeline's UNet samples."""
    cfg = pipe.unet.config
    size = cfg.sample_size
    return (int(cfg.in_channels), *((size, size) if isinstance(size, int) else tuple(size)))


def pipeline_generator(pipe, call: dict, name: str, device: str | torch.device, info: dict) -> T2IGenerator:
    """A loaded student pipeline as a generator: the recorded stock call ``call`` on the batch's noise ``z``."""
    device = torch.device(device)
    shape = student_latent_shape(pipe)

    def encode(prompts: list[str]) -> Tensor:
        with torch.no_grad():
            return pipe.encode_prompt(prompts, device, 1, False)[0]

    def sample(embeds: Tensor, seed: int) -> Tensor:
        z = batch_noise((embeds.shape[0], *shape), seed, device)
        images = pipe(prompt_embeds=embeds, latents=z, output_type="pt", **call).images
        return images.float() * 2 - 1

    return T2IGenerator(
        name=name, kind="student", nfe=1, unet_evals=1, cfg=None, encode=encode, sample=sample, info=info
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate_batches(
    gen: T2IGenerator, prompts: Sequence[str], batch_size: int, seed: int, device: torch.device
) -> Iterator[tuple[int, Tensor, float]]:
    """``(start, images, seconds)`` batch by batch: the images (CPU, clamped to ``[-1, 1]``) of
    ``prompts[start : start + batch_size]``, batch ``b`` from the noise of ``seed + b``, and the seconds spent in
    ``gen.sample`` (CUDA synchronised). Nothing is kept between batches, so any number of prompts fits in memory."""
    prompts = list(prompts)
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        cond = gen.encode(prompts[start : start + batch_size])
        _sync(device)
        t0 = time.perf_counter()
        images = gen.sample(cond, seed + b)
        _sync(device)
        seconds = time.perf_counter() - t0
        yield start, images.float().clamp(-1, 1).cpu(), seconds


def generate(
    gen: T2IGenerator, prompts: Sequence[str], batch_size: int, seed: int, device: torch.device
) -> tuple[Tensor, float]:
    """All images of :func:`generate_batches` in one tensor, and the total seconds in ``gen.sample`` (for a few
    hundred images; :func:`fdistill.eval.t2i.evaluate.evaluate_t2i` streams instead)."""
    batches = list(generate_batches(gen, prompts, batch_size, seed, device))
    return torch.cat([images for _, images, _ in batches]), sum(seconds for *_, seconds in batches)
