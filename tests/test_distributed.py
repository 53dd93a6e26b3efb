"""Two-process DDP on CPU (gloo) through ``accelerate launch``: the real multi-GPU code path, by hand.

``accelerate launch --cpu --num_processes 2`` starts ONE process (accelerate's simple launcher); two CPU processes
need the torchrun launcher (``--multi_gpu``) with ``ACCELERATE_USE_CPU=1``, which makes accelerate pick gloo.
Every test checks ``images_seen`` = steps x batch x 2, which only two real processes give.

Slow (two interpreters start): run with ``pytest -m slow tests/test_distributed.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
ENV = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fdistill method.divergence=kl train.grad_accum=2", "sid", "dmd"])
def test_ddp_two_processes(tmp_path, method):
    cmd = [
        *LAUNCH, "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fdistill", "distill", "configs/gmm8.yaml",
        "train.steps=8", "train.fake_warmup_steps=2", "train.log_every=4", "train.num_eval_samples=256",
        f"output_dir={tmp_path}", *f"method.name={method}".split(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **ENV})
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["images_seen"] == 8 * 256 * 2  # global batch = per-process batch x processes


@pytest.mark.slow
@pytest.mark.parametrize("disc_features", ["fake", "teacher"])
def test_ddp_two_processes_image_teacher(tmp_path, disc_features):
    """The README's main job shape (pixel UNet teacher, f-distill JS + GAN on real images) under DDP."""
    from test_image_distill import save_tiny_fmnist_teacher

    save_tiny_fmnist_teacher(tmp_path / "teacher")
    cmd = [
        *LAUNCH, "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fdistill", "distill",
        "configs/fmnist_fdistill_js.yaml", f"teacher.path={tmp_path / 'teacher'}", "teacher.sample_nfe=2",
        "data.name=synthetic", "train.steps=4", "train.batch_size=4", "train.fake_warmup_steps=1",
        "train.num_eval_samples=8", "train.eval_every=0", "train.max_minutes=0", "train.grad_accum=2",
        f"method.disc_features={disc_features}", f"output_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **ENV})
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["images_seen"] == 4 * 4 * 2
    assert (tmp_path / "run" / "student" / "model_index.json").is_file()
