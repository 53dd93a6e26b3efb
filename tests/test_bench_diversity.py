"""``fdistill bench diversity`` (CPU, tiny): every row of the mixture, Fashion-MNIST and emoji (text-to-image) tables
is produced with finite values, and the hybrid with N = 0 is the student itself (same samples, same row); a cheap
stand-in Inception, tiny random latent-pair / caption-match folders (``tests/fixtures.py``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from fixtures import PixelFeatures, export_perturbed_student, save_tiny_clip_model, save_tiny_latent_teacher
from PIL import Image

from fdistill.bench import BENCHES
from fdistill.bench import diversity as diversity_cli
from fdistill.bench.diversity import main, mixture_table
from fdistill.bench.diversity_gmm import mixture_hybrid, mixture_rows, mixture_teacher, train_student
from fdistill.bench.diversity_images import ImageOptions, balanced_labels, generate, hybrid_batches, student_batches
from fdistill.bench.diversity_t2i import T2IOptions, t2i_generators, t2i_rows, t2i_table
from fdistill.data.fashion_mnist import CLASS_NAMES
from fdistill.eval.t2i import load_teacher
from fdistill.eval.t2i.generators import generate as generate_t2i
from fdistill.export.pipeline import OneStepPipeline, export_student
from fdistill.metrics import inception as incmod
from fdistill.metrics.diversity import intra_class_diversity, mean_pairwise_distance
from fdistill.nets.unet import EDMUNet
from fdistill.teachers.diffusers import UNetTeacher

TINY = ["train.batch_size=64", "train.num_eval_samples=128", "train.fake_warmup_steps=5", "train.log_every=10",
        "method.name=dmd"]  # fmt: skip
MIXTURE_KEYS = ("mode_weight_error", "energy_distance", "precision", "recall", "mean_pairwise_distance",
                "seconds_per_image")  # fmt: skip
RESULT_KEYS = ("mode_weight_error", "energy_distance", "precision", "recall", "mean_pairwise_distance",
               "modes_covered", "teacher_nll")  # fmt: skip


def _finite(row: dict, keys) -> bool:
    return all(isinstance(row[k], int | float) and math.isfinite(row[k]) for k in keys)


def _student_rows(*students: tuple[str, int]) -> list[str]:
    """Each student's row, then its hybrids with N = 0, 1, 2."""
    return [m for name, k in students
            for m in (f"student {name}, NFE {k}", *[f"hybrid N={n} + student {name}" for n in (0, 1, 2)])]  # fmt: skip


def test_registered_and_documented(capsys):
    assert BENCHES["diversity"] == "fdistill.bench.diversity"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "fdistill bench diversity --data fmnist" in capsys.readouterr().out


def test_diversity_statistics():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert mean_pairwise_distance(x) == pytest.approx(5.0)
    assert mean_pairwise_distance(torch.zeros(3, 2)) == 0.0
    rng = np.random.default_rng(0)
    real, labels = rng.normal(size=(40, 3)), np.arange(40) % 4
    out = intra_class_diversity(2 * real, labels, real, labels)
    assert out["classes"] == 4 and out["ratio_mean"] == pytest.approx(2.0) and out["ratio_std"] == pytest.approx(0)
    assert out["mean"] == pytest.approx(2 * out["real_mean"]) and out["std"] > 0


def test_mixture_table_rows_and_hybrid_zero(tmp_path):
    teacher = mixture_teacher("gmm8")
    students = [(name, train_student("gmm8", 20, k, tmp_path / name, TINY)) for name, k in (("one", 1), ("four", 4))]
    for _, d in students:  # N = 0: the student's own draws and chain, exactly
        assert torch.equal(mixture_hybrid(d.ema.model, d.teacher, 64, 0, 9, 3).samples, d.sample_student(64, 3)[0])
    rows = mixture_rows(teacher, students, 200, 0, [5, 9], [0, 1, 2], 9)
    models = [r["model"] for r in rows]
    assert models == ["teacher, NFE 5", "teacher, NFE 9", "teacher (exact)", *_student_rows(("one", 1), ("four", 4))]
    assert all(_finite(r, MIXTURE_KEYS) and r["num_samples"] == 200 for r in rows)
    by = {r["model"]: r for r in rows}
    assert by["teacher (exact)"]["nfe"] is None and by["teacher, NFE 9"]["nfe"] == 9
    for name, k in (("one", 1), ("four", 4)):
        student, zero = by[f"student {name}, NFE {k}"], by[f"hybrid N=0 + student {name}"]
        assert all(student[key] == zero[key] for key in RESULT_KEYS) and zero["nfe"] == k
        one = by[f"hybrid N=1 + student {name}"]
        assert one["teacher_nfe"] == 3 and one["handover_sigma"] == pytest.approx(17.53, abs=0.01)
    text = mixture_table({"data": "gmm8", "seed": 0, "hybrid_nfe": 9, "rows": rows})
    assert text.count("\n| ") == len(rows) + 1 and "exact" in text
    # the same students as run folders through the CLI
    out = tmp_path / "bench"
    rc = main(["--data", "gmm8", "--student", str(tmp_path / "one"), "--student", str(tmp_path / "four"),
               "--num-samples", "100", "--teacher-nfe", "9", "--hybrid", "1", "--out", str(out)])  # fmt: skip
    assert rc == 0 and (out / "table.md").is_file()
    result = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in result["rows"]][-2:] == ["student four, NFE 4", "hybrid N=1 + student four"]
    assert all(_finite(r, MIXTURE_KEYS) for r in result["rows"])


def _tiny_unet(seed: int) -> EDMUNet:
    torch.manual_seed(seed)
    return EDMUNet(sample_size=32, block_out_channels=(8, 16), attention_levels=(), norm_num_groups=4,
                   num_classes=10, attention_head_dim=8)  # fmt: skip


def test_fmnist_table_rows_and_hybrid_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("FDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(incmod, "InceptionFeatureExtractor", PixelFeatures)
    _tiny_unet(0).save_pretrained(tmp_path / "teacher")
    export_student(_tiny_unet(1), 2.5, tmp_path / "one", class_names=CLASS_NAMES)
    export_student(_tiny_unet(2), 2.5, tmp_path / "two", class_names=CLASS_NAMES, student_sigmas=[2.5, 0.25])
    # N = 0: the pipeline's own images, exactly
    opts = ImageOptions(num_samples=12, batch_size=8, seed=4)
    pipe, teacher = OneStepPipeline.from_pretrained(tmp_path / "two"), UNetTeacher.from_pretrained(tmp_path / "teacher")
    labels = balanced_labels(12, 10)
    own, _, _ = generate(student_batches(pipe), labels, opts)
    zero, info, _ = generate(hybrid_batches(pipe, teacher, 0, 5), labels, opts)
    assert torch.equal(own, zero) and info["student_nfe"] == 2 and info["teacher_nfe"] == 0
    out = tmp_path / "bench"
    rc = main(["--data", "fmnist", "--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "one"),
               "--student", str(tmp_path / "two"), "--num-samples", "20", "--num-reference", "200",
               "--teacher-nfe", "3,5", "--hybrid", "0,1,2", "--hybrid-nfe", "5", "--splits", "2",
               "--kid-subsets", "2", "--batch-size", "8", "--out", str(out)])  # fmt: skip
    assert rc == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["teacher, NFE 3", "teacher, NFE 5", *_student_rows(("one", 1), ("two", 2))]
    for r in rows:
        ic = r["intra_class"]
        assert _finite(r, ("fid", "fid_split_mean", "fid_split_std", "precision", "recall", "seconds_per_image"))
        assert _finite(ic, ("mean", "std", "real_mean", "ratio_mean", "ratio_std")) and ic["classes"] == 10
    by = {r["model"]: r for r in rows}
    for name, k in (("one", 1), ("two", 2)):
        student, zero = by[f"student {name}, NFE {k}"], by[f"hybrid N=0 + student {name}"]
        assert all(student[key] == zero[key] for key in ("fid", "precision", "recall", "intra_class"))
        assert zero["nfe"] == k and by[f"hybrid N=1 + student {name}"]["teacher_nfe"] == 3
    text = (out / "table.md").read_text()
    assert text.count("\n| ") == len(rows) + 1 and "ratio to real" in text


def _tiny_t2i(root) -> T2IOptions:
    """A tiny latent teacher, its perturbed one-step student export, a tiny caption-match model and 6 real images."""
    prompts = [f"{c} {thing}" for c in ("red", "blue") for thing in ("ball", "cat", "sun")]
    save_tiny_latent_teacher(root / "teacher", seed=1, max_length=16)
    (root / "teacher" / "prompts.txt").write_text("\n".join(prompts) + "\n")
    teacher = load_teacher(root / "teacher")
    g = torch.Generator().manual_seed(3)
    export_perturbed_student(teacher, root / "student", 399, generator=g)  # g then draws the real images
    save_tiny_clip_model(root / "clip", image_size=16)
    (root / "real").mkdir()
    for i in range(6):
        arr = torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(arr).save(root / "real" / f"{i}.png")
    return T2IOptions(teacher=str(root / "teacher"), student=str(root / "student"), reward=str(root / "clip"),
                      num_prompts=4, seeds=2, guidance=2.0, real=str(root / "real"), batch_size=4)  # fmt: skip


def test_emoji_table_rows_and_hybrid_zero(tmp_path, monkeypatch):
    opts = _tiny_t2i(tmp_path)
    # N = 0: the student's own stock call on the same noise (to float rounding)
    teacher = load_teacher(opts.teacher)
    gens = t2i_generators(opts, teacher, [3], [0], 5)
    prompts = teacher.prompts[:4]
    own, _ = generate_t2i(gens[1], prompts, 4, 7, torch.device("cpu"))
    zero, _ = generate_t2i(gens[2], prompts, 4, 7, torch.device("cpu"))
    assert torch.allclose(own, zero, atol=1e-4) and gens[2].nfe == 1
    result = t2i_rows(opts, [3], [0, 1, 2], 5)
    rows = result["rows"]
    assert [r["name"] for r in rows] == ["teacher NFE 3 w=2", "student student",
                                         *[f"hybrid N={n} + student student" for n in (0, 1, 2)]]  # fmt: skip
    for r in rows:
        assert _finite(r, ("match", "match_std", "fd_caption_match", "diversity", "diversity_std", "pixel_std",
                           "seconds_per_image")), r["name"]  # fmt: skip
        assert r["diversity"] >= 0 and r["num_images"] == 4
    student, zero_row, one, two = rows[1:]
    for key in ("match", "R@1", "fd_caption_match", "diversity", "pixel_std"):
        assert zero_row[key] == pytest.approx(student[key], abs=1e-4), key
    assert (one["nfe"], one["unet_evals"], one["info"]["teacher_nfe"]) == (4, 7, 3)
    assert two["nfe"] == 6 and two["info"]["handover_sigma"] < one["info"]["handover_sigma"]
    text = t2i_table(result)
    assert text.count("\n| ") == len(rows) + 1 and "4 (3 + 1)" in text
    # the CLI dispatches --data emoji and writes the table
    monkeypatch.setattr(diversity_cli, "t2i_rows", lambda *a: result)
    out = tmp_path / "bench"
    assert main(["--data", "emoji", "--out", str(out)]) == 0
    assert (out / "table.md").read_text() == text and json.loads((out / "results.json").read_text())["data"] == "emoji"
