"""The emoji caption-match reward model (fdistill.train.caption_match) on a tiny text tower and toy images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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
