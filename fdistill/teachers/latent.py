"""Stable-Diffusion-style latent teacher: VAE + text encoder + ``UNet2DConditionModel`` seen as an EDM denoiser.

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models") trains
a DDPM in the latent space of an autoencoder, ``z = scaling_factor * E(x)``. Following k-diffusion's
``external.py`` (``DiscreteEpsDDPMDenoiser``), the adapter shows the DDPM UNet as one EDM denoiser
``D(x_t, sigma, cond) -> x0_hat`` in latent space (docs/math.md §1.2):

- VP -> VE: ``x_vp = alpha x0 + s eps`` with ``alpha = sqrt(abar_t)``, ``s = sqrt(1 - abar_t)`` is ``x_t = x_vp / alpha
  = x0 + sigma eps`` with ``sigma = s / alpha = sqrt((1 - abar_t) / abar_t)``. The UNet receives
  ``x_vp = x_t / sqrt(1 + sigma^2)`` and the (continuous) timestep whose sigma matches, interpolated linearly in
  ``log sigma`` over the scheduler's ``alphas_cumprod`` (outside ``[sigma(0), sigma(T-1)]`` it is clamped).
- Outputs to x0: epsilon ``x0 = x_t - sigma eps_hat``; v (``v = alpha eps - s x0``) ``x0 = alpha x_vp - s v_hat``;
  sample ``x0 = out``.
- CFG: ``D_w = D_u + w (D_c - D_u)`` (``w = 1`` is off), both branches in one batched UNet call.

**Conditioning is a LongTensor of prompt ids**, like class labels: the teacher owns a prompt table (one prompt a
line of ``teacher.prompts_file``), encodes prompts with its text encoder exactly as ``StableDiffusionPipeline``'s
``encode_prompt`` does (padding to ``tokenizer.model_max_length``, the text encoder's last hidden state) and
caches the embeddings on first use. ``cond=None`` (or the id ``len(prompts)``) is the empty prompt, i.e. the
unconditional branch. ``num_classes = len(prompts)`` so the trainer's uniform ``sample_labels`` draws prompt ids.

The generator and fake score (:meth:`LatentTeacher.make_network`) are trainable float32 copies of the UNet in
the same wrapper, sharing the frozen prompt table (not a submodule: it is neither trained nor checkpointed),
optionally with LoRA adapters (``teacher.lora_rank > 0``, base weights frozen) and gradient checkpointing.

``sigma_data = 1.0``: the VAE's ``scaling_factor`` (0.18215 for SD1.x/2.x) was chosen so that latents have unit
variance (Rombach et al. 2022, Sec. 4.3.2 and Appendix G), and SD students are fed ``x_vp = z`` (unit variance,
``train.generator_input=vp``). It only enters the EDM DSM weight ``1/sigma^2 + 1/sigma_data^2`` of the fake score.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fdistill.core.guidance import combine as guidance_combine
from fdistill.core.noise import append_dims
from fdistill.core.schedules import ddpm_sigmas, sigma_to_timestep, timestep_to_sigma
from fdistill.nets.text_encoders import load_text_encoder
from fdistill.teachers.autoencoder import vae_decode, vae_encode, vae_factors
from fdistill.teachers.base import Teacher
from fdistill.teachers.prompts import PromptTable, read_prompts

__all__ = [
    "LORA_TARGETS",
    "LatentDenoiserNet",
    "LatentTeacher",
    "PromptTable",
    "ddpm_sigmas",
    "load_latent_teacher",
    "read_prompts",
    "sigma_to_timestep",
    "timestep_to_sigma",
    "transformers_class",
    "vae_decode",
    "vae_encode",
    "vae_factors",
]

#: UNet modules that get LoRA adapters (attention, feed-forward, ResNet convs and time projections: the list
#: DMD2's SDXL LoRA students use).
LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


# ---- the denoiser wrapper --------------------------------------------------------------------------


class LatentDenoiserNet(nn.Module):
    """``D(x_t, sigma, prompt_ids) -> x0`` around a ``UNet2DConditionModel`` (see the module docstring).

    Conversions run in float32, the UNet in its own dtype; the output has ``x_t``'s dtype. ``features`` runs the
    UNet's own encoder submodules (time embedding, ``conv_in``, down blocks, mid block) at the inputs ``forward``
    gives it and returns each down block's output and the mid block's, in float32.
    """

    def __init__(
        self,
        unet: nn.Module,
        alphas_cumprod: Tensor,
        prediction_type: str,
        prompts: PromptTable,
        sigma_data: float = 1.0,
    ) -> None:
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type={prediction_type!r}; accepted: epsilon, v_prediction, sample")
        if getattr(unet.config, "addition_embed_type", None) is not None:
            raise ValueError(
                f"UNets with addition_embed_type={unet.config.addition_embed_type!r} (SDXL-style "
                "micro-conditioning) are not supported by the latent teacher yet"
            )
        self.unet = unet
        self.prediction_type = prediction_type
        self.prompt_table = prompts  # shared, not a submodule: no parameters, not checkpointed
        self.sigma_data = float(sigma_data)
        self.register_buffer("log_sigmas", ddpm_sigmas(alphas_cumprod).log().float(), persistent=False)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c, s = self.unet.config.in_channels, self.unet.config.sample_size
        return (c, s, s) if isinstance(s, int) else (c, *s)

    def timestep(self, sigma: Tensor) -> Tensor:
        return sigma_to_timestep(sigma, self.log_sigmas).float()

    def _inputs(self, x_t: Tensor, sigma: Tensor | float, cond: Tensor | None):
        b = x_t.shape[0]
        sigma = torch.as_tensor(sigma, device=x_t.device, dtype=torch.float32).reshape(-1).expand(b)
        alpha = (1 + sigma**2).rsqrt()
        x_vp = x_t.float() * append_dims(alpha, x_t.ndim)
        emb = self.prompt_table.embeddings(cond, b, x_t.device).to(self.unet.dtype)
        return sigma, alpha, x_vp, self.timestep(sigma), emb

    def to_x0(self, out: Tensor, x_t: Tensor, x_vp: Tensor, sigma: Tensor, alpha: Tensor) -> Tensor:
        """Convert the UNet's prediction to x0 (docs/math.md §1.2)."""
        if self.prediction_type == "epsilon":
            return x_t - append_dims(sigma, x_t.ndim) * out
        if self.prediction_type == "v_prediction":
            a = append_dims(alpha, x_t.ndim)
            return a * x_vp - append_dims(sigma, x_t.ndim) * a * out
        return out

    def forward(self, x_t: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        sigma, alpha, x_vp, t, emb = self._inputs(x_t, sigma, cond)
        out = self.unet(x_vp.to(self.unet.dtype), t, encoder_hidden_states=emb).sample.float()
        return self.to_x0(out, x_t.float(), x_vp, sigma, alpha).to(x_t.dtype)

    def features(self, x_t: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> list[Tensor]:
        sigma, _, x_vp, t, ehs = self._inputs(x_t, sigma, cond)
        unet = self.unet
        sample = x_vp.to(unet.dtype)
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=t), None)
        class_emb = unet.get_class_embed(sample=sample, class_labels=None)
        if class_emb is not None:
            emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        ehs = unet.process_encoder_hidden_states(encoder_hidden_states=ehs, added_cond_kwargs={})
        h = unet.conv_in(sample)
        feats = []
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=ehs)
            else:
                h, _ = block(hidden_states=h, temb=emb)
            feats.append(h)
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                feats.append(unet.mid_block(h, emb, encoder_hidden_states=ehs))
            else:
                feats.append(unet.mid_block(h, emb))
        return [f.float() for f in feats]


# ---- the teacher -----------------------------------------------------------------------------------


class LatentTeacher(Teacher):
    """Frozen SD-style teacher in latent space (see the module docstring).

    Args:
        unet, vae, text_encoder, tokenizer: the diffusers / transformers components (the frozen ones in the
            teacher's dtype).
        scheduler_config: the scheduler's config dict (any diffusers DDPM-family scheduler: the training
            ``betas`` and ``prediction_type`` are what matter).
        prompts: the prompt table; ``cond`` holds indices into it.
        prompt_cache: cache prompt embeddings (see :class:`PromptTable`).
        lora_rank, lora_alpha: ``lora_rank > 0`` gives :meth:`make_network` copies peft LoRA adapters on
            :data:`LORA_TARGETS` (scale ``lora_alpha / lora_rank``; ``None`` = 1) with base weights frozen.
        gradient_checkpointing: enable it in the trainable copies.
        source: ``(path, subfolder, variant)`` the UNet was loaded from; trainable copies of a low-precision
            teacher are re-read from it in float32 instead of being up-cast.
    """

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        tokenizer,
        scheduler_config: dict,
        prompts: Sequence[str] = (),
        *,
        prompt_cache: bool = True,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        gradient_checkpointing: bool = False,
        source: tuple[str, str | None, str | None] | None = None,
    ) -> None:
        super().__init__()
        from diffusers import DDPMScheduler

        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.scheduler_config = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
        sched = DDPMScheduler.from_config(self.scheduler_config)
        self.prediction_type = str(sched.config.prediction_type)
        self._alphas_cumprod = sched.alphas_cumprod.clone()
        self.prompt_table = PromptTable(prompts, tokenizer, text_encoder, prompt_cache)
        self.net = LatentDenoiserNet(unet, sched.alphas_cumprod, self.prediction_type, self.prompt_table)
        self.sample_shape = self.net.sample_shape
        self.num_classes = len(self.prompt_table)
        self.sigma_data = 1.0
        sig = ddpm_sigmas(sched.alphas_cumprod)
        self.sigma_min, self.sigma_max = float(sig[0]), float(sig[-1])
        self.num_train_timesteps = int(sig.shape[0])
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_size = self.sample_shape[-1] * self.vae_scale_factor
        self.lora_rank, self.lora_alpha = int(lora_rank), lora_alpha
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.source = source

    # -- prompts
    @property
    def prompts(self) -> list[str]:
        return self.prompt_table.prompts

    @property
    def null_id(self) -> int:
        return self.prompt_table.null_id

    def prompt_ids(self, texts: Sequence[str]) -> Tensor:
        return self.prompt_table.ids_for(texts)

    # -- schedule
    def timestep(self, sigma: Tensor | float) -> Tensor:
        """Continuous DDPM timestep of ``sigma``."""
        return sigma_to_timestep(torch.as_tensor(sigma, dtype=torch.float64), self.net.log_sigmas.cpu())

    def sigma_at(self, timestep: float | Tensor) -> float:
        """``sqrt((1 - abar_t) / abar_t)``: e.g. ``sigma_at(399)`` for DMD2/DI* students (1.1606 on SD1.5)."""
        return float(timestep_to_sigma(timestep, self.net.log_sigmas.cpu()))

    @property
    def timestep_sigmas(self) -> Tensor:
        return self.net.log_sigmas.double().exp()

    # -- denoiser interface
    def denoise_cond(self, x_t: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
        return self.net(x_t, sigma, cond)

    def denoise(self, x_t: Tensor, sigma: Tensor, cond: Tensor | None = None, guidance: float = 1.0) -> Tensor:
        """``D_u + w (D_c - D_u)`` with both branches in one batched UNet call (``w = 1`` = plain ``D_c``)."""
        if guidance == 1.0 or cond is None:
            return self.denoise_cond(x_t, sigma, cond)
        b = x_t.shape[0]
        sigma = torch.as_tensor(sigma, device=x_t.device, dtype=torch.float32).reshape(-1).expand(b)
        null = torch.full_like(cond, self.null_id)
        d_c, d_u = self.net(torch.cat([x_t, x_t]), torch.cat([sigma, sigma]), torch.cat([cond, null])).chunk(2)
        return guidance_combine(d_c, d_u, guidance)

    def features(self, x_t: Tensor, sigma: Tensor, cond: Tensor | None = None) -> list[Tensor]:
        return self.net.features(x_t, sigma, cond)

    # -- trainable copies
    def _trainable_unet(self) -> nn.Module:
        from diffusers import UNet2DConditionModel

        device = self.unet.device
        if self.source is not None and self.unet.dtype != torch.float32:
            path, sub, variant = self.source
            unet = UNet2DConditionModel.from_pretrained(
                path, subfolder=_join(sub, "unet"), torch_dtype=torch.float32, variant=variant
            )
        else:
            unet = copy.deepcopy(self.unet).float()
        return unet.to(device)

    def make_network(self) -> LatentDenoiserNet:
        """A trainable float32 copy of the UNet in the denoiser wrapper (LoRA / gradient checkpointing per config)."""
        unet = self._trainable_unet().train()
        unet.requires_grad_(True)
        if self.lora_rank > 0:
            try:
                from peft import LoraConfig
            except ImportError as e:
                raise ImportError("teacher.lora_rank > 0 needs peft: pip install 'fdistill[lora]'") from e
            unet.requires_grad_(False)
            unet.add_adapter(
                LoraConfig(
                    r=self.lora_rank,
                    lora_alpha=self.lora_alpha or self.lora_rank,
                    init_lora_weights=True,
                    target_modules=list(LORA_TARGETS),
                )
            )
            for name, p in unet.named_parameters():
                p.requires_grad_("lora_" in name)
        if self.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        return LatentDenoiserNet(unet, self._alphas_cumprod, self.prediction_type, self.prompt_table, self.sigma_data)

    # -- autoencoder
    def decode(self, latents: Tensor) -> Tensor:
        """Images in about ``[-1, 1]`` from latents through the VAE decoder (differentiable, not clamped)."""
        return vae_decode(self.vae, latents)

    @torch.no_grad()
    def encode(
        self, images: Tensor, sample: bool = False, generator: torch.Generator | None = None, batch_size: int = 64
    ) -> Tensor:
        """Latents ``scaling_factor * (E(x) - shift)`` of images in ``[-1, 1]`` (posterior mean, or a sample)."""
        return vae_encode(self.vae, images, sample, generator, batch_size)

    def prepare_images(self, images: Tensor) -> Tensor:
        """Images to the VAE's input: 3 channels (grey repeated), ``image_size`` square (area/bilinear resize)."""
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        if images.shape[1] != self.vae.config.in_channels:
            raise ValueError(f"images have {images.shape[1]} channels, the VAE takes {self.vae.config.in_channels}")
        size = self.image_size
        if images.shape[-2:] != (size, size):
            h = images.shape[-1]
            mode = "area" if h > size and h % size == 0 else "bilinear"
            kw = {} if mode == "area" else {"antialias": True, "align_corners": False}
            images = F.interpolate(images.float(), size=(size, size), mode=mode, **kw)
        return images

    def encode_dataset(self, dataset, batch_size: int = 64) -> tuple[Tensor, Tensor]:
        """Real data for the discriminator: ``(latents, prompt ids)`` of an in-memory image set whose
        ``class_names[label]`` is each image's caption (a prompt of the table): the emoji set's captions, or
        class names used as prompts. Latents are the VAE posterior means, on the CPU."""
        names = list(dataset.class_names)
        try:
            ids_of_label = self.prompt_table.ids_for(names)
        except KeyError as e:
            raise KeyError(
                f"data set caption not in the teacher's prompts: {e.args[0]}; write the data set's "
                "captions to teacher.prompts_file (e.g. fdistill.data.emoji.write_prompts)"
            ) from None
        latents = self.encode(self.prepare_images(dataset.images), batch_size=batch_size)
        return latents.cpu(), ids_of_label[dataset.labels.long()]


def _join(sub: str | None, name: str) -> str:
    return f"{sub}/{name}" if sub else name


def transformers_class(root: str, sub: str | None, name: str, fallback: str):
    """The ``transformers`` class that ``ROOT/SUB/model_index.json`` names for component ``name`` (e.g.
    ``text_encoder`` -> ``CLIPTextModel``), else ``transformers.<fallback>`` (no index, no such entry, or a class
    this ``transformers`` lacks). ``transformers`` is imported here, on first use: it is an optional heavy import."""
    import transformers

    index = Path(root).expanduser() / (sub or "") / "model_index.json"
    cls_name = fallback
    if index.is_file():
        entry = json.loads(index.read_text()).get(name)
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == "transformers" and entry[1]:
            cls_name = entry[1]
    return getattr(transformers, cls_name, getattr(transformers, fallback))


def load_latent_teacher(teacher_cfg) -> LatentTeacher:
    """A :class:`LatentTeacher` from ``teacher.path`` (a local diffusers Stable-Diffusion folder or a hub id with
    ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``), ``teacher.subfolder`` (a prefix of
    those), ``teacher.dtype`` for the frozen components, ``teacher.prompts_file``, ``teacher.lora_rank``,
    ``teacher.lora_alpha``, ``teacher.gradient_checkpointing``, ``teacher.prompt_cache`` and ``teacher.variant``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    tc = teacher_cfg
    if not tc.path:
        raise FileNotFoundError(
            "teacher.kind=latent needs teacher.path: a diffusers Stable-Diffusion folder "
            "(unet/, vae/, text_encoder/, tokenizer/, scheduler/) or a hub id"
        )
    root, sub = str(tc.path), getattr(tc, "subfolder", None)
    variant = getattr(tc, "variant", None)
    local = Path(root).expanduser()
    if local.exists():
        base = local / (sub or "")
        missing = [s for s in SUBFOLDERS if not (base / s).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"teacher.path={root!r} lacks {', '.join(s + '/' for s in missing)}: a latent "
                f"teacher folder holds {', '.join(s + '/' for s in SUBFOLDERS)}"
            )
        root = str(local)
    elif root.startswith((".", "/", "~")) or root.count("/") != 1:
        raise FileNotFoundError(
            f"teacher.path={root!r} does not exist (a local diffusers folder or a hub id "
            "like 'stable-diffusion-v1-5/stable-diffusion-v1-5')"
        )
    dtype = getattr(torch, tc.dtype)
    prompts = read_prompts(tc.prompts_file) if getattr(tc, "prompts_file", None) else []
    try:
        unet = UNet2DConditionModel.from_pretrained(
            root, subfolder=_join(sub, "unet"), torch_dtype=dtype, variant=variant
        )
        vae = AutoencoderKL.from_pretrained(root, subfolder=_join(sub, "vae"), torch_dtype=dtype, variant=variant)
        enc_cls = transformers_class(root, sub, "text_encoder", "AutoModel")
        te_dir = Path(root) / _join(sub, "text_encoder")
        if te_dir.is_dir():  # local: also folders shipped without the packaged MiniLM weights (text_encoders.py)
            text_encoder = load_text_encoder(te_dir, enc_cls, variant=variant).to(dtype)
        else:
            text_encoder = enc_cls.from_pretrained(root, subfolder=_join(sub, "text_encoder"), variant=variant)
            text_encoder = text_encoder.to(dtype)
        tok_cls = transformers_class(root, sub, "tokenizer", "AutoTokenizer")
        tokenizer = tok_cls.from_pretrained(root, subfolder=_join(sub, "tokenizer"))
        sched_cfg = DDPMScheduler.load_config(root, subfolder=_join(sub, "scheduler"))
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(
            f"teacher.path={root!r}: cannot load the latent teacher ({first}); offline, give a local folder"
        ) from None
    for m in (unet, vae, text_encoder):
        m.eval().requires_grad_(False)
    return LatentTeacher(
        unet,
        vae,
        text_encoder,
        tokenizer,
        sched_cfg,
        prompts,
        prompt_cache=getattr(tc, "prompt_cache", True),
        lora_rank=getattr(tc, "lora_rank", 0),
        lora_alpha=getattr(tc, "lora_alpha", None),
        gradient_checkpointing=getattr(tc, "gradient_checkpointing", False),
        source=(root, sub, variant),
    )
