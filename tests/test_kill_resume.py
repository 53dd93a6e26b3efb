"""Interrupted distillation runs continue exactly: SIGTERM (what schedulers send) finishes the step, checkpoints
and returns; ``--resume latest`` then gives the uninterrupted run's weights, EMA and optimizer state bit for bit."""

from __future__ import annotations

import logging
import os
import signal

import torch
from safetensors.torch import load_file
from test_trainer import tiny

from fdistill.train.checkpoint import list_checkpoints
from fdistill.train.distill import Distiller, distill

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
    assert (part / "metrics.json").is_file()
