"""Training of the caption-match model: CLIP's symmetric InfoNCE (Radford et al. 2021) with a locked text tower (LiT,
Zhai et al. 2022) for the Diff-Instruct* reward (``docs/math.md §2.8``).

The frozen text tower's pooled outputs are computed once; only the vision tower, the visual projection, the logit
scale and the preconditioned text projection ``W_raw A`` (:func:`~.model.text_preconditioner`) are trained, by AdamW
with a linear warm-up and a cosine decay to 0 (over the steps, or over ``max_minutes`` when that is further along).
SIGTERM / SIGINT stop after the current step (:class:`fdistill.train.loop.GracefulStop`) and the folder is written as
after a full run (``stopped_by_signal`` in ``training_info.json``). The full training state is checkpointed in
``OUT.run`` every ``checkpoint_every`` steps, at a stop and at the end (:mod:`fdistill.train.resumable`), so
``resume="latest"`` (``--resume latest``) continues an interrupted run bit for bit; a finished run removes them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from fdistill.config.caption_match import CaptionMatchRecipe, check_recipe
from fdistill.nets.text_encoders import minilm_path
from fdistill.rewards import MINILM_PACKAGE_NAME
from fdistill.train import resumable
from fdistill.train.caption_match.evaluate import fmt
from fdistill.train.caption_match.model import (
    MAX_TOKENS,
    augment,
    build_caption_match_model,
    clip_loss,
    heldout_mask,
    image_embed,
    pooled_text,
    text_preconditioner,
)
from fdistill.train.caption_match.save import save_folder
from fdistill.train.loop import GracefulStop, NonFiniteError

__all__ = ["train_caption_match"]


def _check_data(images: Tensor, captions: Sequence[str]) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be (N, 3, S, S), got {tuple(images.shape)}")
    if len(captions) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
    if len(set(captions)) != len(captions):
        raise ValueError("captions must be distinct (one class per image)")


def _optimizer(model, w_raw: Tensor, r: CaptionMatchRecipe) -> tuple[torch.optim.AdamW, list[Tensor]]:
    """AdamW over the vision tower, the visual projection, ``W_raw`` and the logit scale (no decay on vectors and
    scalars); also returns the vision-side parameters."""
    vision_params = [*model.vision_model.parameters(), *model.visual_projection.parameters()]
    decay = [p for p in vision_params if p.ndim >= 2] + [w_raw]
    no_decay = [p for p in vision_params if p.ndim < 2] + [model.logit_scale]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": r.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=r.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    return opt, vision_params


def _update(model, opt: torch.optim.Optimizer, loss: Tensor, step: int) -> None:
    """One AdamW step on ``loss`` (a non-finite one raises :class:`NonFiniteError`), then CLIP's temperature cap."""
    if not torch.isfinite(loss):
        raise NonFiniteError(f"non-finite loss {loss.item()} at step {step}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0.0, math.log(100.0))  # CLIP's cap on the temperature


def _optimise(model, w_raw: Tensor, pooled_pre: Tensor, images: Tensor, fit_idx: Tensor, r: CaptionMatchRecipe,
              run_dir: Path | None = None, key: dict[str, Any] | None = None,
              state: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The AdamW loop; returns ``steps`` done, the loss ``curve`` (every 10 steps), the probe losses before / after,
    ``train_seconds`` and ``stopped_by_signal``. With ``run_dir``, the full state (weights, AdamW moments, the
    generator, data order, curve) is checkpointed with the settings ``key`` every ``checkpoint_every`` steps, at a
    stop and at the end; ``state`` (:func:`fdistill.train.resumable.start`) is such a checkpoint to continue from."""
    batch_size = min(r.batch_size, fit_idx.numel())
    row_in_fit = torch.full((len(images),), -1, dtype=torch.long)
    row_in_fit[fit_idx] = torch.arange(fit_idx.numel())
    opt, vision_params = _optimizer(model, w_raw, r)

    def text_emb(idx: Tensor) -> Tensor:
        return F.linear(pooled_pre[idx], w_raw)

    probe = fit_idx[torch.randperm(fit_idx.numel(), generator=torch.Generator().manual_seed(r.seed))[:512]]

    @torch.no_grad()
    def probe_loss() -> float:  # clean images, fixed subset of the fitted pairs
        model.vision_model.eval()
        loss = clip_loss(image_embed(model, images[probe]), text_emb(probe), model.logit_scale).item()
        model.vision_model.train()
        return loss

    gen = torch.Generator().manual_seed(r.seed)
    tensors = {k: v for k, v in model.state_dict().items() if not k.startswith("text_model.")} | {"w_raw": w_raw}
    if state is not None:
        s = resumable.unpack(state, tensors, opt, (gen,))
    else:
        s = {"step": 0, "perm": torch.empty(0, dtype=torch.long), "pos": 0, "ema": None, "loss_curve": [],
             "probe_loss_before": probe_loss(), "seconds": 0.0}  # fmt: skip
    saved, stopped = s["step"] if state is not None else -1, False
    model.vision_model.train()
    t_train = time.time() - s["seconds"]

    def checkpoint() -> None:
        nonlocal saved
        s["seconds"] = time.time() - t_train
        if run_dir is not None and saved != s["step"]:
            resumable.save(run_dir, s["step"], resumable.pack(tensors, opt, (gen,), s), key or {})
            saved = s["step"]

    bar = tqdm(total=r.steps, initial=s["step"], desc="caption-match", disable=not r.progress, dynamic_ncols=True)
    with GracefulStop() as stop:
        for step in range(s["step"], r.steps):
            progress_now = step / r.steps  # the cosine follows steps, or the clock when that is further along
            if r.max_minutes is not None:
                progress_now = max(progress_now, (time.time() - t_train) / (60 * r.max_minutes))
            if progress_now >= 1:
                bar.write(f"max_minutes={r.max_minutes} reached after {step} steps (the LR has decayed to 0); saving")
                break
            if stop.requested:
                bar.write(f"stopped by signal after {step} steps; saving (continue with --resume latest)")
                stopped = True
                break
            if s["pos"] + batch_size > s["perm"].numel():
                s["perm"], s["pos"] = fit_idx[torch.randperm(fit_idx.numel(), generator=gen)], 0
            idx = s["perm"][s["pos"] : s["pos"] + batch_size]
            s["pos"] += batch_size
            for group in opt.param_groups:
                warm = min(1.0, max(progress_now, (step + 1) / r.steps) / r.warmup)
                group["lr"] = r.lr * warm * 0.5 * (1 + math.cos(math.pi * progress_now))
            x = augment(images[idx], gen)
            if r.negatives == "all":  # image->text over every fitted caption
                all_txt, target = text_emb(fit_idx), row_in_fit[idx]
                loss = clip_loss(image_embed(model, x), all_txt[target], model.logit_scale, all_txt, target)
            else:
                loss = clip_loss(image_embed(model, x), text_emb(idx), model.logit_scale)
            _update(model, opt, loss, step)
            done = s["step"] = step + 1
            s["ema"] = loss.item() if s["ema"] is None else 0.95 * s["ema"] + 0.05 * loss.item()
            if step % 10 == 0 or done == r.steps:
                s["loss_curve"].append([done, fmt(loss.item())])
            if (r.checkpoint_every and done % r.checkpoint_every == 0) or done == r.steps:
                checkpoint()
            bar.set_postfix(loss=f"{s['ema']:.3f}", scale=f"{model.logit_scale.exp().item():.1f}", refresh=False)
            bar.update(1)
    bar.close()
    checkpoint()  # at a stop (or a run with nothing left to do): resumable from here
    return {"steps": s["step"], "stopped_by_signal": stopped, "loss_curve": s["loss_curve"],
            "probe_loss_before": s["probe_loss_before"], "train_seconds": s["seconds"],
            "probe_loss_after": probe_loss(),
            "trainable_params": sum(p.numel() for p in vision_params) + w_raw.numel() + 1}  # fmt: skip


def train_caption_match(
    out_dir: str | Path,
    images: Tensor,
    captions: Sequence[str],
    recipe: CaptionMatchRecipe | None = None,
    *,
    command: str | None = None,
    **overrides: Any,
) -> Path:
    """Train the caption-match model on ``images`` ((N, 3, S, S) in ``[-1, 1]``; image ``i`` captioned
    ``captions[i]``) and save it atomically to ``out_dir``; returns ``out_dir``.

    ``recipe`` (default :class:`~fdistill.config.caption_match.CaptionMatchRecipe`, whose fields document every
    setting; a ``CaptionMatchConfig`` works too) with ``overrides`` of its fields, e.g. ``steps=60,
    hidden_size=16``. Notes on some of them:

    - ``warmup``: the learning rate rises linearly over that fraction of the schedule, times a cosine decay to 0.
    - ``max_minutes``: a time budget for the training loop: the schedule's progress is then ``max(step / steps,
      elapsed / budget)`` and training stops when it reaches 1, so a slower (shared) machine runs fewer steps but
      still anneals (such a run is not bit-reproducible: its step count depends on the clock).
    - ``fit_on``: ``"train"`` (the 90% split; held-out metrics are honest) or ``"all"``; ``negatives``: ``"batch"``
      (CLIP) or ``"all"`` fitted captions (:func:`~.model.clip_loss`).
    - ``checkpoint_every`` / ``resume``: checkpoints in ``OUT.run`` (removed once the model is saved, unless a
      signal stopped the run); ``resume="latest"`` or a checkpoint folder continues a run made with the same
      settings and ends with the weights and metrics of the uninterrupted run.
    - ``save_text_tower``: store the text tower in ``model.safetensors`` (self-contained, +87 MB for MiniLM) instead
      of naming it in ``fdistill_text_tower.json``; ``validation_run``: a folder from an earlier ``fit_on="train"``
      run of the same recipe, quoted in the card.
    """
    from transformers import AutoTokenizer  # lazy: transformers is heavy to import

    t_start = time.time()
    r = replace(recipe if recipe is not None else CaptionMatchRecipe(), **overrides)
    check_recipe(r)
    captions = list(captions)
    _check_data(images, captions)
    packaged = r.text_model is None
    text_model = Path(minilm_path() if packaged else r.text_model)
    image_size = images.shape[-1]
    if image_size % r.patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of patch_size={r.patch_size}")
    held = heldout_mask(captions, r.holdout)
    fit_idx = torch.arange(len(captions)) if r.fit_on == "all" else (~held).nonzero().squeeze(1)
    if fit_idx.numel() < 2:
        raise ValueError(f"only {fit_idx.numel()} images to fit")

    recipe_info = dict(
        steps=r.steps, batch_size=min(r.batch_size, fit_idx.numel()), lr=r.lr, weight_decay=r.weight_decay,
        warmup=r.warmup, seed=r.seed, fit_on=r.fit_on, negatives=r.negatives, holdout=r.holdout,
        image_size=image_size, patch_size=r.patch_size, hidden_size=r.hidden_size, num_layers=r.num_layers,
        num_heads=r.num_heads, intermediate_size=r.intermediate_size, projection_dim=r.projection_dim,
        threads=torch.get_num_threads(), max_minutes=r.max_minutes,
        text_model=MINILM_PACKAGE_NAME if packaged else str(text_model),
    )  # fmt: skip
    run_dir = resumable.run_dir_for(out_dir)  # checked before the model is built: a bad --resume fails at once
    key = {k: v for k, v in recipe_info.items() if k not in ("threads", "max_minutes")} | {"images": list(images.shape)}
    state = resumable.start(run_dir, r.resume, key)
    model = build_caption_match_model(
        text_model,
        image_size=image_size,
        patch_size=r.patch_size,
        hidden_size=r.hidden_size,
        num_layers=r.num_layers,
        num_heads=r.num_heads,
        intermediate_size=r.intermediate_size,
        projection_dim=r.projection_dim,
        seed=r.seed,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(text_model), model_max_length=MAX_TOKENS)
    model.text_model.eval().requires_grad_(False)
    pooled = pooled_text(model, tokenizer, captions)  # (N, text hidden), frozen
    precond = text_preconditioner(pooled[fit_idx])  # text_emb = W_raw A pooled, saved as W = W_raw A
    w_raw = torch.nn.Parameter(torch.randn(r.projection_dim, pooled.shape[1]) / math.sqrt(pooled.shape[1]))
    pooled_pre = pooled @ precond.T  # fixed: only W_raw is trained on the text side
    run = _optimise(model, w_raw, pooled_pre, images, fit_idx, r, run_dir, key, state)
    with torch.no_grad():
        model.text_projection.weight.copy_(w_raw @ precond)
        expected = F.normalize(F.linear(pooled_pre, w_raw), dim=-1)  # the reward's text embeddings must match
    info = {
        "what": "emoji caption-match model (CLIP with a locked MiniLM text tower), fdistill.train.caption_match",
        "steps": run["steps"],
        "stopped_by_signal": run["stopped_by_signal"],
        "train_seconds": round(run["train_seconds"], 1),
        "seconds_per_step": round(run["train_seconds"] / max(run["steps"], 1), 3),
        "trainable_params": run["trainable_params"],
        "fit_images": int(fit_idx.numel()),
        "logit_scale": fmt(model.logit_scale.exp().item()),
        "probe_loss_before": fmt(run["probe_loss_before"]),
        "probe_loss_after": fmt(run["probe_loss_after"]),
        "loss_curve": run["loss_curve"],
        "recipe": recipe_info,
        "command": command or "train_caption_match(...)",
        "torch": torch.__version__,
    }
    out = save_folder(
        Path(out_dir), model, tokenizer, info, images, captions, held, expected, r.save_text_tower,
        r.validation_run, t_start,
    )  # fmt: skip
    if not run["stopped_by_signal"]:
        resumable.finish(run_dir)  # the model is saved: nothing is left to resume
    return out
