"""Export of a distilled one-step (or K-step) student as a diffusers pipeline.

``OneStepPipeline`` holds one component, ``unet`` (the generator network: a trainable copy of the
teacher's EDM denoiser, e.g. :class:`fdistill.nets.unet.EDMUNet`) and evaluates it once:
``x = D_theta(sigma_init z, sigma_init, label)`` with ``z ~ N(0, I)`` (NFE = 1). It saves with
``save_pretrained`` (``model_index.json`` + the network's ``config.json`` and safetensors) and loads with
``OneStepPipeline.from_pretrained(path)``::

    from fdistill.export.pipeline import OneStepPipeline
    pipe = OneStepPipeline.from_pretrained("checkpoints/fmnist_student")
    images = pipe(batch_size=8, class_labels=[0, 1, 2, 3, 4, 5, 6, 7], seed=0).images   # PIL

A K-step student (``train.student_steps``, docs/math.md §2.10) records its levels in the config as
``student_sigmas`` (a one-step student writes no such key, as before the key existed: missing means
``[sigma_init]``) and samples ``x = sigma_1 z``; ``x0 = D(x, sigma_k)``; ``x = x0 + sigma_{k+1} eps_k`` with fresh
noise, NFE = K (``num_inference_steps=n <= K`` uses the first n levels and returns the n-th x0). The class keeps
its name for every K so that old folders and loaders keep working.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from PIL import Image

import fdistill.nets.unet  # noqa: F401  (diffusers loads components only from imported modules)
from fdistill.nets.generator import check_student_sigmas, input_scale, run_chain


@dataclass
class OneStepOutput(BaseOutput):
    images: list[Image.Image] | torch.Tensor


class OneStepPipeline(DiffusionPipeline):
    """One network evaluation per image (K for a K-step student). ``sigma_init``, ``class_names``,
    ``input_scaling`` and ``student_sigmas`` live in the pipeline config."""

    model_cpu_offload_seq = "unet"

    def __init__(
        self,
        unet,
        sigma_init: float = 2.5,
        class_names: Sequence[str] | None = None,
        input_scaling: str = "ve",
        student_sigmas: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        sigmas = check_student_sigmas(student_sigmas if student_sigmas else [sigma_init], sigma_init)
        input_scale(sigma_init, input_scaling)  # a bad name is one clear error here, not at the first call
        self.register_modules(unet=unet)
        self.register_to_config(
            sigma_init=float(sigma_init), class_names=list(class_names or []), input_scaling=input_scaling
        )
        if len(sigmas) > 1:  # a one-step folder stays as it was (subclasses and old loaders need no new key)
            self.register_to_config(student_sigmas=sigmas)

    @property
    def student_sigmas(self) -> list[float]:
        """The K levels of the student (``[sigma_init]`` for a one-step student or a folder without the key)."""
        return [float(s) for s in (self.config.get("student_sigmas") or [self.config.sigma_init])]

    @property
    def num_steps(self) -> int:
        """K, the student's number of steps (its NFE)."""
        return len(self.student_sigmas)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size)

    def first_input(self, z: torch.Tensor) -> torch.Tensor:
        """The chain's first input from unit noise ``z``: ``sigma_1 z`` (VE) or ``sqrt(1 + sigma_1^2) z`` (VP)."""
        sigma, scaling = self.config.sigma_init, self.config.get("input_scaling", "ve")
        return (sigma if scaling == "ve" else (1 + sigma**2) ** 0.5) * z

    def denoise(self, x: torch.Tensor, level: int, labels: torch.Tensor | None) -> torch.Tensor:
        """``D_theta(x, sigma_level, labels)`` (``level`` 0-based) in float32 on the network's device."""
        device, dtype = self.unet.device, self.unet.dtype
        sigma = self.student_sigmas[level]
        return self.unet(x.to(device, dtype), torch.full((x.shape[0],), sigma, device=device),
                         None if labels is None else labels.to(device)).float()  # fmt: skip

    def chain(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None,
        gen: torch.Generator,
        start: int = 0,
        stop: int | None = None,
        callback=None,
    ) -> torch.Tensor:
        """The student's chain from the VE input ``x`` at level ``start`` (0-based) to ``stop`` (exclusive; default
        K), drawing each re-noising ``eps`` from ``gen`` (on the CPU, one ``x``-shaped draw per step, in order);
        returns the last x0 (unclamped). ``callback(level, sigma, x, x0)`` sees every step."""
        device = self.unet.device
        shape = tuple(x.shape)

        def noise(_k: int) -> torch.Tensor:
            return torch.randn(shape, generator=gen).to(device)

        return run_chain(lambda xx, k: self.denoise(xx, k, labels), x, self.student_sigmas, noise, start, stop,
                         callback)  # fmt: skip

    @property
    def num_classes(self) -> int:
        return int(getattr(self.unet.config, "num_classes", 0) or 0)

    def _labels(self, batch_size: int, class_labels, gen: torch.Generator) -> torch.Tensor | None:
        if self.num_classes == 0:
            if class_labels is not None:
                raise ValueError("this student is unconditional: do not pass class_labels")
            return None
        if class_labels is None:
            return torch.randint(0, self.num_classes, (batch_size,), generator=gen)
        if isinstance(class_labels, int | str):
            class_labels = [class_labels] * batch_size
        labels = [self.config.class_names.index(c) if isinstance(c, str) else int(c) for c in class_labels]
        if len(labels) != batch_size:
            raise ValueError(f"got {len(labels)} class labels for batch_size={batch_size}")
        bad = [c for c in labels if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"class labels {bad} out of range 0..{self.num_classes - 1}")
        return torch.tensor(labels, dtype=torch.long)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: int | str | Sequence[int | str] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        num_inference_steps: int | None = None,
    ) -> OneStepOutput:
        """Generate ``batch_size`` images with one network evaluation per student step.

        Args:
            class_labels: one label (or class name) for all images, a list of them, or None (random).
            seed: seeds a CPU generator (ignored when ``generator`` is given); same seed, same images.
            output_type: ``pil`` (list of PIL images), ``pt`` (tensor in [-1, 1], NCHW) or ``np`` (uint8 NHWC).
            num_inference_steps: 1..K (default K, the student's steps): fewer steps use the first levels of its
                schedule and return that step's x0; more than K is an error (the student knows only its K levels).

        Random draws from the generator, in order: the labels (when not given), ``z``, then one ``z``-shaped
        re-noising draw per step after the first.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        steps = self.num_steps if num_inference_steps is None else int(num_inference_steps)
        if not 1 <= steps <= self.num_steps:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} is not accepted: this student was trained for "
                f"{self.num_steps} step(s) at sigmas {self.student_sigmas}; choose 1..{self.num_steps}"
            )
        gen = generator or torch.Generator().manual_seed(int(seed) if seed is not None else torch.seed())
        labels = self._labels(batch_size, class_labels, gen)
        z = torch.randn((batch_size, *self.sample_shape), generator=gen)
        x = self.chain(self.first_input(z), labels, gen, 0, steps).clamp(-1, 1)
        if output_type == "pt":
            return OneStepOutput(images=x.cpu())
        arr = ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return OneStepOutput(images=arr)
        return OneStepOutput(images=[Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr])


def export_student(
    unet,
    sigma_init: float,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    card: dict | None = None,
    input_scaling: str = "ve",
    student_sigmas: Sequence[float] | None = None,
) -> Path:
    """Save ``unet`` as a :class:`OneStepPipeline` folder, with ``card`` (dict) written as README.md;
    ``student_sigmas`` is a K-step student's schedule (None: one step at ``sigma_init``)."""
    path = Path(path)
    pipe = OneStepPipeline(unet=unet, sigma_init=sigma_init, class_names=class_names, input_scaling=input_scaling,
                           student_sigmas=student_sigmas)  # fmt: skip
    pipe.save_pretrained(path, safe_serialization=True)
    if card is not None:
        (path / "README.md").write_text(model_card(card))
        (path / "card.json").write_text(json.dumps(card, indent=2))
    return path


def model_card(card: dict) -> str:
    lines = [f"# {card.get('title', 'fdistill one-step student')}", ""]
    lines += [f"- **{k}**: {v}" for k, v in card.items() if k not in ("title", "usage", "notes")]
    lines += ["", "## Usage", "", "```python", card.get("usage", _USAGE), "```"]
    if card.get("notes"):
        lines += ["", "## Notes", "", str(card["notes"])]
    return "\n".join(lines) + "\n"


_USAGE = """from fdistill.export.pipeline import OneStepPipeline
pipe = OneStepPipeline.from_pretrained("PATH")
images = pipe(batch_size=8, seed=0).images"""
