"""Teacher trainer: config errors, resumable data order, EMA schedule, and bit-exact ``--resume latest``."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import fdistill.train.teacher.trainer as teacher_mod
from fdistill.config import ConfigError
from fdistill.metrics.plots import save_image_grid
from fdistill.nets.unet import EDMUNet
from fdistill.train.teacher import (
    StepSampler,
    ema_beta,
    export_card,
    load_teacher_config,
    main,
    train_teacher,
)

TINY = [
    "data.name=synthetic",
    "data.synthetic_size=24",
    "network.sample_size=8",
    "network.block_out_channels=[8,16]",
    "network.attention_levels=[1]",
    "network.norm_num_groups=4",
    "network.attention_head_dim=8",
    "network.num_classes=3",
    "network.dropout=0.1",  # dropout masks must also replay exactly on resume
    "batch_size=8",  # 24 images / 8 = 3 steps an epoch: the resumed part crosses an epoch boundary
    "lr=1e-3",
    "lr_warmup_steps=2",
    "ema_halflife_kimg=0.05",
    "checkpoint_every=2",
    "log_every=1",
    "sample_rows=1",
    "sample_nfe=1",
    "tensorboard=false",
    "seed=3",
]


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'stepz'.*Did you mean steps"):
        load_teacher_config(None, ["stepz=3"])
    with pytest.raises(ConfigError, match="data.name='cifar'"):
        load_teacher_config(None, ["data.name=cifar"])
    with pytest.raises(ConfigError, match="key=value"):
        load_teacher_config(None, ["steps"])
    cfg = load_teacher_config("configs/fmnist_teacher.yaml", ["steps=7", "network.num_classes=0"])
    assert cfg.steps == 7 and cfg.network.num_classes == 0 and cfg.data.name == "fashion_mnist"


def test_main_dry_run_and_error(capsys):
    assert main(["configs/fmnist_teacher.yaml", "steps=11", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "steps: 11" in out and "block_out_channels" in out
    assert main(["configs/fmnist_teacher.yaml", "network.widht=3"]) == 2
    err = capsys.readouterr().err
    assert "network.widht" in err and len(err.strip().splitlines()) == 1


def test_step_sampler_resumes_mid_stream():
    full = list(StepSampler(10, 4, 0, 6, seed=1))
    assert len(full) == 24 and sorted(full[:10]) == list(range(10)) and sorted(full[10:20]) == list(range(10))
    assert list(StepSampler(10, 4, 3, 6, seed=1)) == full[12:]
    assert full[:10] != list(StepSampler(10, 4, 0, 6, seed=2))[:10]


def test_ema_beta_halflife_and_rampup():
    cfg = load_teacher_config(None, ["batch_size=100", "ema_halflife_kimg=1", "ema_rampup_ratio=0"])
    assert ema_beta(cfg, 5000) == pytest.approx(0.5**0.1)
    cfg = load_teacher_config(None, ["batch_size=100", "ema_halflife_kimg=1", "ema_rampup_ratio=0.1"])
    assert ema_beta(cfg, 2000) == pytest.approx(0.5 ** (100 / 200))
    assert ema_beta(load_teacher_config(None, ["ema_decay=0.9"]), 10) == 0.9


def test_save_image_grid(tmp_path):
    img = save_image_grid(torch.linspace(-1, 1, 5 * 64).reshape(5, 1, 8, 8), tmp_path / "g.png", nrow=3)
    with Image.open(img) as im:
        assert im.size == (3 * 10 + 2, 2 * 10 + 2) and im.mode == "L"


def _weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


def test_resume_is_bit_exact(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train_teacher(load_teacher_config(None, [*TINY, "steps=5", "tensorboard=true", f"output_dir={a}"]))
    train_teacher(load_teacher_config(None, [*TINY, "steps=2", f"output_dir={b}"]))  # "killed" after step 2
    with pytest.raises(ConfigError, match="--resume latest"):
        train_teacher(load_teacher_config(None, [*TINY, "steps=5", f"output_dir={b}"]))
    train_teacher(load_teacher_config(None, [*TINY, "steps=3", f"output_dir={b}"]), resume="latest")
    # resume from an explicit, older checkpoint: step 3 is redone and its metrics row replaced
    ckpt = b / "checkpoints" / "step_00000002"
    train_teacher(load_teacher_config(None, [*TINY, "steps=5", f"output_dir={b}"]), resume=str(ckpt))

    wa, wb = _weights(a, 5), _weights(b, 5)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], _weights(a, 4)[k]) for k in wa)  # it did train
    rows_a = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b] and len(rows_a) == 5

    ema_a, ema_b = EDMUNet.from_pretrained(a / "teacher"), EDMUNet.from_pretrained(b / "teacher")
    for (name, pa), pb in zip(ema_a.state_dict().items(), ema_b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    info = json.loads((b / "teacher" / "training_info.json").read_text())
    assert info["step"] == 5 and info["images_seen"] == 40
    assert (a / "samples" / "step_00000005.png").is_file() and (a / "config.yaml").is_file()
    assert sorted(p.name for p in (a / "checkpoints").iterdir()) == ["step_00000004", "step_00000005"]
    # the export holds the model only (TensorBoard logs live elsewhere in the run dir)
    assert {p.name for p in (a / "teacher").iterdir()} == {
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "training_info.json",
    }

    card = export_card(a, tmp_path / "card")
    assert (card / "diffusion_pytorch_model.safetensors").is_file() and (card / "samples.png").is_file()
    readme = (card / "README.md").read_text()
    assert "| steps | 5 (batch 8) |" in readme and "--teacher-nfe 9,17,35" in readme
    assert main([f"output_dir={tmp_path / 'nothing'}", "--export", str(tmp_path / "x")]) == 2


def test_sigterm_saves_and_resume_matches(tmp_path, monkeypatch):
    """SIGTERM finishes the current step and checkpoints it; --resume latest then equals an uninterrupted run."""
    a, c = tmp_path / "a", tmp_path / "c"
    before = signal.getsignal(signal.SIGTERM)
    train_teacher(load_teacher_config(None, [*TINY, "steps=3", f"output_dir={a}"]))
    original = teacher_mod._GracefulStop.__init__

    def init_then_sigterm(self):
        original(self)
        signal.raise_signal(signal.SIGTERM)  # arrives before the first step

    monkeypatch.setattr(teacher_mod._GracefulStop, "__init__", init_then_sigterm)
    train_teacher(load_teacher_config(None, [*TINY, "steps=3", f"output_dir={c}"]))
    assert [p.name for p in (c / "checkpoints").iterdir()] == ["step_00000001"]
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored
    monkeypatch.setattr(teacher_mod._GracefulStop, "__init__", original)
    train_teacher(load_teacher_config(None, [*TINY, "steps=3", f"output_dir={c}"]), resume="latest")
    wa, wc = _weights(a, 3), _weights(c, 3)
    assert all(torch.equal(wa[k], wc[k]) for k in wa)


def test_nonfinite_steps_stop_the_run(tmp_path):
    cfg = load_teacher_config(None, [*TINY, "steps=20", "lr=1e36", "lr_warmup_steps=0", "grad_clip=0",
                                     "max_nonfinite=2", "checkpoint_every=100", f"output_dir={tmp_path}"])  # fmt: skip
    with pytest.raises(RuntimeError, match="consecutive non-finite"):
        train_teacher(cfg)
