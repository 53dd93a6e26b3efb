"""``fdistill report`` on a synthetic run directory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from fdistill.apps.report import group_keys, main, make_report, read_metrics_jsonl, series


@pytest.fixture
def run_dir(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for step in range(0, 400, 4):
        row = {"step": step, "loss/generator": float(1 / (1 + step) + 0.05 * rng.random()),
               "loss/fake": float(0.5 + 0.1 * rng.random()), "lr": 1e-4}  # fmt: skip
        if step % 100 == 0:
            row["proxy_fid"] = float(100 / (1 + step / 50))
        lines.append(json.dumps(row))
    lines.append('{"step": 400, "loss/gen')  # a killed run's torn last line
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "config.yaml").write_text("method:\n  name: sid\n  divergence: js\ntrain:\n  steps: 400\n")
    final = {
        "step": 400,
        "proxy_fid": 12.5,
        "kid": {"mean": 0.0123, "std": 0.0004},
        "table": [
            {"model": "teacher", "nfe": 35, "fid": 10.1, "seconds": 300.0},
            {"model": "teacher", "nfe": 1, "fid": 250.3, "seconds": 9.0},
            {"model": "student", "nfe": 1, "fid": 15.2, "seconds": 9.1},
        ],
    }
    (tmp_path / "metrics.json").write_text(json.dumps(final))
    Image.fromarray(rng.integers(0, 255, (34, 66), dtype=np.uint8)).save(tmp_path / "samples.png")
    Image.fromarray(rng.integers(0, 255, (34, 66), dtype=np.uint8)).save(tmp_path / "samples_00000200.png")
    return tmp_path


def test_parsing_and_grouping(run_dir):
    rows = read_metrics_jsonl(run_dir / "metrics.jsonl")
    assert len(rows) == 100  # the torn line is skipped
    data = series(rows)
    assert set(data) == {"loss/generator", "loss/fake", "lr", "proxy_fid"}
    assert len(data["proxy_fid"][0]) == 4 and math.isclose(data["proxy_fid"][1][0], 100.0)
    assert group_keys(list(data)) == {"loss": ["loss/fake", "loss/generator"], "lr": ["lr"], "proxy_fid": ["proxy_fid"]}


def test_report_contents(run_dir):
    path = make_report(run_dir)
    text = path.read_text()
    for fig in ("loss.png", "proxy_fid.png", "lr.png"):
        png = run_dir / "report_figures" / fig
        assert png.is_file() and png.stat().st_size > 1000
        assert f"](report_figures/{fig})" in text
    assert "### Teacher vs student" in text
    assert "| model | nfe | fid | seconds |" in text and "| student | 1 | 15.2 | 9.1 |" in text
    assert "| kid | mean=0.0123, std=0.0004 |" in text
    assert "```yaml\nmethod:\n  name: sid" in text
    assert text.index("samples.png") < text.index("samples_00000200.png")
    assert "## Hardware" in text and "torch" in text


def test_cli_and_out_dir(run_dir, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("out")
    assert main([str(run_dir), "--out", str(out), "--smooth", "1"]) == 0
    text = (out / "report.md").read_text()
    assert (out / "report_figures" / "loss.png").is_file()
    assert "samples.png" in text and "../" in text  # sample grids linked relative to the report
    assert "wrote" in capsys.readouterr().out


def test_missing_run_dir_is_an_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
