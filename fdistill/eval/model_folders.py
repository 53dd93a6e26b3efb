"""Folders given as ``fdistill eval`` SOURCE that hold a model, not samples: what they are and how to evaluate them.

A teacher (EDM UNet, diffusers UNet) is evaluated through an exported student that names it (``--teacher-nfe``,
the EDM Heun sampler of Karras et al. 2022, Alg. 1, at those NFEs); a text-to-image pipeline by ``fdistill eval-t2i``.
"""

from __future__ import annotations

import json
from pathlib import Path

from fdistill.eval.image_files import image_files

MODEL_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
MODEL_CONFIGS = ("model_index.json", "config.json")
RUN_MARKERS = ("config.yaml", "model_index.json", "metrics.jsonl", "checkpoints")
MAX_IMAGES_IN_MODEL_FOLDER = 16  # a model card's samples.png / recon.png, not a sample set
TEACHER_CLASSES = ("EDMUNet", "UNet2DModel", "UNet2DConditionModel")  # denoisers `fdistill sample` / students use
PIXEL_TEACHER_CLASSES = ("EDMUNet", "UNet2DModel")  # what `--against-teacher` / `--cache-stats` can sample


def run_or_pipeline_marker(path: Path) -> str | None:
    """The first file of a run directory or pipeline folder found in ``path`` (``config.yaml``, ...), else None."""
    return next((marker for marker in RUN_MARKERS if (path / marker).exists()), None)


def _students_naming(teacher: Path) -> list[Path]:
    """Exported students next to ``teacher`` whose ``card.json`` names it as ``teacher_path``."""
    found = []
    for card in sorted([*teacher.parent.glob("*/card.json"), *teacher.parent.glob("*/student/card.json")]):
        try:
            named = json.loads(card.read_text()).get("teacher_path")
        except (OSError, ValueError, AttributeError):
            continue
        if named and Path(named).resolve() == teacher.resolve():
            found.append(card.parent)
    return found


def _class_name(path: Path) -> str | None:
    for name in MODEL_CONFIGS:
        try:
            return json.loads((path / name).read_text()).get("_class_name")
        except (OSError, ValueError, AttributeError):
            continue
    return None


def is_pixel_teacher(path: Path) -> bool:
    """A pixel-space teacher folder (EDMUNet / UNet2DModel, or a non-student pipeline with such a ``unet``)."""
    if (path / "model_index.json").is_file():
        return _class_name(path) != "OneStepPipeline" and _class_name(path / "unet") in PIXEL_TEACHER_CLASSES
    return _class_name(path) in PIXEL_TEACHER_CLASSES


def model_folder_message(path: Path) -> str | None:
    """The one-line error for a model folder (a model config or weights at the top, at most a few images) given
    as SOURCE, saying what it is and how to evaluate it; ``None`` for anything else."""
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    markers = [n for n in files if n in MODEL_CONFIGS or n.endswith(MODEL_SUFFIXES)]
    if not markers or len(image_files(path)) >= MAX_IMAGES_IN_MODEL_FOLDER:
        return None
    kind = _class_name(path)
    what = f"{path} is a model folder ({kind + ': ' if kind else ''}{', '.join(markers[:3])}), not sample images"
    if (path / "model_index.json").is_file() and (path / "unet").is_dir():
        return f"{what}; evaluate a text-to-image teacher or student with: fdistill eval-t2i --teacher TEACHER " \
               "[--student PATH] --reward CAPTION_MATCH_MODEL"  # fmt: skip
    if kind not in TEACHER_CLASSES:
        return f"{what}; fdistill eval takes an image folder, an .npz of images, or a student run / pipeline"
    students = _students_naming(path)
    student = str(students[0]) if students else "STUDENT"
    hint = "" if students else " (STUDENT: an exported student whose card.json teacher_path is this folder)"
    return (f"{what}; evaluate a teacher through a student that names it: fdistill eval {student} "
            f"--teacher-nfe 9,17,35 adds teacher rows at those sampler NFEs{hint}; fdistill eval {path} "
            f"--teacher-nfe 35 --cache-stats caches them here for fdistill eval {student} --against-teacher "
            f"{path}; fdistill bench image-fid does it for a table of methods; or write teacher samples to an "
            "image folder / .npz")  # fmt: skip
