"""fdistill bench gmm: runs variants over seeds in worker processes, writes one table with median and spread, and
reuses finished runs on a rerun."""

from __future__ import annotations

import json

from fdistill.bench.gmm import main, table


def test_bench_runs_seeds_and_reuses_finished_runs(tmp_path):
    args = ["--mixture", "gmm8", "--only", "di", "--steps", "3", "--seeds", "0,1", "--set", "train.fake_warmup_steps=1",
            "--set", "train.num_eval_samples=64", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    runs = results["gmm8 | di | engine"]
    assert len(runs) == 2 and all("mode_weight_error" in r and "off_mode" in r for r in runs)
    assert "| gmm8 | di | engine | 2 |" in (tmp_path / "table.md").read_text()
    stamp = (tmp_path / "gmm8_di_s0" / "bench.json").stat().st_mtime_ns
    assert main(args) == 0 and (tmp_path / "gmm8_di_s0" / "bench.json").stat().st_mtime_ns == stamp


def test_table_judges_ring8w_targets_on_the_median():
    runs = [{"mode_weight_error": w, "energy_distance": 0.005, "off_mode": 0.1, "modes_covered": 8,
             "teacher_nll": 3.0, "seconds": 1.0} for w in (0.01, 0.02, 0.9)]  # fmt: skip
    text = table({("ring8w", "di", "engine"): runs})
    assert "0.020 [0.010, 0.900]" in text and "0.025, 0.010: met" in text
    text = table({("ring8w", "di", "engine"): runs[1:]})
    assert "MISSED" in text
