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

K-step students and hybrid sampling. A K-step student (``student_sigmas`` in its config, docs/math.md §2.10)
gets a "student steps" slider, 1..K, passed as ``num_inference_steps`` (its first n levels; hidden for a one-step
student). "Teacher's first step" (hybrid sampling, Gandikota & Bau 2025, docs/math.md §2.11;
:func:`fdistill.apps.sample.hybrid_sample`) also samples a third gallery: the teacher's first N (1..4) Heun steps of
its NFE schedule from ``sigma_max * z`` (the same ``z``), its x0 prediction re-noised to the first student level at
or below the sigma reached, then the student's remaining steps; the info table shows its latency and NFE (teacher
calls + student calls) beside the student's. For an SD student the same networks run as a latent pair
(:mod:`fdistill.apps.hybrid_latent`): the teacher's first N EDM Heun steps in latent space (not DPM-Solver++), its
x0 re-noised in VP form to the student's recorded t_init, the student's recorded call, the VAE decoder; the prompt
box's text (any text) is both sides' prompt. Off, with a note, without a teacher.

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

Serving. Models load once at start (a missing or broken checkpoint is a :class:`DemoSetupError`, i.e.
:class:`fdistill.export.loading.CheckpointLoadError`, which
``main`` prints as one line and exits 2); the device is picked then (CUDA with bf16 autocast when present,
CPU float32 otherwise; weights are float32 either way, and on CUDA the stock pipelines' UNets hand their output back
in float32 so the schedulers' state stays float32) and shown in the header. Requests go through Gradio's queue
with a concurrency limit (``--concurrency``, default 2: on a small CPU more parallel jobs only split the cores) and
a bounded queue (``--max-queue``). Requests are not merged across users (Gradio ``batch=True``): one bad request
would fail the whole merged batch and a long teacher run would stall the student jobs batched with it; on a CPU
the one-step student is already cheap, and within a request all N images are one batch.

API. The ``generate`` endpoint (``gradio_client.Client(url).predict(..., api_name="/generate")``) takes
``class_name, prompt, seed, num_images, run_teacher, teacher_nfe, cfg_scale, hybrid, hybrid_steps, student_steps``
(the last three have defaults: off, 1, K) and returns ``(student_gallery, teacher_gallery, info_markdown,
seed_used)``; the hybrid gallery reaches the page through a ``gr.State`` (API clients see its latency in the info
text). The input list is the same for every
student, so client code does not change with the checkpoint: a class-conditional student ignores ``prompt``;
a text-to-image student (a ``StableDiffusionPipeline`` folder, or a pipeline whose config says
``text_conditional: true``) shows a prompt box instead of the class dropdown and ignores ``class_name``. Bad
input (a seed or count out of range, an unknown class, an empty prompt) is a ``gr.Error`` shown in the page; the
server keeps serving.

Offline by default: ``HF_HUB_OFFLINE=1`` and ``GRADIO_ANALYTICS_ENABLED=False`` are set (``setdefault``, so
the environment wins) before Gradio is imported; the page uses system fonts (no font CDN); ``share=False``;
the server binds 127.0.0.1 unless ``--host`` (or ``GRADIO_SERVER_NAME``, as on Spaces) says otherwise.

Modules: :mod:`~fdistill.apps.demo.backends` (loading and running each kind of student and teacher),
:mod:`~fdistill.apps.demo.engine` (validation, seeding, timing), :mod:`~fdistill.apps.demo.ui` (the page),
:mod:`~fdistill.apps.demo.cache` (the PNG cache sweep), :mod:`~fdistill.apps.demo.cli` (``build_parser``, ``main``).
The teacher's CFG is docs/math.md §1.2 (:func:`fdistill.core.guidance.combine`).
"""

from __future__ import annotations

import os

# before anything imports gradio or huggingface_hub (setdefault: the environment wins)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from fdistill.apps.demo.backends import (  # noqa: E402
    DEFAULT_STUDENT,
    DEFAULT_TEACHER,
    EDM_SAMPLER,
    SD_SAMPLER,
    STUDENT_ENV,
    TEACHER_ENV,
    recorded_teacher,
    resolve_checkpoint,
)
from fdistill.apps.demo.cache import remove_empty_cache_dirs, sweep_cache  # noqa: E402
from fdistill.apps.demo.cli import build_parser, main  # noqa: E402
from fdistill.apps.demo.engine import (  # noqa: E402
    ALL_CLASSES,
    DEFAULT_NFE,
    MAX_CFG,
    MAX_HYBRID_STEPS,
    MAX_IMAGES,
    MAX_NFE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    NUM_EXAMPLES,
    DemoEngine,
    DemoSetupError,
    GenerationResult,
    example_prompts,
)
from fdistill.apps.demo.ui import (  # noqa: E402
    DEFAULT_CACHE_TTL,
    create_demo,
    gallery,
    header_markdown,
    info_markdown,
    launch_demo,
    to_display,
)
from fdistill.export.loading import SD_LAYOUT, SD_PIPELINE  # noqa: E402

__all__ = [
    "ALL_CLASSES",
    "DEFAULT_CACHE_TTL",
    "DEFAULT_NFE",
    "DEFAULT_STUDENT",
    "DEFAULT_TEACHER",
    "EDM_SAMPLER",
    "MAX_CFG",
    "MAX_HYBRID_STEPS",
    "MAX_IMAGES",
    "MAX_NFE",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "NUM_EXAMPLES",
    "SD_LAYOUT",
    "SD_PIPELINE",
    "SD_SAMPLER",
    "STUDENT_ENV",
    "TEACHER_ENV",
    "DemoEngine",
    "DemoSetupError",
    "GenerationResult",
    "build_parser",
    "create_demo",
    "example_prompts",
    "gallery",
    "header_markdown",
    "info_markdown",
    "launch_demo",
    "main",
    "recorded_teacher",
    "remove_empty_cache_dirs",
    "resolve_checkpoint",
    "sweep_cache",
    "to_display",
]
