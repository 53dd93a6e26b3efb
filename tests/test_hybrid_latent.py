"""Hybrid sampling and DT-visualisation of latent (SD-style) pairs (docs/math.md §2.11), on the shipped tiny emoji
teacher and its exported one-step student (checkpoints/emoji_teacher, checkpoints/emoji_student)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_image_distill import save_tiny_fmnist_teacher

from fdistill.apps.hybrid_latent import LatentStudent, load_latent_teacher_folder
from fdistill.apps.sample import hybrid_sample
from fdistill.cli import main
from fdistill.export.loading import sd_one_step_call

ROOT = Path(__file__).resolve().parents[1] / "checkpoints"
STUDENT, TEACHER = ROOT / "emoji_student", ROOT / "emoji_teacher"


@pytest.fixture(scope="module")
def pair():
    return LatentStudent.from_folder(STUDENT), load_latent_teacher_folder(TEACHER)


def test_latent_hybrid_reduces_to_student_and_teacher(pair):
    student, teacher = pair
    ids = [0, 5]
    shape = (2, *teacher.sample_shape)
    assert student.student_sigmas == pytest.approx([teacher.sigma_max])  # the shipped student: t_init = 999
    h0 = hybrid_sample(student, teacher, 2, 0, nfe=5, class_labels=ids, seed=3)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(3))  # given ids: z is the first draw
    prompts = [teacher.prompts[i] for i in ids]
    call = sd_one_step_call(STUDENT)
    own = student.pipe(prompt=prompts, latents=z, output_type="latent", **call).images
    own_images = student.pipe(prompt=prompts, latents=z, output_type="pt", **call).images * 2 - 1
    # the hybrid path scales z by sigma_max, then by (1 + sigma_max^2)^-1/2: float32 round-off only (CI saw 2e-5)
    assert torch.allclose(h0.latents, own, atol=1e-4) and torch.allclose(h0.images, own_images, atol=1e-3)
    assert h0.teacher_nfe == 0 and h0.student_nfe == 1 and h0.labels.tolist() == ids
    full = hybrid_sample(student, teacher, 2, 3, nfe=5, class_labels=ids, seed=3, guidance=2.0)  # 3 Heun steps
    ref = teacher.sample(2, torch.tensor(ids), nfe=5, guidance=2.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(full.latents, ref) and torch.equal(full.images, teacher.decode(ref).clamp(-1, 1))
    assert full.teacher_nfe == 5 and full.student_nfe == 0 and full.student_start is None
    mid = hybrid_sample(student, teacher, 2, 1, nfe=5, class_labels=["grinning face", 5], seed=3)
    assert mid.labels.tolist() == ids and mid.student_start == 0 and mid.teacher_nfe == 3
    assert mid.images.shape == (2, 3, teacher.image_size, teacher.image_size) and torch.isfinite(mid.images).all()
    assert not torch.allclose(mid.latents, h0.latents)  # the hand-over noise is fresh


def test_latent_handover_input_is_the_vp_renoising(pair):
    """The student's UNet sees x_vp = sqrt(abar) x0_hat + sqrt(1 - abar) eps at its t_init, eps the fresh draw."""
    student, teacher = pair
    handed, unet_inputs = [], []
    hook = student.unet.register_forward_pre_hook(lambda _m, args: unet_inputs.append(args[0].clone()))
    try:
        out = hybrid_sample(student, teacher, 1, 1, nfe=5, class_labels=[2], seed=0,
                            callback=lambda who, _i, _s, x0: who == "handover" and handed.append(x0))  # fmt: skip
    finally:
        hook.remove()
    gen = torch.Generator().manual_seed(0)
    torch.randn((1, *teacher.sample_shape), generator=gen)  # z
    eps = torch.randn((1, *teacher.sample_shape), generator=gen)
    abar = float(student.pipe.scheduler.alphas_cumprod[999])
    expected = abar**0.5 * handed[0] + (1 - abar) ** 0.5 * eps
    assert out.handover_sigma < student.student_sigmas[0] and out.student_start == 0
    assert len(unet_inputs) == 1 and torch.allclose(unet_inputs[0], expected, atol=1e-5)


def test_latent_sample_and_dt_vis_commands(tmp_path, capsys):
    out = tmp_path / "h.png"
    argv = ["sample", str(STUDENT), "--teacher", str(TEACHER), "--hybrid-steps", "1", "--nfe", "5", "--num", "2",
            "--prompts", "grinning face,7", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0 and out.is_file()
    assert "hand-over at sigma" in capsys.readouterr().out
    assert main(["sample", str(STUDENT), "--num", "1", "--out", str(out)]) == 0
    assert "student, NFE 1" in capsys.readouterr().out
    assert main(["sample", str(TEACHER), "--num", "1", "--nfe", "3", "--out", str(out)]) == 0
    assert "teacher, NFE 3" in capsys.readouterr().out
    assert main(["sample", str(STUDENT), "--num", "1", "--prompts", "no such emoji", "--out", str(out)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (after the text encoder's loading progress)
    assert last.startswith("fdistill sample: unknown class 'no such emoji'; accepted: 0..3785 or one of the 3786")

    grid = tmp_path / "grid.png"
    argv = ["dt-vis", "--teacher", str(TEACHER), "--student", str(STUDENT), "--hybrid-steps", "1", "--nfe", "5",
            "--num", "2", "--prompts", "0,grinning face", "--zoom", "1", "--out", str(grid)]  # fmt: skip
    assert main(argv) == 0
    legend = json.loads(grid.with_suffix(".png.json").read_text())
    assert [r["sampler"] for r in legend] == ["teacher", "student", "hybrid N=1"] * 2
    assert [r["label"] for r in legend] == [0] * 6
    assert [len(r["cells"]) for r in legend[:3]] == [3, 1, 3]  # 3 Heun steps; 1 step; 1 + hand-over + student
    assert [c["who"] for c in legend[2]["cells"]] == ["teacher", "handover", "student"]
    side, pad = 32, 2  # the VAE's 32 x 32 images, not the 8 x 8 latents
    assert Image.open(grid).size == (3 * (side + pad) + pad, 6 * (side + pad) + pad)
    assert Image.open(grid).mode == "RGB"


def test_mixed_pair_is_one_clear_line(tmp_path, capsys):
    pixel = tmp_path / "pixel"
    save_tiny_fmnist_teacher(pixel)
    argv = ["dt-vis", "--teacher", str(pixel), "--student", str(STUDENT), "--out", str(tmp_path / "x.png")]
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("fdistill dt-vis: the student is latent (SD-style) but the teacher pixel")
