"""``fdistill eval --against-teacher``: FID +- s over splits, the teacher cache (written, reused, refused, rebuilt),
the one table and the verdict line (CPU, a tiny random EDMUNet teacher and student, a cheap stand-in Inception)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import PixelFeatures

from fdistill.eval.against_teacher import verdict
from fdistill.eval.fid_eval import evaluate, score_features
from fdistill.eval.images import main
from fdistill.eval.references import Reference
from fdistill.eval.source_types import tensor_source
from fdistill.eval.teacher_cache import TeacherCacheMismatch, cache_path, load_cache
from fdistill.export.pipeline import export_student
from fdistill.metrics import inception as incmod
from fdistill.metrics.fid import FeatureStats, frechet_distance
from fdistill.metrics.inception import INCEPTION_PROTOCOL
from fdistill.nets.unet import EDMUNet
from fdistill.teachers.diffusers import UNetTeacher

ROOT = Path(__file__).resolve().parents[1]


def _tiny_unet(seed: int) -> EDMUNet:
    torch.manual_seed(seed)
    return EDMUNet(sample_size=8, block_out_channels=(8, 16), attention_levels=(), norm_num_groups=4,
                   num_classes=3, attention_head_dim=8)  # fmt: skip


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A teacher folder, a student pipeline, a reference stats .npz, the stub extractor and a teacher call count."""
    monkeypatch.setenv("FDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(incmod, "InceptionFeatureExtractor", PixelFeatures)
    teacher = tmp_path / "teacher"
    _tiny_unet(0).save_pretrained(teacher)
    export_student(_tiny_unet(1), 2.5, tmp_path / "student", class_names=["a", "b", "c"], card={"method": "toy"})
    real = torch.randint(0, 256, (40, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    FeatureStats.from_features(PixelFeatures().extract(real), INCEPTION_PROTOCOL).save(tmp_path / "ref.npz")
    calls: list[int] = []
    sample = UNetTeacher.sample

    def counted(self, n, *args, **kwargs):
        calls.append(n)
        return sample(self, n, *args, **kwargs)

    monkeypatch.setattr(UNetTeacher, "sample", counted)
    common = ["--reference", str(tmp_path / "ref.npz"), "--num-samples", "24", "--batch-size", "8",
              "--kid-subsets", "2", "--device", "cpu"]  # fmt: skip
    return {"teacher": str(teacher), "student": str(tmp_path / "student"), "common": common, "calls": calls}


def test_fid_pm_is_the_mean_and_sample_std_of_the_split_fids():
    rng = np.random.default_rng(0)
    ref = FeatureStats.from_features(rng.normal(size=(300, 4)), INCEPTION_PROTOCOL)
    feats = torch.from_numpy(rng.normal(0.3, 1.2, size=(91, 4)))
    row = score_features(feats, Reference(ref, "ref"), INCEPTION_PROTOCOL, 3, 2, 30, 3, 0)
    blocks = [feats[i * 30 : (i + 1) * 30].numpy() for i in range(3)]  # 91 // 3 = 30 each, the last one unused
    direct = [frechet_distance(b.mean(0), np.cov(b, rowvar=False), ref.mu, ref.sigma) for b in blocks]
    split = row["fid_split"]
    assert split["splits"] == 3 and split["size"] == 30
    np.testing.assert_allclose(split["values"], direct, rtol=1e-9)
    assert split["mean"] == pytest.approx(np.mean(direct)) and split["std"] == pytest.approx(np.std(direct, ddof=1))
    f = feats.numpy()
    assert row["fid"] == pytest.approx(frechet_distance(f.mean(0), np.cov(f, rowvar=False), ref.mu, ref.sigma))
    assert row["kid"] is not None and row["precision"] is not None


def test_plain_eval_reports_fid_pm_over_splits(tmp_path, monkeypatch):
    monkeypatch.setattr(incmod, "InceptionFeatureExtractor", PixelFeatures)
    imgs = torch.randint(0, 256, (30, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    FeatureStats.from_features(PixelFeatures().extract(imgs[:20]), INCEPTION_PROTOCOL).save(tmp_path / "ref.npz")
    result = evaluate(tensor_source(imgs), reference=str(tmp_path / "ref.npz"), num_samples=30, kid_subsets=2)
    assert result["splits"] == 3 and result["fid_split"]["size"] == 10 and len(result["fid_split"]["values"]) == 3
    few = evaluate(tensor_source(imgs), reference=str(tmp_path / "ref.npz"), num_samples=5, kid_subsets=2)
    assert few["fid_split"] is None  # 5 // 3 = 1 sample per split: no FID +- s


def test_verdict_rule():
    s = {"fid_split_mean": 10.0, "fid_split_std": 1.0}
    close = verdict(s, {"nfe": 35, "fid_split_mean": 8.0, "fid_split_std": 1.0})  # |2| < 2 sqrt(2) = 2.83
    far = verdict(s, {"nfe": 9, "fid_split_mean": 6.0, "fid_split_std": 1.0})
    assert not close["beyond_noise"] and "within the noise" in close["text"]
    assert far["beyond_noise"] and "student is worse" in far["text"] and far["noise"] == pytest.approx(2 * 2**0.5)


def test_teacher_cache_written_reused_refused_and_rebuilt(setup, tmp_path, capsys):
    teacher, student, common, calls = setup["teacher"], setup["student"], setup["common"], setup["calls"]
    # 1. fdistill eval TEACHER --teacher-nfe 3 --cache-stats: sampled once, cached in the teacher folder
    assert main([teacher, "--teacher-nfe", "3", "--cache-stats", *common]) == 0
    path = cache_path(teacher, 3, 24, 0)
    assert path.is_file() and path.stat().st_size < 100_000 and sum(calls) == 24
    assert "no student given" in capsys.readouterr().out
    # 2. the comparison reads the cache (the teacher is not sampled again) and shows one table and a verdict
    out = tmp_path / "cmp.json"
    assert main([student, "--against-teacher", teacher, "--teacher-nfe", "3", "--json", str(out), *common]) == 0
    text = capsys.readouterr().out
    assert sum(calls) == 24
    result = json.loads(out.read_text())
    assert [(r["model"], r["nfe"], r["from"]) for r in result["table"]] == [("teacher", 3, "cache"),
                                                                            ("student", 1, "sampled")]  # fmt: skip
    for col in ("FID +- s", "FID(all)", "KID", "precision", "recall", "NFE"):
        assert col in text
    assert "sample std (ddof=1) of the FIDs of 3 disjoint splits of 8 samples" in text
    assert "2 * sqrt(s_student^2 + s_teacher^2)" in text
    last = text.split("\nwrote ")[0].rstrip().splitlines()[-1]  # the table's last line, before "wrote JSON"
    assert last.startswith("verdict: teacher NFE 3: diff ") and ("within the noise" in last or "larger than" in last)
    cached = load_cache(path, json.loads(str(np.load(path)["protocol_json"])))
    assert result["table"][0]["fid"] == cached["fid"]
    assert result["table"][0]["fid_splits"] == cached["fid_split"]["values"]
    # 3. an NFE without a cache is sampled and cached next to the other one
    assert main([student, "--against-teacher", teacher, "--teacher-nfe", "3,5", *common]) == 0
    assert sum(calls) == 48 and cache_path(teacher, 5, 24, 0).is_file()
    assert capsys.readouterr().out.rstrip().splitlines()[-1].count("teacher NFE") == 2
    # 4. a cache made under another protocol is refused, naming the field
    shutil.copy(path, cache_path(teacher, 7, 24, 0))  # an NFE-3 cache under the NFE-7 name
    assert main([student, "--against-teacher", teacher, "--teacher-nfe", "7", *common]) == 2
    err = capsys.readouterr().err
    assert "nfe differs (cache 3, now 7)" in err and "--recompute" in err and len(err.strip().splitlines()) == 1
    shutil.copy(path, cache_path(teacher, 3, 30, 0))
    assert main([teacher, "--teacher-nfe", "3", "--cache-stats", *common, "--num-samples", "30"]) == 2
    assert "num_samples differs (cache 24, now 30)" in capsys.readouterr().err
    assert main([teacher, "--teacher-nfe", "3", "--cache-stats", *common, "--splits", "4"]) == 2
    assert "splits differs" in capsys.readouterr().err
    protocol = json.loads(str(np.load(path)["protocol_json"]))
    with pytest.raises(TeacherCacheMismatch, match="num_samples differs"):
        load_cache(path, {**protocol, "num_samples": 10000})
    assert sum(calls) == 48
    # 5. the teacher file changes: refused; --recompute rebuilds it, and the rebuilt cache is reused
    _tiny_unet(2).save_pretrained(teacher)
    assert main([student, "--against-teacher", teacher, "--teacher-nfe", "3", *common]) == 2
    assert "teacher_sha256 differs" in capsys.readouterr().err and sum(calls) == 48
    assert main([student, "--against-teacher", teacher, "--teacher-nfe", "3", "--recompute", *common]) == 0
    assert sum(calls) == 72 and "computed" in capsys.readouterr().out
    assert main([student, "--against-teacher", teacher, "--teacher-nfe", "3", *common]) == 0
    assert sum(calls) == 72


def test_bad_comparisons_are_clear(setup, capsys):
    teacher, student, common = setup["teacher"], setup["student"], setup["common"]
    assert main([student, "--cache-stats", "--teacher-nfe", "3", *common]) == 2
    assert "takes a teacher folder" in capsys.readouterr().err
    assert main([student, "--against-teacher", teacher, *common]) == 2
    assert "need --teacher-nfe" in capsys.readouterr().err
    assert main([student, "--against-teacher", teacher, "--teacher-nfe", "3", "--splits", "1", *common]) == 2
    assert "--splits 1" in capsys.readouterr().err


@pytest.mark.parametrize("cache", sorted((ROOT / "checkpoints/fmnist_teacher/eval_stats").glob("nfe*.npz")),
                         ids=lambda p: p.name)  # fmt: skip
def test_shipped_teacher_caches_belong_to_the_shipped_teacher(cache):
    """Each cache shipped next to the Fashion-MNIST teacher was made from its weights and loads under its own
    recorded protocol; with another teacher file it is refused by name (a retrained teacher needs --recompute)."""
    from fdistill.eval.teacher_cache import sha256_of, teacher_weight_files

    with np.load(cache, allow_pickle=False) as z:
        protocol = json.loads(str(z["protocol_json"]))
    assert protocol["teacher_sha256"] == sha256_of(teacher_weight_files(ROOT / "checkpoints/fmnist_teacher"))
    assert cache == cache_path(ROOT / "checkpoints/fmnist_teacher", protocol["nfe"], protocol["num_samples"],
                               protocol["seed"])  # fmt: skip
    row = load_cache(cache, protocol)
    assert len(row["fid_split"]["values"]) == protocol["splits"] and row["fid"] > 0
    with pytest.raises(TeacherCacheMismatch, match="teacher_sha256"):
        load_cache(cache, {**protocol, "teacher_sha256": "0" * 64})
