"""The LoRA of ``fdistill bench lora-transfer``: one data category, fitted on the teacher with its own loss.

Gandikota & Bau 2025 ("Distilling Diversity and Control in Diffusion Models"; docs/math.md §2.11) claim that a
control trained on the teacher, such as a LoRA (Hu et al. 2022), works unchanged on its distilled student. Here the
control is a LoRA of rank ``r`` on :data:`fdistill.teachers.latent.LORA_TARGETS` (base weights frozen, scale
``alpha / r = 1``: :meth:`~fdistill.teachers.latent.LatentTeacher.make_network`), fitted with the latent teacher's
own training objective, L_simple at DDPM-uniform timesteps (:class:`fdistill.train.teacher.latent_recipe.LatentRecipe`
``draw_sigma`` and ``loss``: ``|D(z + sigma eps) - z|^2 / sigma^2``, docs/math.md §1.2-1.3), prompts dropped to the
empty prompt with the teacher's ``label_dropout``, AdamW with gradient clipping, on the images of ONE category:
the captions that contain a keyword as a word (``flag`` matches "japan flag" and "crossed flags").

The adapter is saved as a stock diffusers LoRA file (``save_lora_weights``, with its peft config as metadata), so
the teacher's UNet (:func:`with_lora`) and the student's ``StableDiffusionPipeline`` (``load_lora_weights``) load the
same file, unchanged.
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from fdistill.teachers.latent import LatentTeacher
from fdistill.train.loop import step_generator
from fdistill.train.teacher.latent_recipe import LatentRecipe

__all__ = ["LoraFit", "category_mask", "fit_lora", "keyword_pattern", "save_lora", "with_lora"]

ADAPTER = "transfer"  # the adapter's name in both UNets
WEIGHTS = "pytorch_lora_weights.safetensors"  # the file save_lora_weights writes
PHASE_DRAWS = 0  # step_generator phase of this loop's sigma / eps / dropout draws


@dataclass
class LoraFit:
    """A fitted LoRA: the UNet that carries it, and what the fit did."""

    unet: nn.Module  # a float32 copy of the teacher's UNet with the trained adapter
    rank: int
    steps: int
    images: int  # training images of the category
    losses: list[float] = field(default_factory=list)  # per step
    seconds: float = 0.0

    def loss_summary(self, k: int = 20) -> tuple[float | None, float | None]:
        """Mean loss of the first and of the last ``k`` steps (``None`` without steps)."""
        if not self.losses:
            return None, None
        head, tail = self.losses[:k], self.losses[-k:]
        return sum(head) / len(head), sum(tail) / len(tail)


def keyword_pattern(keyword: str) -> re.Pattern[str]:
    """``keyword`` as a whole word, also in the plural (case-insensitive)."""
    return re.compile(rf"\b{re.escape(keyword.strip())}s?\b", re.IGNORECASE)


def category_mask(captions: list[str], keyword: str) -> Tensor:
    """Which captions belong to the keyword's category (the keyword appears as a word)."""
    pat = keyword_pattern(keyword)
    return torch.tensor([bool(pat.search(c)) for c in captions], dtype=torch.bool)


def _recipe(teacher: LatentTeacher, net: nn.Module, latents: Tensor, ids: Tensor) -> LatentRecipe:
    """The latent teacher trainer's recipe around the LoRA network and the category's (latents, prompt ids)."""
    return LatentRecipe(
        net=net,
        dataset=TensorDataset(latents, ids),
        null_label=teacher.null_id,
        sigmas=teacher.timestep_sigmas.float(),
        vae=teacher.vae,
        text_encoder=teacher.text_encoder,
        tokenizer=teacher.tokenizer,
        scheduler=DDPMScheduler.from_config(teacher.scheduler_config),
        prompts=teacher.prompts,
    )


def fit_lora(
    teacher: LatentTeacher,
    images: Tensor,
    captions: list[str],
    *,
    rank: int = 8,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 1e-3,
    label_dropout: float = 0.1,
    grad_clip: float = 1.0,
    seed: int = 0,
) -> LoraFit:
    """Fit a rank-``rank`` LoRA on ``teacher``'s UNet to ``images`` (in ``[-1, 1]``, any size: resized to the VAE's)
    captioned ``captions`` (prompts of the teacher's table); ``steps = 0`` leaves the adapter at its zero init."""
    if rank < 1:
        raise ValueError(f"--rank {rank}: the LoRA rank must be >= 1")
    trainer = copy.copy(teacher)  # the same frozen parts; only the LoRA settings of make_network differ
    trainer.lora_rank, trainer.lora_alpha = int(rank), float(rank)
    torch.manual_seed(seed)  # peft draws the LoRA A init from the global generator
    net = trainer.make_network()
    device = next(net.parameters()).device
    latents = teacher.encode(teacher.prepare_images(images.to(device))).cpu()
    recipe = _recipe(teacher, net, latents, teacher.prompt_ids(captions))
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    fit = LoraFit(unet=net.unet, rank=int(rank), steps=int(steps), images=len(captions))
    n, t0 = len(captions), time.perf_counter()
    for step in range(steps):
        gen = step_generator(seed, step, PHASE_DRAWS, 0)
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        x0, ids = latents[idx].to(device), recipe.dataset.tensors[1][idx].to(device)
        sigma = recipe.draw_sigma(idx.shape[0], gen).to(device)
        eps = torch.randn(x0.shape, generator=gen).to(device)
        drop = (torch.rand(idx.shape[0], generator=gen) < label_dropout).to(device)
        cond = torch.where(drop, torch.full_like(ids, recipe.null_label), ids)
        loss = recipe.loss(lambda x, s, c=cond: net(x, s, c), x0, sigma, eps).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        fit.losses.append(float(loss.detach()))
    fit.seconds = time.perf_counter() - t0
    fit.unet.eval().requires_grad_(False)
    return fit


def save_lora(unet: nn.Module, folder: str | Path) -> Path:
    """The UNet's adapter as a stock diffusers LoRA folder (``pytorch_lora_weights.safetensors``; peft config in its
    metadata, so the scale ``lora_alpha / r`` loads back as trained)."""
    from peft.utils import get_peft_model_state_dict  # lazy: peft is an optional dependency

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(unet)
    config = unet.peft_config[next(iter(unet.peft_config))].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=state, unet_lora_adapter_metadata=config, safe_serialization=True
    )
    return folder


def with_lora(unet: nn.Module, folder: str | Path | None) -> nn.Module:
    """A copy of ``unet`` with the LoRA folder's adapter loaded (``None``: the plain copy)."""
    out = copy.deepcopy(unet)
    if folder is not None:
        out.load_lora_adapter(str(folder), prefix="unet", adapter_name=ADAPTER, weight_name=WEIGHTS)
    return out.eval().requires_grad_(False)
