"""fdistill.train.vae: AutoencoderKL training for latent teachers (tiny images and networks, CPU, a few seconds)."""

import json

import pytest
import torch

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
