"""Settings of ``fdistill train-vae`` (:mod:`fdistill.train.vae`): the AutoencoderKL recipe (Rombach et al. 2022,
Sec. 3 and Appendix G) and the command's data / output options, one typed schema each.

:class:`VAERecipe` is what :func:`fdistill.train.vae.fit_vae` reads; :class:`VAEConfig` adds the command's data set,
output folder and threads, and is the ``--flags`` schema of ``fdistill train-vae`` (:func:`fdistill.config.schema.
add_flags`). :func:`check_recipe` / :func:`check_config` raise one-line :class:`ConfigError`s (the CLI exits 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fdistill.config.schema import MISSING, ConfigError, checkpoint_every_opt, opt, resume_opt
from fdistill.data import DATASETS

__all__ = ["SIZED", "VAEConfig", "VAERecipe", "check_config", "check_recipe", "parse_channels"]

SIZED = ("emoji", "synthetic", "captioned_folder")  # data sets whose loader takes ``size``


@dataclass
class VAERecipe:
    """The training recipe of :func:`fdistill.train.vae.fit_vae`."""

    steps: int = opt(1400, "optimizer steps")
    batch_size: int = opt(8, "images per step")
    lr: float = opt(2e-3, "Adam learning rate, warm-up + cosine")
    kl_weight: float = opt(1e-6, "weight of the per-sample summed KL")
    block_out_channels: Sequence[int] | str = opt(
        "32,64,64", "block_out_channels, comma-separated; L entries downsample by 2**(L-1)", flag="--channels"
    )
    latent_channels: int = opt(4, "latent channels")
    layers_per_block: int = opt(1, "ResNet layers per block")
    seed: int = opt(0, "seed of init, data order and posterior samples")
    log_every: int = opt(50, "steps between log rows / progress updates")
    max_minutes: float | None = opt(
        None,
        "stop early (and save) after M minutes of training; the cosine LR follows whichever of steps and time is"
        " further along; None = no time budget",
    )
    device: str = opt("cpu", "torch device")
    progress: bool = opt(True, "tqdm progress bar")
    checkpoint_every: int = checkpoint_every_opt()
    resume: str | None = resume_opt()


@dataclass
class VAEConfig(VAERecipe):
    """``fdistill train-vae``: the recipe plus the data set, the output folder and the CPU threads."""

    data: str = opt("emoji", f"data set: one of {', '.join(DATASETS)}")
    root: str | None = opt(None, "where the data set's files are; None = its own cache")
    size: int = opt(32, f"image size for {', '.join(SIZED)} (the other sets have their own)")
    out: str = opt(MISSING, "output folder (replaced atomically), e.g. checkpoints/emoji_vae")
    threads: int | None = opt(None, "torch CPU threads; None = torch's choice")


def parse_channels(value: Sequence[int] | str) -> tuple[int, ...]:
    """``block_out_channels`` as a tuple: a sequence of positive ints, or their comma-separated text (``32,64,64``)."""
    if isinstance(value, str):
        try:
            out = tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"--channels {value!r} is not a comma-separated list of integers") from None
    else:
        out = tuple(int(v) for v in value)
    if not out or min(out) < 1:
        raise ConfigError(f"--channels {value!r}: expected positive integers, e.g. 32,64,64")
    return out


def check_recipe(r: VAERecipe) -> None:
    """Ranges of the recipe (a :class:`ConfigError`, a ``ValueError``, names the bad values)."""
    if r.steps < 0 or r.batch_size < 1 or r.lr <= 0 or r.kl_weight < 0 or r.log_every < 1:
        raise ConfigError(
            f"bad recipe steps={r.steps} batch_size={r.batch_size} lr={r.lr} kl_weight={r.kl_weight} "
            f"log_every={r.log_every}; expected steps >= 0, batch_size >= 1, lr > 0, kl_weight >= 0, log_every >= 1"
        )
    if r.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every {r.checkpoint_every}; expected >= 0 (0 = only at a stop and the end)")
    parse_channels(r.block_out_channels)


def check_config(cfg: VAEConfig) -> None:
    """The command's options: the data set name and the thread count (the recipe is checked by ``fit_vae``)."""
    if cfg.data not in DATASETS:
        raise ConfigError(f"unknown data set {cfg.data!r}; accepted: {', '.join(DATASETS)}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"--threads {cfg.threads}; expected >= 1")
