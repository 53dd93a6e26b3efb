"""The teacher training loop (NVlabs/edm ``training_loop.py`` in spirit, on accelerate; docs/math.md §1.3).

Each step: draw sigma from the recipe (EDM lognormal, or DDPM's uniform timesteps), unit noise and the label dropout
to the null label (classifier-free guidance, Ho & Salimans 2022) from :func:`fdistill.train.loop.step_generator`;
take an AdamW step on the recipe's loss unless it or its gradient is non-finite anywhere (then skip it, and stop
with :class:`~fdistill.train.loop.NonFiniteError` after ``max_nonfinite`` in a row); update the EMA (EDM half-life,
:func:`~fdistill.train.teacher.state.ema_beta`). Every ``checkpoint_every`` steps: ``accelerator.save_state``, the
EMA export ``run_dir/teacher`` and a sample grid. SIGTERM / SIGINT finish the step, checkpoint and return
(:class:`~fdistill.train.loop.GracefulStop`); ``--resume`` replays the remaining steps bit-for-bit.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fdistill.config.schema import ConfigError
from fdistill.config.teacher import TeacherTrainConfig, teacher_config_yaml
from fdistill.data import load_dataset
from fdistill.metrics.plots import save_image_grid
from fdistill.train.checkpoint import list_checkpoints, load_checkpoint, publish_dir, resolve_resume, save_checkpoint
from fdistill.train.ema import EMA
from fdistill.train.loop import GracefulStop as _GracefulStop
from fdistill.train.loop import NonFiniteError, step_generator, stopped_message, truncate_metrics
from fdistill.train.metrics_log import MetricsLog
from fdistill.train.teacher.edm_recipe import EDMRecipe
from fdistill.train.teacher.latent_recipe import build_latent_recipe
from fdistill.train.teacher.state import StepSampler, TeacherTrainState, ema_beta

__all__ = ["build_recipe", "train_teacher"]

PHASE_DRAWS, PHASE_DROPOUT = 0, 1  # step_generator phases: sigma / eps / label dropout, and network dropout


def build_recipe(cfg: TeacherTrainConfig, device) -> EDMRecipe:
    """The data set and network of ``cfg.model`` (weights seeded by ``cfg.seed``)."""
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
        return build_latent_recipe(cfg, dataset, device)  # type: ignore[return-value]
    return EDMRecipe(cfg, dataset)


def export_teacher(net: torch.nn.Module, run_dir: Path, info: dict, save=None) -> Path:
    """EMA network -> ``run_dir/teacher`` (``save(net, folder)``; default ``save_pretrained``), replaced atomically."""
    final, tmp = run_dir / "teacher", run_dir / ".teacher_tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if save is None:
        net.save_pretrained(tmp, safe_serialization=True)
    else:
        save(net, tmp)
    (tmp / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return publish_dir(tmp, final, world_readable=False)


class _Meter:
    """Losses and timing since the last ``metrics.jsonl`` row."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.t_log = time.perf_counter()
        self.steps = 0

    def row(self) -> dict[str, float]:
        now = time.perf_counter()
        row = {
            "loss": float(np.mean(self.losses)) if self.losses else float("nan"),
            "sec_per_step": (now - self.t_log) / max(self.steps, 1),
        }
        self.losses, self.t_log, self.steps = [], now, 0
        return row


class TeacherRun:
    """One training run: accelerator, recipe, optimizer + LR warm-up, EMA, counters, data order and logs."""

    def __init__(self, cfg: TeacherTrainConfig, resume: str | None) -> None:
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.cfg, self.run_dir = cfg, Path(cfg.output_dir)
        self.acc = acc = Accelerator(
            mixed_precision=cfg.mixed_precision,
            log_with="tensorboard" if cfg.tensorboard else None,
            project_config=ProjectConfiguration(project_dir=str(self.run_dir)),
            dataloader_config=DataLoaderConfiguration(split_batches=True),
        )
        if cfg.batch_size % acc.num_processes:
            raise ConfigError(f"batch_size={cfg.batch_size} must be a multiple of the {acc.num_processes} processes")
        ckpt = resolve_resume(self.run_dir, resume)
        if resume is None and list_checkpoints(self.run_dir):
            raise ConfigError(
                f"{self.run_dir} already holds checkpoints: pass --resume latest, or choose another output_dir"
            )
        self.recipe = build_recipe(cfg, acc.device)
        self.ema = EMA(self.recipe.net, 0.0).to(acc.device)
        self.state = TeacherTrainState()
        opt = torch.optim.AdamW(
            self.recipe.net.parameters(),
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
        )
        warm = max(cfg.lr_warmup_steps, 0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.net, self.opt, self.sched = acc.prepare(self.recipe.net, opt, sched)
        acc.register_for_checkpointing(self.ema, self.state)
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(teacher_config_yaml(cfg))
        self._resume(ckpt, resume)
        dataset = self.recipe.dataset
        sampler = StepSampler(len(dataset), cfg.batch_size, self.state.step, cfg.steps, cfg.seed)
        self.loader = acc.prepare(DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True))
        self.metrics = MetricsLog(acc, self.run_dir)
        self.n_params = sum(p.numel() for p in acc.unwrap_model(self.net).parameters())
        if cfg.tensorboard:
            hparams = {"n_params": self.n_params, "batch_size": cfg.batch_size, "lr": cfg.lr}
            acc.init_trackers("tensorboard", config=hparams)
        unwrapped = acc.unwrap_model(self.net)
        name = type(unwrapped.unet if cfg.model == "sd_latent" else unwrapped).__name__
        acc.print(f"{name} {self.n_params / 1e6:.2f}M params; {len(dataset)} images; {acc.num_processes} process(es)")
        self.meter, self.consecutive_bad = _Meter(), 0

    def _resume(self, ckpt: Path | None, resume: str | None) -> None:
        acc, state = self.acc, self.state
        if ckpt is not None:
            load_checkpoint(acc, ckpt)  # verified by resolve_resume; every pickle unpickled with weights_only=True
            acc.print(f"resumed from {ckpt} at step {state.step} ({state.images_seen} images seen)")
            if acc.is_main_process:
                truncate_metrics(self.run_dir / "metrics.jsonl", state.step)
        elif resume == "latest":
            acc.print(f"--resume latest: no checkpoint in {self.run_dir}/checkpoints yet, starting from step 0")

    # ---- one step ----------------------------------------------------------------------------------------------

    def _draws(self, x0: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """This step's sigma, unit noise and (dropped-out) condition; also seeds the network's dropout."""
        cfg, acc, step = self.cfg, self.acc, self.state.step
        gen = step_generator(cfg.seed, step, PHASE_DRAWS, acc.process_index)
        torch.manual_seed(step_generator(cfg.seed, step, PHASE_DROPOUT, acc.process_index).initial_seed())
        n = x0.shape[0]
        sigma = self.recipe.draw_sigma(n, gen).to(acc.device)
        eps = torch.randn(x0.shape, generator=gen).to(acc.device)
        null_label = self.recipe.null_label
        if null_label is None:
            return sigma, eps, None
        drop = (torch.rand(n, generator=gen) < cfg.label_dropout).to(acc.device)
        return sigma, eps, torch.where(drop, torch.full_like(labels, null_label), labels)

    def _update(self, loss: Tensor) -> bool:
        """Backward, clip and step; ``False`` (no update) when the gradient norm is non-finite."""
        cfg, acc = self.cfg, self.acc
        acc.backward(loss)
        grad_norm = acc.clip_grad_norm_(self.net.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        # fp16: the gradient scaler skips overflowing steps itself (and must see them to lower its scale)
        if grad_norm is not None and cfg.mixed_precision != "fp16" and not bool(torch.isfinite(grad_norm).item()):
            return False
        self.opt.step()
        self.sched.step()
        return True

    def _count_bad(self, step: int) -> None:
        self.consecutive_bad += 1
        self.state.nonfinite_total += 1
        self.acc.print(f"step {step}: non-finite loss/gradient ({self.consecutive_bad} in a row); update skipped")
        if self.consecutive_bad >= self.cfg.max_nonfinite:
            raise NonFiniteError(
                f"{self.consecutive_bad} consecutive non-finite steps (last at step {step}); stopping. The last "
                f"good checkpoint is in {self.run_dir}/checkpoints; try a lower lr or mixed_precision=no"
            )

    def train_step(self, x0: Tensor, labels: Tensor, stop_requested: bool) -> bool:
        """One optimizer step (skipped when non-finite); returns whether any process asked to stop."""
        acc, state, t0, step = self.acc, self.state, time.perf_counter(), self.state.step
        sigma, eps, cond = self._draws(x0, labels)
        with acc.autocast():
            per_sample = self.recipe.loss(lambda x, s: self.net(x, s, cond), x0, sigma, eps)
        loss = per_sample.float().mean()
        # one all-reduce per step: is the loss finite everywhere, and did any process get SIGTERM/SIGINT?
        flags = torch.stack([torch.isfinite(loss.detach()).float(), torch.tensor(float(stop_requested))])
        flags = acc.reduce(flags.to(acc.device), reduction="sum").cpu()
        ok, stopping = bool(flags[0].item() == acc.num_processes), bool(flags[1].item() > 0)
        ok = ok and self._update(loss)
        if ok:
            self.consecutive_bad = 0
        else:
            self._count_bad(step)
        self.opt.zero_grad(set_to_none=True)
        state.step += 1
        state.images_seen += self.cfg.batch_size
        if ok:
            self.ema.decay = ema_beta(self.cfg, state.images_seen)
            self.ema.update(acc.unwrap_model(self.net))
            self.meter.losses.append(loss.item())
        state.seconds += time.perf_counter() - t0
        self.meter.steps += 1
        return stopping

    # ---- between steps -----------------------------------------------------------------------------------------

    def info(self) -> dict:
        s = self.state
        return {"step": s.step, "images_seen": s.images_seen, "train_seconds": round(s.seconds, 1),
                "n_params": self.n_params, "data": self.cfg.data.name, "batch_size": self.cfg.batch_size}  # fmt: skip

    def log(self) -> None:
        row = self.meter.row()
        self.metrics.log(
            self.state.step,
            {
                "loss": row["loss"],
                "lr": self.sched.get_last_lr()[0],
                "ema_beta": self.ema.decay,
                "sec_per_step": row["sec_per_step"],
                "images_seen": self.state.images_seen,
                "train_seconds": self.state.seconds,
                "nonfinite_total": self.state.nonfinite_total,
            },
        )

    def grid(self) -> None:
        cfg = self.cfg
        x, k = self.recipe.sample_grid(
            self.ema.model, cfg.sample_rows, cfg.sample_nfe, cfg.sample_guidance, cfg.seed, self.acc.device
        )
        save_image_grid(x, self.run_dir / "samples" / f"step_{self.state.step:08d}.png", nrow=k)

    def checkpoint(self, grid: bool = True) -> None:
        """Checkpoint, EMA export ``run_dir/teacher`` and (``grid``) a sample grid of this step."""
        save_checkpoint(self.acc, self.run_dir, self.state.step, self.cfg.keep_checkpoints)
        if self.acc.is_main_process:
            export_teacher(self.ema.model, self.run_dir, self.info(), self.recipe.save)
            if grid:
                self.grid()
        self.acc.wait_for_everyone()

    def after_step(self) -> None:
        """Log, checkpoint or sample as the step count asks."""
        cfg, step = self.cfg, self.state.step
        if step % cfg.log_every == 0 or step == cfg.steps:
            self.log()
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            self.checkpoint()
        elif cfg.sample_every and step % cfg.sample_every == 0 and self.acc.is_main_process:
            self.grid()

    def finish(self, stopped: bool) -> None:
        """The final checkpoint + export (unless this step has one already)."""
        ckpts = list_checkpoints(self.run_dir)
        if not ckpts or ckpts[-1].name != f"step_{self.state.step:08d}":
            self.checkpoint(grid=not stopped)
        elif self.acc.is_main_process and not (self.run_dir / "teacher").is_dir():
            export_teacher(self.ema.model, self.run_dir, self.info(), self.recipe.save)
        self.acc.end_training()


def train_teacher(cfg: TeacherTrainConfig, resume: str | None = None) -> Path:
    """Train a teacher (``cfg.model``); returns the run directory (the EMA export is ``run_dir/teacher``).

    ``resume``: ``None`` (fresh run; an existing run dir with checkpoints is an error), ``"latest"`` (newest
    checkpoint in ``output_dir``, or a fresh start if there is none) or a checkpoint folder.
    """
    run = TeacherRun(cfg, resume)
    bar = tqdm(total=cfg.steps, initial=run.state.step, disable=not run.acc.is_local_main_process, desc="teacher")
    run.net.train()
    stop, stopping = _GracefulStop(), False
    try:
        for x0, labels in run.loader:
            stopping = run.train_step(x0, labels, stop.requested)
            bar.update(1)
            if run.meter.losses:
                bar.set_postfix(loss=f"{np.mean(run.meter.losses[-50:]):.4f}")
            run.after_step()
            if stopping:
                break
    finally:
        stop.restore()
    bar.close()
    run.finish(stopped=stopping)
    if stopping:
        run.acc.print(stopped_message(run.state.step))
    else:
        run.acc.print(f"done: step {run.state.step}, EMA teacher in {run.run_dir / 'teacher'}")
    return run.run_dir
