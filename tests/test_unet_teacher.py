"""EDMUNet (save/load, preconditioning, features) and the UNet teacher adapter against closed forms.

The VP adapter is checked with docs/math.md C10: a fake "network" outputs the *exact* epsilon / v / x0 of a
known Gaussian ``N(mu, s0^2 I)`` in VP space, so the adapter must return the exact EDM Gaussian denoiser
``D(x) = (s0^2 x + sigma^2 mu) / (s0^2 + sigma^2)``; C9 checks classifier-free guidance on Gaussians.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from fdistill.config import TeacherConfig
from fdistill.core.noise import edm_preconditioning
from fdistill.nets.unet import EDMUNet
from fdistill.teachers.diffusers import (
    UNetTeacher,
    VPUNetDenoiser,
    alphas_cumprod_from_scheduler_config,
    load_teacher,
)

TINY = dict(
    sample_size=8,
    in_channels=1,
    block_out_channels=(8, 16),
    attention_levels=(1,),
    num_classes=3,
    norm_num_groups=4,
    attention_head_dim=8,
)


def tiny_edm_unet(seed: int = 0, **kw) -> EDMUNet:
    torch.manual_seed(seed)
    net = EDMUNet(**{**TINY, **kw}).eval()
    with torch.no_grad():  # diffusers zero-initialises nothing here, but make the output depend on every layer
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return net


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor, mu: torch.Tensor, s0: float) -> torch.Tensor:
    s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
    return (s0**2 * x + s2 * mu) / (s0**2 + s2)


# ----------------------------------------------------------------------------------------------------------------
# EDMUNet


def test_edm_unet_save_load_roundtrip(tmp_path):
    net = tiny_edm_unet()
    x, sigma, y = torch.randn(4, 1, 8, 8), torch.tensor([0.01, 0.5, 2.0, 40.0]), torch.tensor([0, 1, 2, 0])
    net.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == "EDMUNet"
    loaded = EDMUNet.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(net(x, sigma, y), loaded(x, sigma, y))
        assert torch.equal(net(x, sigma), loaded(x, sigma))
    assert loaded.sample_shape == (1, 8, 8) and loaded.num_classes == 3


def test_edm_unet_is_karras_preconditioned():
    net = tiny_edm_unet()
    x, sigma, y = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 1.0, 10.0]), torch.tensor([2, 0, 1])
    c_skip, c_out, c_in, c_noise = (c.view(-1, 1, 1, 1) for c in edm_preconditioning(sigma, 0.5))
    with torch.no_grad():
        f = net.unet(c_in * x, c_noise.flatten(), class_labels=y).sample
        torch.testing.assert_close(net(x, sigma, y), c_skip * x + c_out * f)
        # scalar sigma == per-sample sigma; no label == the null label num_classes
        torch.testing.assert_close(net(x, 1.0, y), net(x, torch.ones(3), y))
        torch.testing.assert_close(net(x, sigma), net(x, sigma, torch.full((3,), 3)))
    with pytest.raises(ValueError, match="unconditional"):
        tiny_edm_unet(num_classes=0)(x, sigma, y)


def test_edm_unet_features_shapes():
    net = tiny_edm_unet()
    feats = net.features(torch.randn(2, 1, 8, 8), torch.ones(2), torch.tensor([0, 1]))
    # end of down block 0 (downsampled to 4x4), end of down block 1 (last level, no downsampling), mid block
    assert [tuple(f.shape) for f in feats] == [(2, 8, 4, 4), (2, 16, 4, 4), (2, 16, 4, 4)]
    with pytest.raises(ValueError, match="attention_levels"):
        EDMUNet(**{**TINY, "attention_levels": (5,)})


# ----------------------------------------------------------------------------------------------------------------
# UNetTeacher on EDMUNet


def test_teacher_frozen_but_differentiable_and_make_network():
    teacher = UNetTeacher(tiny_edm_unet(), sample_nfe=3)
    assert all(not p.requires_grad for p in teacher.parameters())
    nn.Sequential(teacher).train()
    assert not teacher.training and not teacher.net.training
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    teacher.denoise(x, torch.ones(2), torch.tensor([0, 1]), guidance=2.0).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert teacher.sample_shape == (1, 8, 8) and teacher.num_classes == 3 and teacher.sigma_data == 0.5

    net = teacher.make_network()
    assert isinstance(net, EDMUNet) and net.training and all(p.requires_grad for p in net.parameters())
    with torch.no_grad():
        x = torch.randn(2, 1, 8, 8)
        torch.testing.assert_close(net.eval()(x, torch.ones(2)), teacher.denoise(x, torch.ones(2)))
        next(net.parameters()).add_(1.0)  # a copy, not shared weights
        assert not torch.equal(next(net.parameters()), next(teacher.net.parameters()))
    feats = teacher.features(x, torch.ones(2), torch.tensor([0, 2]))
    assert len(feats) == 3
    assert teacher.sample(2, torch.tensor([0, 1])).shape == (2, 1, 8, 8)


def test_load_teacher_from_config(tmp_path):
    net = tiny_edm_unet()
    net.save_pretrained(tmp_path / "teacher")
    t = load_teacher(TeacherConfig(kind="unet", path=str(tmp_path / "teacher"), dtype="float32", sample_nfe=5))
    assert t.sample_nfe == 5 and t.num_classes == 3
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(t.denoise(x, torch.ones(2)), net(x, torch.ones(2)))
    bf16 = load_teacher(TeacherConfig(kind="unet", path=str(tmp_path / "teacher"), dtype="bfloat16"))
    assert next(bf16.net.parameters()).dtype == torch.bfloat16 and bf16.denoise(x, torch.ones(2)).dtype == x.dtype

    with pytest.raises(FileNotFoundError) as err:
        load_teacher(TeacherConfig(kind="unet", path=str(tmp_path / "missing")))
    msg = str(err.value)
    assert "\n" not in msg and "missing" in msg and "checkpoints/fmnist_teacher" in msg
    with pytest.raises(FileNotFoundError, match="teacher.path"):
        load_teacher(TeacherConfig(kind="unet", path=None))


# ----------------------------------------------------------------------------------------------------------------
# VP adapter: exact conversions (C10) and CFG (C9)


class ExactGaussianVPNet(nn.Module):
    """Stands in for a diffusers UNet2DModel: given (x_vp, t, label) it returns the exact epsilon / v / x0
    prediction of p(x0 | label) = N(mu_label, s0^2 I) under the VP schedule ``alphas_cumprod``."""

    def __init__(self, alphas_cumprod, mus: torch.Tensor, s0: float, prediction_type: str) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_class_embeds=mus.shape[0], sample_size=4, in_channels=2)
        self.class_embedding = nn.Identity()
        self.dummy = nn.Parameter(torch.zeros(()))
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.log_sigmas = (0.5 * ((1 - abar) / abar).log()).float()
        self.mus, self.s0, self.prediction_type = mus, s0, prediction_type

    def sigma_of_t(self, t: torch.Tensor) -> torch.Tensor:  # log-linear between table entries
        lo = t.floor().long().clamp(max=len(self.log_sigmas) - 2)
        w = t - lo
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[lo + 1]).exp()

    def forward(self, x_vp, t, class_labels=None):
        sigma = self.sigma_of_t(t.float()).view(-1, 1, 1, 1)
        alpha = 1 / (1 + sigma**2).sqrt()
        s = sigma * alpha
        x0 = gaussian_denoiser(x_vp / alpha, sigma.flatten(), self.mus[class_labels], self.s0)
        eps = (x_vp - alpha * x0) / s
        out = {"epsilon": eps, "v_prediction": alpha * eps - s * x0, "sample": x0}[self.prediction_type]
        return SimpleNamespace(sample=out)


SCHEDULES = [
    {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"},
    {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"},
]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=["ddpm_linear", "sd_scaled_linear"])
def test_vp_adapter_returns_exact_gaussian_denoiser(prediction_type, schedule):
    torch.manual_seed(0)
    abar = alphas_cumprod_from_scheduler_config(schedule)
    mus = torch.randn(3, 2, 4, 4).double().float()
    s0 = 0.7
    net = ExactGaussianVPNet(abar, mus, s0, prediction_type)
    teacher = UNetTeacher(VPUNetDenoiser(net, abar, prediction_type, null_label=2))
    assert teacher.num_classes == 2 and teacher.sample_shape == (2, 4, 4)
    lo, hi = float(teacher.net.t_to_sigma(torch.tensor(0.0))), float(teacher.net.t_to_sigma(torch.tensor(999.0)))
    sigma = torch.tensor([lo * 1.5, 0.05, 0.3, 1.0, 2.5, 7.3, hi * 0.9])  # between table entries
    x = torch.randn(sigma.shape[0], 2, 4, 4) * 2
    y = torch.tensor([0, 1, 0, 1, 1, 0, 1])
    d = teacher.denoise(x, sigma, y)
    torch.testing.assert_close(d, gaussian_denoiser(x, sigma, mus[y], s0), rtol=2e-4, atol=2e-4)
    d_u = teacher.denoise(x, sigma, None)  # null label -> the unconditional Gaussian mus[2]
    torch.testing.assert_close(d_u, gaussian_denoiser(x, sigma, mus[2].expand_as(x), s0), rtol=2e-4, atol=2e-4)


def test_vp_ve_timestep_roundtrip():
    abar = alphas_cumprod_from_scheduler_config(SCHEDULES[0])
    den = VPUNetDenoiser(nn.Linear(1, 1), abar, "epsilon")
    table = ((1 - abar) / abar).sqrt().float()
    k = torch.tensor([0, 1, 17, 500, 999])
    torch.testing.assert_close(den.t_to_sigma(k.float()), table[k], rtol=1e-5, atol=0)
    t = torch.tensor([0.0, 0.25, 3.5, 123.75, 998.9])
    torch.testing.assert_close(den.sigma_to_t(den.t_to_sigma(t)), t, rtol=0, atol=1e-3)
    sigma = torch.tensor([0.02, 0.4, 3.0, 60.0])
    torch.testing.assert_close(den.t_to_sigma(den.sigma_to_t(sigma)), sigma, rtol=1e-4, atol=0)
    nearest = VPUNetDenoiser(nn.Linear(1, 1), abar, "epsilon", timestep_mode="nearest")
    assert torch.equal(nearest.sigma_to_t(sigma), nearest.sigma_to_t(sigma).round())
    # x_vp = x_t / sqrt(1 + sigma^2) is the VP sample x_vp = alpha x0 + s eps (docs/math.md §1.2)
    x0, eps, s = torch.randn(5), torch.randn(5), torch.tensor(1.7)
    alpha = 1 / (1 + s**2).sqrt()
    torch.testing.assert_close((x0 + s * eps) * alpha, alpha * x0 + (s * alpha) * eps)


@pytest.mark.parametrize("w", [1.0, 0.0, 2.5, 7.5])
def test_cfg_on_gaussians_matches_shifted_mean(w):
    """C9: with p(x|c) = N(mu_c, v), p(x) = N(mu_u, v), the guided denoiser is that of N(mu_u + w (mu_c - mu_u), v)."""
    torch.manual_seed(1)
    abar = alphas_cumprod_from_scheduler_config(SCHEDULES[0])
    mus = torch.randn(3, 2, 4, 4)  # labels 0, 1 conditional; 2 = null (unconditional)
    s0 = 0.5
    eps_net = ExactGaussianVPNet(abar, mus, s0, "epsilon")
    teacher = UNetTeacher(VPUNetDenoiser(eps_net, abar, "epsilon", null_label=2))
    sigma = torch.tensor([0.1, 0.8, 3.0, 12.0])
    x = torch.randn(4, 2, 4, 4)
    y = torch.tensor([0, 1, 1, 0])
    guided = teacher.denoise(x, sigma, y, guidance=w)
    target = gaussian_denoiser(x, sigma, mus[2] + w * (mus[y] - mus[2]), s0)
    torch.testing.assert_close(guided, target, rtol=2e-4, atol=2e-4)
    # CFG in epsilon space, converted once, gives the same x0 (CFG is linear)
    t = teacher.net.sigma_to_t(sigma)
    alpha = (1 / (1 + sigma**2).sqrt()).view(-1, 1, 1, 1)
    x_vp = alpha * x
    e_c = eps_net(x_vp, t, y).sample
    e_u = eps_net(x_vp, t, torch.full_like(y, 2)).sample
    e_w = e_u + w * (e_c - e_u)
    torch.testing.assert_close((x_vp - sigma.view(-1, 1, 1, 1) * alpha * e_w) / alpha, guided, rtol=2e-4, atol=2e-4)
    # a half-precision teacher keeps its timestep table in float32
    half = UNetTeacher(VPUNetDenoiser(ExactGaussianVPNet(abar, mus, s0, "epsilon"), abar, null_label=2), "bfloat16")
    assert half.net.log_sigmas.dtype == torch.float32 and next(half.parameters()).dtype == torch.bfloat16


def test_real_unet2d_from_pretrained_folder(tmp_path):
    """The real loading path: a diffusers pipeline folder (unet/ + scheduler/) with a v-prediction scheduler."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
        num_class_embeds=4,
    )
    unet.save_pretrained(tmp_path / "unet")
    DDPMScheduler(prediction_type="v_prediction").save_pretrained(tmp_path / "scheduler")
    (tmp_path / "model_index.json").write_text("{}")
    teacher = UNetTeacher.from_pretrained(tmp_path, null_label=3)
    assert isinstance(teacher.net, VPUNetDenoiser) and teacher.net.prediction_type == "v_prediction"
    assert teacher.num_classes == 3 and teacher.sample_shape == (1, 8, 8)
    x, sigma, y = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 3.0]), torch.tensor([0, 2])
    with torch.no_grad():
        t = teacher.net.sigma_to_t(sigma)
        alpha = (1 / (1 + sigma**2).sqrt()).view(-1, 1, 1, 1)
        v = unet(alpha * x, t, class_labels=y).sample
        expected = alpha * (alpha * x) - (sigma.view(-1, 1, 1, 1) * alpha) * v
        torch.testing.assert_close(teacher.denoise(x, sigma, y), expected)
        feats = teacher.features(x, sigma, y)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 4, 4), (2, 16, 4, 4), (2, 16, 4, 4)]
    net = teacher.make_network()
    assert net.training and all(p.requires_grad for p in net.parameters())
