"""The teacher networks of :mod:`fdistill.apps.plan` on the meta device, and the published SD 1.5 / SDXL shapes.

SD 1.5 (``stable-diffusion-v1-5``: UNet 859.5M parameters, CLIP ViT-L/14 text encoder 123.1M, VAE 83.7M) and SDXL
base 1.0 (UNet 2,567.5M, CLIP ViT-L 123.1M + OpenCLIP ViT-bigG 694.7M, VAE 83.7M) are their public
``config.json`` values (the diffusers/transformers defaults are left out), so a plan for a hub id needs no
download; a local teacher folder is planned from its own configs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from fdistill.nets.unet import EDMUNet
from fdistill.teachers import build_teacher
from fdistill.teachers.latent import LORA_TARGETS

SD15_UNET = {
    "sample_size": 64,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
}
SDXL_UNET = {
    "sample_size": 128,
    "cross_attention_dim": 2048,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10],
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
SD_VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
}
CLIP_L_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
               "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768}  # fmt: skip
CLIP_BIGG_TEXT = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
                  "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 1280}  # fmt: skip
KNOWN = {  # name or hub id -> (unet config, text encoder configs, latent image size)
    "sd15": (SD15_UNET, [("text_encoder", CLIP_L_TEXT, False)], 512),
    "sdxl": (SDXL_UNET, [("text_encoder", CLIP_L_TEXT, False), ("text_encoder_2", CLIP_BIGG_TEXT, True)], 1024),
}
HUB_IDS = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
    "runwayml/stable-diffusion-v1-5": "sd15",
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
}


@dataclass
class Denoiser:
    """A meta-device teacher network and how to call it on a batch."""

    make: Callable[[], nn.Module]  # a fresh meta copy
    call: Callable[[nn.Module, int], Tensor]  # (net, batch) -> output, its input requiring grad
    features: Callable[[nn.Module, int], list[Tensor]]  # encoder features for the discriminator head
    frozen: list[tuple[str, nn.Module]]  # VAE, text encoders: the frozen extras of a latent teacher
    resolution: str


class _StopForward(Exception):
    pass


def _meta(build):
    with torch.device("meta"):
        return build()


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _unet_features(unet: nn.Module, run) -> list[Tensor]:
    """The down-block and mid-block outputs of ``run()`` (the discriminator's features), stopping after the mid
    block so only the encoder's activations are saved."""
    feats: list[Tensor] = []

    def keep(_m, _a, out):
        feats.append(out[0] if isinstance(out, tuple) else out)

    def stop(_m, _a, out):
        keep(_m, _a, out)
        raise _StopForward

    hooks = [b.register_forward_hook(keep) for b in unet.down_blocks]
    hooks.append(unet.mid_block.register_forward_hook(stop))
    try:
        run()
    except _StopForward:
        pass
    finally:
        for h in hooks:
            h.remove()
    return feats


def latent_denoiser(cfg, unet: str | None):
    """A Stable-Diffusion-style teacher: UNet2DConditionModel (+ frozen VAE and text encoders) on meta."""
    key = unet or HUB_IDS.get(cfg.teacher.path, cfg.teacher.path)
    folder = Path(str(key)).expanduser()
    if key in KNOWN:
        unet_cfg, texts, image_size = KNOWN[key]
        vae_cfg = SD_VAE
        text_models = [(n, (CLIPTextModelWithProjection if proj else CLIPTextModel), CLIPTextConfig(**c))
                       for n, c, proj in texts]  # fmt: skip
    elif (folder / "unet" / "config.json").is_file() or (folder / "config.json").is_file():
        unet_file = folder / "unet" / "config.json" if (folder / "unet").is_dir() else folder / "config.json"
        unet_cfg = _read(unet_file)
        vae_cfg = _read(folder / "vae" / "config.json") if (folder / "vae" / "config.json").is_file() else None
        text_models = []
        for name in ("text_encoder", "text_encoder_2"):
            f = folder / name / "config.json"
            if f.is_file():
                text_models.append((name, AutoModel, AutoConfig.from_pretrained(folder / name)))
        image_size = int(unet_cfg.get("sample_size", 64)) * 8
    else:
        raise FileNotFoundError(
            f"fdistill plan: teacher {key!r} is neither a folder with unet/config.json nor a known architecture "
            f"({', '.join(KNOWN)}; hub ids {', '.join(HUB_IDS)}): pass --unet sd15|sdxl|FOLDER"
        )
    image_size = int(getattr(cfg.data, "image_size", 0) or image_size)
    side = image_size // 8
    make = lambda: _meta(lambda: UNet2DConditionModel.from_config(unet_cfg))  # noqa: E731
    probe = make()
    cross = probe.config.cross_attention_dim
    sdxl = probe.config.addition_embed_type == "text_time"
    in_ch = probe.config.in_channels

    def inputs(b: int) -> tuple[Tensor, dict]:
        x = torch.zeros(b, in_ch, side, side, device="meta", requires_grad=True)
        kw = {"encoder_hidden_states": torch.zeros(b, 77, cross, device="meta")}
        if sdxl:
            kw["added_cond_kwargs"] = {"text_embeds": torch.zeros(b, 1280, device="meta"),
                                       "time_ids": torch.zeros(b, 6, device="meta")}  # fmt: skip
        return x, kw

    def call(net: nn.Module, b: int) -> Tensor:
        x, kw = inputs(b)
        return net(x, torch.full((b,), 500.0, device="meta"), **kw).sample

    def features(net: nn.Module, b: int) -> list[Tensor]:
        x, kw = inputs(b)
        return _unet_features(net, lambda: net(x, torch.full((b,), 500.0, device="meta"), **kw))

    frozen: list[tuple[str, nn.Module]] = []
    if vae_cfg is not None:
        frozen.append(("VAE", _meta(lambda: AutoencoderKL.from_config(vae_cfg))))
    for name, cls, tcfg in text_models:
        frozen.append((name, _meta(lambda cls=cls, tcfg=tcfg: cls._from_config(tcfg) if hasattr(cls, "_from_config")
                                   else cls.from_config(tcfg))))  # fmt: skip
    return Denoiser(make, call, features, frozen, f"{image_size}px images / {side}x{side} latents")


def pixel_denoiser(cfg):
    """A pixel teacher folder (EDMUNet or diffusers UNet2DModel ``config.json``) on meta."""
    folder = Path(cfg.teacher.path).expanduser()
    file = folder / (cfg.teacher.subfolder or "") / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"fdistill plan: {file} not found (teacher.path must be a local teacher folder)")
    net_cfg = _read(file)
    edm = net_cfg.get("_class_name", "EDMUNet") == "EDMUNet"
    cls = EDMUNet if edm else UNet2DModel
    make = lambda: _meta(lambda: cls.from_config(net_cfg))  # noqa: E731
    probe = make()
    c, side = probe.config.in_channels, int(probe.config.sample_size)
    classes = int(net_cfg.get("num_classes", 0) or net_cfg.get("num_class_embeds", 0) or 0)

    def batch(b: int) -> tuple[Tensor, Tensor, Tensor | None]:
        x = torch.zeros(b, c, side, side, device="meta", requires_grad=True)
        labels = torch.zeros(b, dtype=torch.long, device="meta") if classes else None
        return x, torch.ones(b, device="meta"), labels

    def call(net: nn.Module, b: int) -> Tensor:
        x, s, y = batch(b)
        return net(x, s, y) if edm else net(x, s * 500, class_labels=y).sample

    def features(net: nn.Module, b: int) -> list[Tensor]:
        x, s, y = batch(b)
        if edm:
            return net.features(x, s, y)
        return _unet_features(net, lambda: net(x, s * 500, class_labels=y))

    return Denoiser(make, call, features, [], f"{side}x{side}")


def mixture_denoiser(cfg):
    """The analytic mixture's MLP denoiser (built by the teacher itself; tiny)."""
    teacher = build_teacher(cfg)
    dim = teacher.sample_shape[0]

    def call(net: nn.Module, b: int) -> Tensor:
        return net(torch.zeros(b, dim, device="meta", requires_grad=True), torch.ones(b, device="meta"))

    def features(net: nn.Module, b: int) -> list[Tensor]:
        return net.features(torch.zeros(b, dim, device="meta", requires_grad=True), torch.ones(b, device="meta"))

    return Denoiser(lambda: _meta(teacher.make_network), call, features, [], f"{dim}-D points")


def add_lora(net: nn.Module, rank: int) -> None:
    """LoRA adapters as the trainer adds them (:data:`fdistill.teachers.latent.LORA_TARGETS`, base frozen)."""
    from peft import LoraConfig  # the optional [lora] extra

    net.requires_grad_(False)
    net.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=list(LORA_TARGETS)))
    for name, p in net.named_parameters():
        p.requires_grad_("lora_" in name)
