"""``model: sd_latent`` teacher training: a tiny SD-style teacher trains, resumes, exports a stock diffusers folder
that the latent teacher adapter loads, and its loss is SD's epsilon MSE."""

from __future__ import annotations

import json

import pytest
import torch

from fdistill.config import ConfigError
from fdistill.train.teacher import load_teacher_config, main, train_teacher
from fdistill.train.teacher.latent_recipe import LatentRecipe


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny SD folder: its VAE (16 px -> 4x8x8 latents) and its text encoder/tokenizer serve the new teacher."""
    from fixtures import save_tiny_latent_teacher

    sd = save_tiny_latent_teacher(tmp_path_factory.mktemp("latent_parts") / "sd", max_length=8)
    return sd / "vae", sd


def _overrides(parts, out, steps=4):
    vae, sd = parts
    return [
        "model=sd_latent",
        "data.name=synthetic",
        "data.synthetic_size=12",
        "network.sample_size=16",
        "network.in_channels=3",
        "network.num_classes=3",
        f"latent.vae_path={vae}",
        f"latent.text_encoder_path={sd}",
        "latent.max_length=8",
        "latent.block_out_channels=[8,16]",
        "latent.norm_num_groups=4",
        "latent.attention_heads=2",
        "latent.layers_per_block=1",
        f"steps={steps}",
        "batch_size=4",
        "checkpoint_every=2",
        "log_every=1",
        "sample_rows=1",
        "sample_nfe=2",
        "sample_guidance=2.0",
        "tensorboard=false",
        "ema_decay=0.5",
        f"output_dir={out}",
    ]


def test_loss_is_the_epsilon_mse():
    """For an epsilon UNet seen as D = x_t - sigma eps_hat, |D - x0|^2 / sigma^2 is exactly |eps_hat - eps|^2."""
    g = torch.Generator().manual_seed(0)
    x0, eps, eps_hat = (torch.randn(5, 4, 2, 2, generator=g) for _ in range(3))
    sigma = torch.rand(5, generator=g) * 3 + 0.05

    def denoise(x_t, s):
        return x_t - s.view(-1, 1, 1, 1) * eps_hat

    got = LatentRecipe.loss(denoise, x0, sigma, eps)
    torch.testing.assert_close(got, ((eps_hat - eps) ** 2).flatten(1).mean(1))


def test_trains_resumes_and_exports_a_loadable_sd_folder(parts, tmp_path):
    from fdistill.config import TeacherConfig
    from fdistill.teachers.latent import load_latent_teacher

    out = tmp_path / "run"
    cfg = load_teacher_config(None, _overrides(parts, out, steps=2))
    train_teacher(cfg)
    cfg4 = load_teacher_config(None, _overrides(parts, out, steps=4))
    train_teacher(cfg4, resume="latest")
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in rows)
    teacher_dir = out / "teacher"
    assert (teacher_dir / "model_index.json").is_file() and (teacher_dir / "prompts.txt").is_file()
    assert len(list((out / "samples").glob("*.png"))) >= 2

    prompts = (teacher_dir / "prompts.txt").read_text().splitlines()
    assert prompts == ["class_0", "class_1", "class_2"]
    teacher = load_latent_teacher(
        TeacherConfig(kind="latent", path=str(teacher_dir), prompts_file=str(teacher_dir / "prompts.txt"))
    )
    assert teacher.sample_shape == (4, 8, 8) and teacher.num_classes == 3
    x = torch.randn(2, 4, 8, 8)
    d = teacher.denoise(x, torch.full((2,), 1.0), torch.tensor([0, 2]), guidance=2.0)
    assert d.shape == x.shape and torch.isfinite(d).all()

    # the export is the EMA UNet of the last step, saved in the stock SD layout
    assert main([*_overrides(parts, out, steps=4), "--export", str(tmp_path / "shipped")]) == 0
    assert (tmp_path / "shipped" / "README.md").is_file() and (tmp_path / "shipped" / "unet").is_dir()


def test_sd_latent_needs_a_vae(parts, tmp_path):
    args = [a for a in _overrides(parts, tmp_path / "r") if not a.startswith("latent.vae_path")]
    with pytest.raises(ConfigError, match="latent.vae_path"):
        train_teacher(load_teacher_config(None, args))
    with pytest.raises(ConfigError, match="model='pixel'"):
        load_teacher_config(None, ["model=pixel"])


def test_stripped_text_encoder_loads_and_restores(parts, tmp_path, monkeypatch):
    """Shipped SD folders leave out the packaged MiniLM weights: the latent teacher loads them from the package,
    ``restore_packaged_text_encoder`` copies them back; a different text encoder is never stripped."""
    import shutil

    import fdistill.nets.text_encoders as te
    from fdistill.config import TeacherConfig
    from fdistill.teachers.latent import load_latent_teacher

    _, sd = parts
    folder = shutil.copytree(sd, tmp_path / "sd")
    (folder / "prompts.txt").write_text("a\nb\n")
    assert not te.strip_packaged_text_encoder(folder)  # the real MiniLM differs from this tiny CLIP encoder
    monkeypatch.setattr(te, "minilm_path", lambda: sd / "text_encoder")  # the "package" is this encoder
    assert te.strip_packaged_text_encoder(folder) and not (folder / "text_encoder" / te.WEIGHTS_FILE).exists()
    cfg = TeacherConfig(kind="latent", path=str(folder), prompts_file=str(folder / "prompts.txt"))
    x, s, c = torch.randn(1, 4, 8, 8), torch.ones(1), torch.tensor([1])
    d_stripped = load_latent_teacher(cfg).denoise(x, s, c)
    assert te.restore_packaged_text_encoder(folder) and (folder / "text_encoder" / te.WEIGHTS_FILE).is_file()
    torch.testing.assert_close(load_latent_teacher(cfg).denoise(x, s, c), d_stripped)
