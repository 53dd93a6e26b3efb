"""EDM-preconditioned UNet: a diffusers ``UNet2DModel`` F seen as the denoiser of Karras et al. (2022).

``D(x, sigma, label) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma), label)`` with the
coefficients of EDM Table 1 (:func:`fdistill.core.noise.edm_preconditioning`) and ``c_noise = ln(sigma) / 4`` fed
to F as its (continuous) timestep, exactly like EDM's ``EDMPrecond`` around DDPM++. Class conditioning
uses F's ``num_class_embeds`` table with one extra row: label ``num_classes`` is the null label used for
classifier-free-guidance dropout and for the unconditional branch (``class_labels=None``).

``features`` runs F's encoder only (``conv_in``, time/class embedding, ``down_blocks``, ``mid_block``) and
returns the output of each down block plus the mid block: the feature pyramid that DMD2 / f-distill put
a discriminator head on. The model is a diffusers ``ModelMixin``/``ConfigMixin``: ``save_pretrained``
writes ``config.json`` + safetensors, and ``EDMUNet.from_pretrained(path)`` restores it;
``enable_gradient_checkpointing()`` makes F's diffusers blocks recompute their activations in backward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import Tensor

from fdistill.core.noise import SIGMA_DATA, append_dims, edm_preconditioning

__all__ = ["EDMUNet", "unet2d_encoder_features"]


def unet2d_encoder_features(
    unet: UNet2DModel, sample: Tensor, timestep: Tensor, class_labels: Tensor | None = None
) -> list[Tensor]:
    """Encoder feature maps of a diffusers ``UNet2DModel`` (the first half of its ``forward``, same modules):
    the output of every down block, then the mid block's output. ``timestep`` is a (B,) tensor."""
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    t_emb = unet.time_proj(timestep.expand(sample.shape[0])).to(dtype=unet.dtype)
    emb = unet.time_embedding(t_emb)
    if unet.class_embedding is not None:
        if class_labels is None:
            raise ValueError("this UNet2DModel is class-conditional: pass class_labels")
        if unet.config.class_embed_type == "timestep":
            class_labels = unet.time_proj(class_labels)
        emb = emb + unet.class_embedding(class_labels).to(dtype=unet.dtype)
    skip_sample = sample
    h = unet.conv_in(sample)
    feats = []
    for block in unet.down_blocks:
        if hasattr(block, "skip_conv"):
            h, _, skip_sample = block(hidden_states=h, temb=emb, skip_sample=skip_sample)
        else:
            h, _ = block(hidden_states=h, temb=emb)
        feats.append(h)
    if unet.mid_block is not None:
        feats.append(unet.mid_block(h, emb))
    return feats


class EDMUNet(ModelMixin, ConfigMixin):
    """EDM denoiser around a diffusers ``UNet2DModel``.

    The defaults are the shipped Fashion-MNIST teacher (``checkpoints/fmnist_teacher``): 32x32x1, channels
    (32, 64, 64), one ResNet block per level, attention at 8x8 and in the mid block, 10 classes, 1.1M
    parameters; about 2.1 s of one CPU core per training step at batch 64.

    Args:
        sample_size: image side (square images).
        in_channels: image channels (also the output channels).
        block_out_channels: channels per resolution level; each level but the last halves the resolution.
        layers_per_block: ResNet blocks per level in the encoder (the decoder has one more, as in diffusers).
        attention_levels: indices of the levels with self-attention (e.g. ``(2,)`` = 8x8 for a 32x32 input
            with three levels); the mid block has attention when ``mid_attention``.
        num_classes: 0 = unconditional; otherwise labels ``0..num_classes-1`` plus the null label
            ``num_classes`` (CFG dropout / unconditional branch).
        dropout: ResNet dropout.
        sigma_data: EDM data standard deviation (0.5 for images in [-1, 1]).
        attention_head_dim: channels per attention head.
        norm_num_groups: GroupNorm groups (must divide every entry of ``block_out_channels``).
    """

    _supports_gradient_checkpointing = True  # ModelMixin's switch reaches the blocks of the inner UNet2DModel

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 1,
        block_out_channels: Sequence[int] = (32, 64, 64),
        layers_per_block: int = 1,
        attention_levels: Sequence[int] = (2,),
        mid_attention: bool = True,
        num_classes: int = 10,
        dropout: float = 0.0,
        sigma_data: float = SIGMA_DATA,
        attention_head_dim: int = 32,
        norm_num_groups: int = 32,
    ) -> None:
        super().__init__()
        levels = len(block_out_channels)
        bad = [a for a in attention_levels if not 0 <= a < levels]
        if bad:
            raise ValueError(f"attention_levels {list(bad)} out of range for {levels} levels (0..{levels - 1})")
        if any(c % norm_num_groups for c in block_out_channels):
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide every block_out_channels entry")
        down = tuple("AttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in range(levels))
        up = tuple("AttnUpBlock2D" if i in attention_levels else "UpBlock2D" for i in reversed(range(levels)))
        self.unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=in_channels,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            dropout=dropout,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
            add_attention=mid_attention,
            num_class_embeds=num_classes + 1 if num_classes else None,
        )

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.config.in_channels, self.config.sample_size, self.config.sample_size)

    @property
    def num_classes(self) -> int:
        return int(self.config.num_classes)

    @property
    def sigma_data(self) -> float:
        return float(self.config.sigma_data)

    def _inputs(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None):
        """Per-sample float32 sigma (B,), EDM coefficients, and labels with ``None`` -> null label."""
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        coefs = edm_preconditioning(sigma, self.sigma_data)
        if self.num_classes:
            if class_labels is None:
                class_labels = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            class_labels = class_labels.to(device=x.device, dtype=torch.long)
        elif class_labels is not None:
            raise ValueError("this EDMUNet is unconditional (num_classes=0) but class_labels were given")
        return sigma, coefs, class_labels

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        """x0-prediction ``D(x, sigma, label)``; ``sigma`` is a scalar or a (B,) tensor. Preconditioning runs in
        float32 and only F in the model's dtype (as EDM does), so a bf16/fp16 model returns ``x.dtype``."""
        _, (c_skip, c_out, c_in, c_noise), class_labels = self._inputs(x, sigma, class_labels)
        xf = x.float()
        f = self.unet((append_dims(c_in, x.ndim) * xf).to(self.dtype), c_noise, class_labels=class_labels).sample
        return (append_dims(c_skip, x.ndim) * xf + append_dims(c_out, x.ndim) * f.float()).to(x.dtype)

    def features(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> list[Tensor]:
        """Encoder feature maps at the same inputs F sees in :meth:`forward` (one per down block, then mid)."""
        _, (_, _, c_in, c_noise), class_labels = self._inputs(x, sigma, class_labels)
        return unet2d_encoder_features(
            self.unet, (append_dims(c_in, x.ndim) * x.float()).to(self.dtype), c_noise, class_labels
        )
