"""The Markdown table ``fdistill eval-t2i`` prints: one row per generator, then what the columns mean.

``match`` is the caption-match analog of CLIPScore (Hessel et al. 2021), R@k the retrieval R-precision (Xu et al.
2018), FD the Frechet distance (Heusel et al. 2017) of caption-match embeddings, NOT Inception FID (see
:mod:`fdistill.eval.t2i.metrics`).
"""

from __future__ import annotations

import math
from typing import Any


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}g}" if v != 0 and abs(v) < 1e-3 else f"{v:.{digits}f}"
    return str(v)


def format_table(result: dict) -> str:
    """The Markdown table (one row per generator) and its footnotes."""
    inc = any(r.get("inception_fid") is not None for r in result["rows"])
    head = ["generator", "NFE", "UNet evals", "CFG w", "match", "R@1", "R@5", "FD (caption-match)", "diversity",
            "pixel std", "ms/img"]  # fmt: skip
    if inc:
        head[8:8] = ["Inception FID", "KID"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in result["rows"]:
        cells = [
            r["name"],
            str(r["nfe"]),
            str(r["unet_evals"]),
            "-" if r["cfg"] is None else f"{r['cfg']:g}",
            _fmt(r["match"]),
            _fmt(r["R@1"], 3),
            _fmt(r["R@5"], 3),
            _fmt(r["fd_caption_match"]),
            _fmt(r["diversity"]),
            _fmt(r["pixel_std"]),
            _fmt(r["ms_per_image"], 2),
        ]
        if inc:
            cells[8:8] = [_fmt(r["inception_fid"], 2), _fmt(r["inception_kid_mean"], 5)]
        lines.append("| " + " | ".join(cells) + " |")
    n, pool = result["num_prompts"], result["rank_pool_size"]
    div = (
        f"diversity = mean pairwise 1 - cos over {result['diversity_seeds']} seeds x "
        f"{len(result['diversity_prompts'])} prompts, pixel std across seeds in [-1, 1] units"
        if result["diversity_prompts"]
        else "diversity not measured"
    )
    fd = f"vs {result['num_real']} real images" if result["num_real"] else "not measured (no real images)"
    lines += [
        "",
        f"{n} prompts, seed {result['seed']}, batch {result['batch_size']}, device {result['device']}; "
        f"match = {result['reward_scale']:.4g} x cosine (caption-match model); R@k against {pool} prompts; "
        f"FD (caption-match) {fd}, NOT Inception FID; {div}.",
        "NFE = EDM Heun denoiser evaluations (2 * steps - 1); UNet evals = NFE x 2 with CFG w != 1. "
        "ms/img = UNet + VAE decoder (prompt embeddings precomputed).",
    ]
    return "\n".join(lines)
