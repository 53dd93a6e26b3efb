"""``fdistill bench image-fid`` orchestration: one distill + eval per method, resumed or skipped when rerun, and a
table of every row (the subprocesses are replaced by a fake that writes what the real commands write)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fdistill.bench import image_fid


def _fid(value: float, teacher_nfe: str | None = None) -> dict:
    row = {"fid": value, "kid_mean": 0.01, "precision": 0.5, "recall": 0.4}
    table = [{"model": "teacher", "nfe": int(n), **row} for n in teacher_nfe.split(",")] if teacher_nfe else []
    return {"fid": value, "kid": {"mean": 0.01}, "precision": 0.5, "recall": 0.4, "table": table}


@pytest.fixture
def fake_fdistill(monkeypatch):
    calls: list[list[str]] = []

    def fake(args: list[str], log) -> None:
        calls.append(args)
        if args[0] == "distill":
            run = next(a.split("=", 1)[1] for a in args if a.startswith("output_dir="))
            run = Path(run)
            (run / "student").mkdir(parents=True, exist_ok=True)
            (run / "student" / "model_index.json").write_text("{}")
            (run / "metrics.jsonl").write_text('{"eval/proxy_fid": 90.0}\n{"loss/generator": 1.0}\n'
                                               '{"eval/proxy_fid": 30.0}\n')  # fmt: skip
            (run / "metrics.json").write_text(json.dumps({"step": 5, "images_seen": 40}))
        else:
            out = args[args.index("--json") + 1]
            nfe = args[args.index("--teacher-nfe") + 1] if "--teacher-nfe" in args else None
            with open(out, "w") as f:
                json.dump(_fid(50.0 if "sid" in args[1] else 70.0, nfe), f)

    monkeypatch.setattr(image_fid, "_fdistill", fake)
    return calls


def test_every_run_is_distilled_evaluated_and_tabled(tmp_path, fake_fdistill, capsys):
    assert image_fid.main(["--only", "dmd,sid", "--steps", "5", "--out", str(tmp_path), "--teacher-nfe", "9,35"]) == 0
    distills = [c for c in fake_fdistill if c[0] == "distill"]
    assert len(distills) == 2 and all("train.steps=5" in c and "--resume" not in c for c in distills)
    table = (tmp_path / "table.md").read_text()
    lines = table.splitlines()
    assert [ln.split("|")[1].strip() for ln in lines[2:]] == ["teacher", "teacher", "sid", "dmd"]  # sorted by FID
    assert "| sid | 1 | 5 | 40 | 90.0 -> 30.0 | 50.0 |" in table and table in capsys.readouterr().out
    fake_fdistill.clear()  # a rerun reuses every finished piece
    assert image_fid.main(["--only", "dmd,sid", "--out", str(tmp_path), "--teacher-nfe", "9,35"]) == 0
    assert fake_fdistill == []


def test_killed_run_resumes_and_unknown_names_are_an_error(tmp_path, fake_fdistill, capsys):
    (tmp_path / "sim" / "checkpoints").mkdir(parents=True)
    image_fid.main(["--only", "sim", "--out", str(tmp_path), "--teacher-nfe", ""])
    assert fake_fdistill[0][-2:] == ["--resume", "latest"]
    with pytest.raises(SystemExit):
        image_fid.main(["--only", "sim,nope", "--out", str(tmp_path)])
    assert "unknown run(s) nope" in capsys.readouterr().err
