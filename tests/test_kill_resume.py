"""Interrupted distillation runs continue exactly: SIGTERM (what schedulers send) finishes the step, checkpoints
and returns; a run killed anywhere (SIGKILL, slow test) loses at most the steps since its last complete checkpoint.
``--resume latest`` then gives the uninterrupted run's weights, EMA, optimizer state and ``metrics.jsonl`` rows
(rows logged after the resumed checkpoint are dropped: they are logged again)."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import TINY, tiny

from fdistill.train.checkpoint import check_checkpoint, list_checkpoints
from fdistill.train.distill import Distiller, distill
from fdistill.train.metrics_log import truncate_metrics

ARGS = ["method.name=fdistill", "method.divergence=kl", "train.checkpoint_every=100"]


def final_state(run_dir) -> dict[str, torch.Tensor]:
    """Every tensor of the newest checkpoint: the prepared networks (``model*.safetensors``: generator, fake score,
    discriminator), their optimizers' moments and the EMA generator (the first registered object)."""
    from accelerate.utils import load as accelerate_load

    ckpt = list_checkpoints(run_dir)[-1]
    out: dict[str, torch.Tensor] = {}
    for f in sorted(ckpt.glob("model*.safetensors")):
        out.update({f"{f.stem}/{k}": v for k, v in load_file(str(f)).items()})
    for f in sorted(ckpt.glob("optimizer*.bin")):
        for pid, moments in accelerate_load(f, map_location="cpu")["state"].items():
            out.update({f"{f.stem}/{pid}/{k}": torch.as_tensor(v) for k, v in moments.items()})
    ema = accelerate_load(ckpt / "custom_checkpoint_0.pkl", map_location="cpu")
    out.update({f"ema/{k}": v for k, v in ema.items()})
    return out


TIMING = ("steps_per_s", "eval/eval_seconds")  # wall-clock values: the only ones two identical runs differ in


def metric_rows(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def assert_same_state(a, b) -> None:
    sa, sb = final_state(a), final_state(b)
    assert sa.keys() == sb.keys() and any(k.startswith("ema/") for k in sa)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_sigterm_checkpoints_the_step_and_resume_is_bit_exact(tmp_path, monkeypatch, caplog):
    full, part = tmp_path / "full", tmp_path / "part"
    distill(tiny(full, *ARGS))
    before = signal.getsignal(signal.SIGTERM)
    original = Distiller.generator_phase

    def phase_then_sigterm(self, step):
        out = original(self, step)
        if step == 2:  # the third step: the signal lands mid-step, before the generator's update
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Distiller, "generator_phase", phase_then_sigterm)
    with caplog.at_level(logging.INFO, logger="fdistill"):
        assert distill(tiny(part, *ARGS)) == part  # returns instead of dying
    lines = [r.getMessage() for r in caplog.records if "stopped by signal" in r.getMessage()]
    assert lines == ["stopped by signal at step 3; checkpoint saved, continue with --resume latest"]
    assert [p.name for p in list_checkpoints(part)] == ["step_00000003"]  # the finished step, checkpointed
    assert not (part / "metrics.json").exists()  # no final evaluation of a stopped run
    assert signal.getsignal(signal.SIGTERM) == before  # the trainer's handler is gone again
    monkeypatch.setattr(Distiller, "generator_phase", original)
    distill(tiny(part, *ARGS), resume="latest")  # steps 4..6
    assert_same_state(full, part)
    assert metric_rows(part) == metric_rows(full)
    assert (part / "metrics.json").is_file()


# ---- metrics.jsonl on resume ------------------------------------------------------------------------------------

EVERY = ["train.log_every=1", "train.checkpoint_every=2", "train.keep_checkpoints=3"]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """An uninterrupted 6-step run logging every step, checkpoints at 2, 4 and 6 (copied by each test)."""
    run = tmp_path_factory.mktemp("logged") / "run"
    distill(tiny(run, *ARGS, *EVERY))
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002", "step_00000004", "step_00000006"]
    return run


def _killed_copy(src, dst, keep_upto: int | None, partial_row: bool = True):
    """``src`` as a run killed after its checkpoint of step ``keep_upto`` (None: before its first one) had been
    written, later rows logged, the last one half-written."""
    shutil.copytree(src, dst)
    (dst / "metrics.json").unlink()
    for ckpt in list_checkpoints(dst):
        if keep_upto is None or int(ckpt.name[5:]) > keep_upto:
            shutil.rmtree(ckpt)
    if partial_row:
        with (dst / "metrics.jsonl").open("a") as f:
            f.write('{"step": 7, "loss/fa')
    return dst


@pytest.mark.parametrize("keep_upto", [4, 6, None], ids=["mid-run", "in-final-eval", "before-1st-checkpoint"])
def test_resume_drops_the_rows_logged_after_its_checkpoint(logged_run, tmp_path, keep_upto, caplog):
    """Killed after step 5 was logged (resumes from step 4), while the final evaluation ran (resumes from step 6:
    its row, logged at step 6 after the checkpoint, is not kept twice) or before any checkpoint (starts afresh)."""
    part = _killed_copy(logged_run, tmp_path / "part", keep_upto)
    with caplog.at_level(logging.WARNING, logger="fdistill"):
        distill(tiny(part, *ARGS, *EVERY), resume="latest")
    assert metric_rows(part) == metric_rows(logged_run)
    assert "row(s) logged" in caplog.text
    assert_same_state(logged_run, part)


def test_truncate_metrics_without_a_recorded_length_goes_by_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 2, "a": 1.0}, {"step": 4, "a": 2.0}, {"step": 4, "eval/x": 3.0}, {"step": 6, "a": 4.0}]
    body = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(body + '{"step": 8, "a"')  # a half-written row
    assert truncate_metrics(path, 4) == 2
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:3]
    path.write_text(body)
    assert truncate_metrics(path, 4, size=len(json.dumps(rows[0])) + 1) == 3  # the length recorded at step 4
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:1]
    path.write_text(body)
    assert truncate_metrics(path, 6, size=5) == 0  # a length inside a row is not one this writer recorded
    assert path.read_text() == body
    assert truncate_metrics(tmp_path / "missing.jsonl", 3, size=0) == 0


# ---- SIGKILL at any point (slow: a dozen subprocess starts) -----------------------------------------------------

KILL_STEPS = 40
KILL_ARGS = [*TINY, *ARGS, f"train.steps={KILL_STEPS}", "train.checkpoint_every=2", "train.log_every=1"]
REPO = Path(__file__).resolve().parents[1]


def _launch(run_dir: Path, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "fdistill", "distill", "configs/gmm8.yaml", *KILL_ARGS, f"output_dir={run_dir}",
           "--resume", "latest"]  # fmt: skip
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def _wait_for(proc: subprocess.Popen, cond, timeout: float = 300.0) -> bool:
    """Poll ``cond`` every half millisecond until it holds (True) or the process exits (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.0005)
    raise TimeoutError("the run neither reached the kill point nor exited")


def _tmp_checkpoints(run_dir: Path) -> list[str]:
    root = run_dir / "checkpoints"
    return [n for n in os.listdir(root) if n.startswith(".tmp_step_")] if root.is_dir() else []


def _bar_started(log_path: Path) -> bool:
    """Whether the launch's progress bar ("distill:  0%| | 0/40 [...") is up: its loop has started."""
    return f"/{KILL_STEPS} [".encode() in log_path.read_bytes()


def _logged_step(run_dir: Path, log_path: Path) -> int:
    """The last step this launch logged (-1 before its loop starts: until then metrics.jsonl is an earlier one's)."""
    if not _bar_started(log_path):  # the bar opens after the rows logged after the checkpoint are dropped
        return -1
    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").is_file() else []
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return steps[-1] if steps else 0


def _newest_complete(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, after checking that no newer ``step_*`` folder is partial: a killed save
    leaves only a ``.tmp_step_*`` folder (older folders may be half-removed by a killed pruning, never picked)."""
    found = list_checkpoints(run_dir)
    if not found:
        return None
    assert check_checkpoint(found[-1]) is None, f"partial newest checkpoint {found[-1]}: {check_checkpoint(found[-1])}"
    return found[-1]


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL at seeded random moments (during start-up, mid-training, while a checkpoint is being written, during
    the final evaluation), ``--resume latest`` after each until the run finishes: the final networks, optimizer
    moments, EMA and ``metrics.jsonl`` rows equal an uninterrupted run's, and every resume loaded the newest
    complete checkpoint."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    done = _launch(ref, tmp_path / "ref.log")
    assert done.wait(timeout=600) == 0, (tmp_path / "ref.log").read_text()[-3000:]

    rng = random.Random(1234)
    plan = ["time", "step", "checkpoint", "step", "checkpoint", "step", "final"]
    kills, mid_write, launches = [], 0, 0
    while plan:
        kind = plan.pop(0)
        expected = _newest_complete(run)
        start = int(expected.name[5:]) if expected is not None else 0
        log_path = tmp_path / f"launch_{launches}.log"
        proc, launches = _launch(run, log_path), launches + 1
        if kind == "time":
            deadline = time.monotonic() + rng.uniform(0.2, 2.0)  # start-up: imports, networks, resume (~2 s)
            reached = _wait_for(proc, lambda d=deadline: time.monotonic() >= d)
        elif kind == "step":
            assert start < KILL_STEPS - 1, f"an earlier kill came too late ({kills})"
            target = rng.randint(start + 1, start + max(1, (KILL_STEPS - start) // 2))  # leaves room for the rest
            reached = _wait_for(proc, lambda t=target, p=log_path: _logged_step(run, p) >= t)
            time.sleep(rng.uniform(0.0, 0.04))
        elif kind == "checkpoint":  # a save of this launch: a killed one's .tmp_step_* is removed by its first save
            stale = set(_tmp_checkpoints(run))
            reached = _wait_for(proc, lambda s=stale: not s & set(_tmp_checkpoints(run)))
            reached = reached and _wait_for(proc, lambda: bool(_tmp_checkpoints(run)))
        else:  # the last checkpoint is published: the final evaluation and export run now
            final = run / "checkpoints" / f"step_{KILL_STEPS:08d}"
            reached = _wait_for(proc, final.is_dir)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL and reached, f"{kind}: the run ended before the kill"
        if kind == "checkpoint" and _tmp_checkpoints(run):
            mid_write += 1  # killed with the checkpoint half-written (the folder is still .tmp_step_*)
        elif kind == "checkpoint" and kills.count("checkpoint") < 4:
            plan.insert(0, "checkpoint")  # renamed before the kill landed: try again
        kills.append(kind)
        text = log_path.read_text()
        assert "skipping" not in text and "Traceback" not in text, text[-3000:]
        resumed = re.findall(r"resumed from (\S+) at step (\d+)", text)
        if resumed:  # killed after the checkpoint was loaded: it must be the newest complete one
            assert expected is not None and resumed == [(str(expected), str(start))], (resumed, expected)
        _newest_complete(run)
    assert mid_write >= 1, f"no kill landed while a checkpoint was written ({kills})"

    expected = _newest_complete(run)
    log_path = tmp_path / "last.log"
    proc = _launch(run, log_path)
    assert proc.wait(timeout=600) == 0, log_path.read_text()[-3000:]
    text = log_path.read_text()
    assert re.findall(r"resumed from (\S+) at step", text) == [str(expected)]
    assert "skipping" not in text
    assert_same_state(ref, run)
    assert metric_rows(run) == metric_rows(ref)
    final_ref, final_run = (json.loads((d / "metrics.json").read_text()) for d in (ref, run))
    final_ref.pop("eval_seconds"), final_run.pop("eval_seconds")
    assert final_run == final_ref
