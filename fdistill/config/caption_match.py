"""Settings of ``fdistill train-caption-match`` (:mod:`fdistill.train.caption_match`): the recipe of the CLIP-style
caption-match reward (Radford et al. 2021, with a locked text tower as in LiT, Zhai et al. 2022; the Diff-Instruct*
reward of ``docs/math.md §2.8``) and the command's options, one typed schema each.

:class:`CaptionMatchRecipe` is what :func:`fdistill.train.caption_match.train_caption_match` reads;
:class:`CaptionMatchConfig` adds the output folder, the emoji image size and the threads, and is the ``--flags``
schema of the command (:func:`fdistill.config.schema.add_flags`). :func:`check_recipe` / :func:`check_config` raise
one-line :class:`ConfigError`s (the CLI exits 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fdistill.config.schema import MISSING, ConfigError, checkpoint_every_opt, opt, resume_opt

__all__ = ["CaptionMatchConfig", "CaptionMatchRecipe", "check_config", "check_recipe"]


@dataclass
class CaptionMatchRecipe:
    """The training recipe of :func:`fdistill.train.caption_match.train_caption_match`."""

    steps: int = opt(1000, "optimisation steps")
    batch_size: int = opt(128, "pairs per step (the InfoNCE negatives)")
    lr: float = opt(2e-3, "peak AdamW learning rate (warm-up then cosine)")
    weight_decay: float = opt(0.05, "AdamW weight decay of the matrices")
    warmup: float = opt(0.05, "linear warm-up, as a fraction of the schedule in (0, 1)")
    seed: int = opt(0, "initialisation, data order and augmentation seed")
    max_minutes: float | None = opt(None, "training time budget: the LR anneals by then, then it saves")
    fit_on: str = opt("train", "the 90% split or every image", choices=("train", "all"))
    negatives: str = opt("all", "image->text negatives: the batch or all captions", choices=("batch", "all"))
    holdout: float = opt(0.1, "fraction of captions held out")
    hidden_size: int = opt(128, "ViT width", flag="--hidden")
    num_layers: int = opt(4, "ViT depth", flag="--layers")
    num_heads: int = opt(4, "ViT attention heads", flag="--heads")
    intermediate_size: int = opt(512, "ViT MLP width", flag="--mlp")
    patch_size: int = opt(8, "ViT patch size in pixels (must divide the image size)", flag="--patch")
    projection_dim: int = opt(128, "joint embedding width")
    text_model: str | None = opt(None, "frozen text tower folder; None = the packaged all-MiniLM-L6-v2")
    save_text_tower: bool = opt(False, "store the text tower weights (+87 MB)")
    validation_run: str | None = opt(None, "an earlier --fit-on train run to quote in the card")
    progress: bool = opt(True, "progress bar")
    checkpoint_every: int = checkpoint_every_opt()
    resume: str | None = resume_opt()


@dataclass
class CaptionMatchConfig(CaptionMatchRecipe):
    """``fdistill train-caption-match``: the recipe plus the output folder, the emoji image size and the threads."""

    out: str = opt(MISSING, "output folder (replaced atomically when done)")
    size: int = opt(32, "emoji image size (32 or 16)")
    threads: int | None = opt(None, "torch CPU threads; None = torch's default")


def check_recipe(r: CaptionMatchRecipe) -> None:
    """Ranges and choices of the recipe (a :class:`ConfigError`, a ``ValueError``, names the bad values)."""
    if r.fit_on not in ("train", "all"):
        raise ConfigError(f"fit_on={r.fit_on!r}: use 'train' or 'all'")
    if r.negatives not in ("batch", "all"):
        raise ConfigError(f"negatives={r.negatives!r}: use 'batch' or 'all'")
    if r.steps < 1 or r.batch_size < 2 or r.lr <= 0:
        raise ConfigError(f"--steps={r.steps} --batch-size={r.batch_size} --lr={r.lr}: need >= 1, >= 2 and > 0")
    if r.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every={r.checkpoint_every}: must be >= 0 (0 = only at a stop and the end)")
    if r.max_minutes is not None and r.max_minutes <= 0:
        raise ConfigError(f"--max-minutes={r.max_minutes}: must be > 0")
    if not 0 <= r.holdout < 1:
        raise ConfigError(f"--holdout={r.holdout}: must be in [0, 1)")
    if not 0 < r.warmup < 1:
        raise ConfigError(f"warmup={r.warmup}: a fraction of the schedule in (0, 1)")


def check_config(cfg: CaptionMatchConfig) -> None:
    """The recipe, the thread count and that the folders the command reads exist (``FileNotFoundError``)."""
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"--threads={cfg.threads}: must be >= 1")
    check_recipe(cfg)
    if cfg.text_model is not None and not Path(cfg.text_model).is_dir():
        raise FileNotFoundError(f"--text-model={cfg.text_model}: no such folder")
    if cfg.validation_run is not None and not (Path(cfg.validation_run) / "training_info.json").is_file():
        raise FileNotFoundError(f"--validation-run={cfg.validation_run}: no training_info.json there")
