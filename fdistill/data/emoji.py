"""Emoji image-caption data set: Google's Noto Color Emoji from npm ``emoji-datasource-google@16.0.0``.

The only captioned colour image set available offline (shared/RESOURCES.md): 3,786 RGBA 64x64 PNGs
(``package/img/google/64/*.png``: 1,911 emoji and 1,875 skin-tone variants; images Apache-2.0) with names from
``package/emoji.json``. Here every image is composited on white and mapped to ``[-1, 1]`` (3 x 64 x 64, or
downsampled by area averaging to ``size`` = 32 / 16), and gets one caption: its Unicode ``name`` lower-cased, with
the skin tone(s) of a variant (``"father christmas, medium skin tone"``), through ``template`` (fields ``name``,
``short_name``, ``category``, ``subcategory``); two emoji sharing a caption are told apart by their short name.

Labels index the captions: ``dataset.class_names[label]`` (= ``dataset.prompts``) is each image's caption, so
``write_prompts(dataset, path)`` gives the ``teacher.prompts_file`` of a text-to-image teacher and
:meth:`fdistill.teachers.latent.LatentTeacher.encode_dataset` turns the set into (latents, prompt ids).

The package is fetched with ``npm pack`` into ``$FDISTILL_DATA/emoji`` (default ``~/.cache/fdistill/emoji``) the
first time only (~74 MB download, ~12 MB kept: only ``emoji.json`` and the 64 px images are extracted); ``root``
may instead name an unpacked package folder (the folder holding ``emoji.json``, or its parent).
``python -m fdistill.data.emoji --prompts prompts.txt`` fetches it and writes the prompts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fdistill.data.fashion_mnist import ImageTensorDataset

log = logging.getLogger("fdistill")

PACKAGE = "emoji-datasource-google"
VERSION = "16.0.0"
CACHE_ROOT = Path(os.environ.get("FDISTILL_DATA", Path.home() / ".cache" / "fdistill")) / "emoji"
IMAGE_DIR = "img/google/64"
SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}


class EmojiDataset(ImageTensorDataset):
    """``images`` (N, 3, S, S) in [-1, 1], ``labels = arange(N)``, ``class_names = prompts`` (one caption per image),
    plus ``files``, ``categories`` and ``short_names`` per image."""

    def __init__(self, images, captions, files, categories, short_names) -> None:
        super().__init__(images, torch.arange(len(captions)), captions)
        self.files, self.categories, self.short_names = list(files), list(categories), list(short_names)

    @property
    def prompts(self) -> list[str]:
        return self.class_names


def _is_package(p: Path) -> bool:
    return (p / "emoji.json").is_file() and (p / IMAGE_DIR).is_dir()


def ensure_package(cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """The unpacked ``package`` folder in ``cache_dir`` (default :data:`CACHE_ROOT`), fetched with ``npm pack``
    and extracted (``emoji.json`` + 64 px images) the first time."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else CACHE_ROOT
    pkg = root / "package"
    if _is_package(pkg):
        return pkg
    tgz = root / f"{PACKAGE}-{VERSION}.tgz"
    if not tgz.is_file():
        if not download:
            raise FileNotFoundError(f"emoji data not found in {root} (and download=False)")
        npm = shutil.which("npm")
        if npm is None:
            raise FileNotFoundError(
                f"emoji data not found in {root} and npm is not installed to fetch "
                f"{PACKAGE}@{VERSION} (apt-get install npm, or give data.root)"
            )
        root.mkdir(parents=True, exist_ok=True)
        print(f"fetching {PACKAGE}@{VERSION} (~74 MB, first time only) with npm pack into {root} ...", file=sys.stderr)
        proc = subprocess.run(
            [npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(root), "--silent"],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not tgz.is_file():
            err = (proc.stderr or proc.stdout).strip().splitlines()
            raise RuntimeError(f"npm pack {PACKAGE}@{VERSION} failed: {err[-1] if err else proc.returncode}")
    _extract(tgz, root)
    tgz.unlink()
    return pkg


def _extract(tgz: Path, root: Path) -> None:
    """Extract ``package/emoji.json``, ``package/LICENSE`` and the 64 px images (regular files only, no paths
    leaving ``package/``) into ``root/package`` atomically."""
    with tempfile.TemporaryDirectory(dir=root) as tmp, tarfile.open(tgz, "r:gz") as tar:
        for m in tar.getmembers():
            name = m.name
            wanted = name in ("package/emoji.json", "package/LICENSE", "package/package.json") or (
                name.startswith(f"package/{IMAGE_DIR}/") and name.endswith(".png")
            )
            if not (wanted and m.isfile()) or ".." in Path(name).parts:
                continue
            out = Path(tmp) / name
            out.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(out, "wb") as dst:  # type: ignore[union-attr]
                shutil.copyfileobj(src, dst)
        if (root / "package").exists():
            shutil.rmtree(root / "package")
        os.replace(Path(tmp) / "package", root / "package")


def resolve_package(root: str | Path | None = None, download: bool = True) -> Path:
    """``root`` as the folder holding ``emoji.json`` (or its parent); ``None`` = the cache (fetched if needed)."""
    if root is None:
        return ensure_package(None, download)
    p = Path(root).expanduser()
    for cand in (p, p / "package"):
        if _is_package(cand):
            return cand
    if not p.exists() or (p / f"{PACKAGE}-{VERSION}.tgz").is_file() or (p.is_dir() and not any(p.iterdir())):
        return ensure_package(p, download)
    raise FileNotFoundError(f"data.root={str(root)!r} holds no emoji package (emoji.json and {IMAGE_DIR}/)")


def read_entries(pkg: Path, template: str = "{name}") -> list[dict]:
    """One record per image present in ``pkg``: ``file``, ``caption``, ``category``, ``short_name`` (emoji.json
    order by ``sort_order``; skin-tone variants after their base emoji); captions made unique."""
    data = json.loads((pkg / "emoji.json").read_text(encoding="utf-8"))
    images = pkg / IMAGE_DIR
    out: list[dict] = []

    def add(file: str | None, name: str, entry: dict) -> None:
        if not file or not (images / file).is_file():
            return
        short = entry.get("short_name") or (entry.get("short_names") or [""])[0]
        fields = {
            "name": name,
            "short_name": short,
            "category": (entry.get("category") or "").lower(),
            "subcategory": entry.get("subcategory") or "",
        }
        out.append(
            {
                "file": file,
                "caption": template.format(**fields).strip(),
                "category": entry.get("category"),
                "short_name": short,
            }
        )

    for e in sorted(data, key=lambda e: (e.get("sort_order", 0), e.get("unified", ""))):
        name = (e.get("name") or e.get("short_name") or "").lower()
        if e.get("has_img_google", True):
            add(e.get("image"), name, e)
        for key, var in (e.get("skin_variations") or {}).items():
            if var.get("has_img_google", True):
                tones = list(dict.fromkeys(SKIN_TONES.get(k.upper(), k.lower()) for k in key.split("-")))
                add(var.get("image"), f"{name}, {', '.join(tones)}", e)
    seen: dict[str, int] = {}
    for r in out:
        seen[r["caption"]] = seen.get(r["caption"], 0) + 1
    for r in out:
        if seen[r["caption"]] > 1 and r["short_name"]:
            r["caption"] = f"{r['caption']} ({r['short_name'].replace('_', ' ')})"
    used: set[str] = set()
    for r in out:
        base, k = r["caption"], 2
        while r["caption"] in used:
            r["caption"], k = f"{base} {k}", k + 1
        used.add(r["caption"])
    return out


def _load_rgb_on_white(path: Path) -> np.ndarray:
    """RGBA PNG -> (64, 64, 3) float32 in [0, 1], alpha-composited on white."""
    with Image.open(path) as im:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    if rgba.shape[:2] != (64, 64):
        rgba = (
            np.asarray(
                Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA").resize(
                    (64, 64), Image.Resampling.LANCZOS
                ),
                dtype=np.float32,
            )
            / 255.0
        )
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + (1.0 - alpha)


def load_emoji(
    root: str | Path | None = None,
    split: str = "all",
    size: int = 64,
    template: str = "{name}",
    download: bool = True,
    limit: int | None = None,
) -> EmojiDataset:
    """The emoji set (see the module docstring). ``split`` is ``all`` or ``train`` (the same: a toy set with no
    held-out part); ``size`` 64 (native), 32 or 16 (area downsampling); ``limit`` keeps the first N images."""
    if split not in ("all", "train"):
        raise ValueError(f"emoji has no split {split!r}; accepted: all, train (the same images)")
    if size not in (64, 32, 16):
        raise ValueError(f"emoji size={size}; accepted: 64 (native), 32, 16")
    pkg = resolve_package(root, download)
    entries = read_entries(pkg, template)[:limit]
    if not entries:
        raise FileNotFoundError(f"{pkg}: emoji.json lists no image present in {IMAGE_DIR}/")
    arr = np.stack([_load_rgb_on_white(pkg / IMAGE_DIR / r["file"]) for r in entries])
    images = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    if size != 64:
        images = F.interpolate(images, size=(size, size), mode="area")
    images = (images * 2 - 1).clamp(-1, 1)
    return EmojiDataset(
        images,
        [r["caption"] for r in entries],
        [r["file"] for r in entries],
        [r["category"] for r in entries],
        [r["short_name"] for r in entries],
    )


def write_prompts(dataset_or_prompts, path: str | Path) -> Path:
    """Write one prompt a line (``teacher.prompts_file``)."""
    prompts = getattr(dataset_or_prompts, "prompts", dataset_or_prompts)
    bad = [p for p in prompts if "\n" in p or not p.strip()]
    if bad:
        raise ValueError(f"prompts must be non-empty single lines, got {bad[:3]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fetch the emoji data set and write its prompts (one a line).")
    ap.add_argument("--root", default=None, help="unpacked package folder (default: the cache, fetched if needed)")
    ap.add_argument("--prompts", default=None, help="write the captions here (teacher.prompts_file)")
    ap.add_argument("--template", default="{name}", help="caption template (name, short_name, category, subcategory)")
    args = ap.parse_args(argv)
    pkg = resolve_package(args.root)
    entries = read_entries(pkg, args.template)
    print(f"{len(entries)} images with captions in {pkg}")
    if args.prompts:
        print(f"wrote {write_prompts([r['caption'] for r in entries], args.prompts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
