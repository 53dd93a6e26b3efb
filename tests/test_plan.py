"""``fdistill plan``: the meta-device plan counts exactly what the trainer builds, shards as each strategy does, and
(slow) stays within a stated factor of the peak memory a real CPU run measures."""

from __future__ import annotations

import pytest
import torch
from test_image_distill import image_config, save_tiny_fmnist_teacher

from fdistill.apps.plan import activation_bytes, main, plan_run
from fdistill.train.distill import Distiller


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan_teacher")
    save_tiny_fmnist_teacher(path)
    return path


def _n(module) -> tuple[int, int]:
    return sum(p.numel() for p in module.parameters()), sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("features", ["fake", "teacher"])
def test_the_plan_counts_the_networks_the_trainer_builds(teacher_dir, tmp_path, features):
    cfg = image_config(
        teacher_dir, tmp_path, "method.name=fdistill", "method.divergence=js", f"method.disc_features={features}"
    )
    plan = {n.name.split(" (")[0]: n for n in plan_run(cfg).networks}
    d = Distiller(cfg)
    real = {"teacher": d.teacher.net, "generator": d.generator.net, "fake score": d.fake, "discriminator head": d.disc}
    for name, module in real.items():
        params, trainable = _n(module)
        assert (plan[name].params, plan[name].trainable) == (params, 0 if name == "teacher" else trainable), name
    assert plan["generator"].ema_bytes == 4 * plan["generator"].params
    assert plan["discriminator head"].activations["fake phase"] > 0


def test_strategies_shard_what_they_shard(teacher_dir, tmp_path):
    cfg = image_config(teacher_dir, tmp_path, "method.name=dmd")
    one, eight = plan_run(cfg, num_gpus=1), plan_run(cfg, num_gpus=8)
    ddp, fsdp, full = (eight.per_gpu(s) for s in ("ddp", "fsdp", "fsdp-full"))
    assert one.per_gpu("ddp")["ddp buckets"] == 0 and ddp["ddp buckets"] == ddp["gradients"]
    assert fsdp["gradients"] == pytest.approx(ddp["gradients"] / 8) and fsdp["adam"] == pytest.approx(ddp["adam"] / 8)
    assert fsdp["weights"] == ddp["weights"] > full["weights"]  # SHARD_GRAD_OP keeps parameters whole
    assert ddp["total"] > fsdp["total"] > full["total"]


def test_saved_activations_are_measured_on_meta():
    lin = torch.nn.Linear(64, 64, device="meta")
    x = torch.zeros(32, 64, device="meta", requires_grad=True)
    # the input is saved for the weight gradient: 32 * 64 float32
    assert activation_bytes(lambda: lin(x), half=False) == 32 * 64 * 4
    assert activation_bytes(lambda: lin(x.detach()).sum(), half=False) == 32 * 64 * 4  # weight grad needs it too
    with torch.no_grad():
        assert activation_bytes(lambda: lin(x), half=False) == 0


def test_sd15_and_sdxl_are_planned_without_weights(capsys):
    assert main(["configs/sd15_fdistill_js.yaml", "--num-gpus", "8", "--strategy", "fsdp"]) == 0
    out = capsys.readouterr().out
    assert "| generator | 859.5M | 859.5M |" in out and "| fsdp |" in out and "| ddp |" not in out
    assert main(["configs/sd15_fdistill_js.yaml", "--unet", "sdxl", "--lora-rank", "64", "--strategy", "ddp"]) == 0
    out = capsys.readouterr().out
    assert "| teacher (frozen) | 2,567.5M |" in out and "text_encoder_2 (frozen)" in out
    generator = next(line for line in out.splitlines() if line.startswith("| generator |")).split("|")
    params, trainable = (float(c.strip().rstrip("M").replace(",", "")) for c in generator[2:4])
    assert params > 2567.5 and 0 < trainable < params / 5  # LoRA: the base frozen, the adapters trained


def test_bad_plan_input_is_one_line(capsys):
    assert main(["configs/sd15_fdistill_js.yaml", "--num-gpus", "0"]) == 2
    assert main(["configs/sd15_fdistill_js.yaml", "teacher.path=/nowhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("fdistill: plan:") for line in err)


@pytest.mark.slow
def test_planned_memory_is_within_a_factor_of_a_measured_cpu_run(tmp_path):
    from fdistill.apps.plan_check import measure_cpu

    teacher = tmp_path / "teacher"
    torch.manual_seed(0)
    from fdistill.nets.unet import EDMUNet

    EDMUNet(sample_size=32, in_channels=1, block_out_channels=(64, 128, 128), attention_levels=(2,),
            num_classes=10, layers_per_block=2).save_pretrained(teacher)  # fmt: skip
    cfg = image_config(teacher, tmp_path / "run", "method.name=dmd", "train.batch_size=32")
    result = measure_cpu(cfg, steps=2)
    assert 0.7 < result["ratio"] < 1.5, result
