"""The Gradio demo through its public API: a tiny student and teacher served on localhost, called with gradio_client.

One server for the module (starting Gradio costs seconds); every test talks to it over HTTP like a user's client.
"""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from PIL import Image  # noqa: E402

from fdistill.apps.demo import (  # noqa: E402
    ALL_CLASSES,
    DemoEngine,
    DemoSetupError,
    create_demo,
    gallery,
    info_markdown,
    launch_demo,
    main,
)
from fdistill.apps.sample import hybrid_sample  # noqa: E402
from fdistill.export.pipeline import OneStepOutput, OneStepPipeline, export_student  # noqa: E402
from fdistill.nets.unet import EDMUNet  # noqa: E402
from fdistill.teachers.diffusers import UNetTeacher  # noqa: E402

SIZE, SCALE, NAMES = 8, 4, ["alpha", "beta", "gamma"]


def tiny_unet(num_classes: int = 3, seed: int = 0) -> EDMUNet:
    torch.manual_seed(seed)
    return EDMUNet(sample_size=SIZE, block_out_channels=(8, 16), attention_levels=(), norm_num_groups=4,
                   num_classes=num_classes, attention_head_dim=8)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("demo_ckpt")
    export_student(tiny_unet(), 2.5, root / "student", class_names=NAMES, card={"method": "dmd", "NFE": 1})
    tiny_unet(seed=1).save_pretrained(root / "teacher")
    return root / "student", root / "teacher"


@pytest.fixture(scope="module")
def server(checkpoints):
    student, teacher = checkpoints
    demo = create_demo(student_path=student, teacher_path=teacher, device="cpu", display_scale=SCALE)
    _, url, _ = launch_demo(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    assert url.startswith("http://127.0.0.1:")
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server[1], verbose=False)


def call(client, **kw):
    args = {"class_name": "beta", "seed": 0, "num_images": 4, "run_teacher": False, "teacher_nfe": 3, "cfg_scale": 1.0}
    args.update(kw)
    return client.predict(**args, api_name="/generate")


def pixels(gallery: list[dict]) -> list[np.ndarray]:
    return [np.asarray(Image.open(item["image"])) for item in gallery]


def test_generate_returns_the_requested_images(client):
    student, teacher, info, seed_used = call(client, num_images=5, seed=11)
    images = pixels(student)
    assert len(images) == 5 and teacher == [] and seed_used == 11
    assert all(im.shape[:2] == (SIZE * SCALE, SIZE * SCALE) for im in images)  # upscaled for display
    # nearest upscaling: each 4x4 block is one source pixel
    assert all((im[::SCALE, ::SCALE].repeat(SCALE, 0).repeat(SCALE, 1) == im).all() for im in images)
    assert [item["caption"] for item in student] == [None] * 5  # one class: named once, in the info line
    assert "Seed used: 11" in info and "of beta" in info and "one-step student" in info and "ms" in info
    meta = json.loads(Image.open(student[2]["image"]).info["fdistill"])  # provenance travels with the file
    assert meta["seed"] == 11 and meta["index"] == 2 and meta["class"] == "beta" and meta["nfe"] == 1


def test_same_seed_same_images_and_random_seed_is_reported(client):
    a, b = pixels(call(client, seed=7)[0]), pixels(call(client, seed=7)[0])
    c = pixels(call(client, seed=8)[0])
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    gallery, _, info, used = call(client, seed=-1, num_images=2)
    assert 0 <= used < 2**32 and f"Seed used: {used}" in info
    again = call(client, seed=used, num_images=2)[0]
    assert all(np.array_equal(x, y) for x, y in zip(pixels(gallery), pixels(again), strict=True))


def test_teacher_runs_on_the_same_seed_and_labels(client):
    student, teacher, info, _ = call(client, class_name=ALL_CLASSES, num_images=4, run_teacher=True, cfg_scale=2.0)
    assert len(pixels(teacher)) == 4 and len(student) == 4
    assert [t["caption"] for t in teacher] == [s["caption"] for s in student] == ["alpha", "beta", "gamma", "alpha"]
    assert "Speed-up" in info and "teacher" in info and "| 3 |" in info  # NFE 3 in the latency table


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"seed": -2}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"num_images": 0}, "0"),
        ({"num_images": 17}, "17"),
        ({"class_name": "delta"}, "delta"),
        ({"run_teacher": True, "teacher_nfe": 80}, "80"),
        ({"hybrid": True, "hybrid_steps": 5}, "5"),  # the slider's bound (the engine's check says the same)
        ({"hybrid": True, "hybrid_steps": 0}, "0"),
        ({"hybrid": True, "hybrid_steps": 3}, "at most 2"),  # teacher NFE 3 is 2 Heun steps
        ({"student_steps": 2}, "student steps"),  # a one-step student
    ],
)
def test_bad_input_is_an_error_and_the_server_keeps_serving(client, bad, message):
    with pytest.raises(gradio_client.exceptions.AppError, match=message):
        call(client, **bad)
    assert len(call(client, num_images=1)[0]) == 1


def test_hybrid_over_the_api_keeps_four_outputs_and_reports_its_latency(client):
    student, teacher, info, seed_used = call(client, seed=9, hybrid=True, hybrid_steps=1, student_steps=1)
    assert len(student) == 4 and teacher == [] and seed_used == 9
    assert "hybrid (teacher's first 1 EDM Heun step" in info and "| 3 + 1 = 4 |" in info and "re-noised" in info
    again = call(client, seed=9)[0]  # the hybrid leaves the student's own gallery as it is
    assert all(np.array_equal(x, y) for x, y in zip(pixels(student), pixels(again), strict=True))
    # a client of the old seven inputs still works (the new ones have defaults)
    assert len(client.predict("beta", "", 1, 2, False, 3, 1.0, api_name="/generate")[0]) == 2


def test_twenty_concurrent_requests_all_succeed(server, client):
    url = server[1]
    expected = pixels(call(client, seed=123, num_images=3)[0])

    def one(i: int):
        c = gradio_client.Client(url, verbose=False)  # one client (session) per thread, like separate users
        if i % 5 == 0:  # the same request as `expected`, computed amid the others
            return call(c, seed=123, num_images=3)
        return call(c, seed=i, num_images=1 + i % 4, class_name=NAMES[i % 3])

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    assert [len(r[0]) for r in results] == [3 if i % 5 == 0 else 1 + i % 4 for i in range(20)]
    assert [r[3] for r in results] == [123 if i % 5 == 0 else i for i in range(20)]
    for i in range(0, 20, 5):
        assert all(np.array_equal(x, y) for x, y in zip(pixels(results[i][0]), expected, strict=True))


def test_page_header_names_device_and_checkpoints(server, checkpoints):
    demo, _ = server
    header = demo.engine.device_name + " " + demo.engine.dtype_name
    assert "CPU" in header and "float32" in header
    assert demo.engine.teacher is not None and demo.engine.class_choices == [*NAMES, ALL_CLASSES]
    blocks = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert blocks["hybrid"].interactive is not False and blocks["hybrid-steps"].maximum == 4
    assert blocks["hybrid-gallery"].visible is True and blocks["student-steps"].visible is False  # one-step


# -- hybrid sampling and K-step students, through the engine


def test_hybrid_is_the_student_at_zero_teacher_steps_and_reports_its_latency(checkpoints):
    student_dir, teacher_dir = checkpoints
    engine = DemoEngine(student_dir, teacher_dir, device="cpu")
    r0 = engine.generate("gamma", seed=5, num_images=3, hybrid_steps=0)
    assert r0.hybrid is None and r0.hybrid_ms is None and "hybrid" not in info_markdown(r0, engine)
    h0 = engine.backend.run_hybrid(3, [2] * 3, 5, 0, 3, 1.0)
    assert torch.equal(h0.images, r0.student) and h0.teacher_nfe == 0 and h0.student_nfe == 1

    r = engine.generate("gamma", seed=5, num_images=3, hybrid_steps=1, teacher_nfe=3, cfg_scale=2.0)
    assert torch.equal(r.student, r0.student) and r.teacher is None and r.hybrid.images.shape == r.student.shape
    assert r.hybrid_ms > 0 and r.hybrid.teacher_nfe == 3 and r.hybrid.student_nfe == 1 and r.hybrid_steps == 1
    assert not torch.equal(r.hybrid.images, r.student)
    ref = hybrid_sample(OneStepPipeline.from_pretrained(student_dir), UNetTeacher.from_pretrained(teacher_dir), 3, 1,
                        nfe=3, class_labels=[2] * 3, seed=5, guidance=2.0)  # fmt: skip
    torch.testing.assert_close(r.hybrid.images, ref.images)  # fdistill sample's hybrid, same seed: same z
    info = info_markdown(r, engine)
    assert (
        f"| 3 + 1 = 4 | {r.hybrid_ms:.1f} ms |" in info and f"| one-step student | 1 | {r.student_ms:.1f} ms |" in info
    )
    tiles = gallery(r, "hybrid", 1, "req")
    meta = json.loads(tiles[0][0].info["fdistill"])
    assert len(tiles) == 3 and meta["nfe"] == 4 and meta["teacher_nfe"] == 3 and meta["cfg_scale"] == 2.0

    with pytest.raises(ValueError, match=r"at most 2: teacher NFE 3 is 2 Heun"):
        engine.generate("gamma", seed=5, num_images=1, hybrid_steps=3, teacher_nfe=3)
    for bad in (5, -1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="teacher steps"):
            engine.generate("gamma", seed=5, num_images=1, hybrid_steps=bad)
    alone = DemoEngine(student_dir, device="cpu", load_teacher=False)
    with pytest.raises(ValueError, match="hybrid sampling is off: needs a teacher"):
        alone.generate("gamma", seed=5, num_images=1, hybrid_steps=1)


def test_k_step_student_takes_1_to_k_steps_and_refuses_k_plus_1(tmp_path, checkpoints):
    """A tiny 3-step student (exported as tests/test_few_step.py does): each step count is the pipeline's own."""
    _, teacher_dir = checkpoints
    export_student(tiny_unet(), 2.5, tmp_path / "k3", class_names=NAMES, student_sigmas=[2.5, 1.0, 0.3])
    engine = DemoEngine(tmp_path / "k3", teacher_dir, device="cpu")
    pipe = OneStepPipeline.from_pretrained(tmp_path / "k3")
    assert engine.num_steps == 3 and engine.student_sigmas == [2.5, 1.0, 0.3]
    for steps in (2.0, 1, 2, 3):
        r = engine.generate("alpha", seed=2, num_images=2, student_steps=steps)
        ref = pipe(batch_size=2, class_labels=[0, 0], seed=2, output_type="pt", num_inference_steps=int(steps)).images
        assert torch.equal(r.student, ref) and r.student_steps == int(steps) and r.student_k == 3
        assert torch.equal(engine.backend.run_hybrid(2, [0, 0], 2, 0, 35, 1.0, int(steps)).images, ref)  # N = 0
    assert torch.equal(engine.generate("alpha", seed=2, num_images=2).student, ref)  # default: all K steps
    for bad in (4, 0, 1.5, -1):
        with pytest.raises(ValueError, match=r"student steps must be .*1\.\.3"):
            engine.generate("alpha", seed=2, num_images=2, student_steps=bad)
    r = engine.generate("alpha", seed=2, num_images=2, student_steps=2, hybrid_steps=2, teacher_nfe=35)
    # 2 of 18 Heun steps end far above sigma_init: the hand-over is the student's first level, then its 2 steps
    assert r.hybrid.student_start == 0 and r.hybrid.student_nfe == 2 and r.hybrid.teacher_nfe == 5
    info = info_markdown(r, engine)
    assert f"| 3-step student (2 of 3 steps) | 2 | {r.student_ms:.1f} ms |" in info and "| 5 + 2 = 7 |" in info
    assert json.loads(gallery(r, "student", 1, "req")[0][0].info["fdistill"])["nfe"] == 2

    demo = create_demo(tmp_path / "k3", teacher_dir, device="cpu")
    blocks = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert blocks["student-steps"].visible is True and blocks["student-steps"].maximum == 3
    assert blocks["student-steps"].value == 3 and "2.5, 1, 0.3" in blocks["student-steps"].label


# -- start-up errors: one line, exit code 2, no server needed


def test_missing_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "no_such_student"
    assert main(["--checkpoint", str(missing), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and "fdistill distill configs/fmnist_" in err
    assert "Traceback" not in err


def test_broken_checkpoint_and_missing_teacher_are_one_line(tmp_path, checkpoints, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    assert main(["--checkpoint", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(broken) in err
    student, _ = checkpoints
    assert main(["--checkpoint", str(student), "--teacher", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "nope") in err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--checkpoint", "--teacher", "--host", "--port", "--device", "--concurrency", "FDISTILL_STUDENT"):
        assert opt in out
    assert "127.0.0.1" in out and "7860" in out and "auto" in out


# -- the engine alone: class-free students and the text-conditional switch


def test_unconditional_student_and_env_var(tmp_path, monkeypatch):
    export_student(tiny_unet(num_classes=0), 2.5, tmp_path / "u")
    monkeypatch.setenv("FDISTILL_STUDENT", str(tmp_path / "u"))
    engine = DemoEngine(device="cpu", load_teacher=False)
    assert engine.student_path == tmp_path / "u" and engine.class_choices == []
    r = engine.generate(None, "", seed=3, num_images=2)
    assert r.student.shape == (2, 1, SIZE, SIZE) and r.seed == 3
    with pytest.raises(ValueError, match="no teacher"):
        engine.generate(None, "", seed=3, num_images=2, run_teacher=True)


def test_default_teacher_is_optional_but_a_named_one_must_match(tmp_path, checkpoints, monkeypatch):
    student, _ = checkpoints
    monkeypatch.delenv("FDISTILL_TEACHER", raising=False)
    monkeypatch.setattr("fdistill.apps.demo.backends.DEFAULT_TEACHER", str(tmp_path / "no_teacher_here"))
    engine = DemoEngine(student, device="cpu")
    assert engine.teacher is None and "none found" in engine.teacher_note
    other = tmp_path / "other_teacher"  # a teacher of another student: 4 classes
    tiny_unet(num_classes=4).save_pretrained(other)
    monkeypatch.setattr("fdistill.apps.demo.backends.DEFAULT_TEACHER", str(other))
    engine = DemoEngine(student, device="cpu")
    assert engine.teacher is None and "4 classes" in engine.teacher_note  # the default: served without it
    with pytest.raises(DemoSetupError, match="4 classes"):
        DemoEngine(student, other, device="cpu")  # named by the user: refuse


class TextStubPipeline(OneStepPipeline):
    """Stands in for a future text-conditional student: its config says so and it takes ``prompt``."""

    def __init__(
        self, unet, sigma_init: float = 2.5, class_names=None, input_scaling: str = "ve", text_conditional: bool = True
    ) -> None:
        super().__init__(unet, sigma_init, class_names, input_scaling)
        self.register_to_config(text_conditional=text_conditional)

    def __call__(self, batch_size: int = 1, prompt=None, seed: int | None = None, output_type: str = "pt"):
        assert len(prompt) == batch_size and all(p == prompt[0] for p in prompt)
        return OneStepOutput(images=torch.zeros(batch_size, 1, SIZE, SIZE))


def test_text_conditional_student_gets_a_prompt_box(tmp_path, monkeypatch):
    import fdistill.export.pipeline

    monkeypatch.setattr(fdistill.export.pipeline, "TextStubPipeline", TextStubPipeline, raising=False)
    TextStubPipeline(tiny_unet(num_classes=0)).save_pretrained(tmp_path / "t")
    assert json.loads((tmp_path / "t" / "model_index.json").read_text())["_class_name"] == "TextStubPipeline"
    demo = create_demo(tmp_path / "t", device="cpu", load_teacher=False)
    visible = {b.elem_id: b.visible for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert visible["prompt"] is True and visible["class"] is False
    engine = demo.engine
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.generate(None, "   ", seed=0, num_images=2)
    r = engine.generate(None, "a red bag", seed=0, num_images=2)
    assert "a red bag" in r.subject and r.student.shape == (2, 1, SIZE, SIZE)


def test_bad_device_is_a_setup_error():
    with pytest.raises(DemoSetupError, match="unknown device|unsupported device"):
        DemoEngine(device="tpu", load_teacher=False)
