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


def _pm(split: dict | None, digits: int = 4) -> str:
    return "-" if not split else f"{_fmt(split['mean'], digits)} ± {_fmt(split['std'], 2)}"


def format_table(result: dict) -> str:
    """The Markdown table (one row per generator), the student-vs-teacher verdicts and the footnotes."""
    rows = result["rows"]
    inc = any(r.get("inception_fid") is not None for r in rows)
    clip = any(r.get("clip_score") is not None for r in rows)
    split = result.get("splits", 1) > 1
    head = ["generator", "NFE", "UNet evals", "CFG w", "match", "R@1", "R@5", "FD (caption-match)"]
    head += ["match ± s", "FD ± s"] if split else []
    head += ["Inception FID", "KID"] + (["FID ± s"] if split else []) if inc else []
    head += ["CLIP score"] + (["CLIP ± s"] if split else []) if clip else []
    head += ["diversity", "pixel std", "ms/img"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        cells = [r["name"], str(r["nfe"]), str(r["unet_evals"]), "-" if r["cfg"] is None else f"{r['cfg']:g}",
                 _fmt(r["match"]), _fmt(r["R@1"], 3), _fmt(r["R@5"], 3), _fmt(r["fd_caption_match"])]  # fmt: skip
        cells += [_pm(r.get("match_split")), _pm(r.get("fd_caption_match_split"))] if split else []
        if inc:
            cells += [_fmt(r["inception_fid"], 2), _fmt(r["inception_kid_mean"], 5)]
            cells += [_pm(r.get("inception_fid_split"), 2)] if split else []
        if clip:
            cells += [_fmt(r["clip_score"], 3)] + ([_pm(r.get("clip_score_split"), 3)] if split else [])
        cells += [_fmt(r["diversity"]), _fmt(r["pixel_std"]), _fmt(r["ms_per_image"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    if result.get("verdicts"):
        lines += ["", "Student vs teacher (a difference counts when |diff| > 2 sqrt(s_student^2 + s_teacher^2)):"]
        lines += [f"- {v['text']}" for v in result["verdicts"]]
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
        f"FD (caption-match) {fd}, NOT Inception FID; {div}."
        + (
            f" ± s: mean and sample std over {result['splits']} disjoint sets of {result['split_size']} prompts."
            if split
            else ""
        ),
        "NFE = EDM Heun denoiser evaluations (2 * steps - 1); UNet evals = NFE x 2 with CFG w != 1. "
        "ms/img = UNet + VAE decoder (prompt embeddings precomputed).",
    ]
    return "\n".join(lines)
