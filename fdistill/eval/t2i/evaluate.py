"""``evaluate_t2i``: every metric of every text-to-image generator on the same prompts from the same noise.

Per row (see :mod:`fdistill.eval.t2i.metrics`): ``match``, the mean of ``scale * cos(E_img(x), E_txt(prompt))``
(:meth:`~fdistill.rewards.CLIPReward.score_images`, the caption-match analog of CLIPScore, Hessel et al. 2021,
without its ``max(., 0)``); ``R@1``, ``R@5``; FD against real images; optional Inception FID and KID (Heusel et al.
2017; Binkowski et al. 2018) with the TF-FID Inception of :mod:`fdistill.metrics.inception`; optional CLIP score
(Hessel et al. 2021, torchmetrics' ``CLIPScore``) with a CLIP model the caller names; diversity; and ``ms/img``, the
wall time of :func:`fdistill.eval.t2i.generators.generate` per image after one untimed warm-up call.

Uncertainty: with ``splits = S > 1`` the images are also scored as S disjoint interleaved sets of ``N // S`` (image
``i`` in set ``i % S``); match, FD, Inception FID and CLIP score get the mean and sample std over the sets
(``*_split``), and every student row is compared with every teacher row by the rule of ``fdistill eval
--against-teacher``: a difference counts when ``|diff| > 2 sqrt(s_student^2 + s_teacher^2)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fdistill.eval.fid_eval import beyond_noise, spread
from fdistill.eval.t2i.base import EvalT2ISetupError, T2IGenerator
from fdistill.eval.t2i.generators import generate, generate_batches
from fdistill.eval.t2i.inputs import select_prompts
from fdistill.eval.t2i.metrics import diversity_scores, retrieval_accuracy, reward_image_features, reward_text_features
from fdistill.metrics.clip_score import CLIPScoreSums
from fdistill.metrics.fid import fid_from_features, kernel_inception_distance
from fdistill.metrics.inception import InceptionFeatureExtractor, quantize_uint8
from fdistill.metrics.plots import image_grid
from fdistill.rewards import CLIPReward

if TYPE_CHECKING:
    from torchmetrics.multimodal.clip_score import CLIPScore

log = logging.getLogger("fdistill.eval.t2i")

DIVERSITY_SEED_OFFSET = 1_000_003  # diversity batches draw their noise from seeds far from the main batches'
GRID_COLUMNS = 8
NOTES = [
    "FD uses the caption-match model's unit-norm image embeddings, not Inception features: compare rows "
    "of one table only (same model, real set and number of prompts)",
    "NFE = denoiser evaluations of the EDM Heun sampler (2 * steps - 1); UNet evals doubles it with CFG "
    "w != 1 (both branches batched); students: one UNet call, no CFG",
    "ms/img = UNet evaluations + VAE decoder (prompt embeddings precomputed, warm-up call untimed)",
]


#: (row key, label, which way is better) of the metrics that get a split spread and a teacher-vs-student verdict
SPLIT_METRICS = (("match", "match", "higher"), ("fd_caption_match", "FD", "lower"),
                 ("inception_fid", "Inception FID", "lower"), ("clip_score", "CLIP score", "higher"))  # fmt: skip


def split_indices(n: int, splits: int) -> list[Tensor]:
    """``splits`` disjoint interleaved index sets of ``n // splits`` images each (image ``i`` in set ``i % splits``;
    the last ``n % splits`` images count only in the full-N numbers)."""
    size = n // splits
    return [torch.arange(k, size * splits, splits) for k in range(splits)]


def verdicts(rows: Sequence[dict]) -> list[dict]:
    """Every student row against every teacher row on each metric both have a split spread of."""
    out = []
    for st in (r for r in rows if r["kind"] == "student"):
        for te in (r for r in rows if r["kind"] == "teacher"):
            for key, label, better in SPLIT_METRICS:
                a, b = st.get(f"{key}_split"), te.get(f"{key}_split")
                if not a or not b:
                    continue
                diff, noise, beyond = beyond_noise(a, b)
                worse = diff > 0 if better == "lower" else diff < 0
                plain = (f"larger than the noise: the student is {'worse' if worse else 'better'}" if beyond
                         else "within the noise")  # fmt: skip
                text = f"{st['name']} vs {te['name']}: {label} {diff:+.4g} (noise {noise:.3g}), {plain}"
                out.append({"student": st["name"], "teacher": te["name"], "metric": key, "diff": diff,
                            "noise": noise, "beyond_noise": beyond, "text": text})  # fmt: skip
    return out


def _grid_indices(n: int) -> list[int]:
    return select_prompts(range(n), min(GRID_COLUMNS, n))


def _targets(prompts: list[str], rank_pool: Sequence[str] | None) -> tuple[list[str], Tensor]:
    """The deduplicated retrieval pool and the index of each prompt in it."""
    pool = list(dict.fromkeys(rank_pool if rank_pool is not None else prompts))
    where = {p: i for i, p in enumerate(pool)}
    missing = [p for p in prompts if p not in where]
    if missing:
        raise ValueError(f"prompt {missing[0]!r} is not in the retrieval pool ({len(pool)} texts)")
    return pool, torch.tensor([where[p] for p in prompts])


def _row(
    gen: T2IGenerator, reward: CLIPReward, feats: Tensor, text: tuple[Tensor, Tensor, Tensor], seconds: float
) -> dict[str, Any]:
    """The row of ``gen`` with its caption-match numbers (``text``: pool features, own-prompt features, targets);
    FD, Inception and diversity are filled in by the caller when measured."""
    pool_feats, own_text, targets = text
    cos = (feats * own_text).sum(-1).double()
    r_at = retrieval_accuracy(feats, pool_feats, targets, (1, 5))
    n = feats.shape[0]
    return {
        "name": gen.name,
        "kind": gen.kind,
        "nfe": gen.nfe,
        "unet_evals": gen.unet_evals,
        "cfg": gen.cfg,
        "match": float(reward.scale * cos.mean()),
        "match_std": float(reward.scale * cos.std()) if cos.numel() > 1 else 0.0,
        "cosine": float(cos.mean()),
        "R@1": r_at[1],
        "R@5": r_at[5],
        "fd_caption_match": None,
        "inception_fid": None,
        "inception_kid_mean": None,
        "inception_kid_std": None,
        "clip_score": None,
        "diversity": None,
        "pixel_std": None,
        "ms_per_image": 1000.0 * seconds / n,
        "generation_seconds": seconds,
        "num_images": n,
        "info": gen.info,
    }


def _diversity(
    gen: T2IGenerator, reward: CLIPReward, prompts: list[str], seeds: int, batch_size: int, seed: int, device
) -> tuple[float, float]:
    div_list = [p for _ in range(seeds) for p in prompts]  # seed-major
    images, _ = generate(gen, div_list, batch_size, seed + DIVERSITY_SEED_OFFSET, device)
    feats = reward_image_features(reward, images, batch_size)
    s, d = seeds, len(prompts)
    return diversity_scores(feats.view(s, d, -1), images.view(s, d, *images.shape[1:]))


def _save_grid(grid: str | Path, grid_rows: list[Tensor], rows: list[dict], prompts: list[str]) -> dict:
    grid = Path(grid)
    grid.parent.mkdir(parents=True, exist_ok=True)
    image_grid(grid_rows).save(grid)
    return {
        "file": str(grid),
        "rows": [r["name"] for r in rows],
        "prompts": [prompts[i] for i in _grid_indices(len(prompts))],
    }


def split_groups(n: int, splits: int) -> Tensor:
    """Image ``i``'s group for the split spreads: ``i % splits`` for the ``n // splits * splits`` images in the
    sets of :func:`split_indices`, ``splits`` for the rest (1 split: every image in group 0)."""
    if splits <= 1:
        return torch.zeros(n, dtype=torch.long)
    groups = torch.full((n,), splits, dtype=torch.long)
    size = n // splits * splits
    groups[:size] = torch.arange(size) % splits
    return groups


def _add_features(
    images: Tensor,
    reward: CLIPReward,
    inception: InceptionFeatureExtractor | None,
    batch_size: int,
    feats: list[Tensor],
    inc: list[Tensor],
) -> None:
    """Append a batch's caption-match features to ``feats`` and, with ``inception``, its Inception features to
    ``inc`` (the same reduction for generated and real images)."""
    feats.append(reward_image_features(reward, images, batch_size))
    if inception is not None:
        inc.append(inception.extract(quantize_uint8(images), batch_size))


@dataclass
class _Streamed:
    """What :func:`_stream` keeps of a generator's images: features, CLIP sums and the grid images only."""

    feats: Tensor
    inception: Tensor | None
    clip: CLIPScoreSums | None
    grid: Tensor
    seconds: float


def _stream(
    gen: T2IGenerator,
    prompts: list[str],
    reward: CLIPReward,
    inception: InceptionFeatureExtractor | None,
    clip_metric: CLIPScore | None,
    groups: Tensor,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> _Streamed:
    """Generate ``prompts`` batch by batch and reduce each batch to its features before the next is made, so the
    memory is one batch of images plus the features (the published 30k-prompt protocol fits)."""
    grid_idx = torch.tensor(_grid_indices(len(prompts)))
    clip = CLIPScoreSums(clip_metric, int(groups.max()) + 1) if clip_metric is not None else None
    feats, inc, grid, seconds = [], [], [], 0.0
    for start, images, batch_seconds in generate_batches(gen, prompts, batch_size, seed, device):
        stop = start + images.shape[0]
        seconds += batch_seconds
        _add_features(images, reward, inception, batch_size, feats, inc)
        if clip is not None:
            clip.update(images, prompts[start:stop], groups[start:stop])
        grid.append(images[grid_idx[(grid_idx >= start) & (grid_idx < stop)] - start])
    return _Streamed(torch.cat(feats), torch.cat(inc) if inc else None, clip, torch.cat(grid), seconds)


def _real_features(
    real_images: Tensor | Iterable[Tensor],
    reward: CLIPReward,
    inception: InceptionFeatureExtractor | None,
    batch_size: int,
) -> tuple[Tensor, Tensor | None, int]:
    """Caption-match (and Inception) features of the real images, a batch at a time, and their number."""
    batches = real_images.split(batch_size) if isinstance(real_images, Tensor) else real_images
    feats, inc, n = [], [], 0
    for batch in batches:
        _add_features(batch, reward, inception, batch_size, feats, inc)
        n += batch.shape[0]
    if n < 2:
        raise EvalT2ISetupError(f"--real: {n} real image{'' if n == 1 else 's'}; the Fréchet distances need at least 2")
    return torch.cat(feats), torch.cat(inc) if inc else None, n


def evaluate_t2i(
    generators: Sequence[T2IGenerator],
    reward: CLIPReward,
    prompts: Sequence[str],
    *,
    rank_pool: Sequence[str] | None = None,
    real_images: Tensor | Iterable[Tensor] | None = None,
    inception: InceptionFeatureExtractor | None = None,
    diversity_prompts: int = 32,
    diversity_seeds: int = 4,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    grid: str | Path | None = None,
    warmup: bool = True,
    splits: int = 1,
    clip_metric: CLIPScore | None = None,
) -> dict:
    """All metrics of every generator on ``prompts`` (see the module docstring); returns the JSON-ready result.

    ``rank_pool``: the texts R@k ranks against (default: ``prompts``; every prompt must be in it). ``real_images``:
    ``(N, C, H, W)`` in ``[-1, 1]``, or an iterable of such batches (read once), for FD (and Inception FID/KID
    when ``inception`` is given), ``None`` skips both. Generated images are reduced to features a batch at a time
    (:func:`_stream`): memory holds one batch, the features and the grid. ``grid``: a PNG with one row per
    generator and the images of 8 evenly spaced prompts. ``splits``: the number of disjoint sets for the
    ``*_split`` spreads (1: none). ``clip_metric``: a torchmetrics ``CLIPScore``
    (:func:`fdistill.metrics.clip_score.make_clip_score`) for the ``clip_score`` column, or ``None``."""
    device = torch.device(device)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to evaluate")
    if diversity_seeds < 2 and diversity_prompts > 0:
        raise ValueError(f"diversity needs at least 2 seeds, got {diversity_seeds}")
    if splits < 1 or (splits > 1 and len(prompts) // splits < 2):
        raise ValueError(f"{splits} splits of {len(prompts)} prompts: need 1 (none) or sets of >= 2 prompts")
    parts = split_indices(len(prompts), splits) if splits > 1 else []
    size = len(prompts) // splits
    pool, targets = _targets(prompts, rank_pool)
    t_start = time.perf_counter()
    pool_feats = reward_text_features(reward, pool)
    own_text = pool_feats[targets]
    div_idx = select_prompts(prompts, diversity_prompts) if diversity_prompts > 0 else []
    div_prompts = [prompts[i] for i in div_idx]

    real_feats = inc_real = None
    num_real = 0
    if real_images is not None:
        real_feats, inc_real, num_real = _real_features(real_images, reward, inception, batch_size)
    groups = split_groups(len(prompts), splits)

    rows, grid_rows = [], []
    for gen in generators:
        log.info("eval-t2i: %s (%d prompts)", gen.name, len(prompts))
        if warmup:
            generate(gen, prompts[:1], 1, seed, device)
        inc_model = inception if inc_real is not None else None
        out = _stream(gen, prompts, reward, inc_model, clip_metric, groups, batch_size, seed, device)
        feats = out.feats
        row = _row(gen, reward, feats, (pool_feats, own_text, targets), out.seconds)
        if parts:
            cos = (feats * own_text).sum(-1).double()
            row["match_split"] = spread([float(reward.scale * cos[i].mean()) for i in parts], size)
        if real_feats is not None:
            row["fd_caption_match"] = fid_from_features(feats, real_feats)
            if parts:
                row["fd_caption_match_split"] = spread([fid_from_features(feats[i], real_feats) for i in parts], size)
        if out.inception is not None:
            inc = out.inception
            row["inception_fid"] = fid_from_features(inc, inc_real)
            row["inception_kid_mean"], row["inception_kid_std"] = kernel_inception_distance(inc_real, inc, seed=seed)
            if parts:
                row["inception_fid_split"] = spread([fid_from_features(inc[i], inc_real) for i in parts], size)
        if out.clip is not None:
            row["clip_score"] = out.clip.score()
            if parts:
                row["clip_score_split"] = spread([out.clip.score([k]) for k in range(splits)], size)
        if div_prompts:
            row["diversity"], row["pixel_std"] = _diversity(
                gen, reward, div_prompts, diversity_seeds, batch_size, seed, device
            )
        rows.append(row)
        grid_rows.append(out.grid)
        log.info("eval-t2i: %s done: match %.4f R@1 %.3f %.1f ms/img", gen.name, row["match"], row["R@1"],
                 row["ms_per_image"])  # fmt: skip

    result: dict[str, Any] = {
        "rows": rows,
        "verdicts": verdicts(rows),
        "splits": splits,
        "split_size": size,
        "num_prompts": len(prompts),
        "prompts": prompts,
        "rank_pool_size": len(pool),
        "reward_scale": reward.scale,
        "num_real": num_real,
        "diversity_prompts": div_prompts,
        "diversity_seeds": diversity_seeds if div_prompts else 0,
        "batch_size": batch_size,
        "seed": seed,
        "device": str(device),
        "torch": torch.__version__,
        "notes": list(NOTES),
    }
    if inception is not None:
        result["inception_protocol"] = inception.protocol
    if grid is not None and rows:
        result["grid"] = _save_grid(grid, grid_rows, rows, prompts)
    result["seconds"] = time.perf_counter() - t_start
    return result
