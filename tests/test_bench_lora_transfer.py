"""``fdistill bench lora-transfer`` on tiny random models (a latent teacher, its exported one-step student, a CLIP)
and a tiny fake emoji package: the command runs end to end and writes its table; a fitted LoRA changes the
teacher's and the student's images; a zero LoRA (no steps: B = 0) leaves both exactly unchanged; the category
filter, the paired shifts and the reading."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fixtures import export_perturbed_student, save_tiny_clip_model, save_tiny_latent_teacher  # noqa: E402

from fdistill.bench import BENCHES  # noqa: E402
from fdistill.bench import main as bench_main  # noqa: E402
from fdistill.bench.lora_transfer import category_labels, reading  # noqa: E402
from fdistill.bench.lora_transfer_rows import (  # noqa: E402
    paired_shift,
    score_row,
    shift_difference,
    student_generator,
    teacher_generator,
)
from fdistill.bench.lora_transfer_train import category_mask, fit_lora, save_lora  # noqa: E402
from fdistill.data.emoji import IMAGE_DIR, load_emoji  # noqa: E402
from fdistill.eval.t2i.generators import generate, load_teacher  # noqa: E402

NAMES = [
    ("JAPAN FLAG", "Flags"),
    ("FRANCE FLAG", "Flags"),
    ("CROSSED FLAGS", "Flags"),
    ("CHEQUERED FLAG", "Flags"),
    ("GRINNING FACE", "Smileys & Emotion"),
    ("RED APPLE", "Food & Drink"),
    ("DOG FACE", "Animals & Nature"),
    ("BLUE CAR", "Travel & Places"),
]


def _fake_package(root):
    """``root/package``: emoji.json and one 64 px RGBA PNG per entry (a coloured square, transparent around)."""
    pkg = root / "package"
    (pkg / IMAGE_DIR).mkdir(parents=True)
    entries = []
    for k, (name, cat) in enumerate(NAMES):
        entries.append({"name": name, "short_name": name.lower().replace(" ", "_"), "category": cat,
                        "image": f"{k:04x}.png", "has_img_google": True, "sort_order": k})  # fmt: skip
        rgba = np.zeros((64, 64, 4), np.uint8)
        rgba[8 + k : 40 + k, 16:48] = ((40 * k) % 256, 200 - 20 * k, 30 + 25 * k, 255)
        Image.fromarray(rgba, "RGBA").save(pkg / IMAGE_DIR / f"{k:04x}.png")
    (pkg / "emoji.json").write_text(json.dumps(entries))
    return pkg


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Folders of a tiny teacher (with the fake package's captions as its prompt table), its exported one-step
    student (a perturbed copy of the teacher's UNet at t = 999), a tiny CLIP and the fake package."""
    root = tmp_path_factory.mktemp("lora_transfer")
    pkg = _fake_package(root)
    teacher_dir = save_tiny_latent_teacher(root / "teacher", seed=1)
    captions = load_emoji(pkg, size=16).prompts
    (teacher_dir / "prompts.txt").write_text("".join(c + "\n" for c in captions))
    teacher = load_teacher(teacher_dir)
    student_dir = export_perturbed_student(teacher, root / "student", 999)
    clip = save_tiny_clip_model(root / "clip", image_size=16)
    return SimpleNamespace(root=root, pkg=pkg, teacher=teacher_dir, student=student_dir, clip=clip)


def test_command_runs_end_to_end(pair, tmp_path):
    assert BENCHES["lora-transfer"] == "fdistill.bench.lora_transfer"
    out = tmp_path / "bench"
    argv = ["lora-transfer", "--teacher", str(pair.teacher), "--student", str(pair.student), "--caption-match",
            str(pair.clip), "--data-root", str(pair.pkg), "--steps", "2", "--batch-size", "4", "--num-prompts", "3",
            "--seeds", "2", "--teacher-nfe", "3", "--cfg", "3", "--out", str(out)]  # fmt: skip
    assert bench_main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["target"] == "flags" and result["category_captions"] == 4
    assert [r["name"] for r in result["rows"]][2:] == ["teacher w=3", "teacher w=3 + LoRA", "student", "student + LoRA"]
    assert all(r["n"] == 6 for r in result["rows"][2:]) and result["rows"][0]["n"] == 4
    assert len(result["prompts"]) == 3 and not any("flag" in p for p in result["prompts"])
    assert len(result["rows"][2]["per_image"]["hits"]) == 6
    text = (out / "table.md").read_text()
    assert set(result["shifts"]) == {"teacher w=3", "student"} and set(result["differences"]) == {"teacher w=3"}
    assert "| teacher w=3 + LoRA |" in text and "| student + LoRA |" in text and "| student - teacher w=3 |" in text
    assert (out / "grid.png").is_file() and (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert bench_main([*argv[:-2], "--keyword", "zebra", "--out", str(out)]) == 2  # matches no caption


def _images(gen, prompts):
    return generate(gen, prompts, len(prompts), 0, torch.device("cpu"))[0]


@pytest.mark.parametrize("steps", [0, 3])
def test_lora_moves_both_models_and_a_zero_lora_moves_neither(pair, tmp_path, steps):
    teacher = load_teacher(pair.teacher)
    data = load_emoji(pair.pkg, size=16)
    mask = category_mask(data.prompts, "flag")
    fit = fit_lora(teacher, data.images[mask], [c for c, m in zip(data.prompts, mask.tolist(), strict=True) if m],
                   rank=2, steps=steps, batch_size=4, lr=1e-2)  # fmt: skip
    assert len(fit.losses) == steps and fit.images == 4
    lora = save_lora(fit.unet, tmp_path / "lora")
    prompts = ["grinning face", "blue car"]
    dev = torch.device("cpu")
    t0, t1 = (_images(teacher_generator(teacher, x, 3, 3.0, dev), prompts) for x in (None, lora))
    s0, s1 = (_images(student_generator(pair.student, x, dev), prompts) for x in (None, lora))
    if steps == 0:
        assert torch.equal(s0, s1) and torch.equal(t0, t1)  # B = 0: exactly the plain models
    else:
        assert (t1 - t0).abs().max() > 1e-3 and (s1 - s0).abs().max() > 1e-3


def test_category_filter_and_labels():
    caps = ["japan flag", "crossed flags", "flag in hole", "flagstone", "grinning face"]
    assert category_mask(caps, "flag").tolist() == [True, True, True, False, False]
    cats = ["Flags", "Flags", "Activities", "Objects", "Smileys & Emotion"]
    labels, target = category_labels(cats, category_mask(caps, "flag"), None)
    assert labels == ["flags", "activities", "objects", "smileys & emotion"] and target == 0
    assert category_labels(cats, category_mask(caps, "flag"), "a flag, a face") == (["a flag", "a face"], 0)


def test_paired_shifts_and_reading():
    base = score_row("teacher", torch.tensor([0, 0, 0, 1]).bool(), torch.zeros(4))
    lora = score_row("teacher + LoRA", torch.tensor([1, 1, 0, 1]).bool(), torch.ones(4))
    assert base["share"] == 0.25 and base["share_se"] == pytest.approx((0.25 * 0.75 / 4) ** 0.5)
    shift = paired_shift(base, lora)
    assert shift["share"] == pytest.approx(0.5) and shift["similarity"] == pytest.approx(1.0)
    assert shift_difference(base, lora, base, lora)["share"] == 0.0
    same, diff = {"share": 0.3, "share_se": 0.05}, {"share": 0.0, "share_se": 0.05}
    res = {"target": "flags", "shifts": {"teacher w=3": same, "student": same}, "differences": {"teacher w=3": diff}}
    assert "TRANSFERS" in reading(res)[0]
    res["shifts"]["student"] = {"share": 0.0, "share_se": 0.02}
    res["differences"]["teacher w=3"] = diff | {"share": -0.3}
    assert "does NOT transfer" in reading(res)[0]
    res["shifts"]["student"] = {"share": 0.1, "share_se": 0.02}
    res["differences"]["teacher w=3"] = diff | {"share": -0.2}
    assert "PARTLY" in reading(res)[0]
    res["shifts"]["teacher w=3"] = {"share": 0.02, "share_se": 0.02}
    assert "did not move the teacher" in reading(res)[0] and len(reading(res)) == 1
