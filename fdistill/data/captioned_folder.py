"""A folder of real image-caption pairs (``data.name: captioned_folder``) for text-to-image distillation.

Two layouts are read (``root``, or its ``train/`` subfolder when there is one; images found recursively):

(a) the Hugging Face ``imagefolder`` convention: images plus a ``metadata.jsonl`` (one JSON object a line) or
    ``metadata.csv`` whose ``file_name`` column gives each image's path relative to the metadata file's folder
    and whose caption column (``text`` by default, ``caption_column`` otherwise) its caption; only the listed
    images are used. A caption given as a list (several captions per image, e.g. COCO) uses its first one::

        root/train/metadata.jsonl   {"file_name": "0001.jpg", "text": "a cat on a sofa"}
        root/train/0001.jpg

(b) pairs ``name.png|jpg|jpeg|webp`` + ``name.txt`` (the caption is the txt's first non-empty line, stripped);
    images without a txt are skipped (counted in a warning)::

        root/0001.jpg  root/0001.txt

Images are converted to RGB (transparency composited on white), resized so that their short side is ``size``
(bicubic, PIL's antialiased resampling) and centre-cropped to ``size x size``, then mapped to ``[-1, 1]`` and held
in memory as float32: ``N * 3 * size^2 * 4`` bytes (3 MiB an image at 512, 10k images = 30 GiB), so ``limit``
keeps the first N images (in file-name order) and an estimate above ``max_bytes`` (8 GiB) is refused with an
error suggesting it. Captions have newlines collapsed to spaces and are stripped; images with an empty caption
are skipped (counted in a warning).

As in :mod:`fdistill.data.emoji`, labels index the captions: ``dataset.class_names`` (= ``dataset.prompts``) are the
unique captions in order of first appearance and ``class_names[label]`` is each image's caption (duplicates share
a label). A latent teacher's :meth:`~fdistill.teachers.latent.LatentTeacher.encode_dataset` maps them to prompt
ids, so **every caption must be a line of** ``teacher.prompts_file``; write them with::

    python -m fdistill.data.captioned_folder ROOT --prompts prompts.txt
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from fdistill.data.emoji import write_prompts
from fdistill.data.fashion_mnist import ImageTensorDataset

log = logging.getLogger("fdistill")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
MAX_BYTES = 8 * 1024**3
SPLITS = ("train", "all")


@dataclass(frozen=True)
class Pair:
    """One image file and its (cleaned) caption; ``name`` is the path relative to the data folder."""

    path: Path
    name: str
    caption: str


class CaptionedFolderDataset(ImageTensorDataset):
    """``images`` (N, 3, S, S) in [-1, 1]; ``class_names`` = unique captions, ``labels`` index them; plus ``files``
    (paths relative to ``folder``) and ``captions`` per image."""

    def __init__(self, images: torch.Tensor, pairs: list[Pair], folder: Path) -> None:
        captions = [p.caption for p in pairs]
        unique = list(dict.fromkeys(captions))
        index = {c: i for i, c in enumerate(unique)}
        super().__init__(images, torch.tensor([index[c] for c in captions], dtype=torch.long), unique)
        self.folder = folder
        self.files = [p.name for p in pairs]
        self.captions = captions

    @property
    def prompts(self) -> list[str]:
        return self.class_names


def clean_caption(text: object) -> str:
    """Newlines collapsed to one space, surrounding whitespace stripped (a list: its first non-empty caption)."""
    if isinstance(text, (list, tuple)):
        text = next((t for t in text if isinstance(t, str) and t.strip()), "")
    if text is None:
        return ""
    return re.sub(r"\s*[\r\n]+\s*", " ", str(text)).strip()


def resolve_folder(root: str | Path | None, split: str = "train") -> Path:
    """``root`` (or ``root/train`` when present) as an existing folder; ``split`` is ``train`` or ``all``."""
    if split not in SPLITS:
        raise ValueError(f"captioned_folder has no split {split!r}; accepted: train, all (the same images)")
    if root is None:
        raise FileNotFoundError(
            "captioned_folder needs data.root: a folder of images with metadata.jsonl/metadata.csv or name.txt captions"
        )
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(
            f"data.root={str(root)!r} is not a folder (expected images with metadata.jsonl/metadata.csv "
            "or name.txt captions)"
        )
    return base / "train" if (base / "train").is_dir() else base


def _read_metadata(meta: Path) -> list[dict]:
    if meta.suffix == ".csv":
        with open(meta, newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    rows = []
    for i, line in enumerate(meta.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta}:{i}: not a JSON object ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{meta}:{i}: expected a JSON object with file_name and a caption, got {line[:60]!r}")
        rows.append(row)
    return rows


def _pairs_from_metadata(folder: Path, meta: Path, caption_column: str) -> tuple[list[Pair], int]:
    rows = _read_metadata(meta)
    if not rows:
        raise ValueError(f"{meta} lists no images (expected rows with file_name and {caption_column!r})")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if "file_name" not in columns:
        raise ValueError(f"{meta} has no 'file_name' column (columns: {', '.join(columns)})")
    if caption_column not in columns:
        raise ValueError(
            f"{meta} has no caption column {caption_column!r}; available: {', '.join(columns)} "
            "(pass caption_column=NAME)"
        )
    pairs, missing, empty = [], [], 0
    base = meta.parent
    for r in rows:
        name = str(r.get("file_name") or "").strip()
        path = base / name
        if not name or not path.is_file():
            missing.append(name or "<empty file_name>")
            continue
        caption = clean_caption(r.get(caption_column))
        if not caption:
            empty += 1
            continue
        pairs.append(Pair(path, path.relative_to(folder).as_posix(), caption))
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise FileNotFoundError(
            f"{meta} names {len(missing)} missing image file(s) ({shown}); file_name is relative to {base}"
        )
    return pairs, empty


def _first_line(path: Path) -> str:
    for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines():
        if line.strip():
            return line.strip()
    return ""


def read_pairs(
    root: str | Path | None, split: str = "train", caption_column: str = "text", limit: int | None = None
) -> tuple[Path, list[Pair]]:
    """The data folder and its (image, caption) pairs sorted by file name, empty captions skipped (with a warning),
    the first ``limit`` kept; nothing is decoded."""
    folder = resolve_folder(root, split)
    meta = next((folder / m for m in METADATA_FILES if (folder / m).is_file()), None)
    if meta is not None:
        pairs, empty = _pairs_from_metadata(folder, meta, caption_column)
        uncaptioned = 0
    else:
        images = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()]
        if not images:
            raise FileNotFoundError(
                f"{folder} holds no images ({'/'.join(IMAGE_EXTS)}) and no {' or '.join(METADATA_FILES)}; expected "
                "images with a metadata.jsonl (file_name, text) or name.txt caption files beside them"
            )
        pairs, empty, uncaptioned = [], 0, 0
        for p in images:
            txt = p.with_suffix(".txt")
            if not txt.is_file():
                uncaptioned += 1
                continue
            caption = clean_caption(_first_line(txt))
            if not caption:
                empty += 1
                continue
            pairs.append(Pair(p, p.relative_to(folder).as_posix(), caption))
        if not pairs:
            raise ValueError(
                f"{folder}: none of its {len(images)} images has a non-empty caption (expected name.txt beside "
                "name.png/jpg, or a metadata.jsonl with file_name and text)"
            )
    if empty or uncaptioned:
        log.warning(
            "captioned_folder %s: skipped %d image(s) with an empty caption%s",
            folder,
            empty,
            f" and {uncaptioned} without a .txt caption" if uncaptioned else "",
        )
    if not pairs:
        raise ValueError(f"{meta or folder}: every listed image has an empty {caption_column!r} caption")
    pairs.sort(key=lambda p: p.name)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit={limit} must be >= 1 (or None for every image)")
        pairs = pairs[:limit]
    return folder, pairs


def load_image(path: Path, size: int) -> np.ndarray:
    """RGB (alpha composited on white), short side resized to ``size`` (bicubic), centre crop: (size, size, 3) uint8."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
            else:
                im = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from None
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.array(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def memory_bytes(n: int, size: int) -> int:
    """Bytes of ``n`` float32 RGB images of ``size x size``."""
    return n * 3 * size * size * 4


def load_captioned_folder(
    root: str | Path | None,
    split: str = "train",
    size: int = 512,
    limit: int | None = None,
    caption_column: str = "text",
    max_bytes: int = MAX_BYTES,
) -> CaptionedFolderDataset:
    """The image-caption pairs of ``root`` (see the module docstring) as (N, 3, size, size) float32 in [-1, 1]."""
    if size < 1:
        raise ValueError(f"size={size} must be >= 1")
    folder, pairs = read_pairs(root, split, caption_column, limit)
    need = memory_bytes(len(pairs), size)
    if need > max_bytes:
        fit = max(1, max_bytes // memory_bytes(1, size))
        raise ValueError(
            f"{folder}: {len(pairs)} images at {size}x{size} need {need / 1024**3:.1f} GiB in memory (float32), over "
            f"{max_bytes / 1024**3:.1f} GiB; set limit={fit} (config: data.limit={fit}) or a smaller size"
        )
    log.info("captioned_folder %s: decoding %d images at %dpx (%.2f GiB)", folder, len(pairs), size, need / 2**30)
    images = torch.empty(len(pairs), 3, size, size)
    for i, p in enumerate(pairs):
        images[i] = torch.from_numpy(load_image(p.path, size)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
    return CaptionedFolderDataset(images.clamp_(-1, 1), pairs, folder)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m fdistill.data.captioned_folder",
        description="Read a captioned image folder (metadata.jsonl/csv or name.txt pairs) and write its unique "
        "captions one a line: the teacher.prompts_file that data.name=captioned_folder needs.",
        epilog="example:\n  python -m fdistill.data.captioned_folder /data/coco_subset --prompts prompts.txt\n"
        "  fdistill distill configs/sd15_fdistill_js.yaml teacher.prompts_file=prompts.txt "
        "data.root=/data/coco_subset",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("root", help="the folder (a train/ subfolder is used when present)")
    ap.add_argument("--prompts", default=None, help="write the unique captions here, one a line (default: only count)")
    ap.add_argument("--caption-column", default="text", help="caption column of metadata.jsonl/csv (default: text)")
    ap.add_argument("--limit", type=int, default=None, help="keep the first N images, as data.limit (default: all)")
    ap.add_argument("--size", type=int, default=512, help="image side for the memory estimate / --decode (default 512)")
    ap.add_argument("--decode", action="store_true", help="also decode every image at --size (slow; checks them)")
    args = ap.parse_args(argv)
    try:
        if args.decode:
            ds = load_captioned_folder(args.root, "train", args.size, args.limit, args.caption_column)
            folder, n, prompts = ds.folder, len(ds), ds.prompts
        else:
            folder, pairs = read_pairs(args.root, "train", args.caption_column, args.limit)
            n, prompts = len(pairs), list(dict.fromkeys(p.caption for p in pairs))
    except (FileNotFoundError, ValueError) as e:
        ap.exit(1, f"error: {e}\n")
    gib = memory_bytes(n, args.size) / 1024**3
    print(f"{n} images, {len(prompts)} unique captions in {folder} ({gib:.2f} GiB in memory at {args.size}px)")
    if args.prompts:
        print(f"wrote {write_prompts(prompts, args.prompts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
