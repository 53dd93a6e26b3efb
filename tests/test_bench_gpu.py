"""``fdistill bench gpu`` at tiny sizes on the CPU: every section runs and writes one table with finite numbers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fdistill.bench import BENCHES
from fdistill.bench import main as bench_main
from fdistill.bench.gpu import COLUMNS, main
from fdistill.bench.gpu_measure import Settings, train_row
from fdistill.bench.gpu_models import fmnist_teacher

TEACHERS = ("fmnist", "sd15-latent")
METHODS = ("dmd", "fdistill")  # one without and one with the discriminator (real data, GAN head)
NUMBERS = ("gen_ms", "iter_ms", "images_per_s", "peak_mb", "ratio")


def _finite(row: dict, keys) -> bool:
    return all(isinstance(row[k], int | float) and math.isfinite(row[k]) and row[k] >= 0 for k in keys)


def test_every_section_runs_tiny_on_cpu(tmp_path, capsys):
    argv = ["--device", "cpu", "--tiny", "--methods", ",".join(METHODS), "--steps", "1", "--batch", "2"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    table = (tmp_path / "bench_gpu.md").read_text()
    assert "| " + " | ".join(COLUMNS) + " |" in table and table in capsys.readouterr().out
    rows = json.loads((tmp_path / "bench_gpu.json").read_text())["rows"]
    assert table.count("\n| ") == len(rows) + 1  # the header row, then one line a row

    train = {(r["teacher"], r["what"], r["precision"]): r for r in rows if r["section"] == "train"}
    assert set(train) == {(t, m, p) for t in TEACHERS for m in METHODS for p in ("fp32", "bf16", "bf16+compile")}
    for (_, _, precision), r in train.items():
        if precision == "bf16+compile":
            assert r["note"].startswith("skipped") and r["iter_ms"] is None
        else:
            assert r["note"] == "" and _finite(r, NUMBERS), r
            assert r["iter_ms"] > 0 and r["gen_ms"] > 0 and r["images_per_s"] == pytest.approx(2e3 / r["iter_ms"])
    assert all(train[(t, m, "fp32")]["ratio"] == 1.0 for t in TEACHERS for m in METHODS)

    for t in TEACHERS:
        for precision in ("fp32", "bf16"):
            pair = [r for r in rows if r["section"] == "sample" and r["teacher"] == t and r["precision"] == precision]
            assert [r["what"].split()[0] for r in pair] == ["teacher", "student"], pair
            assert all(_finite(r, ("iter_ms", "images_per_s", "peak_mb", "ratio")) for r in pair), pair
            assert pair[1]["ratio"] == pytest.approx(pair[1]["images_per_s"] / pair[0]["images_per_s"])

    demo = [r for r in rows if r["section"] == "demo"]
    assert [r["what"] for r in demo] == ["generate: student NFE 1", "generate: + teacher NFE 35"], demo
    assert all(r["precision"] == "float32" and _finite(r, ("iter_ms", "images_per_s", "ratio")) for r in demo)


def test_a_failing_row_says_why_and_is_not_fatal(tmp_path, monkeypatch):
    def broken(cfg):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr("fdistill.bench.gpu_measure.Distiller", broken)
    row = train_row(fmnist_teacher(tmp_path, tiny=True), "dmd", "fp32", Settings(torch.device("cpu"), 2, 1))
    assert row.iter_ms is None and row.note.startswith("error: RuntimeError: out of memory (simulated)")


def test_registered_with_a_help_and_bad_choices_are_one_error(capsys):
    assert BENCHES["gpu"] == "fdistill.bench.gpu"
    with pytest.raises(SystemExit) as e:
        bench_main(["gpu", "--help"])
    assert e.value.code == 0 and "bf16 + torch.compile" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown method nope"):
        main(["--device", "cpu", "--methods", "dmd,nope"])
