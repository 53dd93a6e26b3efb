"""The demo page: Gradio Blocks layout, the galleries and the info text (latencies, speed-up).

One request shows the one-step student's gallery (NFE 1; a K-step student's chosen steps, docs/math.md §2.10) next
to the teacher's (NFE = network calls; EDM Heun, Karras et al. 2022, or DPM-Solver++ for an SD teacher; CFG as
docs/math.md §1.2) and, when ticked, the hybrid's (the teacher's first N Heun steps, then the student: §2.11) for
the same seed; each PNG carries its provenance in an ``fdistill`` text chunk. The ``/generate`` endpoint returns
four values (the hybrid gallery reaches the page through a ``gr.State`` and a follow-up event, so API clients keep
their four outputs; the hybrid's latency is in the info text). Gradio is imported inside the functions that need
it, so importing the demo works without it.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from fdistill.apps.demo.backends import EDM_SAMPLER, SD_SAMPLER
from fdistill.apps.demo.cache import cache_sweeper
from fdistill.apps.demo.engine import (
    ALL_CLASSES,
    DEFAULT_NFE,
    MAX_CFG,
    MAX_HYBRID_STEPS,
    MAX_IMAGES,
    MAX_NFE,
    NUM_EXAMPLES,
    DemoEngine,
    GenerationResult,
)
from fdistill.core.sampling import heun_steps_for_nfe
from fdistill.export.loading import SD_PIPELINE, one_line

if TYPE_CHECKING:
    import gradio as gr

__all__ = ["create_demo", "gallery", "header_markdown", "info_markdown", "launch_demo", "to_display"]

log = logging.getLogger("fdistill.apps.demo")

DEFAULT_CACHE_TTL = 3600  # seconds a result PNG stays in Gradio's cache (swept every half of it)
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Helvetica", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
CSS = """
#student-gallery img, #teacher-gallery img, #hybrid-gallery img { image-rendering: pixelated; }
"""


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
    h = r.hybrid
    images = {"student": r.student, "teacher": r.teacher, "hybrid": None if h is None else h.images}[which]
    if images is None:
        return []
    if which == "student":
        model: dict[str, Any] = {"model": _student_name(r.student_steps, r.student_k), "nfe": r.student_steps}
    elif which == "teacher":
        model = {
            "model": f"teacher ({r.teacher_sampler or EDM_SAMPLER})",
            "nfe": r.teacher_nfe,
            "cfg_scale": r.cfg_scale,
        }
    else:
        model = {"model": f"hybrid ({r.hybrid_steps} teacher steps of NFE {r.hybrid_nfe}, then the student)",
                 "nfe": h.teacher_nfe + h.student_nfe, "teacher_nfe": h.teacher_nfe, "student_nfe": h.student_nfe,
                 "cfg_scale": r.cfg_scale}  # fmt: skip
    n = images.shape[0]
    meta = [
        {**model, "seed": r.seed, "num_images": n, "index": i, "class": r.names[i], "request": request_id}
        for i in range(n)
    ]
    return list(zip(to_display(images, scale, meta), r.captions, strict=True))


def _student_name(steps: int, k: int) -> str:
    """``one-step student``, or ``K-step student (n of K steps)``."""
    return "one-step student" if k == 1 else f"{k}-step student ({steps} of {k} steps)"


def _hybrid_lines(r: GenerationResult, engine: DemoEngine) -> tuple[str, str]:
    """The hybrid's latency-table row and the line that says where it handed over (docs/math.md §2.11)."""
    h, n, big_n = r.hybrid, r.student.shape[0], r.hybrid_steps
    row = (
        f"| hybrid (teacher's first {big_n} {EDM_SAMPLER} step{'s' * (big_n > 1)}, then the student) | "
        f"{h.teacher_nfe} + {h.student_nfe} = {h.teacher_nfe + h.student_nfe} | {r.hybrid_ms:.1f} ms | "
        f"{r.hybrid_ms / n:.2f} ms |"
    )
    if h.student_start is None:
        return row, f"Hybrid: {big_n} steps are the teacher's whole NFE-{r.hybrid_nfe} schedule; the student is unused."
    sigma_j = engine.backend.hybrid_sigmas[h.student_start]
    latent = (
        f" In latent space: the teacher's steps are {EDM_SAMPLER} steps (its gallery's sampler is {SD_SAMPLER}), the "
        "student's recorded call at its t_init sees x_vp = sqrt(abar) x0 + sqrt(1 - abar) eps."
        if engine.sd
        else ""
    )
    return row, (
        f"Hybrid: the teacher's first {big_n} of the {heun_steps_for_nfe(r.hybrid_nfe)} Heun steps of its "
        f"NFE-{r.hybrid_nfe} schedule (from sigma_max z, CFG "
        f"{'off' if r.cfg_scale == 1.0 or not engine.guidable else f'w = {r.cfg_scale:g}'}) reach sigma "
        f"{h.handover_sigma:.3g}; its x0 prediction (one more teacher call) is re-noised to student level "
        f"{h.student_start + 1}/{r.student_steps} (sigma {sigma_j:.3g}) and the student takes {h.student_nfe} "
        f"step{'s' * (h.student_nfe > 1)}. NFE = teacher calls + student calls.{latent}"
    )


def info_markdown(r: GenerationResult, engine: DemoEngine) -> str:
    """The seed, the latency table (NFE = network calls) and the speed-up of one request."""
    n = r.student.shape[0]
    rows = [
        "| model | NFE | latency | per image |",
        "| --- | --- | --- | --- |",
        f"| {_student_name(r.student_steps, r.student_k)} | {r.student_steps} | {r.student_ms:.1f} ms | "
        f"{r.student_ms / n:.2f} ms |",
    ]
    hybrid_row, hybrid_note = _hybrid_lines(r, engine) if r.hybrid is not None else ("", "")
    if hybrid_row:
        rows.append(hybrid_row)
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
    if hybrid_note:
        lines += ["", hybrid_note]
    return "\n".join(lines)


def header_markdown(engine: DemoEngine) -> str:
    card = engine.card
    k = engine.num_steps
    steps = "" if k == 1 else f" ({k} steps at sigmas {', '.join(f'{x:g}' for x in engine.student_sigmas)})"
    what = [f"NFE {k}{steps}, {engine.image_shape[1]}x{engine.image_shape[2]}"]
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


def _handler(engine: DemoEngine, display_scale: int) -> Callable[..., tuple[list, list, str, int]]:
    """The ``generate`` endpoint: the engine's request, its galleries and info text; errors become ``gr.Error``."""
    import gradio as gr  # optional dependency: importing the demo works without it

    def generate(
        class_name: str | None,
        prompt: str | None,
        seed: float | None,
        num_images: float,
        run_teacher: bool,
        teacher_nfe: float,
        cfg_scale: float,
        hybrid: bool = False,
        hybrid_steps: float = 1,
        student_steps: float | None = None,
    ) -> tuple[list, list, str, int, list]:
        """Generate images with the one-step student and, optionally, the teacher on the same seed and labels.

        Args:
            class_name: a class name of the student, or "All classes (cycled)"; ignored by text-conditional students.
            prompt: text prompt (any text); used only by text-conditional students.
            seed: -1 for a random seed, else 0..4294967295; the seed used is returned.
            num_images: number of images, 1..16.
            run_teacher: also sample the multi-step teacher for the same seed and labels (or prompt).
            teacher_nfe: teacher network evaluations, 1..79 (EDM Heun; DPM-Solver++ steps for an SD teacher).
            cfg_scale: teacher classifier-free guidance scale, 0..10 (1 = off; 1..10 for an SD teacher).
            hybrid: also sample the hybrid: the teacher's first hybrid_steps Heun steps (of its teacher_nfe schedule,
                at cfg_scale; an SD teacher's in latent space), then the student (any prompt).
            hybrid_steps: the hybrid's teacher steps N, 1..4 (at most the teacher's Heun steps at teacher_nfe).
            student_steps: the student's steps, 1..K (K-step students; 1 for a one-step student; None: K).

        Returns:
            the student gallery, the teacher gallery (empty unless run_teacher), the info Markdown, the seed used
            (API clients get these four) and the hybrid gallery (empty unless hybrid; to the page's ``gr.State``).
        """
        try:
            if hybrid and _is_zero(hybrid_steps):  # ticked: 0 is not "off" but a bad N
                raise ValueError(f"teacher steps (hybrid) must be in 1..{MAX_HYBRID_STEPS}, got 0")
            r = engine.generate(class_name, prompt, seed, num_images, run_teacher, teacher_nfe, cfg_scale,
                                hybrid_steps if hybrid else 0, student_steps)  # fmt: skip
        except ValueError as e:
            raise gr.Error(str(e)) from None
        except Exception as e:  # never let one request take the page down; the traceback goes to the server log
            log.exception("generation failed")
            raise gr.Error(f"generation failed: {one_line(e)}") from None
        request_id = uuid.uuid4().hex[:12]
        student = gallery(r, "student", display_scale, request_id)
        teacher = gallery(r, "teacher", display_scale, request_id)
        hybrid_gallery = gallery(r, "hybrid", display_scale, request_id)
        return student, teacher, info_markdown(r, engine), r.seed, hybrid_gallery

    return generate


def _is_zero(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


def _step_controls(engine: DemoEngine) -> list[Any]:
    """The hybrid checkbox, its teacher-steps slider (off without a teacher, with a note saying why) and the
    student-steps slider (shown for a K-step student only; fixed at 1 otherwise)."""
    import gradio as gr  # optional dependency: importing the demo works without it

    note, k = engine.hybrid_note, engine.num_steps
    hybrid = gr.Checkbox(
        False,
        label="Teacher's first step (hybrid sampling)",
        interactive=not note,
        elem_id="hybrid",
        info=f"off: {note}"
        if note
        else f"the teacher takes the first N {EDM_SAMPLER} steps{' in latent space' if engine.sd else ''} (its NFE "
        "and CFG), the student finishes from its x0 prediction; shown in a third gallery",
    )
    hybrid_steps = gr.Slider(
        1, MAX_HYBRID_STEPS, value=1, step=1, label="Teacher steps N", interactive=not note, elem_id="hybrid-steps"
    )
    sigmas = ", ".join(f"{s:g}" for s in engine.student_sigmas)
    student_steps = gr.Slider(
        1,
        max(k, 2),  # a slider needs a range; hidden (and fixed at 1) for a one-step student
        value=k,
        step=1,
        label=f"Student steps (of its {k}, at sigmas {sigmas})" if k > 1 else "Student steps",
        visible=k > 1,
        elem_id="student-steps",
    )
    return [hybrid, hybrid_steps, student_steps]


def _controls(engine: DemoEngine) -> tuple[list[Any], Any, Any]:
    """The left column's inputs (in the endpoint's order), the Generate button and the seed-used field."""
    import gradio as gr  # optional dependency: importing the demo works without it

    conditional, has_teacher = bool(engine.num_classes), engine.teacher is not None
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
    steps = _step_controls(engine)
    button = gr.Button("Generate", variant="primary", elem_id="generate")
    seed_used = gr.Number(label="Seed used", precision=0, interactive=False, elem_id="seed-used")
    return [class_name, prompt, seed, num_images, run_teacher, teacher_nfe, cfg_scale, *steps], button, seed_used


def _galleries(engine: DemoEngine) -> tuple[Any, Any, Any, Any]:
    """The right column: the student's gallery, the hybrid's, the teacher's and the info text."""
    import gradio as gr  # optional dependency: importing the demo works without it

    gallery_kw: dict[str, Any] = {
        "columns": 8,
        "height": 300,
        "object_fit": "contain",
        "format": "png",
        "allow_preview": True,
        "preview": False,
    }
    k = engine.num_steps
    label = "One-step student (NFE 1)" if k == 1 else f"{k}-step student (NFE = the steps chosen)"
    student_gallery = gr.Gallery(label=label, elem_id="student-gallery", **gallery_kw)
    hybrid_gallery = gr.Gallery(
        label="Hybrid: the teacher's first N steps, then the student",
        elem_id="hybrid-gallery",
        visible=not engine.hybrid_note,
        **gallery_kw,
    )
    teacher_gallery = gr.Gallery(
        label="Teacher", elem_id="teacher-gallery", visible=engine.teacher is not None, **gallery_kw
    )
    info = gr.Markdown(label="Info", elem_id="info")
    return student_gallery, hybrid_gallery, teacher_gallery, info


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
    :func:`launch_demo` adds :func:`~fdistill.apps.demo.cache.sweep_cache` every ``cache_ttl / 4`` seconds, which
    keeps going where Gradio 6's sweep stops and removes the folders it leaves. A file then lives at most about
    1.25 ``cache_ttl``, and the cache holds what that long of requests writes.

    Raises :class:`~fdistill.export.loading.CheckpointLoadError` (``DemoSetupError``; one-line message) for a
    missing/broken checkpoint or an unusable device. The engine is kept as ``demo.engine``. Launch with
    :func:`launch_demo` (theme, CSS, ``share=False``) or ``demo.launch(...)``."""
    if isinstance(cache_ttl, bool) or not isinstance(cache_ttl, int) or cache_ttl < 1:
        raise ValueError(f"cache_ttl must be an integer number of seconds >= 1, got {cache_ttl!r}")
    engine = DemoEngine(student_path, teacher_path, device, load_teacher=load_teacher)
    import gradio as gr  # optional dependency: importing the demo works without it

    # every output file is unique (see `gallery`), so bound the cache (see `sweep_cache`, run by `launch_demo`)
    delete_cache = (max(1, cache_ttl // 2), cache_ttl)
    with gr.Blocks(title="fdistill one-step demo", analytics_enabled=False, delete_cache=delete_cache) as demo:
        gr.Markdown(header_markdown(engine), elem_id="header")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                inputs, button, seed_used = _controls(engine)
            with gr.Column(scale=3):
                student_gallery, hybrid_gallery, teacher_gallery, info = _galleries(engine)
        # the hybrid gallery goes through a State, which API clients do not see: /generate keeps its four outputs
        hybrid_state = gr.State(None)
        button.click(
            _handler(engine, display_scale),
            inputs=inputs,
            outputs=[student_gallery, teacher_gallery, info, seed_used, hybrid_state],
            api_name="generate",
        ).then(
            lambda g: (g, None), inputs=hybrid_state, outputs=[hybrid_gallery, hybrid_state], api_visibility="private"
        )
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue)
    demo.engine = engine
    return demo


def launch_demo(
    demo: gr.Blocks, host: str | None = None, port: int | None = None, **kwargs: Any
) -> tuple[Any, str, str]:
    """``demo.launch`` with this demo's defaults: ``share=False``, 127.0.0.1 (or ``$GRADIO_SERVER_NAME``), port
    7860 (or ``$GRADIO_SERVER_PORT``), system fonts (no font CDN), pixelated image scaling; ``kwargs`` override.

    With the page's ``delete_cache = (frequency, age)`` set (:func:`create_demo` sets it from ``cache_ttl``), the
    server also runs :func:`~fdistill.apps.demo.cache.sweep_cache` every ``frequency / 2`` seconds (the sweep
    Gradio's can stop doing, plus the empty folders it leaves), unless ``app_kwargs`` brings a lifespan of its own."""
    import gradio as gr  # optional dependency: importing the demo works without it

    if getattr(demo, "delete_cache", None):
        frequency, age = demo.delete_cache
        app_kwargs = dict(kwargs.get("app_kwargs") or {})
        app_kwargs.setdefault("lifespan", cache_sweeper(demo, int(frequency), int(age)))
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
