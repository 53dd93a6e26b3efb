"""The distillation trainer on the analytic mixture: every method trains, resume is exact, bad input is
one clear error, non-finite steps are skipped and stop the run."""

from __future__ import annotations

import json

import pytest
import torch

from fdistill import methods
from fdistill.cli import main
from fdistill.config import ConfigError, load_config
from fdistill.train.checkpoint import list_checkpoints
from fdistill.train.distill import Distiller, NonFiniteError, distill

TINY = [
    "teacher.means=[[-1.5,0.0],[1.5,0.0]]",
    "teacher.stds=[0.2,0.2]",
    "teacher.weights=[0.6,0.4]",
    "network.hidden=32",
    "network.depth=2",
    "train.batch_size=32",
    "train.steps=6",
    "train.log_every=2",
    "train.num_eval_samples=256",
    "train.fake_warmup_steps=1",
]


def tiny(tmp_path, *extra: str):
    return load_config(None, [*TINY, f"output_dir={tmp_path}", *extra])


@pytest.mark.parametrize("name", methods.names())
def test_every_method_trains_and_writes_outputs(tmp_path, name):
    extra = ["method.divergence=js"] if name in ("fdistill", "uni_instruct") else []
    if name == "di_star":
        extra = ["method.alpha_rev=0.1", "reward.kind=gmm_component", "reward.component=1"]
    distill(tiny(tmp_path, f"method.name={name}", *extra))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("modes_covered", "mode_weight_error", "teacher_nll", "energy_distance", "energy_distance_floor"):
        assert key in metrics
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/generator" in r for r in rows)
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "samples.png").is_file()
    assert list_checkpoints(tmp_path)
    assert list(tmp_path.glob("fdistill/events.out.tfevents.*")), "TensorBoard logs missing"


def _generator_params(run_dir):
    from safetensors.torch import load_file

    ckpt = list_checkpoints(run_dir)[-1]
    return load_file(str(ckpt / "model.safetensors"))


def test_resume_is_bit_exact(tmp_path):
    args = ["method.name=fdistill", "method.divergence=kl", "train.checkpoint_every=3"]
    full = tmp_path / "full"
    distill(tiny(full, *args))
    part = tmp_path / "part"
    distill(tiny(part, *args, "train.steps=3"))
    distill(tiny(part, *args), resume="latest")  # continues from step 3 to 6
    a, b = _generator_params(full), _generator_params(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nonfinite_steps_are_skipped_then_stop(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, "method.name=dmd", "train.max_nonfinite=2", "train.fake_warmup_steps=0")
    d = Distiller(cfg)
    before = {k: v.clone() for k, v in d.generator.state_dict().items()}
    orig = d.method.generator_loss

    def poisoned(b):
        out = orig(b)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(d.method, "generator_loss", poisoned)
    with pytest.raises(NonFiniteError, match="non-finite steps in a row"):
        d.run()
    for k, v in d.generator.state_dict().items():
        assert torch.equal(v, before[k]), "a non-finite step must not change the generator"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.nmae=sid", "unknown config key 'method.nmae'"),
        ("train.steps=many", "train.steps"),
        ("method.name=foo", "registered methods"),
        ("method.divergence=kll", "registered"),
        ("teacher.stds=[0.1]", "teacher.stds must be a list of 2"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("network.generator=unet", "network.generator='unet' is not accepted"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        tiny(tmp_path, override)


def test_the_plain_mlp_generator_is_refused_for_a_teacher_with_a_network():
    """``network.generator=mlp`` is the analytic mixture's option; an image teacher's generator is its copy."""
    with pytest.raises(ConfigError, match="network.generator=mlp is for teacher.kind=gmm; a unet teacher"):
        load_config("configs/fmnist_fdistill_js.yaml", ["network.generator=mlp"])


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    code = main(["distill", "configs/gmm8.yaml", "method.nmae=sid", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown config key 'method.nmae'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_dry_run_prints_resolved_config(capsys):
    assert main(["distill", "configs/gmm8.yaml", "--dry-run", "method.name=sid", "method.alpha=0.5"]) == 0
    out = capsys.readouterr().out
    assert "name: sid" in out and "alpha: 0.5" in out


def test_missing_resume_checkpoint_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        Distiller(tiny(tmp_path), resume=str(tmp_path / "nope"))


@pytest.mark.parametrize("divergence", ["rkl", "kl", "sh", "jf", "sf", "neyman", "pearson", "alpha"])
def test_every_divergence_trains(tmp_path, divergence):
    distill(tiny(tmp_path, "method.name=fdistill", f"method.divergence={divergence}", "train.steps=3"))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r.get("nonfinite_total", 0) == 0 for r in rows)
    assert any("loss/generator" in r for r in rows)


def test_method_ignoring_a_set_field_is_warned(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="fdistill"):
        Distiller(tiny(tmp_path, "method.name=sid", "method.divergence=js"))
    assert "method sid ignores: method.divergence" in caplog.text


def test_time_budget_stops_checkpoints_and_evaluates(tmp_path):
    distill(tiny(tmp_path, "train.steps=100000", "train.max_minutes=0.01", "train.checkpoint_every=100000"))
    step = json.loads((tmp_path / "metrics.json").read_text())["step"]
    assert 0 < step < 100000
    assert list_checkpoints(tmp_path)[-1].name == f"step_{step:08d}"  # resume continues from here


def test_budgeted_progress_bar_shows_the_budget_and_the_latest_fid(tmp_path):
    from tqdm.auto import tqdm

    d = Distiller(tiny(tmp_path, "method.name=dmd", "train.steps=5000", "train.max_minutes=1"))
    bar = tqdm(total=5000, disable=True)
    post = d._budget_postfix(bar, rate=10.0, spent_s=30.0, last_eval={"proxy_fid": 12.34})
    assert bar.total == 300 and post == {"fid": "12.3", "left": "0.5min"}  # 30 s left at 10 steps/s
    assert d._budget_postfix(bar, rate=1e6, spent_s=0.0, last_eval={}) == {"left": "1.0min"} and bar.total == 5000
