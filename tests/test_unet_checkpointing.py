"""``teacher.gradient_checkpointing`` for pixel UNet teachers (EDMUNet and the VP ``UNet2DModel`` wrapper).

The trainable copies of :meth:`UNetTeacher.make_network` (generator and fake score) recompute their diffusers
blocks' activations in backward; the frozen teacher never does. Checkpointing must not change a gradient: one
SiD generator step (gradients through the generator, the fake score and the teacher, docs/math.md §2.4) gives the
same generator gradients with it on and off, dropout included (torch's checkpoint replays the RNG state).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DModel

from fdistill.config import Config, MethodConfig, TeacherConfig
from fdistill.methods import GeneratorInputs, build
from fdistill.nets.generator import OneStepGenerator
from fdistill.nets.unet import EDMUNet
from fdistill.teachers import build_teacher
from fdistill.teachers.diffusers import UNetTeacher, VPUNetDenoiser, alphas_cumprod_from_scheduler_config

TINY = dict(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8, dropout=0.1)
BATCH = 3


def edm_teacher(folder, checkpointing: bool) -> UNetTeacher:
    """The shipped path: a saved EDMUNet folder through ``build_teacher`` (``teacher.gradient_checkpointing``)."""
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        EDMUNet(in_channels=1, attention_levels=(1,), num_classes=3, **TINY).save_pretrained(folder)
    cfg = Config(teacher=TeacherConfig(kind="unet", path=str(folder), gradient_checkpointing=checkpointing))
    return build_teacher(cfg)


def vp_teacher(folder, checkpointing: bool) -> UNetTeacher:
    """A diffusers ``UNet2DModel`` on the DDPM schedule (epsilon prediction), class-conditional with a null label."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        num_class_embeds=4,
        **TINY,
    )
    abar = alphas_cumprod_from_scheduler_config({"num_train_timesteps": 1000})
    return UNetTeacher(VPUNetDenoiser(unet, abar, null_label=3), gradient_checkpointing=checkpointing)


TEACHERS = {"edm": edm_teacher, "vp": vp_teacher}


def generator_step(teacher: UNetTeacher) -> tuple[list[torch.Tensor], int]:
    """Generator gradients of one SiD step, and how often the generator's first ResNet block ran (forward and any
    recomputation in backward)."""
    torch.manual_seed(1)
    generator = OneStepGenerator(teacher.make_network(), sigma_init=2.5).train()
    fake = teacher.make_network().eval().requires_grad_(False)  # frozen during the generator step, as in training
    with torch.no_grad():  # a fake score that has moved away from the teacher (D_p != D_q)
        for p in fake.parameters():
            p.add_(0.05 * torch.randn_like(p))
    calls = []
    generator.net.unet.down_blocks[0].resnets[0].register_forward_pre_hook(lambda *_: calls.append(1))
    g = torch.Generator().manual_seed(2)
    z, cond = torch.randn(BATCH, *teacher.sample_shape, generator=g), torch.tensor([0, 1, 2])
    eps, sigma = torch.randn(BATCH, *teacher.sample_shape, generator=g), torch.tensor([0.3, 1.5, 8.0])
    torch.manual_seed(3)  # the generator's dropout masks
    b = GeneratorInputs(
        x0=generator(z, cond),
        sigma=sigma,
        eps=eps,
        teacher=teacher.denoise,
        fake=lambda x, s, c: fake(x, s, c),
        cond=cond,
    )
    loss = build(MethodConfig(name="sid")).generator_loss(b).loss.mean()
    loss.backward()
    return [p.grad for p in generator.parameters()], len(calls)


@pytest.mark.parametrize("kind", list(TEACHERS))
def test_checkpointing_is_on_in_the_trainable_copies_only(kind, tmp_path):
    teacher = TEACHERS[kind](tmp_path / "teacher", checkpointing=True)
    assert teacher.make_network().is_gradient_checkpointing
    assert not teacher.net.is_gradient_checkpointing
    assert not TEACHERS[kind](tmp_path / "teacher", checkpointing=False).make_network().is_gradient_checkpointing


@pytest.mark.parametrize("kind", list(TEACHERS))
def test_checkpointing_leaves_the_generator_gradients_unchanged(kind, tmp_path):
    grads_off, calls_off = generator_step(TEACHERS[kind](tmp_path / "teacher", checkpointing=False))
    grads_on, calls_on = generator_step(TEACHERS[kind](tmp_path / "teacher", checkpointing=True))
    assert calls_on == 2 * calls_off, "checkpointing on: the block runs again in backward"
    assert sum(g.abs().sum() for g in grads_off) > 0
    for off, on in zip(grads_off, grads_on, strict=True):
        torch.testing.assert_close(on, off, rtol=1e-6, atol=1e-9)
