"""``fdistill plan CONFIG``: per-GPU memory of a distillation run, planned before it starts (docs/math.md §5.4).

The run's networks are built on PyTorch's ``meta`` device (shapes only: no weights are read, no memory is taken)
from the teacher's own ``config.json`` files, or, for a hub id that is not on disk, from the published
architecture of SD 1.5 / SDXL embedded in :mod:`fdistill.apps.plan_architectures`. Per GPU it adds up:

- **weights**: the frozen teacher (and the latent teacher's VAE and text encoders) in ``teacher.dtype``; the
  trainable generator, fake score and discriminator in float32 (accelerate keeps fp32 master weights under bf16
  autocast); the generator's EMA in float32;
- **gradients** (fp32) and **Adam states** (two fp32 moments) of the trainable parameters (LoRA: the adapters only);
- **activations**: the tensors autograd saves in one forward of each network that is differentiated in a phase
  (the generator phase: the generator, plus teacher and fake score for the methods whose loss differentiates
  through them, SiD/SIM/Uni-Instruct/DI*, plus the discriminator's feature extractor for a GAN term; the fake phase:
  the fake score on the batch, and its encoder on the real and fake batches when the discriminator sits on it),
  measured on the meta device with ``torch.autograd.graph.saved_tensors_hooks`` at the configured batch and
  resolution (bf16 autocast halves them; gradient checkpointing is applied as the trainer applies it).

Strategies: ``ddp`` replicates everything (and DDP's gradient buckets, one more gradient copy); ``fsdp`` is the
shipped template (``configs/accelerate/fsdp.yaml``: FSDP2 with ``reshard_after_forward: false``, i.e. SHARD_GRAD_OP:
gradients and optimizer states sharded over the GPUs, parameters whole in forward/backward); ``fsdp-full``
(FULL_SHARD) also shards the parameters of the prepared networks. The
frozen teacher and the EMA are not prepared by accelerate, so they are whole on every GPU in every strategy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fdistill import methods
from fdistill.apps import plan_architectures as archs
from fdistill.apps.plan_architectures import Denoiser
from fdistill.config import ConfigError, load_config
from fdistill.config.args import ArgumentError, OneLineArgumentParser, one_line
from fdistill.nets.discriminator import DiscriminatorHead

GIB = 1024**3
STRATEGIES = ("ddp", "fsdp", "fsdp-full")
#: methods whose generator loss differentiates through the teacher and the fake score (x_t carries the gradient)
THROUGH_DENOISERS = ("sid", "sim", "uni_instruct", "di_star")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class NetworkPlan:
    """One network's memory on one GPU, in bytes (before sharding)."""

    name: str
    params: int
    trainable: int
    weight_bytes: int
    ema: bool = False
    prepared: bool = True  # sharded by FSDP (generator, fake score, discriminator); the frozen teacher parts are not
    activations: dict[str, int] = field(default_factory=dict)  # phase -> bytes saved for backward

    @property
    def grad_bytes(self) -> int:
        return 4 * self.trainable

    @property
    def adam_bytes(self) -> int:
        return 8 * self.trainable

    @property
    def ema_bytes(self) -> int:
        return 4 * self.params if self.ema else 0


@dataclass
class Plan:
    networks: list[NetworkPlan]
    num_gpus: int
    batch_size: int
    resolution: str
    precision: str

    def per_gpu(self, strategy: str) -> dict[str, float]:
        """Bytes per GPU by kind for ``strategy`` (weights, gradients, Adam, EMA, activations, total)."""
        n = self.num_gpus
        shard = n if strategy in ("fsdp", "fsdp-full") else 1
        out = dict.fromkeys(("weights", "gradients", "adam", "ema", "ddp buckets", "activations"), 0.0)
        for net in self.networks:
            # FULL_SHARD shards every weight of a prepared network (a LoRA student's frozen base too)
            out["weights"] += net.weight_bytes / n if strategy == "fsdp-full" and net.prepared else net.weight_bytes
            out["gradients"] += net.grad_bytes / shard
            out["adam"] += net.adam_bytes / shard
            out["ema"] += net.ema_bytes
            if strategy == "ddp" and n > 1:
                out["ddp buckets"] += net.grad_bytes
        out["activations"] = max(self.phase_activations().values(), default=0)
        out["total"] = sum(out.values())
        return out

    def phase_activations(self) -> dict[str, int]:
        phases: dict[str, int] = {}
        for net in self.networks:
            for phase, b in net.activations.items():
                phases[phase] = phases.get(phase, 0) + b
        return phases


# ---- meta-device measurement ------------------------------------------------------------------------------------


class _FusedAttention(torch.autograd.Function):
    """What a fused (flash / memory-efficient) attention kernel keeps for backward: q, k, v, the output and one
    float32 log-sum-exp per query, not the N x N probabilities that the math kernel on ``meta`` would save."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # noqa: D102
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102  (never run: the plan only measures forwards)
        raise NotImplementedError


def _fused_sdpa(q: Tensor, k: Tensor, v: Tensor, *args, **kwargs) -> Tensor:
    return _FusedAttention.apply(q, k, v)


@contextlib.contextmanager
def saved_bytes() -> Iterator[list[int]]:
    """Counts the bytes of every tensor autograd saves for backward inside the block (works on ``meta`` tensors);
    attention is counted as a fused GPU kernel saves it (:class:`_FusedAttention`)."""
    total = [0]
    seen: set[int] = set()

    def pack(t: Tensor) -> Tensor:
        key = id(t)
        weight = isinstance(t, nn.Parameter) or isinstance(
            t._base, nn.Parameter
        )  # a weight (or its view) is no activation
        if key not in seen and not weight:
            seen.add(key)
            total[0] += t.numel() * t.element_size()
        return t

    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused_sdpa
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield total
    finally:
        F.scaled_dot_product_attention = sdpa


def activation_bytes(forward: Callable[[], object], half: bool) -> int:
    """Bytes saved for backward by ``forward()`` (run on meta tensors that require grad); halved under bf16."""
    with saved_bytes() as total:
        forward()
    return total[0] // 2 if half else total[0]


def count(module: nn.Module) -> tuple[int, int]:
    params = sum(p.numel() for p in module.parameters())
    return params, sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---- the run's networks -----------------------------------------------------------------------------------------


def plan_run(cfg, num_gpus: int = 1, lora_rank: int | None = None, unet: str | None = None) -> Plan:
    """The memory plan of the run ``cfg`` describes (a loaded :class:`fdistill.config.Config`)."""
    tc = cfg.teacher
    rank = tc.lora_rank if lora_rank is None else lora_rank
    method = methods.get(cfg.method.name)(cfg.method)
    half = cfg.train.mixed_precision == "bf16"
    teacher_bytes = DTYPE_BYTES.get(str(getattr(tc, "dtype", "float32")).replace("torch.", ""), 4)
    den = denoiser_for(cfg, unet)
    b = cfg.train.batch_size // max(1, cfg.train.grad_accum)

    teacher = den.make().requires_grad_(False).eval()
    generator, fake = den.make().train(), den.make().train()
    if rank > 0:
        for net in (generator, fake):
            archs.add_lora(net, rank)
    if getattr(tc, "gradient_checkpointing", False):
        for net in (generator, fake):
            if hasattr(net, "enable_gradient_checkpointing"):
                net.enable_gradient_checkpointing()

    nets: list[NetworkPlan] = []
    t_params, _ = count(teacher)
    teacher_plan = NetworkPlan("teacher (frozen)", t_params, 0, teacher_bytes * t_params, prepared=False)
    g_params, g_train = count(generator)
    gen_plan = NetworkPlan("generator", g_params, g_train, 4 * g_params, ema=True)
    f_params, f_train = count(fake)
    fake_plan = NetworkPlan("fake score", f_params, f_train, 4 * f_params)
    gen_plan.activations["generator phase"] = activation_bytes(lambda: den.call(generator, b), half)
    if cfg.method.name in THROUGH_DENOISERS:
        teacher_plan.activations["generator phase"] = activation_bytes(lambda: den.call(teacher, b), half)
        fake_plan.activations["generator phase"] = activation_bytes(lambda: den.call(fake.eval(), b), half)
        fake.train()
    fake_plan.activations["fake phase"] = activation_bytes(lambda: den.call(fake, b), half)
    nets += [teacher_plan, gen_plan, fake_plan]
    if method.needs_discriminator:
        nets.append(_discriminator_plan(cfg, den, fake if cfg.method.disc_features == "fake" else teacher, b, half))
    for name, module in den.frozen:
        p, _ = count(module)
        nets.append(NetworkPlan(f"{name} (frozen)", p, 0, teacher_bytes * p, prepared=False))
    return Plan(nets, num_gpus, cfg.train.batch_size, den.resolution, "bf16 autocast" if half else "fp32")


def _discriminator_plan(cfg, den: Denoiser, source: nn.Module, b: int, half: bool) -> NetworkPlan:
    """The head on ``source``'s encoder features. Fake phase: BCE on the real and the fake batch (the features
    carry gradient only when the source is the trainable fake score). Generator phase: a GAN term, or
    Uni-Instruct's ratio differentiated in x_t, backpropagates through the source's encoder to x_t."""
    with torch.no_grad():
        feats = den.features(source, 2)
    head = DiscriminatorHead.for_features(feats).to("meta")
    params, trainable = count(head)
    plan = NetworkPlan(f"discriminator head (on {cfg.method.disc_features})", params, trainable, 4 * params)
    sigma = torch.ones(b, device="meta")

    def head_only() -> None:
        with torch.no_grad():
            detached = den.features(source, b)
        head(detached, sigma)

    plan.activations["fake phase"] = 2 * activation_bytes(head_only, half)
    if cfg.method.disc_features == "fake":
        plan.activations["fake phase"] += 2 * activation_bytes(lambda: den.features(source, b), half)
    through_ratio = cfg.method.name == "uni_instruct" and cfg.method.divergence != "rkl"
    if cfg.method.gan_weight > 0 or through_ratio:
        plan.activations["generator phase"] = activation_bytes(lambda: head(den.features(source, b), sigma), half)
    return plan


def denoiser_for(cfg, unet: str | None) -> Denoiser:
    """The teacher's network on the meta device, by ``teacher.kind``."""
    kind = cfg.teacher.kind
    if kind == "latent":
        return archs.latent_denoiser(cfg, unet)
    if kind == "unet":
        return archs.pixel_denoiser(cfg)
    if kind == "gmm":
        return archs.mixture_denoiser(cfg)
    raise ConfigError(f"fdistill plan: teacher.kind={kind!r} is not planned (gmm, unet, latent)")


# ---- report ------------------------------------------------------------------------------------------------------


def gib(x: float) -> str:
    return f"{x / GIB:.2f}" if x >= 0.01 * GIB else f"{x / 2**20:.1f} MiB"


def table(plan: Plan, strategies: Sequence[str]) -> str:
    lines = [
        f"per GPU, {plan.num_gpus} GPU(s), batch {plan.batch_size} per GPU at {plan.resolution}, {plan.precision} "
        "(GiB unless marked)",
        "",
        "| network | parameters | trainable | weights | gradients | Adam | EMA | activations (peak phase) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in plan.networks:
        act = max(n.activations.values(), default=0)
        lines.append(
            f"| {n.name} | {n.params / 1e6:,.1f}M | {n.trainable / 1e6:,.1f}M | {gib(n.weight_bytes)} | "
            f"{gib(n.grad_bytes)} | {gib(n.adam_bytes)} | {gib(n.ema_bytes)} | {gib(act)} |"
        )
    lines += ["", "| strategy | " + " | ".join(plan.per_gpu("ddp")) + " |", "|---|" + "---|" * 7]
    for s in strategies:
        row = plan.per_gpu(s)
        lines.append(f"| {s} | " + " | ".join(gib(v) for v in row.values()) + " |")
    phases = ", ".join(f"{k} {gib(v)}" for k, v in plan.phase_activations().items())
    lines += ["", f"activations by phase (the larger one is live at the peak): {phases}"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="fdistill plan",
        description=__doc__.split("\n\n")[0],
        epilog="e.g.  fdistill plan configs/sd15_fdistill_js.yaml --num-gpus 8 --strategy fsdp\n"
        "      fdistill plan configs/sd15_fdistill_js.yaml --unet sdxl --lora-rank 64",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="the run's YAML preset")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, as for fdistill distill")
    p.add_argument("--num-gpus", type=int, default=1, help="GPUs the run shards over (default: 1)")
    p.add_argument("--strategy", choices=(*STRATEGIES, "all"), default="all", help="default: all, side by side")
    p.add_argument("--lora-rank", type=int, default=None, help="plan LoRA students of this rank (default: config)")
    p.add_argument("--unet", default=None, help="sd15, sdxl or a folder with config.json: the UNet to plan instead "
                   "of the teacher's (default: the teacher's)")  # fmt: skip
    p.add_argument("--json", default=None, help="also write the plan as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_intermixed_args(argv)
        if args.num_gpus < 1 or (args.lora_rank is not None and args.lora_rank < 0):
            raise ArgumentError("--num-gpus must be >= 1 and --lora-rank >= 0")
        cfg = load_config(args.config, args.overrides)
        plan = plan_run(cfg, args.num_gpus, args.lora_rank, args.unet)
    except (ArgumentError, ConfigError, FileNotFoundError, ValueError) as e:
        print(f"fdistill: plan: {one_line(e)}", file=sys.stderr)
        return 2
    strategies = STRATEGIES if args.strategy == "all" else (args.strategy,)
    print(table(plan, strategies))
    if args.json:
        rows = {s: plan.per_gpu(s) for s in strategies}
        nets = [{**vars(n), "grad_bytes": n.grad_bytes, "adam_bytes": n.adam_bytes, "ema_bytes": n.ema_bytes}
                for n in plan.networks]  # fmt: skip
        Path(args.json).write_text(json.dumps({"per_gpu": rows, "networks": nets}, indent=1))
    return 0
