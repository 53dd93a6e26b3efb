"""Small plotting helpers shared by runs, benchmarks and reports (matplotlib Agg, PIL; no torchvision)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float NCHW -> uint8 NHWC with rounding."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def image_grid(rows: list[torch.Tensor], pad: int = 2) -> Image.Image:
    """One row block per tensor (N x C x H x W in [-1, 1]), 8 images a line."""
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
    return Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)


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
