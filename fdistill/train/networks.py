"""The networks and real data of a distillation run (DESIGN.md "one distillation step", docs/math.md §2).

The generator (a one-step or K-step student, docs/math.md §2.10) and the fake score are copies of the teacher's
network (one code path for every teacher); methods with a density ratio or a GAN term get a discriminator head on
fake-score or teacher features; :class:`RealData` draws the real samples that head is trained on.
:func:`prepare_networks` gives each its AdamW and hands every (network, optimizer) pair to ``accelerate`` on its own
(FSDP2 shards one model per ``prepare`` call); under FSDP2 the fake score's ``features`` is registered as a forward
method, so a discriminator on fake-score features gathers the sharded parameters like a forward does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.distributed.fsdp import register_fsdp_forward_method

from fdistill.config import Config, MethodConfig, TrainConfig
from fdistill.data import load_dataset
from fdistill.methods.base import Method
from fdistill.nets.discriminator import DiscriminatorHead
from fdistill.nets.generator import OneStepGenerator, default_student_sigmas
from fdistill.teachers import Teacher
from fdistill.train.ema import full

log = logging.getLogger("fdistill")

__all__ = [
    "Networks",
    "RealData",
    "build_networks",
    "load_fake_weights",
    "load_generator_weights",
    "prepare_networks",
    "save_fake_weights",
    "student_sigmas",
    "warn_ignored_method_fields",
]


#: ``method.*`` keys the trainer reads for every method
TRAINER_METHOD_KEYS = ("name", "sigma", "sigma_params", "fake_sigma", "fake_sigma_params", "disc_sigma")


def warn_ignored_method_fields(cfg: MethodConfig, method: Method) -> list[str]:
    """Names of ``method.*`` fields set away from their defaults that the chosen method does not read."""
    default = MethodConfig()
    ignored = [
        f.name
        for f in fields(MethodConfig)
        if f.name not in (*method.uses, *TRAINER_METHOD_KEYS) and getattr(cfg, f.name) != getattr(default, f.name)
    ]
    if ignored:
        log.warning("method %s ignores: %s", cfg.name, ", ".join(f"method.{n}" for n in ignored))
    return ignored


class RealData:
    """Samples of the teacher's data distribution, drawn with an explicit generator (resumable)."""

    def __init__(self, cfg: Config, teacher: Teacher) -> None:
        self.teacher = teacher
        self.images: Tensor | None = None
        self.labels: Tensor | None = None
        if cfg.teacher.kind != "gmm":
            extra = {}
            if cfg.data.name in ("emoji", "captioned_folder"):  # in-memory image-caption sets: side and count
                extra = {k: v for k, v in (("size", cfg.data.image_size), ("limit", cfg.data.limit)) if v is not None}
            ds = load_dataset(cfg.data.name, root=cfg.data.root, split="train", **extra)
            self.images, self.labels = ds.images, ds.labels
            if hasattr(teacher, "encode_dataset"):  # latent teachers: real samples live in latent space
                self.images, self.labels = teacher.encode_dataset(ds)

    def sample(self, n: int, gen: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor | None]:
        if self.images is None:
            cond = self.teacher.sample_labels(n, gen, "cpu")
            x = self.teacher.sample_data(n, cond, gen, "cpu")
            return x.to(device), None if cond is None else cond.to(device)
        idx = torch.randint(0, self.images.shape[0], (n,), generator=gen)
        cond = self.labels[idx].to(device) if self.teacher.num_classes else None
        return self.images[idx].to(device), cond


@dataclass
class Networks:
    generator: nn.Module
    fake: nn.Module
    discriminator: DiscriminatorHead | None


def student_sigmas(cfg: Config, teacher: Teacher) -> list[float]:
    """The student's K levels: ``train.student_sigmas``, or the default schedule for ``train.student_steps`` at the
    teacher's data scale (:func:`fdistill.nets.generator.default_student_sigmas`); ``[sigma_init]`` for K = 1."""
    tc = cfg.train
    if tc.student_sigmas is not None:
        return [float(s) for s in tc.student_sigmas]
    return default_student_sigmas(tc.sigma_init, tc.student_steps, teacher.sigma_data, teacher.sigma_min)


def build_networks(cfg: Config, teacher: Teacher, method: Method) -> Networks:
    """Generator and fake score are copies of the teacher's network (same code path for every teacher; the analytic
    mixture's can be a plain MLP instead: :meth:`~fdistill.teachers.base.Teacher.make_generator_network`)."""
    generator = OneStepGenerator(teacher.make_generator_network(), cfg.train.sigma_init, cfg.train.generator_input,
                                 student_sigmas(cfg, teacher))  # fmt: skip
    if cfg.train.init_generator:
        load_generator_weights(generator, cfg.train.init_generator)
    fake = teacher.make_network()
    disc = None
    if method.needs_discriminator:
        source = fake if cfg.method.disc_features == "fake" else teacher
        device = next(iter(source.buffers()), next(source.parameters(), torch.zeros(0))).device
        probe_x = torch.zeros(2, *teacher.sample_shape, device=device)
        probe_c = teacher.sample_labels(2, device=device)
        with torch.no_grad():
            feats = source.features(probe_x, torch.ones(2), probe_c)
        disc = DiscriminatorHead.for_features(feats)
    if cfg.train.init_fake:
        load_fake_weights(fake, disc, cfg.train.init_fake)
    return Networks(generator, fake, disc)


def prepare_networks(acc: Accelerator, nets: Networks, tc: TrainConfig) -> tuple[Networks, list]:
    """The prepared (DDP / FSDP-wrapped) networks and their AdamW optimizers ``[opt_g, opt_f, opt_d or None]``:
    one ``prepare`` call per pair, in the order generator, fake score, discriminator (the checkpoint file order)."""
    betas = (tc.adam_beta1, tc.adam_beta2)
    out, opts = [], []
    for net, lr in ((nets.generator, tc.lr_generator), (nets.fake, tc.lr_fake), (nets.discriminator, tc.lr_disc)):
        if net is None:
            out.append(None)
            opts.append(None)
            continue
        opt = torch.optim.AdamW(net.parameters(), lr, betas, weight_decay=tc.weight_decay)
        net, opt = acc.prepare(net, opt)
        out.append(net)
        opts.append(opt)
    if acc.is_fsdp2:
        register_fsdp_forward_method(out[1], "features")
    return Networks(*out), opts


def _read_weights(folder: Path, sub: str, key: str, hint: str) -> dict[str, Tensor]:
    """The state dict in ``folder/sub/*.safetensors``; a missing one names the config key that pointed there and
    ``hint``, what that folder should be."""
    files = sorted((folder / sub).glob("*.safetensors")) if (folder / sub).is_dir() else []
    if not files:
        raise FileNotFoundError(f"{key}={str(folder)!r}: no {sub}/*.safetensors ({hint})")
    state: dict[str, Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _load_exactly(target: nn.Module, state: dict[str, Tensor], key: str, folder: Path) -> None:
    """``target.load_state_dict(state)`` with every key and shape matched, else one :class:`ValueError` line."""
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{key}={str(folder)!r} does not match the teacher's network: {e}") from None
    if missing or unexpected:
        raise ValueError(
            f"{key}={str(folder)!r} does not match the teacher's network: "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )


def load_generator_weights(generator: OneStepGenerator, folder: str | Path) -> None:
    """Load an exported student's ``unet/`` weights (a :class:`fdistill.export.pipeline.OneStepPipeline` or a stock SD
    folder of :mod:`fdistill.export.stable_diffusion`) into the generator's network: DI* and other post-training start
    from an already distilled one-step model. The network must have the same architecture (and no LoRA adapters)."""
    folder = Path(folder).expanduser()
    state = _read_weights(folder, "unet", "train.init_generator", "an exported student")
    net = generator.net
    # a latent student's unet/ holds the diffusers UNet (net.unet); a pixel student's the whole EDMUNet
    target = net if set(state) == set(net.state_dict()) else getattr(net, "unet", net)
    if getattr(target, "peft_config", None):
        raise ValueError("train.init_generator cannot be combined with teacher.lora_rank > 0 (fused weights)")
    _load_exactly(target, state, "train.init_generator", folder)
    log.info("generator initialised from %s", folder)


def load_fake_weights(fake: nn.Module, disc: DiscriminatorHead | None, folder: str | Path) -> None:
    """``train.init_fake``: the fake score (and the discriminator head, when the run has one and the folder holds
    ``discriminator/``) from a student folder written with ``train.export_fake``. A continuation then starts with
    the fake score co-trained with that student (SiD²A restarts from the SiD run's fake score as well), not from the
    teacher, whose ``D_q = D_p`` gives the generator no signal until the fake score has caught up."""
    folder = Path(folder).expanduser()
    hint = "a student exported with train.export_fake=true"
    _load_exactly(fake, _read_weights(folder, "fake_score", "train.init_fake", hint), "train.init_fake", folder)
    if disc is not None and (folder / "discriminator").is_dir():
        _load_exactly(disc, _read_weights(folder, "discriminator", "train.init_fake", hint), "train.init_fake", folder)
        log.info("fake score and discriminator head initialised from %s", folder)
    else:
        log.info("fake score initialised from %s%s", folder, "; the discriminator head starts fresh" if disc else "")


def save_fake_weights(acc: Accelerator, fake: nn.Module, disc: nn.Module | None, folder: Path) -> None:
    """``train.export_fake``: the fake score and the discriminator head as ``folder/fake_score/`` and
    ``folder/discriminator/`` safetensors (full tensors also under FSDP2: gathered on every process, written by the
    main one), for :func:`load_fake_weights` in a later run."""
    for name, net in (("fake_score", fake), ("discriminator", disc)):
        if net is None:
            continue
        state = {k: full(v).detach().cpu().contiguous() for k, v in acc.unwrap_model(net).state_dict().items()}
        if acc.is_main_process:
            (folder / name).mkdir(parents=True, exist_ok=True)
            save_file(state, str(folder / name / "model.safetensors"))
    if acc.is_main_process:
        log.info("fake score%s saved in %s", " and discriminator head" if disc is not None else "", folder)
