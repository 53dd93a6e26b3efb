"""Every registered method distills a (tiny, inline) class-conditional pixel UNet teacher through the one trainer:
it trains, exports a one-step diffusers pipeline, resumes bit-exactly; the classifier reward of Diff-Instruct* on
images is log p(y | x) and its gradient reaches the generator."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fdistill import methods
from fdistill.config import load_config
from fdistill.export.pipeline import OneStepPipeline
from fdistill.metrics.proxy import FMNISTClassifier
from fdistill.nets.unet import EDMUNet
from fdistill.rewards import ClassifierReward, build_reward
from fdistill.train.checkpoint import list_checkpoints
from fdistill.train.distill import Distiller, distill

METHOD_ARGS = {
    "fdistill": ["method.divergence=js", "method.gan_weight=0.01"],
    "uni_instruct": ["method.divergence=kl", "method.gan_weight=0.01"],
    "dmd": ["method.gan_weight=0.01"],
    "di_star": ["method.alpha_rev=0.1", "reward.kind=classifier"],  # the shipped Fashion-MNIST classifier
}


def save_tiny_fmnist_teacher(path) -> None:
    """A random 32 px, 1-channel, 10-class EDMUNet: the shape of the Fashion-MNIST teacher, a fraction of its size."""
    torch.manual_seed(0)
    EDMUNet(sample_size=32, in_channels=1, block_out_channels=(8, 16), attention_levels=(), num_classes=10,
            norm_num_groups=4, attention_head_dim=8).save_pretrained(path)  # fmt: skip


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher")
    save_tiny_fmnist_teacher(path)
    return path


def image_config(teacher_dir, out, *extra: str):
    return load_config(None, [
        "teacher.kind=unet", f"teacher.path={teacher_dir}", "teacher.sample_nfe=3", "data.name=synthetic",
        "train.steps=3", "train.batch_size=4", "train.fake_warmup_steps=1", "train.num_eval_samples=8",
        "train.log_every=1", "train.checkpoint_every=2", "train.lr_generator=1e-3", f"output_dir={out}", *extra,
    ])  # fmt: skip


@pytest.mark.parametrize("name", methods.names())
def test_every_method_distills_an_image_teacher_and_exports(teacher_dir, tmp_path, name):
    cfg = image_config(teacher_dir, tmp_path, f"method.name={name}", *METHOD_ARGS.get(name, []))
    d = Distiller(cfg)
    before = {k: v.clone() for k, v in d.generator.state_dict().items()}
    d.run()
    changed = [k for k, v in d.generator.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, f"{name}: three generator steps left every weight unchanged"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(torch.isfinite(torch.tensor(r["loss/generator"])) for r in rows if "loss/generator" in r)
    if name == "di_star":
        assert any("reward" in k for r in rows for k in r), "DI* with a reward logs it"
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "metrics.json").is_file()
    pipe = OneStepPipeline.from_pretrained(tmp_path / "student")
    images = pipe(batch_size=2, class_labels=[0, 9], seed=0, output_type="pt").images
    assert images.shape == (2, 1, 32, 32) and torch.isfinite(images).all()


def test_discriminator_on_teacher_features_trains(teacher_dir, tmp_path):
    cfg = image_config(teacher_dir, tmp_path, "method.name=fdistill", "method.divergence=js",
                       "method.gan_weight=0.01", "method.disc_features=teacher")  # fmt: skip
    d = Distiller(cfg)
    head = {k: v.clone() for k, v in d.disc.state_dict().items()}
    d.run()
    assert any(not torch.equal(v, head[k]) for k, v in d.disc.state_dict().items())


@pytest.mark.parametrize(
    ("name", "extra"),
    [("sid", ["method.alpha=1.0"]), ("di_star", ["method.alpha_rev=0.1", "reward.kind=classifier"])],
)
def test_sida_trains_the_discriminator_and_logs_its_gan_term(teacher_dir, tmp_path, name, extra):
    """SiDA = SiD (or DI*) with method.gan_weight > 0: the head on the fake score's encoder trains, the generator's
    loss carries the GAN term; the fake score's and the head's gradient norms are logged apart, also without
    clipping (SiD's recipe: train.grad_clip 0)."""
    d = Distiller(image_config(teacher_dir, tmp_path, f"method.name={name}", *extra, "method.gan_weight=0.01"))
    assert d.cfg.train.grad_clip == 0
    head = {k: v.clone() for k, v in d.disc.state_dict().items()}
    d.run()
    assert any(not torch.equal(v, head[k]) for k, v in d.disc.state_dict().items())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("method/gan_") for r in rows for k in r) and any("loss/disc" in r for r in rows)
    assert any("disc/bce_low_noise" in r for r in rows) and any("disc/bce_high_noise" in r for r in rows)
    norms = [(r["grad_norm/fake"], r["grad_norm/disc"]) for r in rows if "grad_norm/disc" in r]
    assert norms and all(f != h for f, h in norms), "the head's norm must not overwrite the fake score's"
    assert any("grad_norm/generator" in r for r in rows)


def test_the_discriminator_bce_is_logged_per_noise_level(tmp_path):
    """``disc/bce_low_noise`` / ``_high_noise``: the per-sample BCE's mean on each side of sigma_data; an empty side
    is left out of the metrics row (not logged as 0 or ln 4)."""
    from accelerate import Accelerator

    from fdistill.train.metrics_log import MetricsLog, by_noise_level

    bce, sigma = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.1, 0.2, 1.0, 2.0])
    split = by_noise_level("disc/bce", bce, sigma, 0.5)
    assert split["disc/bce_low_noise"].item() == 1.5 and split["disc/bce_high_noise"].item() == 3.5
    row = MetricsLog(Accelerator(cpu=True), tmp_path).log(1, by_noise_level("disc/bce", bce, sigma, 5.0))
    logged = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["disc/bce_low_noise"] == 2.5 and logged == {"step": 1, "disc/bce_low_noise": 2.5}


@pytest.mark.parametrize(
    "method", [("method.name=sid", "method.gan_weight=1e-4"), ("method.name=uni_instruct", "method.divergence=js")]
)
def test_sida_trains_its_head_on_the_dsm_terms_sigma_and_noise_weighted_like_it(
    teacher_dir, tmp_path, monkeypatch, method
):
    """SiDA's recipe (``method.disc_sigma = fake``, the default of sid and of Uni-Instruct, whose code is a SiDA
    fork; ``disc_weight`` = SiDA's lsd 1): the head sees the fake score's DSM sigma and noise, and its BCE enters the
    fake-score update as ``mean lambda(sigma) * BCE / (2 numel)`` (SiDA sums the DSM error over the pixels, ours is
    a mean); DMD2's placement keeps its own draws."""
    import fdistill.train.distill as distill_mod
    from fdistill.core.noise import edm_loss_weight

    d = Distiller(image_config(teacher_dir, tmp_path, *method, "train.steps=2"))
    assert (d.cfg.method.disc_sigma, d.cfg.method.disc_weight) == ("fake", 1.0)
    dsm_draws, disc_calls = [], []
    dsm = distill_mod.denoising_score_matching_loss

    def recorded_dsm(denoise, x0, sigma, eps, sigma_data):
        dsm_draws.append((sigma, eps))
        return dsm(denoise, x0, sigma, eps, sigma_data)

    disc_loss = d._discriminator_loss

    def recorded_disc(x_g, cond, real, gen, noise):
        loss, logs = disc_loss(x_g, cond, real, gen, noise)
        disc_calls.append((noise, loss, logs["loss/disc"], x_g[0].numel()))
        return loss, logs

    monkeypatch.setattr(distill_mod, "denoising_score_matching_loss", recorded_dsm)
    monkeypatch.setattr(d, "_discriminator_loss", recorded_disc)
    d.run()
    assert len(disc_calls) == len(dsm_draws) > 0
    for (sigma, eps), (noise, loss, bce, numel) in zip(dsm_draws, disc_calls, strict=True):
        assert noise[0] is sigma and noise[1] is eps
        expected = edm_loss_weight(sigma, d.teacher.sigma_data).mean() * bce / (2 * numel)
        torch.testing.assert_close(loss.detach(), expected.detach())
    dmd2 = image_config(teacher_dir, tmp_path / "dmd2", "method.name=fdistill", "method.divergence=js")
    assert (dmd2.method.disc_sigma, dmd2.method.disc_weight) == ("generator", 0.01)


def test_init_generator_loads_an_exported_pixel_student(teacher_dir, tmp_path):
    """SiD²A starts from an exported one-step pixel student: ``train.init_generator`` puts its whole EDMUNet (the
    ``unet/`` of a OneStepPipeline) into the new generator."""
    from safetensors.torch import load_file

    distill(image_config(teacher_dir, tmp_path / "first", "method.name=sid", "train.steps=2"))
    student = tmp_path / "first" / "student"
    d = Distiller(image_config(teacher_dir, tmp_path / "second", "method.name=sid", "method.gan_weight=1e-4",
                               f"train.init_generator={student}"))  # fmt: skip
    saved = load_file(str(student / "unet" / "diffusion_pytorch_model.safetensors"))
    loaded = d.generator.net.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_a_continuation_starts_from_the_exported_fake_score_and_head(teacher_dir, tmp_path):
    """``train.export_fake`` writes the trained fake score and discriminator head beside the student (which still
    loads as a pipeline); ``train.init_fake`` puts exactly those weights into the next run's networks, instead of the
    teacher's weights and a fresh head; a folder without them is a one-line error naming the key."""
    from safetensors.torch import load_file

    sida = ["method.name=sid", "method.alpha=1.0", "method.gan_weight=0.01"]
    first = Distiller(image_config(teacher_dir, tmp_path / "first", *sida, "train.export_fake=true"))
    first.run()
    student = tmp_path / "first" / "student"
    OneStepPipeline.from_pretrained(student)  # the extra folders do not disturb the pipeline
    second = Distiller(image_config(teacher_dir, tmp_path / "second", *sida, f"train.init_fake={student}"))
    for name, trained, loaded in (("fake_score", first.fake, second.fake), ("discriminator", first.disc, second.disc)):
        saved = load_file(str(student / name / "model.safetensors"))
        assert saved.keys() == trained.state_dict().keys() == loaded.state_dict().keys()
        assert all(torch.equal(saved[k], trained.state_dict()[k]) for k in saved)
        assert all(torch.equal(saved[k], loaded.state_dict()[k]) for k in saved), name
    teacher_net = EDMUNet.from_pretrained(teacher_dir).state_dict()
    assert any(not torch.equal(teacher_net[k], v) for k, v in second.fake.state_dict().items()), "not the teacher's"
    with pytest.raises(FileNotFoundError, match=r"train.init_fake=.*no fake_score/"):
        Distiller(image_config(teacher_dir, tmp_path / "third", *sida, f"train.init_fake={tmp_path / 'first'}"))


def test_image_run_resumes_bit_exactly(teacher_dir, tmp_path):
    from safetensors.torch import load_file

    args = ["method.name=fdistill", "method.divergence=js", "method.gan_weight=0.01", "train.steps=4"]
    distill(image_config(teacher_dir, tmp_path / "full", *args))
    distill(image_config(teacher_dir, tmp_path / "part", *args, "train.steps=2"))
    distill(image_config(teacher_dir, tmp_path / "part", *args), resume="latest")
    a, b = (load_file(str(list_checkpoints(tmp_path / r)[-1] / "model.safetensors")) for r in ("full", "part"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_classifier_reward_is_the_log_probability_of_the_label():
    torch.manual_seed(0)
    clf = FMNISTClassifier().eval()
    reward = ClassifierReward(clf)
    x = torch.rand(3, 1, 32, 32, requires_grad=True) * 2 - 1
    x.retain_grad()
    y = torch.tensor([0, 4, 9])
    expected = clf(x).log_softmax(-1)[torch.arange(3), y]
    r = reward(x, y)
    torch.testing.assert_close(r, expected)
    r.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0, "the reward must be differentiable in the image"
    torch.testing.assert_close(reward(x.detach(), None), clf(x.detach()).log_softmax(-1).max(-1).values)
    small = torch.rand(2, 1, 28, 28) * 2 - 1  # 28 px images are padded with the background, as in training
    torch.testing.assert_close(reward(small, y[:2]), reward(F.pad(small, (2, 2, 2, 2), value=-1.0), y[:2]))
    with pytest.raises(ValueError, match="expects"):
        reward(torch.zeros(2, 3, 32, 32), y[:2])


def test_build_classifier_reward_from_config(tmp_path):
    cfg = load_config(None, ["teacher.kind=unet", "reward.kind=classifier"])
    assert isinstance(build_reward(cfg, torch.nn.Linear(1, 1)), ClassifierReward)  # the shipped weights by default
    with pytest.raises(FileNotFoundError, match="do not exist"):
        build_reward(
            load_config(None, ["teacher.kind=unet", "reward.kind=classifier", f"reward.path={tmp_path}/x"]), None
        )
