"""Faults and bad input around checkpoints: a damaged newest checkpoint is skipped by ``--resume latest`` and
refused as ``--resume PATH``, a full disk stops cleanly, a crafted pickle never runs, and ``fdistill eval`` on a
model folder says what to do."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import TINY, tiny

from fdistill.cli import main
from fdistill.train.checkpoint import (
    MANIFEST,
    CheckpointError,
    DiskFullError,
    TrainState,
    check_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    write_manifest,
)
from fdistill.train.distill import distill

ARGS = ["method.name=fdistill", "method.divergence=kl", "train.checkpoint_every=3", "train.keep_checkpoints=3"]
STEP3, STEP6 = "step_00000003", "step_00000006"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """An uninterrupted 6-step run with checkpoints at steps 3 and 6 (copied by each test)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    distill(tiny(run, *ARGS))
    assert [p.name for p in list_checkpoints(run)] == [STEP3, STEP6]
    return run


@pytest.fixture
def run(finished_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished_run, dst)
    return dst


def _cli(run_dir, *extra):
    return main(["distill", "configs/gmm8.yaml", *TINY, *ARGS, f"output_dir={run_dir}", *extra])


def _one_line(capsys) -> str:
    """The one error line a command wrote to stderr (an unclosed tqdm bar may precede it on its line)."""
    err = capsys.readouterr().err
    lines = re.findall(r"(?:\bfdistill(?: eval)?|^error): [^\r\n]*", err, re.M)
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _truncate(path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


# ---- 1. integrity ---------------------------------------------------------------------------------------------


def test_latest_skips_a_truncated_checkpoint_and_resumes_bit_exact(run, caplog):
    weights = run / "checkpoints" / STEP6 / "model.safetensors"
    reference = {k: v.clone() for k, v in load_file(str(weights)).items()}  # the uninterrupted run's generator
    size = weights.stat().st_size
    _truncate(weights)
    assert check_checkpoint(run / "checkpoints" / STEP6) == f"model.safetensors is 100 bytes, {MANIFEST} says {size}"
    with caplog.at_level(logging.INFO, logger="fdistill"):
        distill(tiny(run, *ARGS), resume="latest")  # resumes from step 3, redoes steps 4..6
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 1, skipped
    assert skipped[0] == (f"--resume latest: skipping {run / 'checkpoints' / STEP6}: model.safetensors is 100 bytes, "
                          f"manifest.json says {size}; resuming from {run / 'checkpoints' / STEP3}")  # fmt: skip
    assert f"resumed from {run / 'checkpoints' / STEP3} at step 3" in caplog.text
    again = load_file(str(weights))
    assert again.keys() == reference.keys() and all(torch.equal(again[k], reference[k]) for k in reference)
    assert check_checkpoint(run / "checkpoints" / STEP6) is None


def test_resume_path_to_a_damaged_checkpoint_is_one_line_exit_2(run, capsys):
    _truncate(run / "checkpoints" / STEP6 / "optimizer.bin")
    assert _cli(run, "--resume", str(run / "checkpoints" / STEP6)) == 2
    err = _one_line(capsys)
    assert "damaged" in err and "optimizer.bin is 100 bytes" in err and STEP6 in err


def test_changed_missing_or_added_files_are_named(run):
    ckpt = run / "checkpoints" / STEP6
    data = bytearray((ckpt / "model_1.safetensors").read_bytes())
    data[-1] ^= 1  # same size, one bit flipped
    (ckpt / "model_1.safetensors").write_bytes(bytes(data))
    assert "model_1.safetensors does not match its sha256" in check_checkpoint(ckpt)
    (ckpt / "model_1.safetensors").unlink()
    assert check_checkpoint(ckpt) == f"model_1.safetensors is missing ({MANIFEST} lists it)"
    old = run / "checkpoints" / STEP3
    (old / "custom_checkpoint_9.pkl").write_bytes(b"x")
    assert "custom_checkpoint_9.pkl is not listed" in check_checkpoint(old)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):  # never silently restart from step 0
        resolve_resume(run, "latest")


def test_checkpoints_from_before_manifests(run, caplog):
    for ckpt in list_checkpoints(run):
        (ckpt / MANIFEST).unlink()
    assert resolve_resume(run, "latest") == run / "checkpoints" / STEP6  # loadable, so complete
    with caplog.at_level(logging.WARNING, logger="fdistill.train.checkpoint"):
        assert resolve_resume(run, str(run / "checkpoints" / STEP3)) == run / "checkpoints" / STEP3
    assert any("cannot be verified" in r.getMessage() for r in caplog.records)
    _truncate(run / "checkpoints" / STEP6 / "model_2.safetensors")
    assert resolve_resume(run, "latest") == run / "checkpoints" / STEP3
    assert "model_2.safetensors is unreadable" in check_checkpoint(run / "checkpoints" / STEP6)


def test_teacher_trainer_refuses_a_damaged_checkpoint(tmp_path, capsys):
    from test_train_teacher import TINY as TEACHER_TINY

    from fdistill.train.teacher import main as teacher_main

    cfg = [*TEACHER_TINY, "steps=2", f"output_dir={tmp_path}"]
    assert teacher_main(cfg) == 0
    ckpt = tmp_path / "checkpoints" / "step_00000002"
    assert check_checkpoint(ckpt) is None
    _truncate(ckpt / "model.safetensors")
    capsys.readouterr()
    assert teacher_main([*cfg, "--resume", str(ckpt)]) == 2
    assert "model.safetensors is 100 bytes" in _one_line(capsys)
    assert teacher_main([*cfg, "--resume", "latest"]) == 2
    assert "no complete checkpoint" in _one_line(capsys)


# ---- 2. full disk ---------------------------------------------------------------------------------------------


def _fail_second_checkpoint(monkeypatch, error: Exception) -> None:
    """accelerate writes models, optimizers and RNG states, then the registered objects: fail there at step 6."""
    import accelerate.accelerator

    real = accelerate.accelerator.save_custom_state

    def save_custom_state(obj, path, index=0, **kw):
        if STEP6 in str(path):
            assert os.path.isfile(f"{path}/model.safetensors"), "fail midway, not before any file is written"
            with open(f"{path}/custom_checkpoint_{index}.pkl", "wb") as f:
                f.write(b"partial")
            raise error
        real(obj, path, index, **kw)

    monkeypatch.setattr(accelerate.accelerator, "save_custom_state", save_custom_state)


def test_full_disk_stops_with_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    _fail_second_checkpoint(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    assert _cli(tmp_path) == 1
    err = _one_line(capsys)
    assert err.startswith("fdistill: disk full: could not write checkpoint") and str(tmp_path / "checkpoints") in err
    assert f"previous checkpoint {tmp_path / 'checkpoints' / STEP3} is intact" in err
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [STEP3]  # no partial .tmp_step_00000006
    assert check_checkpoint(tmp_path / "checkpoints" / STEP3) is None
    assert resolve_resume(tmp_path, "latest") == tmp_path / "checkpoints" / STEP3


def test_full_disk_seen_as_torch_runtime_error(tmp_path, monkeypatch):
    import fdistill.train.checkpoint as checkpoint

    # torch.save on a full disk raises "[enforce fail at inline_container.cc] unexpected pos": no errno
    _fail_second_checkpoint(monkeypatch, RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos"))
    monkeypatch.setattr(checkpoint, "_free_bytes", lambda path: 4096)
    with pytest.raises(DiskFullError, match="disk full") as info:
        distill(tiny(tmp_path, *ARGS))
    assert info.value.errno == errno.ENOSPC and "0.0 MiB free" in str(info.value)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [STEP3]


# ---- 3. loading cannot run code -------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker`` (stands for arbitrary code)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _plant(ckpt, marker, name: str = "custom_checkpoint_2.pkl") -> None:
    """Replace a registered object's pickle (the TrainState's by default) by one whose unpickling runs code."""
    torch.save({"step": _Payload(marker), "images_seen": 0}, ckpt / name)


def test_a_crafted_pickle_is_refused_and_never_runs(run, tmp_path, capsys):
    probe = tmp_path / "probe"
    _plant(tmp_path, probe)  # the payload is real: accelerate's own weights_only=False load would run it
    torch.load(tmp_path / "custom_checkpoint_2.pkl", weights_only=False)
    assert probe.exists()

    marker = tmp_path / "pwned"
    ckpt = run / "checkpoints" / STEP6
    _plant(ckpt, marker)  # the manifest still records the genuine file
    assert _cli(run, "--resume", str(ckpt)) == 2
    assert "custom_checkpoint_2.pkl" in _one_line(capsys)

    write_manifest(ckpt)  # an attacker who also rewrites the manifest
    assert _cli(run, "--resume", str(ckpt)) == 2
    err = _one_line(capsys)
    assert "custom_checkpoint_2.pkl holds objects other than tensors" in err and "refused unpickling" in err
    assert resolve_resume(run, "latest") == run / "checkpoints" / STEP3  # latest skips it too
    assert not marker.exists()


def test_load_checkpoint_unpickles_registered_objects_weights_only(tmp_path):
    """Even a file swapped in after resolve_resume's check is not executed by load_checkpoint."""
    from accelerate import Accelerator

    acc = Accelerator()
    state = TrainState()
    acc.register_for_checkpointing(state)
    state.step = 7
    acc.save_state(str(tmp_path / "ckpt"))
    state.step = 0
    load_checkpoint(acc, tmp_path / "ckpt")
    assert state.step == 7
    marker = tmp_path / "pwned"
    _plant(tmp_path / "ckpt", marker, "custom_checkpoint_0.pkl")
    with pytest.raises(Exception, match="Weights only load failed"):
        load_checkpoint(acc, tmp_path / "ckpt")
    assert not marker.exists()


# ---- 4. fdistill eval on a model folder ------------------------------------------------------------------------


def test_eval_on_a_teacher_folder_says_how_to_evaluate_a_teacher(tmp_path, capsys):
    from fdistill.eval.images import main as eval_main

    teacher = tmp_path / "my_teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"_class_name": "EDMUNet"}))
    (teacher / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    shutil.copy("checkpoints/fmnist_teacher/samples.png", teacher / "samples.png")  # one image: a model card's grid
    assert eval_main([str(teacher)]) == 2
    err = _one_line(capsys)
    assert "is a model folder (EDMUNet" in err and "fdistill eval STUDENT --teacher-nfe" in err
    assert "need at least 2 samples" not in err

    student = tmp_path / "student"
    student.mkdir()
    (student / "card.json").write_text(json.dumps({"teacher_path": str(teacher)}))
    assert eval_main([str(teacher)]) == 2
    assert f"fdistill eval {student} --teacher-nfe 9,17,35" in _one_line(capsys)


def test_eval_on_the_shipped_teacher(capsys):
    from fdistill.eval.images import main as eval_main

    assert eval_main(["checkpoints/fmnist_teacher"]) == 2
    assert "fdistill eval checkpoints/fmnist_student --teacher-nfe 9,17,35" in _one_line(capsys)
