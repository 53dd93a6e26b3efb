"""The emoji caption-match reward model (fdistill.train.caption_match) on a tiny text tower and toy images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures import sigterm_on_call

import fdistill.train.caption_match.loop as loop_module
from fdistill.rewards import TEXT_TOWER_FILE, PreferenceReward
from fdistill.train.caption_match import augment, clip_loss, heldout_mask, main, train_caption_match

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "purple", "orange"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "square", "left", "right", *COLOURS]


def tiny_text_tower(folder: Path) -> Path:
    """A 1-layer random BertModel and a word-level BertTokenizerFast: a stand-in for MiniLM."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(str(folder / "vocab.txt"), model_max_length=16).save_pretrained(
        folder
    )  # vocab_file (4.x) / vocab (5)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    BertModel(cfg).save_pretrained(folder)
    return folder


def toy_set(n: int = 8) -> tuple[torch.Tensor, list[str]]:
    """Solid-colour 8 px images (plus a bright left or right half) with their captions: trivially separable."""
    rgb = {
        "red": (1, -1, -1),
        "green": (-1, 1, -1),
        "blue": (-1, -1, 1),
        "yellow": (1, 1, -1),
        "black": (-1, -1, -1),
        "white": (1, 1, 1),
        "purple": (0.5, -1, 0.5),
        "orange": (1, 0, -1),
    }
    images, captions = [], []
    for i, name in enumerate(COLOURS[:n]):
        x = torch.tensor(rgb[name], dtype=torch.float32).view(3, 1, 1).expand(3, 8, 8).clone()
        side = "left" if i % 2 == 0 else "right"
        if side == "left":
            x[:, :, :2] = 0.0
        else:
            x[:, :, -2:] = 0.0
        images.append(x)
        captions.append(f"{name} square {side}")
    return torch.stack(images), captions


TINY = dict(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, projection_dim=8, patch_size=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cm")
    text = tiny_text_tower(root / "text")
    images, captions = toy_set()
    out = train_caption_match(
        root / "model", images, captions, steps=60, batch_size=8, lr=3e-3, seed=0, text_model=text, fit_on="all",
        progress=False, **TINY,
    )  # fmt: skip
    return out, text


def test_training_reduces_contrastive_loss(trained):
    info = json.loads((trained[0] / "training_info.json").read_text())
    assert info["steps"] == 60
    assert info["probe_loss_after"] < 0.5 * info["probe_loss_before"], info
    m = info["metrics"]
    assert m["text_embedding_max_abs_diff"] < 1e-3  # the saved folder scores as trained (up to float rounding)
    assert m["train"]["top1"] >= 0.75 and m["train"]["matched_cos"] > m["train"]["unmatched_cos"] + 0.2


def test_saved_folder_is_a_preference_reward(trained):
    out, _ = trained
    assert (out / TEXT_TOWER_FILE).is_file() and (out / "README.md").is_file()
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:  # the frozen text tower is not copied
        assert not any(k.startswith("text_model.") for k in f.keys())  # noqa: SIM118 (safe_open is no dict)
    images, captions = toy_set()
    reward = PreferenceReward.from_pretrained(str(out), captions)
    assert reward.image_size == 8 and reward.mean == (0.5, 0.5, 0.5)
    assert reward.scale == pytest.approx(float(reward.model.logit_scale.exp()))
    ids = torch.arange(len(captions))
    matched = reward(images, ids)
    mismatched = reward(images, ids.roll(1))
    assert (matched > mismatched).float().mean() >= 0.75
    assert matched.mean() > mismatched.mean()


def test_reward_gradient_wrt_image(trained):
    out, _ = trained
    images, captions = toy_set()
    reward = PreferenceReward.from_pretrained(str(out), captions)
    x = (images * 0.9).requires_grad_(True)  # inside (-1, 1): the preprocessing's clamp passes the gradient
    reward(x, torch.arange(len(captions))).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_wrong_text_tower_is_an_error(trained, tmp_path):
    import shutil

    out, text = trained
    bad_text = tiny_text_tower(tmp_path / "other_text")
    from transformers import BertModel

    m = BertModel.from_pretrained(str(bad_text))
    with torch.no_grad():
        m.pooler.dense.bias.add_(1.0)
    m.save_pretrained(bad_text)
    copy = shutil.copytree(out, tmp_path / "copy")
    spec = json.loads((copy / TEXT_TOWER_FILE).read_text())
    (copy / TEXT_TOWER_FILE).write_text(json.dumps({**spec, "text_model": str(bad_text)}))
    with pytest.raises(ValueError, match="not the one the model was trained with"):
        PreferenceReward.from_pretrained(str(copy))


def test_helpers():
    caps = [f"caption {i}" for i in range(2000)]
    held = heldout_mask(caps)
    assert 0.07 < held.float().mean() < 0.13
    assert torch.equal(held, heldout_mask(list(caps)))  # deterministic
    assert heldout_mask(caps[::-1]).flip(0).equal(held)  # independent of order
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and torch.isfinite(y).all()
    e, scale = torch.eye(4), torch.tensor(4.0)
    assert clip_loss(e, e, scale) < clip_loss(e, e.roll(1, 0), scale)
    img, txt = torch.randn(4, 8), torch.randn(4, 8)  # all-caption negatives = in-batch when the batch is everything
    assert torch.allclose(clip_loss(img, txt, scale, txt, torch.arange(4)), clip_loss(img, txt, scale))
    more = torch.cat([torch.randn(3, 8), txt])  # extra captions only add negatives
    assert clip_loss(img, txt, scale, more, torch.arange(3, 7)) > clip_loss(img, txt, scale)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--steps", "0", "--out", "x"], "--steps"),
        (["--out", "x", "--max-minutes", "-1"], "--max-minutes"),
        (["--out", "x", "--text-model", "/no/such/folder"], "--text-model"),
        (["--steps", "10"], "--out"),
        (["--out", "x", "--fit-on", "half"], "--fit-on"),
    ],
)
def test_bad_args_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1


# ---- checkpoints and --resume (fdistill.train.resumable) -------------------------------------------------------

RESUME = dict(steps=8, batch_size=4, lr=3e-3, seed=0, fit_on="all", checkpoint_every=3, progress=False, **TINY)


def _assert_same_run(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ia, ib = (json.loads((p / "training_info.json").read_text()) for p in (a, b))
    for key in ("steps", "loss_curve", "probe_loss_before", "probe_loss_after", "logit_scale", "metrics"):
        assert ia[key] == ib[key], key


def test_sigterm_then_resume_is_bit_exact(trained, tmp_path, monkeypatch):
    from fdistill.train.checkpoint import list_checkpoints

    images, captions = toy_set()
    text = trained[1]
    full = train_caption_match(tmp_path / "full", images, captions, text_model=text, **RESUME)
    assert not (tmp_path / "full.run").exists(), "a finished run removes its checkpoints"
    with monkeypatch.context() as m:
        sigterm_on_call(m, loop_module, "augment", 5)
        part = train_caption_match(tmp_path / "part", images, captions, text_model=text, **RESUME)
    info = json.loads((part / "training_info.json").read_text())
    assert info["stopped_by_signal"] and info["steps"] == 5
    assert [p.name for p in list_checkpoints(tmp_path / "part.run")] == ["step_00000003", "step_00000005"]
    resumed = train_caption_match(part, images, captions, text_model=text, resume="latest", **RESUME)
    _assert_same_run(full, resumed)
    assert not (tmp_path / "part.run").exists()


def test_cli_resume_errors_are_one_line(trained, tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    import fdistill.train.caption_match.command as command

    images, captions = toy_set()
    monkeypatch.setattr(command, "load_emoji", lambda size: SimpleNamespace(images=images, prompts=captions))
    flags = ["--hidden", "16", "--layers", "1", "--heads", "2", "--mlp", "32", "--projection-dim", "8", "--patch", "4"]
    argv = [*flags, "--text-model", str(trained[1]), "--out", str(tmp_path / "m"), "--steps", "4", "--batch-size",
            "4", "--fit-on", "all", "--checkpoint-every", "1", "--no-progress"]  # fmt: skip
    with monkeypatch.context() as m:
        sigterm_on_call(m, loop_module, "augment", 2)
        assert main(argv) == 0
    assert "--resume latest" in capsys.readouterr().out
    ckpts = sorted((tmp_path / "m.run" / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step_00000001", "step_00000002"]

    def error(extra: list[str]) -> str:
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:"), err
        return err

    assert "--resume latest" in error([])  # a fresh run does not overwrite an interrupted one
    assert "seed=" in error(["--seed", "1", "--resume", "latest"])  # another recipe
    state = ckpts[-1] / "state.pt"
    state.write_bytes(state.read_bytes()[:-1] + b"x")
    err = error(["--resume", str(ckpts[-1])])
    assert "state.pt" in err and "sha256" in err
    assert main([*argv, "--resume", "latest"]) == 0  # falls back to the intact older checkpoint
    assert json.loads((tmp_path / "m" / "training_info.json").read_text())["steps"] == 4
    assert not (tmp_path / "m.run").exists()
