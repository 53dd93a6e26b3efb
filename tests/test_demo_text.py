"""The demo serving a text-to-image one-step student exported as a stock ``StableDiffusionPipeline`` folder
(:mod:`fdistill.export.stable_diffusion`) next to its SD-style latent teacher, with tiny random components built
here (no network).

The student is the exact call its ``fdistill_export.json`` records on the seed's noise ``z``; the teacher is the stock
pipeline with DPM-Solver++ 2M (trailing steps) on the same ``z``; any prompt text works; a teacher of other latents or
another text encoder is refused naming both folders; the page shows a prompt box with example prompts. The hybrid
(the teacher's first N EDM Heun steps in latent space, then the student) is the latent pair's ``hybrid_sample``.
"""

from __future__ import annotations

import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("gradio")

from fixtures import export_perturbed_student, save_tiny_latent_teacher  # noqa: E402

from fdistill.apps.demo import (  # noqa: E402
    NUM_EXAMPLES,
    SD_SAMPLER,
    DemoEngine,
    DemoSetupError,
    create_demo,
    info_markdown,
    main,
)
from fdistill.export.stable_diffusion import one_step_kwargs  # noqa: E402
from fdistill.teachers.latent import load_latent_teacher  # noqa: E402

PROMPTS = [f"{c} {thing}" for c in ("red", "blue") for thing in ("ball", "cat", "car", "sun", "hat", "cup")]
LATENT, IMAGE = (4, 8, 8), (3, 16, 16)  # save_tiny_latent_teacher: 8x8 latents, a 2-level VAE (x2)


def _load(folder: Path, prompts_file: Path):
    cfg = SimpleNamespace(path=str(folder), subfolder=None, dtype="float32", prompts_file=str(prompts_file))
    return load_latent_teacher(cfg)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("demo_text")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    save_tiny_latent_teacher(root / "teacher", seed=1)
    teacher = _load(root / "teacher", root / "prompts.txt")
    card = {"method": "dmd", "teacher": f"latent:{root / 'teacher'}"}  # as the trainer records it
    return export_perturbed_student(teacher, root / "student", card=card), root / "teacher"


@pytest.fixture(scope="module")
def engine(folders) -> DemoEngine:
    student, teacher = folders
    return DemoEngine(student, teacher, device="cpu")


def test_student_and_teacher_images_for_any_prompt(engine):
    assert engine.sd and engine.text_conditional and engine.latent_shape == LATENT and engine.image_shape == IMAGE
    assert engine.class_choices == [] and engine.teacher is not None
    for prompt in ("a", "a zebra on ice, not in prompts.txt!"):
        r = engine.generate(None, prompt, seed=5, num_images=3, run_teacher=True, teacher_nfe=2, cfg_scale=2.0)
        for images in (r.student, r.teacher):
            assert images.shape == (3, *IMAGE) and images.dtype == torch.float32
            assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
        assert r.teacher_nfe == 2 and r.teacher_sampler == SD_SAMPLER and prompt in r.subject
    info = info_markdown(r, engine)
    assert f"teacher ({SD_SAMPLER}, CFG w = 2, 2 passes per NFE) | 2 |" in info and "UNet calls" in info


def test_same_seed_same_images_and_other_seeds_differ(engine):
    a = engine.generate(None, "red cat", seed=7, num_images=2, run_teacher=True, teacher_nfe=3, cfg_scale=1.0)
    b = engine.generate(None, "red cat", seed=7, num_images=2, run_teacher=True, teacher_nfe=3, cfg_scale=1.0)
    c = engine.generate(None, "red cat", seed=8, num_images=2, run_teacher=True, teacher_nfe=3, cfg_scale=1.0)
    assert torch.equal(a.student, b.student) and torch.equal(a.teacher, b.teacher)
    assert not torch.allclose(a.student, c.student) and not torch.allclose(a.teacher, c.teacher)
    assert not torch.allclose(a.student[0], a.student[1])  # one z per image


def test_student_and_teacher_are_the_stock_calls_on_the_same_noise(engine, folders):
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, StableDiffusionPipeline

    student_dir, teacher_dir = folders
    seed, n, prompt = 11, 3, "blue sun"
    z = torch.randn((n, *LATENT), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(engine.initial_noise(n, seed), z)
    r = engine.generate(None, prompt, seed=seed, num_images=n, run_teacher=True, teacher_nfe=4, cfg_scale=3.0)

    student = DiffusionPipeline.from_pretrained(student_dir)  # the export's documented usage
    call = one_step_kwargs(student_dir)
    assert call == {"num_inference_steps": 1, "timesteps": [399], "guidance_scale": 0.0} == engine.student_call
    with torch.no_grad():
        ref = student([prompt] * n, latents=z.clone(), output_type="pt", **call).images
    torch.testing.assert_close(r.student, ref * 2 - 1, rtol=0, atol=1e-6)

    teacher = StableDiffusionPipeline.from_pretrained(teacher_dir, safety_checker=None, requires_safety_checker=False)
    teacher.scheduler = DPMSolverMultistepScheduler.from_config(teacher.scheduler.config, timestep_spacing="trailing")
    with torch.no_grad():
        ref = teacher([prompt] * n, latents=z.clone(), num_inference_steps=4, guidance_scale=3.0, output_type="pt")
    torch.testing.assert_close(r.teacher, ref.images * 2 - 1, rtol=0, atol=1e-6)
    assert teacher.scheduler.timesteps[0] == 999  # the teacher starts from pure noise, at t = T-1


def test_bad_prompt_and_guidance_are_value_errors(engine):
    for prompt in ("", "   ", None):
        with pytest.raises(ValueError, match="prompt is empty"):
            engine.generate(None, prompt, seed=0, num_images=1)
    with pytest.raises(ValueError, match="characters long"):
        engine.generate(None, "a" * 2000, seed=0, num_images=1)
    with pytest.raises(ValueError, match=r"CFG scale must be in 1\.\.10 .*guides only above 1"):
        engine.generate(None, "a", seed=0, num_images=1, run_teacher=True, teacher_nfe=2, cfg_scale=0.5)


def test_hybrid_is_on_and_the_student_has_one_step(engine, folders):
    """The SD pair's hybrid is offered (hybrid_sample on the latent pair, handing over at t_init); an SD student is
    one step."""
    assert engine.num_steps == 1 and engine.student_sigmas == [] and engine.hybrid_note == ""
    sigma_init = _load(folders[1], folders[0] / "prompts.txt").sigma_at(399)
    assert engine.backend.hybrid_sigmas == pytest.approx([sigma_init])
    r = engine.generate(None, "a", seed=0, num_images=1, student_steps=1)
    assert r.student_steps == 1 and r.hybrid is None
    assert torch.equal(r.student, engine.generate(None, "a", seed=0, num_images=1).student)
    with pytest.raises(ValueError, match=r"student steps must be in 1\.\.1"):
        engine.generate(None, "a", seed=0, num_images=1, student_steps=2)


def test_sd_hybrid_at_zero_teacher_steps_is_the_student(engine):
    """N = 0: hybrid_sample's student chain on the seed's z is the recorded stock call (to float rounding)."""
    r = engine.generate(None, "blue sun", seed=6, num_images=3)
    h0 = engine.backend.run_hybrid(3, None, 6, 0, 3, 1.0, prompt="blue sun")
    torch.testing.assert_close(h0.images, r.student, rtol=0, atol=1e-4)
    assert h0.teacher_nfe == 0 and h0.student_nfe == 1 and h0.student_start == 0 and h0.latents.shape == (3, *LATENT)


@pytest.mark.parametrize("prompt", ["blue sun", "a zebra on ice, not in prompts.txt!"])
def test_sd_hybrid_gallery_is_timed_and_is_fdistill_samples_hybrid(engine, folders, prompt):
    """N = 1: a third gallery, timed, with its NFE in the info; for a listed prompt it is exactly ``hybrid_sample``
    on the folders loaded as the latent pair (``fdistill sample --teacher``), for any other prompt it runs too."""
    from fdistill.apps.demo import gallery
    from fdistill.apps.hybrid_latent import LatentStudent
    from fdistill.apps.sample import hybrid_sample

    student_dir, teacher_dir = folders
    r = engine.generate(None, prompt, seed=5, num_images=2, teacher_nfe=5, cfg_scale=2.0, hybrid_steps=1)
    h = r.hybrid
    assert r.hybrid_ms > 0 and r.hybrid_steps == 1 and r.hybrid_nfe == 5 and r.teacher is None
    assert h.teacher_nfe == 3 and h.student_nfe == 1 and h.student_start == 0 and h.images.shape == (2, *IMAGE)
    assert h.images.min() >= -1 and h.images.max() <= 1 and torch.isfinite(h.images).all()
    assert not torch.allclose(h.images, r.student)
    info = info_markdown(r, engine)
    assert f"| 3 + 1 = 4 | {r.hybrid_ms:.1f} ms |" in info and "In latent space" in info and "CFG w = 2" in info
    tiles = gallery(r, "hybrid", 1, "req")
    assert len(tiles) == 2 and json.loads(tiles[0][0].info["fdistill"])["nfe"] == 4
    if prompt in PROMPTS:
        teacher = _load(teacher_dir, student_dir.parent / "prompts.txt")
        ref = hybrid_sample(LatentStudent.from_folder(student_dir), teacher, 2, 1, nfe=5, class_labels=prompt,
                            seed=5, guidance=2.0)  # fmt: skip
        torch.testing.assert_close(h.images, ref.images, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="at most 1"):  # teacher NFE 2 is one Heun step
        engine.generate(None, prompt, seed=5, num_images=1, teacher_nfe=2, cfg_scale=1.0, hybrid_steps=2)


def test_concurrent_requests_match_sequential_ones(engine):
    jobs = [(s, nfe, w) for s in (1, 2) for nfe, w in ((2, 1.0), (3, 2.5), (5, 4.0))]

    def one(job):
        seed, nfe, w = job
        r = engine.generate(None, "red hat", seed=seed, num_images=2, run_teacher=True, teacher_nfe=nfe, cfg_scale=w)
        return r.student, r.teacher

    expected = [one(j) for j in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(one, jobs))
    for (s0, t0), (s1, t1) in zip(expected, got, strict=True):
        assert torch.equal(s0, s1) and torch.equal(t0, t1)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: save_tiny_latent_teacher(p, latent_size=4), "latents"),
        (lambda p: save_tiny_latent_teacher(p, hidden=8), "hidden size 8"),
        (lambda p: p.mkdir() or (p / "config.json").write_text("{}"), "EDMUNet folder"),
        (lambda p: None, "no Stable-Diffusion folder"),
    ],
)
def test_mismatched_teacher_is_a_setup_error_naming_both_folders(folders, tmp_path, make, message):
    student, _ = folders
    other = tmp_path / "other_teacher"
    make(other)
    with pytest.raises(DemoSetupError, match=message) as e:
        DemoEngine(student, other, device="cpu")
    assert str(other) in str(e.value) and str(student) in str(e.value) and "\n" not in str(e.value)


def test_default_teacher_is_the_one_the_card_records(folders, tmp_path, monkeypatch):
    student, teacher = folders
    monkeypatch.delenv("FDISTILL_TEACHER", raising=False)
    engine = DemoEngine(student, device="cpu")
    assert engine.teacher is not None and engine.teacher_path == teacher and SD_SAMPLER in engine.teacher_note

    def with_card(name: str, recorded: str | None) -> Path:
        copy = shutil.copytree(student, tmp_path / name)
        card = json.loads((copy / "card.json").read_text())
        card.pop("teacher")
        if recorded is not None:
            card["teacher"] = recorded
        (copy / "card.json").write_text(json.dumps(card))
        return copy

    engine = DemoEngine(with_card("gone", f"latent:{tmp_path / 'nowhere'}"), device="cpu")
    assert engine.teacher is None and "none found" in engine.teacher_note and "nowhere" in engine.teacher_note
    assert DemoEngine(with_card("unrecorded", None), device="cpu").teacher_note.startswith("none recorded")
    small = save_tiny_latent_teacher(tmp_path / "small_teacher", latent_size=4)  # another student's teacher
    engine = DemoEngine(with_card("other", f"latent:{small}"), device="cpu")
    assert engine.teacher is None and engine.teacher_note.startswith("off: the recorded teacher")
    with pytest.raises(ValueError, match="no teacher"):
        engine.generate(None, "a", seed=0, num_images=1, run_teacher=True)


def test_student_without_its_export_record_is_a_one_line_error(folders, tmp_path, capsys):
    student, _ = folders
    broken = shutil.copytree(student, tmp_path / "no_record")
    (broken / "fdistill_export.json").unlink()
    assert main(["--checkpoint", str(broken), "--no-teacher"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(broken) in err and "fdistill_export.json" in err and "t_init" in err


def test_folder_without_the_packaged_text_encoder_weights_loads(folders, engine, tmp_path, monkeypatch):
    """A shipped folder leaves out the all-MiniLM-L6-v2 weights (the installed package's): loaded from there."""
    import fdistill.nets.text_encoders as te

    student, _ = folders
    packaged = shutil.copytree(student / "text_encoder", tmp_path / "packaged")  # stands in for the package
    monkeypatch.setattr(te, "minilm_path", lambda: packaged)
    stripped = shutil.copytree(student, tmp_path / "stripped")
    assert te.strip_packaged_text_encoder(stripped) and not (stripped / "text_encoder" / te.WEIGHTS_FILE).exists()
    r = DemoEngine(stripped, device="cpu", load_teacher=False).generate(None, "red cup", seed=4, num_images=2)
    assert torch.equal(r.student, engine.generate(None, "red cup", seed=4, num_images=2).student)


def test_page_has_a_prompt_box_with_example_prompts_and_serves_them(folders):
    gradio_client = pytest.importorskip("gradio_client")
    from test_demo import free_port

    from fdistill.apps.demo import launch_demo

    student, teacher = folders
    demo = create_demo(student, teacher, device="cpu", display_scale=2)
    blocks = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert blocks["prompt"].visible is True and blocks["class"].visible is False
    examples = [row[0] for row in blocks["examples"].samples]
    assert len(examples) == NUM_EXAMPLES and set(examples) <= set(PROMPTS) and examples[0] == PROMPTS[0]
    assert blocks["cfg-scale"].minimum == 1.0 and blocks["cfg-scale"].interactive is not False
    assert "DPM-Solver++" in blocks["teacher-nfe"].label
    assert blocks["hybrid"].interactive is not False and "latent space" in blocks["hybrid"].info
    assert blocks["hybrid-steps"].interactive is not False and blocks["hybrid-gallery"].visible is True
    assert blocks["student-steps"].visible is False
    _, url, _ = launch_demo(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = gradio_client.Client(url, verbose=False)
        student_gallery, teacher_gallery, info, seed = client.predict(
            None, "any text at all", 3, 2, True, 2, 1.5, api_name="/generate"
        )
        assert len(student_gallery) == 2 and len(teacher_gallery) == 2 and seed == 3
        assert "any text at all" in info and "Speed-up" in info
        *_, info, _ = client.predict(None, "any text", 3, 2, False, 3, 1.0, True, 1, api_name="/generate")
        assert "hybrid (teacher's first 1 EDM Heun step" in info and "| 3 + 1 = 4 |" in info
        with pytest.raises(gradio_client.exceptions.AppError, match="prompt is empty"):
            client.predict(None, " ", 3, 2, False, 2, 1.0, api_name="/generate")
    finally:
        demo.close()


def test_help_shows_the_text_to_image_usage(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "fdistill demo --checkpoint checkpoints/emoji_student --teacher checkpoints/emoji_teacher" in out
    assert re.search(r"StableDiffusionPipeline\s+folder", out) and "checkpoints/fmnist_student" in out
