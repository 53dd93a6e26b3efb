"""Tiny randomly initialised model folders that the tests build offline (not part of the library).

- :func:`tiny_clip_tokenizer`: a character-level ``CLIPTokenizer``.
- :func:`save_tiny_latent_teacher`: an SD-style folder that :func:`fdistill.teachers.latent.load_latent_teacher` and
  ``DiffusionPipeline.from_pretrained`` load.
- :func:`save_tiny_clip_model`: a ``CLIPModel`` folder that :meth:`fdistill.rewards.CLIPReward.from_pretrained` loads.

Tests import them as ``from fixtures import ...`` (``tests/`` is on ``sys.path`` under pytest's rootdir conftest).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import torch

from fdistill.metrics.inception import INCEPTION_PROTOCOL
from fdistill.rewards import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

_TINY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789,.!?'-&():/"


def tiny_clip_tokenizer(folder: Path, max_length: int):
    """A character-level ``CLIPTokenizer`` (every char and char+``</w>``, no merges) built offline."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for c in _TINY_CHARS:
            vocab[c + suffix] = len(vocab)
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)


def save_tiny_latent_teacher(
    path: str | Path,
    seed: int = 0,
    latent_size: int = 8,
    prediction_type: str = "epsilon",
    max_length: int = 8,
    hidden: int = 16,
) -> Path:
    """Write a tiny randomly initialised SD-style folder (``model_index.json`` + the five subfolders) that
    :func:`load_latent_teacher` and ``DiffusionPipeline.from_pretrained`` both load: a 2-level
    ``UNet2DConditionModel`` on ``4 x latent_size^2`` latents, a 2-level ``AutoencoderKL`` (images
    ``2 * latent_size`` square), a 1-layer ``CLIPTextModel`` with a character tokenizer, a ``DDPMScheduler``
    (SD's scaled-linear betas). For tests and smoke runs only: the weights are random."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=hidden,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        sample_size=2 * latent_size,
    )
    tokenizer = tiny_clip_tokenizer(path / "_vocab", max_length)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=max_length,
            bos_token_id=eos - 1,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    )
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
        clip_sample=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    for f in (path / "_vocab").iterdir():
        f.unlink()
    (path / "_vocab").rmdir()
    return path


def save_tiny_clip_model(path: str | Path, image_size: int = 16, seed: int = 0) -> Path:
    """A tiny randomly initialised ``CLIPModel`` folder (model, character tokenizer, ``preprocessor_config.json``)
    that :meth:`CLIPReward.from_pretrained` loads: for tests and smoke runs of reward training only."""
    from transformers import CLIPConfig, CLIPModel

    path = Path(path)
    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer(path / "_vocab", 16)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    text = dict(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        eos_token_id=eos,
        bos_token_id=eos - 1,
        pad_token_id=eos,
    )
    vision = dict(
        image_size=image_size,
        patch_size=4,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(path)
    tok.save_pretrained(path)
    for f in (path / "_vocab").iterdir():
        f.unlink()
    (path / "_vocab").rmdir()
    pp = {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": image_size},
        "crop_size": {"height": image_size, "width": image_size},
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "do_resize": True,
        "do_center_crop": True,
        "resample": 3,
    }
    (path / "preprocessor_config.json").write_text(json.dumps(pp, indent=2))
    return path


class PixelFeatures(torch.nn.Module):
    """A cheap stand-in for the Inception network (4x4-pooled pixels, 16 features) to test evaluation plumbing."""

    protocol = INCEPTION_PROTOCOL
    weights_path = "pixels"
    num_features = 16

    def __init__(self, weights=None, channels_last: bool = False) -> None:
        super().__init__()

    def extract(self, images: torch.Tensor, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1)


def sigterm_on_call(monkeypatch, module, name: str, k: int) -> None:
    """SIGTERM this process during the ``k``-th call of ``module.name`` (the signal lands mid-step)."""
    original, calls = getattr(module, name), []

    def call_then_sigterm(*args, **kwargs):
        calls.append(1)
        if len(calls) == k:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, call_then_sigterm)


def export_perturbed_student(
    teacher, folder: str | Path, t_init: int = 399, card: dict | None = None, generator: torch.Generator | None = None
) -> Path:
    """The teacher's network with N(0, 0.05^2) noise on every weight (a generator that differs from the teacher,
    as after training), exported at ``t_init`` as a stock SD one-step student folder. The noise comes from
    ``generator`` (default: a new one seeded 3), so a caller can keep drawing from it afterwards."""
    from fdistill.export.stable_diffusion import export_sd_student
    from fdistill.nets.generator import OneStepGenerator

    net = teacher.make_network()
    g = generator if generator is not None else torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return export_sd_student(OneStepGenerator(net, teacher.sigma_at(t_init), "vp"), teacher, Path(folder), card=card)
