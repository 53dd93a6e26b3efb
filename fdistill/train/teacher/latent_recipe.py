"""Text-to-image latent teacher recipe for ``fdistill train-teacher`` (``model: sd_latent``).

A Stable-Diffusion-style teacher (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models") built small enough to train on a CPU: a frozen ``AutoencoderKL`` (trained first with
``fdistill train-vae``), a frozen text encoder (default all-MiniLM-L6-v2, :mod:`fdistill.nets.text_encoders`) and a
``UNet2DConditionModel`` cross-attending to its token states, on a DDPM schedule (SD's ``scaled_linear`` betas,
epsilon prediction). Training is SD's own objective (Ho et al. 2020, Eq. 14, "L_simple"):
``t ~ U{0..T-1}``, ``z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps``, loss ``|eps_hat - eps|^2`` — computed through the
VE view of :class:`fdistill.teachers.latent.LatentDenoiserNet` as ``|D(z + sigma_t eps) - z|^2 / sigma_t^2`` (the
same number for an epsilon UNet, docs/math.md §1.2), so the network trained is exactly the one the latent teacher
adapter, the distillation trainer and the stock ``StableDiffusionPipeline`` load. Prompts are dropped to the empty
prompt with probability ``label_dropout`` (classifier-free guidance).

Why latent for the emoji teacher: a 4x8x8 latent UNet step costs about a sixteenth of a 3x32x32 pixel UNet step of
the same width, which on a 2-core CPU is the difference between a usable teacher and an undertrained one; and it
exercises the whole Stable-Diffusion path (VAE decode in the reward, stock-pipeline export) for real.

The run directory's ``teacher/`` is a complete diffusers Stable-Diffusion folder (``model_index.json``, ``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) plus ``prompts.txt`` (the training captions, the prompt
table of :func:`fdistill.teachers.latent.load_latent_teacher`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from fdistill.config.schema import ConfigError
from fdistill.core.guidance import combine
from fdistill.core.sampling import edm_heun_sampler
from fdistill.core.schedules import ddpm_sigmas
from fdistill.nets.text_encoders import load_text_encoder, minilm_path
from fdistill.teachers.latent import LatentDenoiserNet, PromptTable, vae_decode, vae_encode

__all__ = ["LatentRecipe", "build_latent_recipe", "load_frozen_text_encoder"]


@dataclass
class LatentRecipe:
    """What the teacher loop needs from a latent text-to-image model (see :mod:`fdistill.train.teacher.edm_recipe`)."""

    net: nn.Module  # LatentDenoiserNet around the trainable UNet
    dataset: TensorDataset  # (latents, prompt ids)
    null_label: int  # the empty prompt's id (label dropout target)
    sigmas: Tensor  # DDPM sigma_t for t = 0..T-1
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    scheduler: object
    prompts: list[str]

    def draw_sigma(self, n: int, gen: torch.Generator) -> Tensor:
        """``sigma_t`` at ``t ~ U{0..T-1}`` (DDPM's uniform timesteps)."""
        return self.sigmas[torch.randint(0, self.sigmas.shape[0], (n,), generator=gen)]

    @staticmethod
    def loss(denoise: Callable[[Tensor, Tensor], Tensor], x0: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
        """Per-sample ``mean |D(x0 + sigma eps) - x0|^2 / sigma^2`` (= the epsilon MSE of an epsilon UNet)."""
        s = sigma.view(-1, *([1] * (x0.ndim - 1)))
        err = (denoise(x0 + s * eps, sigma).float() - x0.float()) ** 2
        return err.flatten(1).mean(1) / sigma.float() ** 2

    def decode(self, latents: Tensor) -> Tensor:
        return vae_decode(self.vae, latents).clamp(-1, 1)

    @torch.no_grad()
    def sample_grid(
        self, net: nn.Module, rows: int, nfe: int, guidance: float, seed: int, device
    ) -> tuple[Tensor, int]:
        """Decoded EDM Heun samples: 8 columns of prompts spread over the table, ``rows`` seeds each, under
        classifier-free guidance ``guidance`` (both branches in one batched call; 1 = off)."""
        cols = min(8, len(self.prompts))
        ids = torch.linspace(0, len(self.prompts) - 1, cols).round().long()
        cond = ids.repeat(rows).to(device)
        null = torch.full_like(cond, self.null_label)

        def denoise(x: Tensor, s: Tensor) -> Tensor:
            if guidance == 1.0:
                return net(x, s, cond)
            d_c, d_u = net(torch.cat([x, x]), torch.cat([s, s]), torch.cat([cond, null])).chunk(2)
            return combine(d_c, d_u, guidance)

        gen = torch.Generator(device=device).manual_seed(seed)
        shape = (cond.shape[0], *net.sample_shape)
        lo, hi = float(self.sigmas[0]), float(self.sigmas[-1])
        z = edm_heun_sampler(denoise, shape, nfe, generator=gen, device=device, sigma_min=lo, sigma_max=hi)
        return self.decode(z), cols

    def save(self, net: nn.Module, folder: Path) -> None:
        """``folder`` = a stock Stable-Diffusion diffusers folder with the given (EMA) UNet + ``prompts.txt``."""
        from diffusers import StableDiffusionPipeline  # lazy: the pipeline class imports transformers' models

        pipe = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=net.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(folder, safe_serialization=True)
        (folder / "prompts.txt").write_text("".join(p + "\n" for p in self.prompts), encoding="utf-8")


def load_frozen_text_encoder(path: str | None, max_length: int):
    """``(text_encoder, tokenizer)`` from a folder holding both (a BERT-like model such as MiniLM), an SD folder
    (``text_encoder/`` + ``tokenizer/``), or ``None`` = the packaged all-MiniLM-L6-v2. BERT-like encoders get
    ``config.use_attention_mask = True`` (the stock SD pipeline then passes the mask, as fdistill's prompt table
    does)."""
    from transformers import AutoModel, AutoTokenizer  # lazy: transformers' model classes are a heavy import

    root = Path(path).expanduser() if path else minilm_path()
    if not root.exists():
        raise FileNotFoundError(f"latent.text_encoder_path={str(path)!r} does not exist")
    if (root / "text_encoder").is_dir():
        model = load_text_encoder(root / "text_encoder")
        tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"), model_max_length=max_length)
    else:
        model = AutoModel.from_pretrained(str(root))
        tokenizer = AutoTokenizer.from_pretrained(str(root), model_max_length=max_length)
    if getattr(model.config, "model_type", "") in ("bert", "roberta", "mpnet", "xlm-roberta"):
        model.config.use_attention_mask = True
    return model.eval().requires_grad_(False), tokenizer


def _down_up_types(levels: int, cross: list[int]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    down = tuple("CrossAttnDownBlock2D" if i in cross else "DownBlock2D" for i in range(levels))
    up = tuple("CrossAttnUpBlock2D" if levels - 1 - i in cross else "UpBlock2D" for i in range(levels))
    return down, up


def build_latent_recipe(cfg, dataset, device) -> LatentRecipe:
    """The UNet, frozen VAE / text encoder, DDPM schedule and encoded data set of ``cfg.latent`` (see the module
    docstring). ``dataset`` is an in-memory image set whose ``class_names[label]`` is each image's caption."""
    lc = cfg.latent
    if not lc.vae_path:
        raise ConfigError("model=sd_latent needs latent.vae_path (train one with `fdistill train-vae`)")
    vae_dir = Path(lc.vae_path).expanduser()
    if not (vae_dir / "config.json").is_file():
        raise FileNotFoundError(f"latent.vae_path={lc.vae_path!r} holds no AutoencoderKL (config.json missing)")
    vae = AutoencoderKL.from_pretrained(str(vae_dir)).eval().requires_grad_(False).to(device)
    text_encoder, tokenizer = load_frozen_text_encoder(lc.text_encoder_path, lc.max_length)
    text_encoder.to(device)
    scheduler = DDPMScheduler(
        num_train_timesteps=lc.num_train_timesteps,
        beta_schedule=lc.beta_schedule,
        beta_start=lc.beta_start,
        beta_end=lc.beta_end,
        prediction_type=lc.prediction_type,
        clip_sample=False,
        steps_offset=1,
    )
    prompts = list(dataset.class_names)
    if any(not p.strip() or "\n" in p for p in prompts):
        raise ConfigError("every caption must be a non-empty single line (the empty prompt is the null prompt)")

    # images -> latents (posterior means), once
    images = dataset.images.float()
    size = int(vae.config.sample_size)
    if images.shape[1] == 1 and vae.config.in_channels == 3:
        images = images.repeat(1, 3, 1, 1)
    if images.shape[-1] != size:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="area")
    latents = vae_encode(vae, images, batch_size=128).cpu()
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    down, up = _down_up_types(len(lc.block_out_channels), list(lc.cross_attention_levels))
    unet = UNet2DConditionModel(
        sample_size=size // factor,
        in_channels=int(vae.config.latent_channels),
        out_channels=int(vae.config.latent_channels),
        block_out_channels=tuple(lc.block_out_channels),
        layers_per_block=lc.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=int(text_encoder.config.hidden_size),
        attention_head_dim=lc.attention_heads,  # diffusers' legacy name: the number of heads
        norm_num_groups=lc.norm_num_groups,
        dropout=lc.dropout,
    )
    table = PromptTable(prompts, tokenizer, text_encoder)
    net = LatentDenoiserNet(unet, scheduler.alphas_cumprod, lc.prediction_type, table)
    sigmas = ddpm_sigmas(scheduler.alphas_cumprod).float()
    data = TensorDataset(latents, dataset.labels.long())
    return LatentRecipe(net, data, table.null_id, sigmas, vae, text_encoder, tokenizer, scheduler, prompts)
