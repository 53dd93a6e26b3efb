"""fdistill.train.vae: AutoencoderKL training for latent teachers (tiny images and networks, CPU, a few seconds)."""

import json
import logging

import pytest
import torch
from fixtures import sigterm_on_call

import fdistill.train.vae as vae_module
from fdistill.data import synthetic_dataset
from fdistill.train.vae import fit_vae, main, save_vae, train_vae

torch.set_num_threads(1)

TINY = dict(block_out_channels=(8, 16), batch_size=8, progress=False)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return synthetic_dataset(n=32, size=16, channels=3).images


def test_saved_folder_reloads_identically(images, tmp_path):
    from diffusers import AutoencoderKL

    vae, info = fit_vae(images, steps=3, log_every=1, **TINY)
    out = save_vae(vae, tmp_path / "vae", {**info, "command": "test"}, images)
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "training_info.json",
        "README.md",
        "recon.png",
    }
    assert not list(tmp_path.glob(".vae*")), "temp folders must be gone"
    loaded = AutoencoderKL.from_pretrained(out).eval()
    assert loaded.config.scaling_factor == pytest.approx(vae.config.scaling_factor, rel=1e-12)
    assert list(loaded.config.down_block_types) == ["DownEncoderBlock2D"] * 2
    z = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # factor 2: 16x16 -> 8x8
    with torch.no_grad():
        assert torch.equal(vae.decode(z).sample, loaded.decode(z).sample)
        assert torch.equal(vae.encode(images[:4]).latent_dist.mean, loaded.encode(images[:4]).latent_dist.mean)
    # saving again replaces the folder atomically
    save_vae(vae, out, {**info, "command": "again"}, images)
    assert json.loads((out / "training_info.json").read_text())["command"] == "again"
    assert not list(tmp_path.glob(".vae*"))


def test_scaling_factor_gives_unit_std_latents(images, tmp_path):
    from diffusers import AutoencoderKL

    out = train_vae(images, tmp_path / "vae", steps=4, log_every=2, command="test", **TINY)
    vae = AutoencoderKL.from_pretrained(out).eval()
    with torch.no_grad():
        z = vae.config.scaling_factor * vae.encode(images).latent_dist.mean
    assert z.double().std().item() == pytest.approx(1.0, rel=1e-3)
    info = json.loads((out / "training_info.json").read_text())
    assert info["steps"] == 4 and info["scaling_factor"] == pytest.approx(1 / info["latent_std"])
    assert info["latent_shape"] == [4, 8, 8] and info["n_params"] > 0
    assert info["recon_psnr"] == pytest.approx(-10 * torch.tensor(info["recon_mse"]).log10().item())
    assert "AutoencoderKL.from_pretrained" in (out / "README.md").read_text()


def test_loss_decreases(images):
    _, info = fit_vae(images, steps=30, log_every=1, lr=2e-3, seed=1, **TINY)
    losses = [row["loss"] for row in info["log"]]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_deterministic(images):
    _, a = fit_vae(images[:16], steps=2, log_every=1, **TINY)
    _, b = fit_vae(images[:16], steps=2, log_every=1, **TINY)
    assert [r["loss"] for r in a["log"]] == [r["loss"] for r in b["log"]]


def test_max_minutes_stops_early_and_still_saves(images, tmp_path):
    out = train_vae(images, tmp_path / "v", steps=1000, max_minutes=0.0, command="t", **TINY)
    info = json.loads((out / "training_info.json").read_text())
    assert info["stopped_early"] and info["steps"] == 0 and (out / "diffusion_pytorch_model.safetensors").is_file()


def test_cli_bad_data_name(tmp_path, capsys):
    assert main(["--data", "nope", "--out", str(tmp_path / "v"), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'nope'" in err and "emoji" in err
    assert not (tmp_path / "v").exists()


def test_cli_bad_args(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "v"), "--steps", "many"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--steps" in err
    assert main(["--data", "synthetic", "--size", "18", "--out", str(tmp_path / "v"), "--steps", "1"]) == 2
    assert "divisible" in capsys.readouterr().err


def test_cli_runs_on_synthetic(tmp_path, capsys):
    out = tmp_path / "v"
    argv = ["--data", "synthetic", "--size", "16", "--out", str(out), "--steps", "2", "--batch-size", "8"]
    assert main([*argv, "--channels", "8,16", "--no-progress", "--log-every", "1"]) == 0
    assert "saved" in capsys.readouterr().out
    info = json.loads((out / "training_info.json").read_text())
    assert info["command"].startswith("python -m fdistill.train.vae --data synthetic")


# ---- checkpoints and --resume (fdistill.train.resumable) -------------------------------------------------------

SYNTH = ["--data", "synthetic", "--size", "16", "--channels", "8,16", "--batch-size", "8", "--no-progress"]


def _weights(out) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "diffusion_pytorch_model.safetensors"))


def _assert_same_run(a, b) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ia, ib = (json.loads((p / "training_info.json").read_text()) for p in (a, b))
    for key in ("steps", "log", "recon_mse", "recon_psnr", "latent_mean", "latent_std", "scaling_factor"):
        assert ia[key] == ib[key], key


def test_sigterm_then_resume_is_bit_exact(images, tmp_path, monkeypatch):
    from fdistill.train.checkpoint import list_checkpoints

    args = dict(steps=6, log_every=1, checkpoint_every=2, command="t", **TINY)
    full = train_vae(images, tmp_path / "full", **args)
    assert not (tmp_path / "full.run").exists(), "a finished run removes its checkpoints"
    with monkeypatch.context() as m:
        sigterm_on_call(m, vae_module, "_loss", 3)
        part = train_vae(images, tmp_path / "part", **args)
    info = json.loads((part / "training_info.json").read_text())
    assert info["stopped_by_signal"] and info["steps"] == 3
    assert [p.name for p in list_checkpoints(tmp_path / "part.run")] == ["step_00000002", "step_00000003"]
    older = tmp_path / "older"  # a run killed at any point resumes from an earlier checkpoint just the same
    older_ckpt = older.with_name("older.run") / "checkpoints" / "step_00000002"
    older_ckpt.parent.mkdir(parents=True)
    (tmp_path / "part.run" / "checkpoints" / "step_00000002").rename(older_ckpt)
    _assert_same_run(full, train_vae(images, part, resume="latest", **args))
    assert not (tmp_path / "part.run").exists()
    _assert_same_run(full, train_vae(images, older, resume=str(older_ckpt), **args))


def test_cli_resume_errors_are_one_line(tmp_path, capsys, monkeypatch, caplog):
    out = tmp_path / "v"
    argv = [*SYNTH, "--out", str(out), "--steps", "4", "--checkpoint-every", "1"]
    with monkeypatch.context() as m:
        sigterm_on_call(m, vae_module, "_loss", 2)
        assert main(argv) == 0
    assert "--resume latest" in capsys.readouterr().out
    ckpts = sorted((tmp_path / "v.run" / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step_00000001", "step_00000002"]

    def error(extra: list[str]) -> str:
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:"), err
        return err

    assert "--resume latest" in error([])  # a fresh run does not overwrite an interrupted one
    assert "lr=" in error(["--lr", "1e-3", "--resume", "latest"])  # another recipe
    assert "no such checkpoint" in error(["--resume", str(tmp_path / "nowhere")])
    state = ckpts[-1] / "state.pt"
    state.write_bytes(state.read_bytes()[:-1] + b"x")
    err = error(["--resume", str(ckpts[-1])])
    assert "state.pt" in err and "sha256" in err
    (ckpts[0] / "manifest.json").unlink()
    err = error(["--resume", "latest"])
    assert "no complete checkpoint" in err and "state.pt" in err
    # --resume latest without checkpoints: starts fresh (with a warning), like the distill and teacher trainers
    with caplog.at_level(logging.WARNING, logger="fdistill"):
        assert main([*SYNTH, "--out", str(tmp_path / "w"), "--steps", "2", "--resume", "latest"]) == 0
    assert any("starting from step 0" in r.getMessage() for r in caplog.records)
    assert json.loads((tmp_path / "w" / "training_info.json").read_text())["steps"] == 2


def test_cli_sigterm_to_a_subprocess_then_resume_is_bit_exact(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    argv = [*SYNTH, "--steps", "60", "--log-every", "5", "--threads", "1", "--checkpoint-every"]
    ref, out = tmp_path / "ref", tmp_path / "v"
    assert main([*argv, "0", "--out", str(ref)]) == 0  # checkpoints only at the end: the same weights
    proc = subprocess.Popen(
        [sys.executable, "-m", "fdistill.train.vae", *argv, "1", "--out", str(out)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ckpts, deadline = tmp_path / "v.run" / "checkpoints", time.monotonic() + 300
    while not (ckpts.is_dir() and any(p.name.startswith("step_") for p in ckpts.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "stopped by signal" in stdout and "--resume latest" in stdout
    assert json.loads((out / "training_info.json").read_text())["steps"] < 60
    assert main([*argv, "0", "--out", str(out), "--resume", "latest"]) == 0
    _assert_same_run(ref, out)
    assert not (tmp_path / "v.run").exists()
