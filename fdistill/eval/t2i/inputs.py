"""The inputs of ``fdistill eval-t2i``: the prompt table, the evaluated prompts, and the real images for FD.

Prompts: ``--num-prompts`` evenly spaced prompts of the teacher's ``prompts.txt`` (``prompts[i * P // N]``); the
diversity prompts are evenly spaced among those. Real images (for the Frechet distance, Heusel et al. 2017, Eq. 6):
the emoji set at the teacher's image size, an image folder or an ``.npz`` of images, in ``[-1, 1]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from torch import Tensor

from fdistill.data import load_dataset
from fdistill.eval.image_files import iter_image_folder, load_image_folder, load_npz_images
from fdistill.eval.t2i.base import EvalT2ISetupError
from fdistill.export.loading import one_line
from fdistill.teachers.latent import read_prompts

REAL_CHOICES = "emoji, none, an image folder or an .npz of images"


def select_prompts(prompts: Sequence[str], n: int) -> list[int]:
    """Indices of ``n`` prompts spread evenly over ``prompts`` (``i * P // n``; all of them when ``n >= P``)."""
    total = len(prompts)
    if n >= total:
        return list(range(total))
    return [i * total // n for i in range(n)]


def load_prompt_table(prompts_file: Path) -> list[str]:
    """The distinct prompts of a prompt table (one a line, first occurrence kept)."""
    if not prompts_file.is_file():
        raise EvalT2ISetupError(f"prompts file {prompts_file} not found (one prompt a line; give --prompts FILE)")
    prompts = list(dict.fromkeys(read_prompts(prompts_file)))
    if not prompts:
        raise EvalT2ISetupError(f"prompts file {prompts_file} holds no prompt")
    return prompts


def is_real_spec(spec: str) -> bool:
    """Whether ``--real`` names something :func:`load_real_images` reads (checked before anything loads)."""
    path = Path(spec).expanduser()
    return spec in ("emoji", "none") or path.is_dir() or (path.suffix == ".npz" and path.is_file())


def load_real_images(spec: str, image_size: int, limit: int | None = None) -> Tensor | None:
    """Real images in ``[-1, 1]``: ``emoji`` (``fdistill.data.load_dataset("emoji", size=image_size)``), ``none``,
    an image folder or an ``.npz`` of images (as ``fdistill eval`` reads them)."""
    if spec == "none":
        return None
    if spec == "emoji":
        try:
            images = load_dataset("emoji", size=image_size).images
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            raise EvalT2ISetupError(f"--real emoji: {one_line(e)}") from e
        return images[:limit]
    path = Path(spec).expanduser()
    if path.is_dir():
        uint8 = load_image_folder(path, limit=limit)
    elif path.suffix == ".npz" and path.is_file():
        uint8 = load_npz_images(path)[0][:limit]
    else:
        raise EvalT2ISetupError(f"--real {spec!r}: accepted {REAL_CHOICES}")
    return _unit_rgb(uint8)


def _unit_rgb(uint8: Tensor) -> Tensor:
    images = uint8.float() / 127.5 - 1
    return images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images


def real_image_batches(spec: str, image_size: int, limit: int | None, batch_size: int) -> Iterator[Tensor] | None:
    """The images of :func:`load_real_images` in batches of ``batch_size``; an image folder is read a batch at a
    time (for the 30k-image protocol), a file that does not match the first image's shape is a one-line error."""
    path = Path(spec).expanduser()
    if spec in ("emoji", "none") or not path.is_dir():
        images = load_real_images(spec, image_size, limit)
        return None if images is None else iter(images.split(batch_size))
    files = iter_image_folder(path, batch_size, limit)

    def batches() -> Iterator[Tensor]:
        try:
            for uint8 in files:
                yield _unit_rgb(uint8)
        except ValueError as e:
            raise EvalT2ISetupError(f"--real {spec}: {one_line(e)}") from e

    return batches()
