"""End-of-run (and periodic) evaluation of a latent (Stable-Diffusion-style) distillation run.

Decoded sample grids (the teacher at its NFE above the one-step student when final), the CLIP / preference reward of
the student samples when the run has one, and, at the end, the student exported as a stock one-step
``StableDiffusionPipeline`` (:mod:`fdistill.export.stable_diffusion`, docs/math.md §1.2). Reads only its
:class:`fdistill.train.run_eval.EvalInputs`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import Tensor

from fdistill.export.stable_diffusion import export_sd_student
from fdistill.metrics.plots import image_grid
from fdistill.rewards import CLIPReward
from fdistill.teachers import Teacher
from fdistill.train.run_eval import EVAL_SEED, EvalInputs, grid_labels

log = logging.getLogger("fdistill")


@torch.no_grad()
def evaluate_latent_run(run: EvalInputs, final: bool) -> dict:
    """Sample grid of decoded images, the reward of the student samples and, when ``final``, the exported
    pipeline in ``RUN_DIR/student``."""
    t0 = time.perf_counter()
    cfg, teacher, run_dir = run.cfg, run.teacher, Path(run.run_dir)
    n = max(1, min(64, cfg.train.num_eval_samples))
    latents, cond = run.sample(n, cfg.seed + EVAL_SEED)
    result: dict = {
        "step": run.step,
        "images_seen": run.images_seen,
        "latent_mean": float(latents.mean()),
        "latent_std": float(latents.std()),
    }
    rows = [_decode(teacher, latents).cpu()]
    if final:
        gen = torch.Generator().manual_seed(cfg.seed + EVAL_SEED)
        ref = teacher.sample(n, cond, nfe=cfg.teacher.sample_nfe, guidance=run.guidance, generator=gen,
                             device=latents.device)  # fmt: skip
        rows.insert(0, _decode(teacher, ref).cpu())
    name = "samples.png" if final else f"samples_{run.step:08d}.png"
    labels = grid_labels(cfg.teacher.sample_nfe if final else None, run.student.steps)
    image_grid([r.clamp(-1, 1) for r in rows], labels=labels).save(run_dir / name)
    if isinstance(run.reward, CLIPReward):
        result["reward"] = float(run.reward(latents, cond).mean())
    if final and run.is_main:
        result["exported"] = _export(run, result)
    result["eval_seconds"] = time.perf_counter() - t0
    return result


def _export(run: EvalInputs, result: dict) -> str:
    """Export the EMA student as a stock pipeline; returns its folder, or ``"no: why"`` (the run's results stay)."""
    cfg = run.cfg
    card = {
        "teacher": f"latent:{cfg.teacher.path}",
        "method": cfg.method.name,
        "divergence": cfg.method.divergence if cfg.method.name in ("fdistill", "uni_instruct") else "n/a",
        "teacher CFG (w=1 off)": run.guidance,
        "steps": run.step,
        "images_seen": run.images_seen,
        "batch_size": cfg.train.batch_size,
        "lr_generator": cfg.train.lr_generator,
        "lr_fake": cfg.train.lr_fake,
        "reward": result.get("reward", "not measured"),
        "config": "config.yaml in the run directory",
    }
    out = Path(run.run_dir) / "student"
    try:
        export_sd_student(run.student, run.teacher, out, cfg.train.sigma_init, card,
                          input_scaling=cfg.train.generator_input)  # fmt: skip
    except ValueError as e:  # VE input or a non-integer timestep: keep the run's results, say why
        log.warning("student not exported as a stock pipeline: %s", e)
        return f"no: {e}"
    return str(out)


def _decode(teacher: Teacher, latents: Tensor, batch: int = 16) -> Tensor:
    return torch.cat([teacher.decode(c) for c in latents.split(batch)])
