"""The emoji image-caption set on a tiny fake npm package (no download): RGBA compositing on white, captions
with skin tones and de-duplication, downsampling, prompts file, npm-less errors; and f-distill (JS, with its
discriminator on real emoji latents) through the real trainer on a tiny latent teacher."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fdistill.data.emoji import IMAGE_DIR, load_emoji, read_entries, resolve_package, write_prompts  # noqa: E402

ENTRIES = [
    {
        "name": "GRINNING FACE",
        "short_name": "grinning",
        "short_names": ["grinning"],
        "category": "Smileys & Emotion",
        "subcategory": "face-smiling",
        "image": "1f600.png",
        "has_img_google": True,
        "sort_order": 1,
    },
    {
        "name": "WAVING HAND SIGN",
        "short_name": "wave",
        "short_names": ["wave"],
        "category": "People & Body",
        "image": "1f44b.png",
        "has_img_google": True,
        "sort_order": 2,
        "skin_variations": {
            "1F3FB": {"image": "1f44b-1f3fb.png", "has_img_google": True},
            "1F3FF": {"image": "1f44b-1f3ff.png", "has_img_google": False},
        },
    },
    {
        "name": "MAN IN TUXEDO",
        "short_name": "person_in_tuxedo",
        "category": "People & Body",
        "image": "1f935.png",
        "has_img_google": True,
        "sort_order": 3,
    },
    {
        "name": "MAN IN TUXEDO",
        "short_name": "man_in_tuxedo",
        "category": "People & Body",
        "image": "1f935-200d-2642-fe0f.png",
        "has_img_google": True,
        "sort_order": 4,
    },
    {
        "name": "RED APPLE",
        "short_name": "apple",
        "category": "Food & Drink",
        "image": "1f34e.png",
        "has_img_google": True,
        "sort_order": 5,
    },
    {
        "name": "NO IMAGE HERE",
        "short_name": "ghost_entry",
        "category": "Symbols",
        "image": "ffff.png",
        "has_img_google": True,
        "sort_order": 6,
    },
]


def make_fake_package(root) -> tuple[object, dict]:
    """``root/package`` with emoji.json and 64x64 RGBA PNGs: a coloured opaque square on a transparent background
    (and one half-transparent pixel); returns the folder and the colour of each file."""
    pkg = root / "package"
    (pkg / IMAGE_DIR).mkdir(parents=True)
    (pkg / "emoji.json").write_text(json.dumps(ENTRIES))
    colours = {}
    files = [e["image"] for e in ENTRIES[:-1]] + ["1f44b-1f3fb.png"]
    for k, f in enumerate(files):
        rgba = np.zeros((64, 64, 4), np.uint8)
        colour = ((50 * k) % 256, 200 - 30 * k, 30 + 40 * k)
        rgba[16:48, 16:48, :3] = colour
        rgba[16:48, 16:48, 3] = 255
        rgba[0, 0] = (0, 0, 0, 128)
        Image.fromarray(rgba, "RGBA").save(pkg / IMAGE_DIR / f)
        colours[f] = colour
    return pkg, colours


@pytest.fixture(scope="module")
def fake_pkg(tmp_path_factory):
    return make_fake_package(tmp_path_factory.mktemp("emoji"))


def test_captions_skin_tones_and_unique_names(fake_pkg):
    pkg, _ = fake_pkg
    caps = [r["caption"] for r in read_entries(pkg)]
    assert caps == [
        "grinning face",
        "waving hand sign",
        "waving hand sign, light skin tone",  # the dark variant has no Google image
        "man in tuxedo (person in tuxedo)",
        "man in tuxedo (man in tuxedo)",
        "red apple",
    ]  # the entry without an image file is skipped
    assert [r["caption"] for r in read_entries(pkg, "emoji of {name}, {category}")][0] == (
        "emoji of grinning face, smileys & emotion"
    )


def test_images_composited_on_white_in_minus_one_one(fake_pkg):
    pkg, colours = fake_pkg
    ds = load_emoji(pkg.parent)  # the parent of package/ works too
    assert ds.images.shape == (6, 3, 64, 64) and ds.images.dtype == torch.float32
    assert ds.labels.tolist() == list(range(6)) and ds.class_names == ds.prompts
    assert ds.files[2] == "1f44b-1f3fb.png" and ds.categories[0] == "Smileys & Emotion"
    for i, f in enumerate(ds.files):
        expected = torch.tensor(colours[f], dtype=torch.float32) / 127.5 - 1
        torch.testing.assert_close(ds.images[i, :, 32, 32], expected)  # opaque: the colour
        torch.testing.assert_close(ds.images[i, :, 2, 40], torch.ones(3))  # transparent: white
    half = 1 - 128 / 255  # black at alpha 128/255 over white
    torch.testing.assert_close(ds.images[0, :, 0, 0], torch.full((3,), 2 * half - 1))


def test_downsampling_and_limit(fake_pkg):
    pkg, _ = fake_pkg
    full = load_emoji(pkg)
    small = load_emoji(pkg, size=32, limit=3)
    assert small.images.shape == (3, 3, 32, 32)
    torch.testing.assert_close(small.images, torch.nn.functional.avg_pool2d(full.images[:3], 2))
    with pytest.raises(ValueError, match="size=48"):
        load_emoji(pkg, size=48)
    with pytest.raises(ValueError, match="no split 'test'"):
        load_emoji(pkg, split="test")


def test_write_prompts_one_a_line(fake_pkg, tmp_path):
    from fdistill.teachers.latent import read_prompts

    ds = load_emoji(fake_pkg[0])
    path = write_prompts(ds, tmp_path / "p" / "prompts.txt")
    assert read_prompts(path) == ds.prompts


def test_missing_package_without_npm_is_clear(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="npm is not installed"):
        resolve_package(tmp_path / "cache")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="holds no emoji package"):
        resolve_package(tmp_path / "junk")
    with pytest.raises(FileNotFoundError, match="download=False"):
        load_emoji(tmp_path / "cache2", download=False)


def test_fdistill_js_with_discriminator_on_emoji_latents(fake_pkg, tmp_path, monkeypatch):
    """f-distill (JS) needs real data for its density-ratio discriminator: the emoji images encoded by the teacher's
    VAE, with their captions as prompt ids (``RealData`` calls ``teacher.encode_dataset``)."""
    from fixtures import save_tiny_latent_teacher
    from test_latent_teacher import latent_run_config

    from fdistill.train import distill as distill_mod

    pkg, _ = fake_pkg
    root = tmp_path / "sd_root"
    save_tiny_latent_teacher(root / "sd")
    write_prompts(load_emoji(pkg), root / "prompts.txt")
    cfg = latent_run_config(
        root,
        tmp_path / "run",
        "method.name=fdistill",
        "method.divergence=js",
        "method.gan_weight=0.01",
        "data.name=emoji",
        f"data.root={pkg}",
    )
    d = distill_mod.Distiller(cfg)
    assert d.disc is not None and d.real.images.shape == (6, 4, 8, 8)
    assert d.real.labels.tolist() == list(range(6))
    d.run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/disc" in r for r in rows) and any("loss/generator" in r for r in rows)
    assert all(np.isfinite(v) for r in rows for k, v in r.items() if k.startswith("loss/"))
