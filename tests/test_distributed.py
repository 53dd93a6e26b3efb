"""Two-process DDP on CPU (gloo) through ``accelerate launch``: the real multi-GPU code path, by hand.

Slow (two interpreters start): run with ``pytest -m slow tests/test_distributed.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fdistill method.divergence=kl train.grad_accum=2", "sid", "dmd"])
def test_ddp_two_processes(tmp_path, method):
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fdistill", "distill", "configs/gmm8.yaml",
        "train.steps=8", "train.fake_warmup_steps=2", "train.log_every=4", "train.num_eval_samples=256",
        f"output_dir={tmp_path}", *f"method.name={method}".split(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["images_seen"] == 8 * 256 * 2  # global batch = per-process batch x processes
