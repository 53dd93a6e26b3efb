"""The captioned image folder on tiny PNGs: both layouts (metadata.jsonl/csv and name.txt pairs), resize + centre
crop, alpha on white, shared labels for duplicate captions, clear errors, the prompts CLI, ``load_dataset``
dispatch, a tiny latent teacher's ``encode_dataset`` and the trainer's ``data.image_size`` / ``data.limit``."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fdistill.data import DATASETS, load_dataset  # noqa: E402
from fdistill.data.captioned_folder import load_captioned_folder, main, read_pairs  # noqa: E402


def _png(path, size=(24, 16), color=(255, 0, 0), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def hf_folder(tmp_path):
    """imagefolder layout under train/: 4 listed images (one caption twice, one empty), one unlisted image."""
    train = tmp_path / "hf" / "train"
    _png(train / "c.png", (16, 24), (0, 0, 255))
    _png(train / "a.png", (24, 16), (255, 0, 0))
    _png(train / "sub" / "b.png", (20, 20), (0, 255, 0))
    _png(train / "d.png", (8, 8))
    _png(train / "unlisted.png")
    rows = [
        {"file_name": "c.png", "text": "a blue car", "extra": 1},
        {"file_name": "a.png", "text": "a red apple\n on a table "},
        {"file_name": "sub/b.png", "text": "a blue car"},
        {"file_name": "d.png", "text": "  "},
    ]
    _jsonl(train / "metadata.jsonl", rows)
    return tmp_path / "hf"


def test_imagefolder_jsonl_layout(hf_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="fdistill"):
        ds = load_captioned_folder(hf_folder, size=8)
    assert "skipped 1 image(s) with an empty caption" in caplog.text
    assert ds.files == ["a.png", "c.png", "sub/b.png"]  # sorted by file name, the empty caption skipped
    assert ds.class_names == ["a red apple on a table", "a blue car"] == ds.prompts
    assert ds.labels.tolist() == [0, 1, 1]  # duplicate captions share one label
    assert [ds.class_names[i] for i in ds.labels] == ds.captions
    assert ds.images.shape == (3, 3, 8, 8) and ds.images.dtype == torch.float32
    assert float(ds.images.min()) >= -1 and float(ds.images.max()) <= 1
    assert torch.allclose(ds.images[0], torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 8, 8), atol=1e-6)
    assert torch.allclose(ds.images[1, 2], torch.ones(8, 8), atol=1e-6)  # blue
    assert len(load_captioned_folder(hf_folder, split="all", size=8)) == 3


def test_metadata_csv_with_caption_column(tmp_path):
    _png(tmp_path / "x.png")
    _png(tmp_path / "y.png")
    (tmp_path / "metadata.csv").write_text('file_name,caption\ny.png,"two, with comma"\nx.png,one\n', encoding="utf-8")
    ds = load_captioned_folder(tmp_path, size=4, caption_column="caption")
    assert ds.files == ["x.png", "y.png"] and ds.class_names == ["one", "two, with comma"]
    with pytest.raises(ValueError, match=r"no caption column 'text'; available: file_name, caption"):
        load_captioned_folder(tmp_path, size=4)


def test_txt_pairs_layout_alpha_on_white_and_limit(tmp_path, caplog):
    _png(tmp_path / "b.png", (10, 10), (0, 0, 0, 0), mode="RGBA")  # fully transparent -> white
    (tmp_path / "b.txt").write_text("\n\n  a white square  \nsecond line ignored\n")
    _png(tmp_path / "a.jpg", (10, 10), (0, 0, 0))
    (tmp_path / "a.txt").write_text("a black square")
    Image.new("RGB", (10, 10), (0, 0, 0)).save(tmp_path / "c.webp")
    (tmp_path / "c.txt").write_text("a black square\n")
    _png(tmp_path / "no_caption.png")
    _png(tmp_path / "empty.png")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with caplog.at_level(logging.WARNING, logger="fdistill"):
        ds = load_captioned_folder(tmp_path, size=6)
    assert "skipped 1 image(s) with an empty caption and 1 without a .txt caption" in caplog.text
    assert ds.files == ["a.jpg", "b.png", "c.webp"]
    assert ds.class_names == ["a black square", "a white square"] and ds.labels.tolist() == [0, 1, 0]
    assert torch.allclose(ds.images[1], torch.ones(3, 6, 6)) and float(ds.images[0].max()) < -0.9
    short = load_captioned_folder(tmp_path, size=6, limit=2)
    assert short.files == ["a.jpg", "b.png"] and torch.equal(short.images, ds.images[:2])


def test_resize_short_side_then_centre_crop(tmp_path):
    """60x20: thirds blue | red | blue. size 20 crops the red third exactly; size 10 resizes to 30x10 first."""
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[..., 2] = 255
    arr[:, 20:40] = (255, 0, 0)
    Image.fromarray(arr).save(tmp_path / "wide.png")
    (tmp_path / "wide.txt").write_text("a red stripe")
    Image.fromarray(arr.transpose(1, 0, 2).copy()).save(tmp_path / "tall.png")  # 20 wide x 60 high
    (tmp_path / "tall.txt").write_text("a red stripe")
    red = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1)
    ds = load_captioned_folder(tmp_path, size=20)
    assert ds.images.shape == (2, 3, 20, 20) and torch.allclose(ds.images, red.expand(2, 3, 20, 20))
    small = load_captioned_folder(tmp_path, size=10).images
    assert small.shape == (2, 3, 10, 10)
    assert torch.allclose(small[:, :, 2:8, 2:8], red.expand(2, 3, 6, 6), atol=0.02)  # away from bicubic edges


def test_clear_errors(tmp_path, hf_folder):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_captioned_folder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="needs data.root"):
        load_captioned_folder(None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no images .* metadata.jsonl"):
        load_captioned_folder(tmp_path / "empty")
    _png(tmp_path / "nocap" / "x.png")
    with pytest.raises(ValueError, match="none of its 1 images has a non-empty caption"):
        load_captioned_folder(tmp_path / "nocap")
    meta = hf_folder / "train" / "metadata.jsonl"
    _jsonl(meta, [{"file_name": "a.png", "text": "x"}, {"file_name": "gone.png", "text": "y"}])
    with pytest.raises(FileNotFoundError, match=r"names 1 missing image file\(s\) \(gone.png\)"):
        load_captioned_folder(hf_folder)
    _jsonl(meta, [{"file_name": "a.png", "caption": "x", "score": 1}])
    with pytest.raises(ValueError, match="no caption column 'text'; available: file_name, caption, score"):
        load_captioned_folder(hf_folder)
    meta.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"metadata.jsonl:1: not a JSON object"):
        load_captioned_folder(hf_folder)
    with pytest.raises(ValueError, match="no split 'test'"):
        load_captioned_folder(hf_folder, split="test")


def test_memory_estimate_suggests_limit(hf_folder):
    with pytest.raises(ValueError, match=r"need .* GiB in memory .* set limit=1 \(config: data.limit=1\)"):
        load_captioned_folder(hf_folder, size=64, max_bytes=2 * 3 * 64 * 64 * 4 - 1)
    assert len(load_captioned_folder(hf_folder, size=64, limit=1, max_bytes=3 * 64 * 64 * 4)) == 1


def test_prompts_cli(hf_folder, tmp_path, capsys):
    out = tmp_path / "p" / "prompts.txt"
    assert main([str(hf_folder), "--prompts", str(out)]) == 0
    assert out.read_text() == "a red apple on a table\na blue car\n"
    assert "3 images, 2 unique captions" in capsys.readouterr().out
    out2 = tmp_path / "p2.txt"
    assert main([str(hf_folder), "--prompts", str(out2), "--decode", "--size", "8", "--limit", "1"]) == 0
    assert out2.read_text() == "a red apple on a table\n"
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "missing")])
    assert e.value.code == 1 and "is not a folder" in capsys.readouterr().err


def test_load_dataset_dispatch(hf_folder):
    assert "captioned_folder" in DATASETS
    ds = load_dataset("captioned_folder", root=hf_folder, split="train", size=4, limit=2)
    assert ds.images.shape == (2, 3, 4, 4) and ds.class_names == ["a red apple on a table", "a blue car"]
    folder, pairs = read_pairs(hf_folder)
    assert folder == hf_folder / "train" and [p.name for p in pairs] == ["a.png", "c.png", "sub/b.png"]


@pytest.fixture(scope="module")
def sd_root(tmp_path_factory):
    from fixtures import save_tiny_latent_teacher

    root = tmp_path_factory.mktemp("tiny_sd_captioned")
    save_tiny_latent_teacher(root / "sd")
    return root


def test_latent_teacher_encodes_captioned_folder(hf_folder, sd_root):
    from fdistill.config import TeacherConfig
    from fdistill.teachers.latent import load_latent_teacher

    prompts = sd_root / "prompts.txt"
    prompts.write_text("a green tree\na blue car\na red apple on a table\n")
    teacher = load_latent_teacher(
        TeacherConfig(kind="latent", path=str(sd_root / "sd"), prompts_file=str(prompts))
    ).requires_grad_(False)
    ds = load_captioned_folder(hf_folder, size=32)  # area-downsampled to the tiny VAE's 16 px
    latents, ids = teacher.encode_dataset(ds)
    assert latents.shape == (3, 4, 8, 8) and torch.isfinite(latents).all()
    assert ids.tolist() == [2, 1, 1]  # a.png: "a red apple on a table", c.png / sub/b.png: "a blue car"
    prompts.write_text("a green tree\n")
    other = load_latent_teacher(TeacherConfig(kind="latent", path=str(sd_root / "sd"), prompts_file=str(prompts)))
    with pytest.raises(KeyError, match="not in the teacher's prompts"):
        other.encode_dataset(ds)


def test_trainer_real_data_uses_image_size_and_limit(hf_folder, sd_root, tmp_path):
    """``data.image_size`` / ``data.limit`` reach the loader: RealData holds the encoded (latent, prompt id) pairs."""
    from test_latent_teacher import latent_run_config

    from fdistill.train.distill import RealData

    main([str(hf_folder), "--prompts", str(sd_root / "prompts.txt")])
    cfg = latent_run_config(
        sd_root,
        tmp_path / "run",
        "method.name=fdistill",
        "data.name=captioned_folder",
        f"data.root={hf_folder}",
        "data.image_size=16",
        "data.limit=2",
    )
    from fdistill.teachers import build_teacher

    real = RealData(cfg, build_teacher(cfg).requires_grad_(False))
    assert real.images.shape == (2, 4, 8, 8) and real.labels.tolist() == [0, 1]
