"""fdistill/bench/demo_soak.py end to end (a short soak of a tiny random student: 0 errors, bounded cache) and the
demo's sweep of the empty folders Gradio leaves in its cache."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

from fdistill.apps.demo import build_parser, remove_empty_cache_dirs, sweep_cache  # noqa: E402
from fdistill.bench import demo_load, demo_soak


def test_remove_empty_cache_dirs(tmp_path):
    old = time.time() - 100
    names = {"empty_old": "a" * 64, "empty_new": "b" * 64, "full_old": "c" * 64, "not_a_hash": "vibe_edit_history"}
    for key, name in names.items():
        (tmp_path / name).mkdir()
        if key == "full_old":
            (tmp_path / name / "image.png").write_bytes(b"x")
        if key != "empty_new":
            os.utime(tmp_path / name, (old, old))
    assert remove_empty_cache_dirs(tmp_path, min_age=10) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(v for k, v in names.items() if k != "empty_old")
    assert remove_empty_cache_dirs(tmp_path / "missing", min_age=10) == 0


def test_sweep_cache_while_requests_add_files(tmp_path):
    """Gradio 6's own sweep dies with 'Set changed size during iteration' when a file is added during it; this one
    deletes the old files with their folders, keeps new and keep_in_cache ones, and drops deleted ones from the set."""
    tracked: set[str] = set()

    def cached(name: str) -> str:  # as Gradio writes a result image: <cache>/<sha256>/image.png
        folder = tmp_path / name
        folder.mkdir()
        (folder / "image.png").write_bytes(b"png")
        return str((folder / "image.png").resolve())

    olds = [cached(f"{i:064x}") for i in range(2000)]  # the sweep gets age -1 (ctime cannot be set back)
    kept = cached("f" * 64)
    tracked.update(olds + [kept])
    blocks = type("B", (), {"GRADIO_CACHE": str(tmp_path), "temp_file_sets": [tracked],
                            "blocks": {0: type("C", (), {"keep_in_cache": {kept}})()}})()  # fmt: skip
    stop = threading.Event()

    def add() -> None:  # a request finishing now and then
        i = 0
        while not stop.is_set():
            tracked.add(str(tmp_path / f"new{i}.png"))
            i += 1
            time.sleep(0.0005)

    adder = threading.Thread(target=add)
    adder.start()
    try:
        files, _ = sweep_cache(blocks, age=-1, min_dir_age=10)
    finally:
        stop.set()
        adder.join()
    assert files == 2000
    assert not any(Path(p).exists() or Path(p).parent.exists() for p in olds)
    assert Path(kept).exists() and kept in tracked and not set(olds) & tracked
    assert sweep_cache(blocks, age=3600, min_dir_age=10) == (0, 0)  # nothing old enough: nothing removed


def test_cache_ttl_flag():
    assert build_parser().parse_args([]).cache_ttl == 3600
    assert build_parser().parse_args(["--cache-ttl", "30"]).cache_ttl == 30


def test_short_soak_tiny_student(tmp_path, capsys):
    student = demo_load.random_student("tiny", tmp_path)
    out = tmp_path / "soak.json"
    argv = ["--checkpoint", str(student), "--clients", "2", "--duration", "8", "--cache-age", "3"]
    rc = demo_soak.main([*argv, "--sample-every", "1", "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["errors"] == 0, (r["errors_by_kind"], r["first_errors"])
    assert rc == 0, r["cache_bound"]
    assert r["requests"] > 10 and r["server_log_errors"] == 0
    for key in ("rps", "img_s", "p50_ms", "p95_ms", "wall_s", "png_bytes_per_request"):
        assert r[key] > 0, key
    for snap in ("start", "end", "peak"):
        assert {"rss_mb", "bytes", "pngs", "dirs"} <= set(r[snap]) and r[snap]["rss_mb"] > 0
    assert {"rss_mb", "bytes", "files", "pngs", "dirs"} <= set(r["growth_per_1000_requests"])
    assert {"rss_mb", "bytes", "pngs", "dirs"} <= set(r["growth_per_1000_requests_second_half"])
    # the run outlasted a file's lifetime (3 s + a 1 s sweep), so the cache was swept: bounded, not one PNG per image
    assert r["cache_bound"]["checked"] and r["cache_bound"]["below"]
    assert r["end"]["pngs"] < r["requests"] * r["images_per_request"]
    assert "| requests | errors |" in capsys.readouterr().out
