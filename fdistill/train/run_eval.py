"""End-of-run (and periodic) evaluation of a distillation run: metrics and ``samples.png``.

Gaussian-mixture teachers get the exact metrics of :mod:`fdistill.metrics.gmm` and a scatter plot of
teacher vs student samples; image teachers get a sample grid (teacher rows at its NFE above the student's: one-step,
or its full K-step chain; each block labelled "teacher, NFE n" / "student, NFE K" in a strip on the left) and the
fast proxy FID of :mod:`fdistill.metrics.proxy` where it is available.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from fdistill.metrics.plots import image_grid, save_scatter


def evaluate_run(distiller, final: bool) -> dict:
    cfg, teacher = distiller.cfg, distiller.teacher
    if cfg.teacher.kind == "latent":
        from fdistill.export.stable_diffusion import evaluate_latent_run

        return evaluate_latent_run(distiller, final)
    n = cfg.train.num_eval_samples
    t0 = time.perf_counter()
    samples, cond = distiller.sample_student(n, seed=cfg.seed + 12345)
    result: dict = {"step": distiller.state.step, "images_seen": distiller.state.images_seen}
    if cfg.teacher.kind == "gmm":
        from fdistill.metrics.gmm import gmm_metrics

        result.update(gmm_metrics(teacher, samples.cpu(), seed=cfg.seed))
        real = teacher.sample_data(n, generator=torch.Generator().manual_seed(cfg.seed))
        save_scatter(
            distiller.run_dir / "samples.png", real, samples.cpu(), title=f"{cfg.method.name} step {result['step']}"
        )
    else:
        result.update(_image_metrics(distiller, samples, cond, final))
        if final:
            export_image_student(distiller, result)
    result["eval_seconds"] = time.perf_counter() - t0
    return result


def _image_metrics(distiller, samples: torch.Tensor, cond, final: bool) -> dict:
    cfg, teacher, run_dir = distiller.cfg, distiller.teacher, distiller.run_dir
    out: dict = {}
    grid_n = min(64, samples.shape[0])
    rows = [samples[:grid_n].cpu()]
    if final:
        gen = torch.Generator().manual_seed(cfg.seed + 12345)
        z_cond = cond[:grid_n] if cond is not None else None
        rows.insert(0, teacher.sample(grid_n, z_cond, nfe=cfg.teacher.sample_nfe, generator=gen,
                                      device=distiller.accelerator.device).cpu())  # fmt: skip
    labels = grid_labels(cfg.teacher.sample_nfe if final else None, distiller.ema.model.steps)
    name = "samples.png" if final else f"samples_{distiller.state.step:08d}.png"
    image_grid(rows, labels=labels).save(Path(run_dir) / name)
    if cfg.data.name != "fashion_mnist":  # the proxy classifier knows Fashion-MNIST only
        return out
    from fdistill.metrics.proxy import ProxyFID

    scorer = getattr(distiller, "_proxy_fid", None) or ProxyFID(device=distiller.accelerator.device)
    distiller._proxy_fid = scorer
    out["proxy_fid"] = float(scorer.score(samples))
    return out


def grid_labels(teacher_nfe: int | None, student_steps: int) -> list[str]:
    """The row labels of ``samples.png``: the teacher's rows (when shown) with its sampler's NFE, then the student's
    with its own (1 for a one-step student, K for a K-step one)."""
    teacher = [f"teacher, NFE {teacher_nfe}"] if teacher_nfe is not None else []
    return [*teacher, f"student, NFE {student_steps}"]


def export_image_student(distiller, result: dict) -> None:
    """Write the EMA generator as a one-step (or K-step: ``student_sigmas`` in the pipeline config) diffusers
    pipeline in ``RUN_DIR/student``."""
    from fdistill.export.pipeline import export_student

    cfg = distiller.cfg
    sigmas = list(distiller.ema.model.sigmas)
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
        "steps": distiller.state.step,
        "images_seen": distiller.state.images_seen,
        "batch_size": cfg.train.batch_size,
        "lr_generator": cfg.train.lr_generator,
        "lr_fake": cfg.train.lr_fake,
        "proxy_fid (classifier features, NOT Inception FID)": result.get("proxy_fid", "not measured"),
        "config": "config.yaml in the run directory",
    }
    names = _class_names(cfg, distiller.teacher.num_classes)
    export_student(
        distiller.ema.model.net,
        cfg.train.sigma_init,
        distiller.run_dir / "student",
        names,
        card,
        cfg.train.generator_input,
        student_sigmas=sigmas,
    )


def _class_names(cfg, num_classes: int) -> list[str] | None:
    """Label names of the teacher's data set, for the exported pipeline's ``class_names``."""
    if num_classes == 0:
        return None
    if cfg.data.name == "fashion_mnist":
        from fdistill.data import CLASS_NAMES

        return list(CLASS_NAMES)[:num_classes]
    return [str(k) for k in range(num_classes)]
