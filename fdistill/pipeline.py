"""Export of a distilled one-step student as a diffusers pipeline.

``OneStepPipeline`` holds one component, ``unet`` (the generator network: a trainable copy of the
teacher's EDM denoiser, e.g. :class:`fdistill.nets.unet.EDMUNet`) and evaluates it once:
``x = D_theta(sigma_init z, sigma_init, label)`` with ``z ~ N(0, I)`` (NFE = 1). It saves with
``save_pretrained`` (``model_index.json`` + the network's ``config.json`` and safetensors) and loads with
``OneStepPipeline.from_pretrained(path)``::

    from fdistill.pipeline import OneStepPipeline
    pipe = OneStepPipeline.from_pretrained("checkpoints/fmnist_student")
    images = pipe(batch_size=8, class_labels=[0, 1, 2, 3, 4, 5, 6, 7], seed=0).images   # PIL
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


@dataclass
class OneStepOutput(BaseOutput):
    images: list[Image.Image] | torch.Tensor


class OneStepPipeline(DiffusionPipeline):
    """One network evaluation per image. ``sigma_init`` and ``class_names`` live in the pipeline config."""

    model_cpu_offload_seq = "unet"

    def __init__(
        self, unet, sigma_init: float = 2.5, class_names: Sequence[str] | None = None, input_scaling: str = "ve"
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet)
        self.register_to_config(
            sigma_init=float(sigma_init), class_names=list(class_names or []), input_scaling=input_scaling
        )

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
    ) -> OneStepOutput:
        """Generate ``batch_size`` images with one network evaluation.

        Args:
            class_labels: one label (or class name) for all images, a list of them, or None (random).
            seed: seeds a CPU generator (ignored when ``generator`` is given); same seed, same images.
            output_type: ``pil`` (list of PIL images), ``pt`` (tensor in [-1, 1], NCHW) or ``np`` (uint8 NHWC).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        gen = generator or torch.Generator().manual_seed(int(seed) if seed is not None else torch.seed())
        labels = self._labels(batch_size, class_labels, gen)
        shape = (batch_size, self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size)
        z = torch.randn(shape, generator=gen)
        device, dtype = self.unet.device, self.unet.dtype
        sigma = self.config.sigma_init
        scale = sigma if self.config.get("input_scaling", "ve") == "ve" else (1 + sigma**2) ** 0.5
        x = self.unet((scale * z).to(device, dtype), torch.full((batch_size,), sigma, device=device),
                      None if labels is None else labels.to(device)).float().clamp(-1, 1)  # fmt: skip
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
) -> Path:
    """Save ``unet`` as a :class:`OneStepPipeline` folder, with ``card`` (dict) written as README.md."""
    path = Path(path)
    pipe = OneStepPipeline(unet=unet, sigma_init=sigma_init, class_names=class_names, input_scaling=input_scaling)
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


_USAGE = """from fdistill.pipeline import OneStepPipeline
pipe = OneStepPipeline.from_pretrained("PATH")
images = pipe(batch_size=8, seed=0).images"""
