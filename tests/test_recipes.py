"""The trainer runs each method the way its reference does: recipe defaults, the fake score's noise levels, sigma
scaled to the data, DDPM timesteps for VP teachers, DMD2's discriminator weight, train/eval modes, fp16 refused,
collision-free seeds, and the same conditioning on both sides of the discriminator."""

from __future__ import annotations

import itertools

import pytest
import torch

from fdistill import methods
from fdistill.config import ConfigError, load_config
from fdistill.core.noise import SigmaSampler
from fdistill.methods.recipes import RECIPES
from fdistill.nets.unet import EDMUNet
from fdistill.train.distill import Distiller
from fdistill.train.loop import step_generator as _step_generator

TINY = [
    "teacher.means=[[-1.5,0.0],[1.5,0.0]]", "teacher.stds=[0.2,0.2]", "teacher.weights=[0.6,0.4]",
    "network.hidden=16", "network.depth=2", "train.batch_size=16", "train.steps=2", "train.num_eval_samples=64",
    "train.fake_warmup_steps=0",
]  # fmt: skip


def tiny(tmp_path, *extra: str):
    return load_config(None, [*TINY, f"output_dir={tmp_path}", *extra])


@pytest.mark.parametrize("name", methods.names())
def test_recipe_fills_the_null_keys(tmp_path, name):
    cfg, r = tiny(tmp_path, f"method.name={name}"), RECIPES[name]
    t = cfg.train
    assert (t.sigma_init, (t.adam_beta1, t.adam_beta2), t.weight_decay, t.grad_clip) == (
        r.sigma_init, r.adam_betas, r.weight_decay, r.grad_clip)  # fmt: skip
    assert (cfg.method.fake_sigma, cfg.method.disc_sigma) == (r.fake_sigma, r.disc_sigma)
    assert tiny(tmp_path, f"method.name={name}", "train.sigma_init=3.0", "train.grad_clip=0").train.sigma_init == 3.0


def _share_above(sampler: SigmaSampler, level: float) -> float:
    return float((sampler(20000, torch.Generator().manual_seed(0)) > level).float().mean())


@pytest.mark.parametrize("name", methods.names())
def test_fake_score_learns_where_the_reference_says(tmp_path, name):
    """DMD2 / FastGen: the generator's own distribution (a third of the Karras grid above sigma 10 on an EDM-range
    teacher); SiD family and DI: EDM's lognormal (almost nothing above 10)."""
    extra = ["method.divergence=js"] if name in ("fdistill", "uni_instruct") else []
    d = Distiller(tiny(tmp_path, f"method.name={name}", *extra))
    if RECIPES[name].fake_sigma == "same":
        assert d.sigma_fake is d.sigma_gen and d.sigma_gen.kind == "karras_grid"
        assert 0.25 < _share_above(d.sigma_fake, 10.0) < 0.40
    else:
        assert d.sigma_fake.kind == "lognormal"
        assert _share_above(d.sigma_fake, 10.0) < 0.02


def test_sigma_params_set_each_distribution(tmp_path):
    d = Distiller(tiny(tmp_path, "method.name=di"))
    assert (d.sigma_gen.p_mean, d.sigma_gen.p_std) == (-1.2, 1.2)  # EDM's, whatever the data scale
    d = Distiller(tiny(tmp_path / "b", "method.name=di", "method.sigma_params={p_mean: 0.0, p_std: 0.8}",
                       "method.fake_sigma_params={p_mean: 0.5}"))  # fmt: skip
    assert (d.sigma_gen.p_mean, d.sigma_gen.p_std, d.sigma_fake.p_mean, d.sigma_fake.p_std) == (0.0, 0.8, 0.5, 1.2)
    d = Distiller(tiny(tmp_path / "c", "method.name=dmd", "method.sigma_params={grid_lo: 100}"))
    assert d.sigma_fake is d.sigma_gen and d.sigma_gen.grid_lo == 100 and isinstance(d.sigma_gen.grid_lo, int)


@pytest.mark.parametrize("mixture", ["gmm8", "far2", "ring8w"])
@pytest.mark.parametrize("name", ["di", "sid", "uni_instruct"])
def test_the_mixture_preset_puts_the_lognormal_on_the_datas_scale(tmp_path, mixture, name):
    """configs/gmm8.yaml (and the bench mixtures built on it) state their lognormal: its median sits between a third
    of the teacher's sigma_data and sigma_data, as EDM's exp(-1.2) = 0.30 does for images' 0.5 (EDM's own values
    put the median at 0.11-0.22 sigma_data on these mixtures)."""
    from fdistill.bench.gmm import MIXTURES

    overrides = [*MIXTURES[mixture], "train.batch_size=16", "train.num_eval_samples=64", f"output_dir={tmp_path}"]
    d = Distiller(load_config("configs/gmm8.yaml", [*overrides, f"method.name={name}", "method.divergence=kl"]))
    lognormal = [s for s in (d.sigma_gen, d.sigma_fake) if s.kind == "lognormal"]
    assert lognormal, "every one of these methods trains its fake score on the lognormal"
    for sampler in lognormal:
        median = float(sampler(20000, torch.Generator().manual_seed(0)).median())
        assert d.teacher.sigma_data / 3 < median < d.teacher.sigma_data, (sampler, d.teacher.sigma_data)


def test_bad_sigma_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="sigma_params has unknown parameter.*p_meen"):
        tiny(tmp_path, "method.sigma_params={p_meen: 0.0}")
    with pytest.raises(ConfigError, match="fake_sigma='nope'"):
        tiny(tmp_path, "method.fake_sigma=nope")
    with pytest.raises(ConfigError, match="needs a VP"):
        Distiller(tiny(tmp_path, "method.sigma=ddpm_uniform"))


def test_ddpm_uniform_draws_the_teachers_timesteps():
    table = tuple(float(s) for s in torch.linspace(0.03, 14.6, 1000))
    draws = SigmaSampler("ddpm_uniform", timestep_sigmas=table)(5000, torch.Generator().manual_seed(0))
    idx = torch.searchsorted(torch.tensor(table), draws)
    assert torch.equal(torch.tensor(table)[idx], draws)  # every draw is a table entry
    assert idx.min() >= 20 and idx.max() <= 980 and idx.float().mean().sub(500).abs() < 15


def test_fp16_is_refused_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match="fp16 is refused.*bf16"):
        tiny(tmp_path, "train.mixed_precision=fp16")


def test_discriminator_weight_on_the_fake_score_is_dmd2s(tmp_path):
    fake = tiny(tmp_path, "method.name=fdistill", "method.divergence=js")
    teacher_feats = tiny(tmp_path, "method.name=fdistill", "method.divergence=js", "method.disc_features=teacher")
    assert (fake.method.disc_weight, teacher_feats.method.disc_weight) == (0.01, 1.0)


def test_step_seeds_never_collide():
    seen = {
        _step_generator(0, step, phase, rank, micro).initial_seed()
        for step, phase, micro, rank in itertools.product(range(100), range(6), range(4), range(3))
    }
    assert len(seen) == 100 * 6 * 4 * 3


def _dropout_teacher(path) -> None:
    torch.manual_seed(0)
    EDMUNet(sample_size=32, in_channels=1, block_out_channels=(8, 8), attention_levels=(), num_classes=10,
            norm_num_groups=4, attention_head_dim=8, dropout=0.5).save_pretrained(path)  # fmt: skip


def test_only_the_network_being_updated_is_in_train_mode(tmp_path):
    """With a dropout teacher the frozen copies must be deterministic: D_q twice on one input gives one answer."""
    _dropout_teacher(tmp_path / "teacher")
    cfg = load_config(None, [
        "teacher.kind=unet", f"teacher.path={tmp_path / 'teacher'}", "data.name=synthetic", "method.name=fdistill",
        "method.divergence=js", "train.batch_size=4", "train.steps=1", f"output_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    d = Distiller(cfg)
    seen: dict[str, set] = {"generator": set(), "fake": set(), "disc": set()}
    for name in seen:
        getattr(d, name).register_forward_pre_hook(lambda m, _a, n=name: seen[n].add((phase, m.training)))
    phase = "fake"
    d.fake_phase(0, 0)
    phase = "generator"
    d.generator_phase(0)
    assert seen["generator"] == {("fake", False), ("generator", True)}
    assert ("generator", True) not in seen["fake"] and ("fake", True) in seen["fake"]
    assert ("generator", True) not in seen["disc"] and ("fake", True) in seen["disc"]
    x, s = torch.randn(2, 1, 32, 32), torch.ones(2)
    assert torch.equal(d.fake(x, s, None), d.fake(x, s, None))  # left in eval mode after the generator step


def test_fake_batch_takes_the_real_batchs_labels(tmp_path, monkeypatch):
    d = Distiller(tiny(tmp_path, "teacher.conditional=true", "method.name=fdistill", "method.divergence=js"))
    real_labels, fake_labels = [], []
    sample = d.real.sample

    def record_real(n, gen, device):
        x, c = sample(n, gen, device)
        real_labels.append(c)
        return x, c

    monkeypatch.setattr(d.real, "sample", record_real)
    d.generator.register_forward_pre_hook(lambda _m, args: fake_labels.append(args[1]))
    d.fake_phase(0, 0)
    assert len(real_labels) == len(fake_labels) == 1 and torch.equal(real_labels[0], fake_labels[0])
