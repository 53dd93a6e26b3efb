"""The networks ``fdistill bench gpu`` measures: teacher folders built offline from configs (random weights).

- Fashion-MNIST: ``checkpoints/fmnist_teacher`` when present, else a random EDMUNet of its shape
  (:func:`fdistill.bench.image._tiny_teacher`); ``tiny``: a few channels (still 32x32, the synthetic data's side).
- SD-1.5-sized latent teacher: a ``StableDiffusionPipeline`` folder whose ``UNet2DConditionModel`` has SD 1.5's public
  config (block_out_channels 320/640/1280/1280, cross_attention_dim 768, attention_head_dim 8, layers_per_block 2) at
  64x64 latents, with a tiny random VAE and a one-layer random CLIP text encoder (word-level tokenizer over the
  prompts) and SD's DDPM scheduler: the cost of distilling SD 1.5 (docs/math.md §1.2, §5) without a download.
  ``tiny``: the same four-level UNet with a few channels at 8x8 latents.
- The demo's one-step student: ``checkpoints/fmnist_student`` (with its teacher) when present and not ``tiny``, else
  a random student exported from the teacher's network (:func:`fdistill.export.pipeline.export_student`).

Both teachers train against ``data.name=synthetic`` (fdistill.data: file-free, 10 classes ``class_0..class_9``, which
the latent teacher's prompt table holds): the speed of a step does not depend on what the real images show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fdistill.bench.image import _tiny_teacher
from fdistill.data import synthetic_dataset
from fdistill.export.pipeline import export_student
from fdistill.nets.unet import EDMUNet

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
FMNIST_TEACHER = ROOT / "checkpoints" / "fmnist_teacher"
FMNIST_STUDENT = ROOT / "checkpoints" / "fmnist_student"
SD15_UNET = dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 layers_per_block=2, sample_size=64)  # fmt: skip
TINY_UNET = dict(block_out_channels=(8, 16, 16, 16), cross_attention_dim=16, attention_head_dim=2,
                 layers_per_block=1, sample_size=8, norm_num_groups=4)  # fmt: skip
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class TeacherSpec:
    """One benchmarked teacher: its preset, the overrides that point it at the built folder, and what it is."""

    name: str
    preset: Path
    overrides: list[str] = field(default_factory=list)
    shape: str = ""


def fmnist_teacher(root: Path, tiny: bool) -> TeacherSpec:
    """The Fashion-MNIST teacher: the shipped checkpoint, a random one of its shape, or (``tiny``) a few channels."""
    if tiny:
        path = root / "fmnist_tiny"
        torch.manual_seed(0)
        EDMUNet(sample_size=32, block_out_channels=(8, 16), attention_levels=(), norm_num_groups=4, num_classes=10,
                attention_head_dim=8).save_pretrained(path)  # fmt: skip
        shape = "tiny random EDMUNet 1x32x32 (8/16 channels)"
    elif (FMNIST_TEACHER / "config.json").is_file():
        path, shape = FMNIST_TEACHER, "checkpoints/fmnist_teacher 1x32x32"
    else:
        path = root / "fmnist_random"
        _tiny_teacher(path)
        shape = "random EDMUNet 1x32x32 (fmnist_teacher's shape)"
    over = [f"teacher.path={path}", "data.name=synthetic"]
    return TeacherSpec("fmnist", CONFIGS / "fmnist_fdistill_js.yaml", over, shape)


def sd15_teacher(root: Path, tiny: bool) -> TeacherSpec:
    """A random SD-1.5-sized (or ``tiny``) latent teacher folder and its prompt file."""
    path = save_random_latent_teacher(root / ("sd15_tiny" if tiny else "sd15_random"), tiny)
    unet = TINY_UNET if tiny else SD15_UNET
    shape = f"random UNet2DConditionModel {'/'.join(map(str, unet['block_out_channels']))}, 4x{unet['sample_size']}^2"
    over = [f"teacher.path={path}", f"teacher.prompts_file={path / 'prompts.txt'}", "data.name=synthetic"]
    return TeacherSpec("sd15-latent", CONFIGS / "sd15_fdistill_js.yaml", over, shape)


def _word_tokenizer(folder: Path, words: list[str], max_length: int):
    """A word-level ``BertTokenizer`` over ``words`` (lower-cased; others are [UNK]), written to ``folder``."""
    from transformers import BertTokenizer  # heavy optional import: transformers' model/tokenizer classes

    folder.mkdir(parents=True, exist_ok=True)
    vocab = list(dict.fromkeys([*_SPECIAL, *"abcdefghijklmnopqrstuvwxyz0123456789_", *words]))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"), model_max_length=max_length)


def save_random_latent_teacher(path: Path, tiny: bool, seed: int = 0) -> Path:
    """Write an SD-style folder (``model_index.json`` + unet/ vae/ text_encoder/ tokenizer/ scheduler/ and
    ``prompts.txt``) with random weights that :func:`fdistill.teachers.latent.load_latent_teacher` loads."""
    # heavy optional imports: diffusers pipelines and transformers model classes
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = TINY_UNET if tiny else SD15_UNET
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **cfg)
    latent = cfg["sample_size"]
    levels = dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        layers_per_block=1, norm_num_groups=4, sample_size=2 * latent, **levels)  # fmt: skip
    prompts = list(synthetic_dataset(n=10).class_names) + ["a photo of a cat", "a red car on a street"]
    words = sorted({w for p in prompts for w in p.replace("_", " ").split()})
    max_length = 8 if tiny else 77
    tokenizer = _word_tokenizer(path / "_vocab", words, max_length)
    hidden = cfg["cross_attention_dim"]
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                                 num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=max_length,
                                 pad_token_id=0, bos_token_id=2, eos_token_id=3)  # fmt: skip
    text_encoder = CLIPTextModel(text_config)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type="epsilon", clip_sample=False, steps_offset=1)  # fmt: skip
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)  # fmt: skip
    pipe.save_pretrained(path, safe_serialization=True)
    for f in (path / "_vocab").iterdir():
        f.unlink()
    (path / "_vocab").rmdir()
    (path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    return path


def demo_student(root: Path, teacher: TeacherSpec, tiny: bool) -> tuple[Path, Path]:
    """``(student, teacher)`` folders for the demo: the shipped pair, else a random student of the teacher's net."""
    teacher_path = Path(teacher.overrides[0].split("=", 1)[1])
    if not tiny and teacher_path == FMNIST_TEACHER and (FMNIST_STUDENT / "model_index.json").is_file():
        return FMNIST_STUDENT, FMNIST_TEACHER
    net = EDMUNet.from_pretrained(teacher_path)
    names = list(synthetic_dataset(n=10).class_names)
    card = {"method": "random (bench)", "NFE": 1}
    return export_student(net, 2.5, root / "demo_student", class_names=names, card=card), teacher_path
