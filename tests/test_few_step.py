"""K-step students (docs/math.md §2.10), hybrid sampling and DT-visualisation (§2.11): backward simulation trains
every step, K-step runs resume bit-exactly and export a pipeline that reproduces the EMA student, hybrid sampling
reduces to the student (N = 0) and to the teacher (N = all steps), dt-vis writes its grid."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from test_image_distill import image_config, save_tiny_fmnist_teacher
from test_trainer import tiny

from fdistill import methods
from fdistill.apps.sample import handover_level, hybrid_sample
from fdistill.cli import main
from fdistill.config import ConfigError
from fdistill.export.pipeline import OneStepPipeline, export_student
from fdistill.nets.generator import OneStepGenerator, default_student_sigmas, run_chain
from fdistill.nets.unet import EDMUNet
from fdistill.teachers.diffusers import UNetTeacher
from fdistill.train.checkpoint import list_checkpoints
from fdistill.train.distill import Distiller, distill


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher")
    save_tiny_fmnist_teacher(path)
    return path


def tiny_unet(num_classes: int = 10, size: int = 32) -> EDMUNet:
    torch.manual_seed(0)
    return EDMUNet(sample_size=size, in_channels=1, block_out_channels=(8, 16), attention_levels=(),
                   num_classes=num_classes, norm_num_groups=4, attention_head_dim=8)  # fmt: skip


# ---- the schedule and the chain --------------------------------------------------------------------------


def test_default_schedule_and_config_errors(tmp_path):
    assert default_student_sigmas(2.5, 1) == [2.5]
    s = default_student_sigmas(80.0, 4, sigma_data=0.5)
    assert s[0] == 80.0 and s[-1] == pytest.approx(0.25) and all(a > b for a, b in zip(s, s[1:], strict=False))
    assert default_student_sigmas(1.0, 2, sigma_data=0.5) == pytest.approx([1.0, 0.25])
    cfg = tiny(tmp_path, "method.name=sid", "train.student_steps=3", "train.student_sigmas=[2.5,1.0,0.3]")
    assert cfg.train.student_sigmas == [2.5, 1.0, 0.3]
    for bad, msg in [
        (["train.student_steps=0"], "must be >= 1"),
        (["train.student_steps=2", "train.student_sigmas=[2.5,1.0,0.3]"], "has 3 levels"),
        (["method.name=sid", "train.student_steps=2", "train.student_sigmas=[3.0,1.0]"], "must equal sigma_init"),
        (["method.name=sid", "train.student_steps=2", "train.student_sigmas=[2.5,2.6]"], "strictly decreasing"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            tiny(tmp_path, *bad)


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, x, sigma, cond=None):
        return self.lin(x) * sigma[:, None]


def test_one_step_generator_is_unchanged_and_k_step_chain_is_the_definition():
    torch.manual_seed(0)
    d = Toy()
    z = torch.randn(4, 3)
    assert torch.equal(OneStepGenerator(d, 2.0)(z), d(2.0 * z, torch.full((4,), 2.0)))  # K = 1: D(sigma z, sigma)

    g = OneStepGenerator(d, 2.0, sigmas=[2.0, 1.0, 0.5])
    noise = torch.randn(2, 4, 3)
    x = 2.0 * z
    for k, s in enumerate((2.0, 1.0, 0.5)):
        x0 = d(x, torch.full((4,), s))
        x = x0 + (1.0, 0.5)[k] * noise[k] if k < 2 else x
    assert torch.allclose(g(z, None, noise), x0)
    # backward simulation with k = K reproduces the last step of the full chain; per-sample k mixes levels
    assert torch.allclose(g(z, None, noise, step=3), x0)
    mixed = g(z, None, noise, step=torch.tensor([1, 2, 3, 1]))
    assert torch.allclose(mixed[0], d(2.0 * z[:1], torch.full((1,), 2.0))[0])
    assert torch.allclose(mixed[2], x0[2])
    with pytest.raises(ValueError, match="needs noise of shape"):
        g(z)
    with pytest.raises(ValueError, match="step must be in 1..3"):
        g(z, None, noise, step=4)
    assert torch.equal(run_chain(lambda x, k: x, z, [1.0], lambda k: z), z)


# ---- training ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("where", "steps"), [("gmm", 3), ("image", 2)])
def test_backward_simulation_trains_every_step(teacher_dir, tmp_path, monkeypatch, where, steps):
    if where == "gmm":
        cfg = tiny(tmp_path, "method.name=dmd", f"train.student_steps={steps}", "train.fake_warmup_steps=0")
    else:
        cfg = image_config(teacher_dir, tmp_path, "method.name=sid", f"train.student_steps={steps}")
    d = Distiller(cfg)
    net = d.generator.net
    sigmas = d.generator.sigmas
    assert len(sigmas) == steps and sigmas[0] == cfg.train.sigma_init
    seen = []
    net.register_forward_hook(lambda m, args, out: seen.append((args[0].detach().clone(), args[1].detach().clone())))
    orig = d._chain_draws
    inputs = {}
    for k in range(1, steps + 1):

        def forced(n, gen, k=k):
            _, noise = orig(n, gen)
            return torch.full((n,), k, dtype=torch.long), noise

        monkeypatch.setattr(d, "_chain_draws", forced)
        d.opt_g.zero_grad(set_to_none=True)
        seen.clear()
        d.generator_phase(step=0)
        assert len(seen) == k, f"step {k}: {k - 1} simulated steps then one with gradients"
        x_in, sigma = seen[-1]
        assert torch.allclose(sigma, torch.full_like(sigma, sigmas[k - 1]))
        inputs[k] = x_in
        grads = [p.grad for p in d.generator.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), f"step {k}: no or non-finite gradient"
        assert sum(float(g.abs().sum()) for g in grads) > 0, f"step {k}: zero gradient"
    for a in range(1, steps + 1):
        for b in range(a + 1, steps + 1):
            assert not torch.allclose(inputs[a], inputs[b]), f"steps {a} and {b} saw the same input"


def test_k1_draws_nothing_extra(tmp_path):
    d = Distiller(tiny(tmp_path))
    assert d._chain_draws(4, torch.Generator().manual_seed(0)) == (None, None) and d.generator.steps == 1


@pytest.mark.parametrize("name", methods.names())
def test_every_method_trains_a_k_step_student(tmp_path, name):
    extra = ["method.divergence=js"] if name in ("fdistill", "uni_instruct") else []
    if name == "di_star":
        extra = ["method.alpha_rev=0.1", "reward.kind=gmm_component", "reward.component=1"]
    distill(tiny(tmp_path, f"method.name={name}", "train.student_steps=2", "train.steps=3", *extra))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/generator" in r for r in rows) and all(r.get("nonfinite_total", 0) == 0 for r in rows)
    assert "modes_covered" in json.loads((tmp_path / "metrics.json").read_text())


def test_k_step_resume_is_bit_exact(tmp_path):
    from safetensors.torch import load_file

    args = ["method.name=fdistill", "method.divergence=kl", "train.checkpoint_every=3", "train.student_steps=3"]
    distill(tiny(tmp_path / "full", *args))
    distill(tiny(tmp_path / "part", *args, "train.steps=3"))
    distill(tiny(tmp_path / "part", *args), resume="latest")
    a, b = (load_file(str(list_checkpoints(tmp_path / r)[-1] / "model.safetensors")) for r in ("full", "part"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---- export --------------------------------------------------------------------------------------------


def test_k_step_export_round_trip(teacher_dir, tmp_path):
    cfg = image_config(teacher_dir, tmp_path, "method.name=dmd", "train.student_steps=3", "train.steps=2")
    d = Distiller(cfg)
    d.run()
    folder = tmp_path / "student"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["student_sigmas"] == pytest.approx(list(d.ema.model.sigmas)) and len(index["student_sigmas"]) == 3
    card = json.loads((folder / "card.json").read_text())
    assert card["NFE"] == 3 and len(card["student_sigmas"]) == 3
    pipe = OneStepPipeline.from_pretrained(folder)
    assert pipe.num_steps == 3
    labels = [0, 3, 9]
    images = pipe(batch_size=3, class_labels=labels, seed=5, output_type="pt").images
    gen = torch.Generator().manual_seed(5)  # the pipeline's draws: z, then one re-noising draw per step
    z = torch.randn(3, 1, 32, 32, generator=gen)
    noise = torch.stack([torch.randn(3, 1, 32, 32, generator=gen) for _ in range(2)])
    with torch.no_grad():
        ema = d.ema.model(z, torch.tensor(labels), noise=noise).clamp(-1, 1)
    assert torch.allclose(images, ema, atol=1e-5)
    # fewer steps: the first n levels ending with a plain x0
    one = pipe(batch_size=3, class_labels=labels, seed=5, output_type="pt", num_inference_steps=1).images
    s1 = d.ema.model.sigmas[0]
    with torch.no_grad():
        direct = d.ema.model.net(s1 * z, torch.full((3,), s1), torch.tensor(labels)).clamp(-1, 1)
    assert torch.allclose(one, direct, atol=1e-5)
    with pytest.raises(ValueError, match="trained for 3 step"):
        pipe(batch_size=1, seed=0, num_inference_steps=4)


def test_old_folder_without_schedule_loads_as_one_step(tmp_path):
    unet = tiny_unet(3, 8)
    export_student(unet, 2.5, tmp_path / "s", class_names=["a", "b", "c"])
    assert "student_sigmas" not in json.loads((tmp_path / "s" / "model_index.json").read_text())  # as before K
    pipe = OneStepPipeline.from_pretrained(tmp_path / "s")
    assert pipe.student_sigmas == [2.5] and pipe.num_steps == 1
    z = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        direct = unet(2.5 * z, torch.full((2,), 2.5), torch.tensor([0, 1])).clamp(-1, 1)
    assert torch.allclose(pipe(batch_size=2, class_labels=[0, 1], seed=1, output_type="pt").images, direct, atol=1e-6)


# ---- hybrid sampling and dt-vis ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """An 8 px, 3-class teacher folder and a 2-step and a 1-step student folder (random weights)."""
    root = tmp_path_factory.mktemp("pair")
    teacher = tiny_unet(3, 8)
    teacher.save_pretrained(root / "teacher")
    torch.manual_seed(1)
    student = tiny_unet(3, 8)
    for p in student.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    export_student(student, 2.5, root / "k2", ["a", "b", "c"], student_sigmas=[2.5, 0.6])
    export_student(student, 2.5, root / "k1", ["a", "b", "c"])
    return root


def test_hybrid_reduces_to_student_and_teacher(tiny_pair):
    teacher = UNetTeacher.from_pretrained(tiny_pair / "teacher")
    for name in ("k2", "k1"):
        pipe = OneStepPipeline.from_pretrained(tiny_pair / name)
        own = pipe(batch_size=3, seed=4, output_type="pt").images  # random labels: drawn the same way
        h0 = hybrid_sample(pipe, teacher, 3, 0, nfe=7, seed=4)
        assert torch.equal(h0.images, own) and h0.teacher_nfe == 0 and h0.student_nfe == pipe.num_steps
        full = hybrid_sample(pipe, teacher, 3, 4, nfe=7, seed=4, clamp=False)  # nfe 7 = 4 Heun steps
        gen = torch.Generator().manual_seed(4)
        labels = torch.randint(0, 3, (3,), generator=gen)  # the label draw comes first
        ref = teacher.sample(3, labels, nfe=7, generator=gen)
        assert torch.equal(full.labels, labels) and torch.equal(full.images, ref) and full.teacher_nfe == 7
        mid = hybrid_sample(pipe, teacher, 3, 1, nfe=7, seed=4)
        assert torch.isfinite(mid.images).all() and mid.teacher_nfe == 3  # one Heun step + the hand-over x0
        assert mid.student_start == handover_level(pipe.student_sigmas, mid.handover_sigma)
    assert handover_level([2.5, 0.6], 80.0) == 0 and handover_level([2.5, 0.6], 1.0) == 1
    assert handover_level([2.5, 0.6], 0.1) == 1 and handover_level([2.5], 0.1) == 0
    with pytest.raises(ValueError, match="out of range"):
        hybrid_sample(pipe, teacher, 1, 5, nfe=7, seed=0)


def test_sample_command_hybrid(tiny_pair, tmp_path, capsys):
    out = tmp_path / "h.png"
    args = ["sample", str(tiny_pair / "k2"), "--teacher", str(tiny_pair / "teacher"), "--nfe", "7", "--num", "2"]
    assert main([*args, "--hybrid-steps", "2", "--out", str(out)]) == 0
    assert out.is_file() and "hybrid" in capsys.readouterr().out
    assert main(["sample", str(tiny_pair / "k2"), "--hybrid-steps", "2"]) == 2
    assert main(["sample", str(tiny_pair / "k2"), "--num", "2", "--out", str(out), "--student-steps", "1"]) == 0
    assert "NFE 1" in capsys.readouterr().out


def test_sample_beside_teacher_is_a_labelled_card_grid(tiny_pair, tmp_path, capsys):
    """``--beside-teacher``: the teacher's block (its NFE) above the student's (its K), same seed and labels."""
    from PIL import Image

    from fdistill.metrics.plots import image_grid, label_strip_width

    out = tmp_path / "card.png"
    argv = ["sample", str(tiny_pair / "k2"), "--beside-teacher", str(tiny_pair / "teacher"), "--nfe", "7",
            "--num", "3", "--seed", "4", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "teacher, NFE 7 above student, NFE 2" in capsys.readouterr().out
    pipe = OneStepPipeline.from_pretrained(tiny_pair / "k2")
    teacher = UNetTeacher.from_pretrained(tiny_pair / "teacher")
    rows = [hybrid_sample(pipe, teacher, 3, n, nfe=7, seed=4).images for n in (4, 0)]
    labels = ["teacher, NFE 7", "student, NFE 2"]
    assert torch.equal(rows[1], pipe(batch_size=3, seed=4, output_type="pt").images)  # the student's own samples
    expected = image_grid(rows, labels=labels)
    got = Image.open(out)
    assert got.size == expected.size and got.width > label_strip_width(labels)
    assert got.tobytes() == expected.convert(got.mode).tobytes()
    bad = ["sample", str(tiny_pair / "teacher"), "--beside-teacher", str(tiny_pair / "teacher")]
    assert main(bad) == 2


def test_dt_vis_writes_grid_of_the_right_shape(tiny_pair, tmp_path, capsys):
    out = tmp_path / "grid.png"
    argv = ["dt-vis", "--teacher", str(tiny_pair / "teacher"), "--student", str(tiny_pair / "k2"), "--hybrid-steps",
            "1", "--nfe", "7", "--num", "2", "--classes", "a,c", "--zoom", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    legend = json.loads(out.with_suffix(".png.json").read_text())
    assert [r["sampler"] for r in legend] == ["teacher", "student", "hybrid N=1"] * 2
    assert [r["label"] for r in legend] == [0, 0, 0, 2, 2, 2]
    lengths = [len(r["cells"]) for r in legend[:3]]
    # 4 Heun steps (sigma 80, 9.7, 0.47, 0.002); K = 2; one teacher step, the hand-over x0 at sigma 9.7, then both
    # student levels (2.5 is the first at or below 9.7)
    assert lengths == [4, 2, 1 + 1 + 2]
    assert [c["who"] for c in legend[2]["cells"]] == ["teacher", "handover", "student", "student"]
    rows, cols, side, pad = 6, 4, 16, 2
    assert Image.open(out).size == (cols * (side + pad) + pad, rows * (side + pad) + pad)
    assert "6 rows x 4 columns" in capsys.readouterr().out
    teacher_only = tmp_path / "t.png"
    assert main(["dt-vis", "--teacher", str(tiny_pair / "teacher"), "--nfe", "3", "--num", "1", "--zoom", "1",
                 "--out", str(teacher_only)]) == 0  # fmt: skip
    assert Image.open(teacher_only).size == (2 * 10 + 2, 10 + 2)


def test_dt_vis_latent_teacher_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                                  "vae": ["diffusers", "AutoencoderKL"]}))  # fmt: skip
    assert main(["dt-vis", "--teacher", str(tmp_path / "sd"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "latent (SD-style) teacher" in err and len(err.splitlines()) == 1


def test_image_k_step_with_discriminator_resumes_bit_exactly(teacher_dir, tmp_path):
    from safetensors.torch import load_file

    args = ["method.name=fdistill", "method.divergence=js", "method.gan_weight=0.01", "train.steps=4",
            "train.student_steps=2"]  # fmt: skip
    distill(image_config(teacher_dir, tmp_path / "full", *args))
    distill(image_config(teacher_dir, tmp_path / "part", *args, "train.steps=2"))
    distill(image_config(teacher_dir, tmp_path / "part", *args), resume="latest")
    a, b = (load_file(str(list_checkpoints(tmp_path / r)[-1] / "model.safetensors")) for r in ("full", "part"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert OneStepPipeline.from_pretrained(tmp_path / "full" / "student").num_steps == 2
