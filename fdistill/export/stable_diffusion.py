"""Export a latent one-step or K-step student as a stock diffusers ``StableDiffusionPipeline`` (``LCMScheduler``).

The student of a Stable-Diffusion-style teacher (:mod:`fdistill.teachers.latent`) trained with
``train.generator_input=vp`` is ``x0 = G(z, c) = D_theta(sqrt(1 + sigma_init^2) z, sigma_init, c)``: its UNet is
evaluated once, on ``x_vp = z`` at the DDPM timestep ``t_init`` with ``sigma(t_init) = sigma_init``, and the
prediction is converted to x0 (docs/math.md §1.2). The stock pipeline reproduces exactly this with

    pipe(prompt, num_inference_steps=1, timesteps=[t_init], guidance_scale=0.0)     # LCMScheduler

- ``LCMScheduler.init_noise_sigma = 1`` and ``scale_model_input`` is the identity, so the UNet sees ``z``;
- ``guidance_scale <= 1`` turns classifier-free guidance off (one UNet call, the prompt's embedding, encoded by
  the same tokenizer/text encoder and padding the teacher's prompt table uses);
- LCM's ``step`` computes ``x0 = (z - sqrt(1 - abar) eps) / sqrt(abar)`` (our conversion: ``x_t = z / sqrt(abar)``,
  ``sigma = sqrt((1 - abar) / abar)``; likewise for v- and sample-prediction) and returns, at the last step,
  ``c_out x0 + c_skip z`` with LCM's boundary condition ``c_skip = 0.25 / ((10 t)^2 + 0.25)`` (1.6e-8 at t=399,
  6.3e-9 at t=625): equal to ``x0`` to float32 precision for any ``t_init >= 20`` or so;
- the VAE decodes ``x0 / scaling_factor``.

A K-step student (``train.student_steps``, levels ``sigma_1 = sigma_init > ... > sigma_K``; docs/math.md §2.10)
samples ``x0_k = D_theta(x_k, sigma_k)``, ``x_{k+1} = x0_k + sigma_{k+1} eps_k`` (:func:`fdistill.nets.generator.
run_chain`). With every ``sigma_k = sigma(t_k)`` on the integer timestep grid this is DMD2's multi-step SD sampler

    pipe(prompt, num_inference_steps=K, timesteps=[t_1, ..., t_K], guidance_scale=0.0)     # LCMScheduler

LCM's intermediate ``step`` returns ``sqrt(abar_{k+1}) x0_k + sqrt(1 - abar_{k+1}) eps_k``, which is exactly the UNet
input ``x_{k+1} / sqrt(1 + sigma_{k+1}^2)`` of the VE chain state; ``eps_k`` is its
``randn_tensor(..., generator=generator)`` draw, so a seeded ``generator`` fixes ``z`` (when ``latents`` is not
given) and then ``eps_1 .. eps_{K-1}`` in that order.

Why not another stock scheduler: ``DDIMScheduler`` (``set_alpha_to_one``) also returns ``x0`` after one step but
cannot be given a custom timestep (one ``trailing`` step is t=999 only); Euler-type schedulers rescale the input by
``sqrt(1 + sigma^2)``. ``tests/test_export_sd.py`` checks the LCM call against ``G(z)`` (latents and images) and
against the K-step chain.

The student UNet is saved as a plain ``UNet2DConditionModel`` (LoRA adapters, when present, are fused into the
base weights and removed). ``fdistill_export.json`` records the timesteps and the call; ``prompts.txt`` the teacher's
prompt table; ``README.md`` is the model card with the exact call.
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

import torch
from torch import nn

from fdistill.export.pipeline import model_card
from fdistill.nets.text_encoders import load_text_encoder

__all__ = ["export_sd_student", "one_step_kwargs", "student_call_kwargs", "student_timestep", "student_timesteps"]

EXPORT_FILE = "fdistill_export.json"


def student_timestep(teacher, sigma_init: float, tol: float = 0.01, name: str = "train.sigma_init") -> int:
    """The integer DDPM timestep whose sigma is ``sigma_init`` (within ``tol`` timesteps), else a clear error naming
    the config value ``name`` and the sigma to train with instead."""
    t = float(teacher.timestep(torch.tensor([float(sigma_init)], dtype=torch.float64))[0])
    t_int = round(t)
    if abs(t - t_int) > tol or not 0 <= t_int < teacher.num_train_timesteps:
        key = name.rsplit(".", 1)[-1]
        raise ValueError(
            f"{name}={sigma_init} is timestep {t:.3f} of this teacher, not an integer: the stock pipeline "
            f"evaluates integer timesteps; train with {key}={teacher.sigma_at(t_int)!r} (timestep {t_int})"
        )
    return t_int


def student_timesteps(teacher, sigmas: list[float], tol: float = 0.01) -> list[int]:
    """The integer DDPM timesteps ``[t_1 .. t_K]`` of a student's levels (strictly decreasing), else a clear error
    naming the level: ``train.sigma_init`` for level 1, ``train.student_sigmas[k]`` (0-based) for the others."""
    names = ["train.sigma_init"] + [f"train.student_sigmas[{k}]" for k in range(1, len(sigmas))]
    timesteps = [student_timestep(teacher, s, tol, n) for s, n in zip(sigmas, names, strict=True)]
    if any(b >= a for a, b in zip(timesteps, timesteps[1:], strict=False)):
        raise ValueError(f"student sigmas {sigmas} map to timesteps {timesteps}: not strictly decreasing")
    return timesteps


def plain_unet(unet: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A copy of ``unet`` with LoRA adapters fused and removed and gradient checkpointing off, in ``dtype``."""
    unet = copy.deepcopy(unet)
    if getattr(unet, "peft_config", None):
        unet.fuse_lora(lora_scale=1.0)
        unet.unload_lora()
    if getattr(unet, "is_gradient_checkpointing", False):
        unet.disable_gradient_checkpointing()
    return _copy_as(unet, dtype, copy_first=False).eval().requires_grad_(False)


def _frozen_component(teacher, name: str, dtype: torch.dtype) -> nn.Module:
    """The teacher's VAE / text encoder in ``dtype``: re-read from the teacher's folder when it was loaded in another
    precision (a bf16 teacher exports full-precision weights), else a copy."""
    module = getattr(teacher, name)
    source = getattr(teacher, "source", None)
    if source is None or next(module.parameters()).dtype == dtype:
        return _copy_as(module, dtype)
    path, sub, variant = source
    folder = f"{sub}/{name}" if sub else name
    if name == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(path, subfolder=folder, torch_dtype=dtype, variant=variant)
    local = Path(path).expanduser() / folder
    if local.is_dir():
        return load_text_encoder(local, type(module), variant=variant).to(dtype)
    return type(module).from_pretrained(path, subfolder=folder, variant=variant).to(dtype)


def _copy_as(module: nn.Module, dtype: torch.dtype, copy_first: bool = True) -> nn.Module:
    module = copy.deepcopy(module) if copy_first else module
    return module if next(module.parameters()).dtype == dtype else module.to(dtype=dtype)


def student_call_kwargs(path: str | Path) -> dict:
    """The call arguments, as ``fdistill_export.json`` records them, that make an exported folder's pipeline
    reproduce the student: ``num_inference_steps=K, timesteps=[t_1..t_K], guidance_scale=0.0`` (K = 1: ``G(z)``)."""
    info = json.loads((Path(path) / EXPORT_FILE).read_text())
    timesteps = list(info["timesteps"])
    return {"num_inference_steps": len(timesteps), "timesteps": timesteps, "guidance_scale": 0.0}


one_step_kwargs = student_call_kwargs  # the name from before K-step students; same call for K = 1


_USAGE = """import torch
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{path}")          # StableDiffusionPipeline + LCMScheduler
# pipe.to("cuda")  # and torch_dtype=torch.float16 / bfloat16 for speed
image = pipe("{prompt}", {call}).images[0]
image.save("sample.png")
# exactly the student for given unit-variance latents z (shape {shape}): pass latents=z{renoise}"""
_RENOISE = (
    ",\n# and generator=torch.Generator().manual_seed(s) to fix the re-noising draws eps_1..eps_{K-1} between steps"
)


def _call_text(timesteps: list[int]) -> str:
    return f"num_inference_steps={len(timesteps)}, timesteps={list(timesteps)}, guidance_scale=0.0"


def export_sd_student(
    student: nn.Module,
    teacher,
    path: str | Path,
    sigma_init: float | None = None,
    card: dict | None = None,
    dtype: torch.dtype = torch.float32,
    input_scaling: str | None = None,
) -> Path:
    """Write ``student`` (a one- or K-step :class:`fdistill.nets.generator.OneStepGenerator` or its latent denoiser
    network) with the teacher's VAE, text encoder, tokenizer and an ``LCMScheduler`` as a ``StableDiffusionPipeline``
    folder; every level's sigma must be an integer DDPM timestep's (:func:`student_timesteps`).

    ``sigma_init`` / ``input_scaling`` default to the generator's. Only ``vp`` input scaling (the UNet sees ``z``)
    is exportable to the stock pipeline, which feeds unit-variance latents.
    """
    from diffusers import LCMScheduler, StableDiffusionPipeline

    net = getattr(student, "net", student)
    sigma_init = float(sigma_init if sigma_init is not None else student.sigma_init)
    sigmas = [sigma_init, *(float(s) for s in getattr(student, "sigmas", ())[1:])]
    input_scaling = input_scaling or getattr(student, "input_scaling", "vp")
    if input_scaling != "vp":
        raise ValueError(
            "only students trained with train.generator_input=vp (the UNet sees z) export to the stock "
            f"pipeline, got {input_scaling!r}"
        )
    timesteps = student_timesteps(teacher, sigmas)
    accepted = inspect.signature(LCMScheduler.__init__).parameters
    sched_cfg = {k: v for k, v in teacher.scheduler_config.items() if k in accepted}
    sched_cfg.update(clip_sample=False, thresholding=False, prediction_type=teacher.prediction_type)
    scheduler = LCMScheduler.from_config(sched_cfg)
    pipe = StableDiffusionPipeline(
        vae=_frozen_component(teacher, "vae", dtype),
        text_encoder=_frozen_component(teacher, "text_encoder", dtype),
        tokenizer=teacher.tokenizer,
        unet=plain_unet(net.unet, dtype),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    path = Path(path)
    pipe.save_pretrained(path, safe_serialization=True)
    prompts = list(getattr(teacher, "prompts", []))
    (path / "prompts.txt").write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
    info = {
        "timesteps": timesteps,
        "num_inference_steps": len(timesteps),
        "guidance_scale": 0.0,
        "sigma_init": sigma_init,
        **({"student_sigmas": sigmas} if len(sigmas) > 1 else {}),
        "scheduler": "LCMScheduler",
        "prediction_type": teacher.prediction_type,
        "dtype": str(dtype),
    }
    (path / EXPORT_FILE).write_text(json.dumps(info, indent=2))
    shape = f"(B, {', '.join(str(s) for s in teacher.sample_shape)})"
    prompt = prompts[0] if prompts else "a photo of a cat"
    renoise = _RENOISE if len(timesteps) > 1 else ""
    usage = _USAGE.format(path=path, prompt=prompt, call=_call_text(timesteps), shape=shape, renoise=renoise)
    steps = "one-step" if len(timesteps) == 1 else f"{len(timesteps)}-step"
    full = {
        "title": f"fdistill {steps} text-to-image student",
        "NFE": len(timesteps),
        **({"timestep": timesteps[0]} if len(timesteps) == 1 else {"timesteps": timesteps}),
        "sigma_init": sigma_init,
        "scheduler": "LCMScheduler (stock diffusers)",
        **(card or {}),
        "usage": usage,
    }
    (path / "README.md").write_text(model_card(full))
    (path / "card.json").write_text(json.dumps({k: v for k, v in full.items() if k != "usage"}, indent=2))
    return path
