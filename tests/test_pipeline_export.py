"""The one-step student exports as a diffusers pipeline that reloads and reproduces its outputs."""

from __future__ import annotations

import pytest
import torch

from fdistill.cli import main
from fdistill.export.pipeline import OneStepPipeline, export_student
from fdistill.nets.unet import EDMUNet


def tiny_unet(num_classes: int = 3) -> EDMUNet:
    torch.manual_seed(0)
    return EDMUNet(sample_size=8, block_out_channels=(8, 16), attention_levels=(), norm_num_groups=4,
                   num_classes=num_classes, attention_head_dim=8)  # fmt: skip


def test_round_trip_gives_identical_images(tmp_path):
    unet = tiny_unet()
    export_student(unet, 2.5, tmp_path / "s", class_names=["a", "b", "c"], card={"method": "dmd", "NFE": 1})
    pipe = OneStepPipeline.from_pretrained(tmp_path / "s")
    fresh = OneStepPipeline(unet, 2.5, ["a", "b", "c"])
    a = pipe(batch_size=3, class_labels=["a", "b", 2], seed=7, output_type="pt").images
    b = fresh(batch_size=3, class_labels=[0, 1, 2], seed=7, output_type="pt").images
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b)
    # the generator really is x = D(sigma_init z, sigma_init, label)
    z = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        direct = unet(2.5 * z, torch.full((3,), 2.5), torch.tensor([0, 1, 2])).clamp(-1, 1)
    assert torch.allclose(a, direct, atol=1e-6)
    assert "NFE" in (tmp_path / "s" / "README.md").read_text()
    pil = pipe(batch_size=2, seed=1).images
    assert len(pil) == 2 and pil[0].size == (8, 8)


def test_bad_labels_are_clear():
    pipe = OneStepPipeline(tiny_unet(), 2.5, ["a", "b", "c"])
    with pytest.raises(ValueError, match="out of range"):
        pipe(batch_size=1, class_labels=[5], seed=0)
    with pytest.raises(ValueError, match="2 class labels for batch_size=3"):
        pipe(batch_size=3, class_labels=[0, 1], seed=0)


def test_sample_command_writes_grid(tmp_path, capsys):
    export_student(tiny_unet(), 2.5, tmp_path / "s", class_names=["a", "b", "c"])
    out = tmp_path / "grid.png"
    assert main(["sample", str(tmp_path / "s"), "--num", "4", "--classes", "a,b", "--out", str(out)]) == 0
    assert out.is_file() and "NFE 1" in capsys.readouterr().out
