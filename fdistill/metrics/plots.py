"""Small plotting helpers shared by runs, benchmarks and reports (matplotlib Agg, PIL; no torchvision)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float NCHW -> uint8 NHWC with rounding."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def image_grid(rows: list[torch.Tensor], pad: int = 2, labels: Sequence[str | None] | None = None) -> Image.Image:
    """One row block per tensor (N x C x H x W in [-1, 1]), 8 images a line. ``labels``: one text per block (e.g.
    "teacher, NFE 18"), written in a strip left of the images (PIL's default font, black on the white background);
    without labels no strip."""
    blocks = []
    for images in rows:
        arr = to_uint8(images)
        n, h, w, c = arr.shape
        cols = min(8, n)
        lines = -(-n // cols)
        canvas = np.full((lines * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
        for i in range(n):
            r, k = divmod(i, cols)
            canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = arr[
                i
            ]
        blocks.append(canvas)
    width = max(b.shape[1] for b in blocks)
    blocks = [np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0)), constant_values=255) for b in blocks]
    grid = np.concatenate(blocks, axis=0)
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if labels is None or not any(labels):
        return image
    if len(labels) != len(rows):
        raise ValueError(f"image_grid: {len(labels)} labels for {len(rows)} row blocks")
    return _label_strip(image, [b.shape[0] for b in blocks], list(labels), pad)


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int, padding: int = 2) -> Path:
    """Save (N, C, H, W) images in [-1, 1] as one PNG grid with ``nrow`` images per row (PIL, no torchvision)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    ncol = nrow
    nrows = math.ceil(n / ncol)
    grid = torch.zeros(c, nrows * (h + padding) + padding, ncol * (w + padding) + padding, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top : top + h, left : left + w] = x[i]
    arr = grid.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def label_strip_width(labels: Sequence[str | None], pad: int = 2) -> int:
    """Width in pixels of the strip :func:`image_grid` puts left of the images for ``labels``."""
    font = ImageFont.load_default()
    return max(int(font.getbbox(t)[2]) if t else 0 for t in labels) + 4 * pad


def _label_strip(image: Image.Image, heights: list[int], labels: list[str | None], pad: int) -> Image.Image:
    font = ImageFont.load_default()
    strip = label_strip_width(labels, pad)
    out = Image.new(image.mode, (image.width + strip, image.height), 255 if image.mode == "L" else (255, 255, 255))
    out.paste(image, (strip, 0))
    draw = ImageDraw.Draw(out)
    ink = 0 if image.mode == "L" else (0, 0, 0)
    top = 0
    for height, text in zip(heights, labels, strict=True):
        if text:
            _, y0, _, y1 = font.getbbox(text)
            draw.text((2 * pad, top + max((height - (y1 - y0)) // 2 - y0, 0)), text, fill=ink, font=font)
        top += height
    return out


def save_scatter(path: str | Path, real: torch.Tensor, fake: torch.Tensor, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    scatter_panel(ax, real, fake, title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def scatter_panel(ax, real: torch.Tensor, fake: torch.Tensor, title: str = "") -> None:
    r, f = real[:2000, :2].cpu().numpy(), fake[:2000, :2].cpu().numpy()
    ax.scatter(r[:, 0], r[:, 1], s=2, alpha=0.3, c="tab:blue", label="teacher")
    ax.scatter(f[:, 0], f[:, 1], s=2, alpha=0.3, c="tab:red", label="student")
    ax.set_title(title, fontsize=8)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=6)
