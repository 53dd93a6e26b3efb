"""Rewards: the differentiable CLIP preprocessing matches transformers' CLIP image processor, CLIP and preference
scores equal the model's closed form (transformers 5 output objects unwrapped), gradients reach latents through
the VAE and the generator's parameters through the trainer, and DI* trains with a tiny random CLIP reward."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fixtures import save_tiny_clip_model, save_tiny_latent_teacher  # noqa: E402

from fdistill.config import load_config  # noqa: E402
from fdistill.rewards import (  # noqa: E402
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    CLIPReward,
    GMMComponentReward,
    PreferenceReward,
    build_reward,
    clip_preprocess,
)

PROMPTS = ["a red apple", "a smiling face", "a blue car"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip_model(tmp_path_factory.mktemp("clip") / "tiny_clip")


@pytest.fixture(scope="module")
def sd_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd_reward")
    save_tiny_latent_teacher(root / "sd")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root


@pytest.mark.parametrize(("h", "w"), [(64, 64), (16, 16), (48, 64), (64, 40)])
def test_preprocessing_matches_the_clip_image_processor(h, w):
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    g = torch.Generator().manual_seed(h * w)
    u8 = (F.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=(h, w), mode="bilinear") * 255).round().byte()
    ref = proc(images=[a.permute(1, 2, 0).numpy() for a in u8], return_tensors="pt").pixel_values
    ours = clip_preprocess(u8.float() / 127.5 - 1, 32, (32, 32), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < 0.02  # PIL resizes uint8 (rounding 1/255/std ~ 0.015); torch stays float
    assert (ours - ref).abs().mean() < 0.006


def test_clip_score_is_scaled_cosine_of_model_embeddings(clip_dir):
    r = CLIPReward.from_pretrained(str(clip_dir), PROMPTS)
    assert r.scale == 100.0 and r.image_size == 16
    images = torch.rand(3, 3, 24, 24) * 2 - 1
    cond = torch.tensor([2, 0, 3])  # 3 = empty prompt
    score = r(images, cond)
    m, tok = r.model, r.tokenizer
    with torch.no_grad():
        pix = clip_preprocess(images, 16, (16, 16), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        out = m.get_image_features(pixel_values=pix)
        img = out if isinstance(out, torch.Tensor) else out.pooler_output
        t = tok(
            ["a blue car", "a red apple", ""], padding="max_length", max_length=16, truncation=True, return_tensors="pt"
        )
        out = m.get_text_features(input_ids=t.input_ids, attention_mask=t.attention_mask)
        txt = out if isinstance(out, torch.Tensor) else out.pooler_output
    expected = 100 * F.cosine_similarity(img, txt, dim=-1)
    torch.testing.assert_close(score.detach(), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(r(images, None), r.score_images(images, ["", "", ""]))


def test_preference_reward_defaults_to_logit_scale_and_takes_a_scale(clip_dir):
    p = PreferenceReward.from_pretrained(str(clip_dir), PROMPTS)
    assert p.scale == pytest.approx(float(p.model.logit_scale.exp()))
    c = CLIPReward.from_pretrained(str(clip_dir), PROMPTS)
    one = PreferenceReward.from_pretrained(str(clip_dir), PROMPTS, scale=1.0)
    x, cond = torch.rand(2, 3, 16, 16) * 2 - 1, torch.tensor([0, 1])
    torch.testing.assert_close(one(x, cond) * 100, c(x, cond), rtol=1e-5, atol=1e-4)  # HPS-style: cosine


def test_reward_gradient_reaches_latents_through_the_vae(clip_dir, sd_root):
    from fdistill.teachers.latent import load_latent_teacher

    teacher = load_latent_teacher(
        SimpleNamespace(
            path=str(sd_root / "sd"), subfolder=None, dtype="float32", prompts_file=str(sd_root / "prompts.txt")
        )
    )
    r = CLIPReward.from_pretrained(str(clip_dir), teacher.prompts, teacher.decode)
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    r(z, torch.tensor([0, 1])).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert set(r._text_cache) == {"a red apple", "a smiling face"}  # text side cached, no grad


def test_build_reward_from_config_and_clear_errors(clip_dir, sd_root, tmp_path):
    teacher = SimpleNamespace(prompts=PROMPTS, decode=None, parameters=lambda: iter([torch.zeros(1)]))
    cfg = load_config(
        None, ["teacher.kind=latent", "reward.kind=preference", f"reward.path={clip_dir}", "reward.scale=2.0"]
    )
    r = build_reward(cfg, teacher)
    assert isinstance(r, PreferenceReward) and r.scale == 2.0 and r.prompts == PROMPTS
    with pytest.raises(FileNotFoundError, match="reward.kind=clip needs reward.path"):
        build_reward(load_config(None, ["teacher.kind=latent", "reward.kind=clip"]), teacher)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_reward(
            load_config(None, ["teacher.kind=latent", "reward.kind=clip", f"reward.path={tmp_path / 'x'}"]), teacher
        )


def test_gmm_component_reward_is_the_component_log_density():
    from fdistill.teachers.gmm import gaussian_mixture_from_config

    cfg = load_config(None, ["teacher.means=[[0.0,0.0],[2.0,0.0]]", "teacher.stds=[0.5,1.0]"])
    teacher = gaussian_mixture_from_config(cfg.teacher, cfg.network)
    r = GMMComponentReward(teacher, 1)
    x = torch.tensor([[2.0, 0.0], [3.0, 1.0]])
    expected = torch.distributions.MultivariateNormal(torch.tensor([2.0, 0.0]), torch.eye(2)).log_prob(x)
    torch.testing.assert_close(r(x), expected)


def test_di_star_with_clip_reward_trains_and_reward_grad_reaches_generator(clip_dir, sd_root, tmp_path, monkeypatch):
    from test_latent_teacher import latent_run_config

    from fdistill.train.distill import Distiller

    cfg = latent_run_config(
        sd_root,
        tmp_path,
        "method.name=di_star",
        "method.alpha_rev=1.0",
        "method.alpha_cfg=0.5",
        "reward.kind=clip",
        f"reward.path={clip_dir}",
    )
    d = Distiller(cfg)
    assert isinstance(d.reward, CLIPReward) and d.reward.prompts == PROMPTS
    g = d.accelerator.unwrap_model(d.generator)
    z, cond = torch.randn(2, 4, 8, 8), torch.tensor([0, 2])
    d.reward(g(z, cond), cond).sum().backward()
    grads = [p.grad for p in g.parameters() if p.requires_grad]
    reached = [x for x in grads if x is not None and x.abs().sum() > 0]
    assert len(reached) > 0.9 * len(grads)
    g.zero_grad(set_to_none=True)
    d.run()
    rows = (tmp_path / "metrics.jsonl").read_text()
    assert "method/reward" in rows and "loss/generator" in rows
