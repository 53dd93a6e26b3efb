"""End-of-run (and periodic) evaluation of a distillation run: metrics and ``samples.png``.

Gaussian-mixture teachers get the exact metrics of :mod:`fdistill.metrics.gmm` and a scatter plot of
teacher vs student samples; image teachers get a sample grid (teacher rows at its NFE above the student's: one-step,
or its full K-step chain; each block labelled "teacher, NFE n" / "student, NFE K" in a strip on the left) and the
fast proxy FID of :mod:`fdistill.metrics.proxy` where it is available. The evaluation reads only its
:class:`EvalInputs` (built by the trainer), never the trainer itself; latent runs: :mod:`fdistill.train.latent_eval`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fdistill.config import Config
from fdistill.data import CLASS_NAMES
from fdistill.export.pipeline import export_student
from fdistill.metrics.gmm import gmm_metrics
from fdistill.metrics.plots import image_grid, save_scatter
from fdistill.metrics.proxy import ProxyFID
from fdistill.nets.generator import OneStepGenerator
from fdistill.teachers import Teacher

#: offset of the evaluation's seed from ``cfg.seed`` (the same samples at every evaluation of a run)
EVAL_SEED = 12345


class ScorerCache:
    """Scorers built once per run and reused by every evaluation (the proxy FID's classifier); owned by the
    trainer."""

    def __init__(self) -> None:
        self._proxy_fid: ProxyFID | None = None

    def proxy_fid(self, device: torch.device | str) -> ProxyFID:
        if self._proxy_fid is None:
            self._proxy_fid = ProxyFID(device=device)
        return self._proxy_fid


@dataclass
class EvalInputs:
    """What the evaluation of a distillation run reads."""

    cfg: Config
    teacher: Teacher
    run_dir: Path
    step: int
    images_seen: int
    #: ``(n, seed) -> (samples, cond)`` of the EMA student with its full chain
    sample: Callable[[int, int], tuple[Tensor, Tensor | None]]
    #: the EMA student (its ``steps``, ``sigmas`` and ``net`` are read; exported at the end)
    student: OneStepGenerator
    device: torch.device | str
    scorers: ScorerCache
    guidance: float = 1.0  # the teacher's CFG scale of the reference rows (latent grids)
    reward: Any = None  # the run's reward function (latent: CLIP / preference score of the student samples)
    is_main: bool = True


def evaluate_run(run: EvalInputs, final: bool) -> dict:
    """Metrics of the student at ``run.step`` (gmm: exact; images: proxy FID), ``samples.png`` and, when ``final``,
    the exported student in ``RUN_DIR/student``."""
    cfg, teacher = run.cfg, run.teacher
    n = cfg.train.num_eval_samples
    t0 = time.perf_counter()
    samples, cond = run.sample(n, cfg.seed + EVAL_SEED)
    result: dict = {"step": run.step, "images_seen": run.images_seen}
    if cfg.teacher.kind == "gmm":
        result.update(gmm_metrics(teacher, samples.cpu(), seed=cfg.seed))
        real = teacher.sample_data(n, generator=torch.Generator().manual_seed(cfg.seed))
        save_scatter(run.run_dir / "samples.png", real, samples.cpu(), title=f"{cfg.method.name} step {run.step}")
    else:
        result.update(_image_metrics(run, samples, cond, final))
        if final:
            export_image_student(run, result)
    result["eval_seconds"] = time.perf_counter() - t0
    return result


def _image_metrics(run: EvalInputs, samples: Tensor, cond: Tensor | None, final: bool) -> dict:
    cfg, teacher = run.cfg, run.teacher
    out: dict = {}
    grid_n = min(64, samples.shape[0])
    rows = [samples[:grid_n].cpu()]
    if final:
        gen = torch.Generator().manual_seed(cfg.seed + EVAL_SEED)
        z_cond = cond[:grid_n] if cond is not None else None
        rows.insert(0, teacher.sample(grid_n, z_cond, nfe=cfg.teacher.sample_nfe, generator=gen,
                                      device=run.device).cpu())  # fmt: skip
    labels = grid_labels(cfg.teacher.sample_nfe if final else None, run.student.steps)
    name = "samples.png" if final else f"samples_{run.step:08d}.png"
    image_grid(rows, labels=labels).save(Path(run.run_dir) / name)
    if cfg.data.name != "fashion_mnist":  # the proxy classifier knows Fashion-MNIST only
        return out
    out["proxy_fid"] = float(run.scorers.proxy_fid(run.device).score(samples))
    return out


def grid_labels(teacher_nfe: int | None, student_steps: int) -> list[str]:
    """The row labels of ``samples.png``: the teacher's rows (when shown) with its sampler's NFE, then the student's
    with its own (1 for a one-step student, K for a K-step one)."""
    teacher = [f"teacher, NFE {teacher_nfe}"] if teacher_nfe is not None else []
    return [*teacher, f"student, NFE {student_steps}"]


def export_image_student(run: EvalInputs, result: dict) -> None:
    """Write the EMA generator as a one-step (or K-step: ``student_sigmas`` in the pipeline config) diffusers
    pipeline in ``RUN_DIR/student``."""
    cfg = run.cfg
    sigmas = list(run.student.sigmas)
    steps = len(sigmas)
    card = {
        "title": f"fdistill {'one' if steps == 1 else steps}-step student ({cfg.method.name})",
        "teacher": f"{cfg.teacher.kind}:{cfg.teacher.path}",
        "teacher_path": cfg.teacher.path,
        "method": cfg.method.name,
        "divergence": cfg.method.divergence if cfg.method.name in ("fdistill", "uni_instruct") else "n/a",
        "NFE": steps,
        "sigma_init": cfg.train.sigma_init,
        **({"student_sigmas": sigmas} if steps > 1 else {}),
        "steps": run.step,
        "images_seen": run.images_seen,
        "batch_size": cfg.train.batch_size,
        "lr_generator": cfg.train.lr_generator,
        "lr_fake": cfg.train.lr_fake,
        "proxy_fid (classifier features, NOT Inception FID)": result.get("proxy_fid", "not measured"),
        "config": "config.yaml in the run directory",
    }
    names = _class_names(cfg, run.teacher.num_classes)
    export_student(
        run.student.net,
        cfg.train.sigma_init,
        run.run_dir / "student",
        names,
        card,
        cfg.train.generator_input,
        student_sigmas=sigmas,
    )


def _class_names(cfg: Config, num_classes: int) -> list[str] | None:
    """Label names of the teacher's data set, for the exported pipeline's ``class_names``."""
    if num_classes == 0:
        return None
    if cfg.data.name == "fashion_mnist":
        return list(CLASS_NAMES)[:num_classes]
    return [str(k) for k in range(num_classes)]
