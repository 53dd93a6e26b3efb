"""Train a small KL-regularised autoencoder (diffusers ``AutoencoderKL``) for a latent text-to-image teacher.

The recipe is the first stage of latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with
Latent Diffusion Models", Sec. 3 and Appendix G; the ``AutoencoderKL`` of Stable Diffusion), shrunk to toy sizes:

- encoder ``E`` and decoder of ``len(block_out_channels)`` ResNet stages (``DownEncoderBlock2D`` /
  ``UpDecoderBlock2D``), downsampling factor ``2 ** (L - 1)``: 3x32x32 images -> 4x8x8 latents with the default
  ``(32, 64, 64)``; no self-attention in the mid block (it buys nothing at 8x8 and costs CPU time);
- loss per sample ``L1 + MSE`` (means over pixels) of the reconstruction of a posterior *sample*
  ``z ~ N(mu, sigma^2)``, plus ``kl_weight * KL(q(z|x) || N(0, I))`` with the KL *summed* over latent dimensions
  (as in LDM's ``LPIPSWithDiscriminator``); a small weight (1e-6..1e-5) keeps the latents informative. The LDM
  perceptual (LPIPS) and adversarial terms are left out: at 32x32 the pixel losses already give sharp
  reconstructions and no LPIPS weights are available offline;
- Adam with a short linear warm-up and a cosine decay to 1% of the learning rate, gradient norm clipped at 1;
  no data augmentation (horizontal flips would break captions that say "left"/"right");
- afterwards ``scaling_factor = 1 / std`` of the posterior-mean latents over the whole data set (LDM Sec. 4.3.2:
  unit-variance latents for the diffusion model; ``shift_factor`` stays unset, as in SD 1.x/2.x, so the stock
  ``StableDiffusionPipeline`` and :class:`fdistill.teachers.latent.LatentTeacher` both use ``scaling_factor * E(x)``).

Every random draw (initialisation, data order, posterior samples) comes from ``seed``. The output folder holds
``config.json`` + ``diffusion_pytorch_model.safetensors`` (``AutoencoderKL.from_pretrained(out_dir)``),
``training_info.json``, a ``README.md`` card and ``recon.png`` (originals over reconstructions); it is replaced
atomically. CLI: ``python -m fdistill.train.vae --data emoji --size 32 --out checkpoints/emoji_vae`` (:func:`main`).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fdistill.config.args import ArgumentError, OneLineArgumentParser

__all__ = ["build_vae", "fit_vae", "latent_stats", "main", "reconstruction_metrics", "save_vae", "train_vae"]


def _norm_groups(channels: Sequence[int], max_groups: int = 32) -> int:
    """The largest GroupNorm group count ``<= max_groups`` that divides every channel count."""
    g = math.gcd(*channels)
    return max(d for d in range(1, min(g, max_groups) + 1) if g % d == 0)


def build_vae(
    in_channels: int = 3,
    sample_size: int = 32,
    block_out_channels: Sequence[int] = (32, 64, 64),
    latent_channels: int = 4,
    layers_per_block: int = 1,
    norm_num_groups: int | None = None,
):
    """A fresh ``AutoencoderKL`` (SD layout, factor ``2 ** (len(block_out_channels) - 1)``), no mid attention."""
    from diffusers import AutoencoderKL

    blocks = tuple(int(c) for c in block_out_channels)
    if not blocks or min(blocks) < 1:
        raise ValueError(f"block_out_channels={block_out_channels!r}; expected positive channel counts, e.g. 32,64,64")
    factor = 2 ** (len(blocks) - 1)
    if sample_size % factor:
        raise ValueError(f"image size {sample_size} is not divisible by the downsampling factor {factor}")
    groups = _norm_groups(blocks) if norm_num_groups is None else int(norm_num_groups)
    if any(c % groups for c in blocks):
        raise ValueError(f"norm_num_groups={groups} does not divide every channel count of {blocks}")
    kwargs: dict[str, Any] = dict(
        in_channels=in_channels,
        out_channels=in_channels,
        latent_channels=latent_channels,
        block_out_channels=blocks,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        layers_per_block=layers_per_block,
        norm_num_groups=groups,
        sample_size=sample_size,
    )
    if "mid_block_add_attention" in inspect.signature(AutoencoderKL.__init__).parameters:  # diffusers >= 0.26
        kwargs["mid_block_add_attention"] = False
    return AutoencoderKL(**kwargs)


def _lr_factor(step: int, warmup: int, progress: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from 1 to 0.01 as ``progress`` goes from 0 to 1."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def fit_vae(
    images: Tensor,
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 2e-3,
    kl_weight: float = 1e-6,
    block_out_channels: Sequence[int] = (32, 64, 64),
    latent_channels: int = 4,
    layers_per_block: int = 1,
    seed: int = 0,
    log_every: int = 50,
    progress: bool = True,
    max_minutes: float | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Any, dict]:
    """Build and train an ``AutoencoderKL`` on ``images`` (N, C, H, W) in [-1, 1], then set its ``scaling_factor``.

    Returns ``(vae, info)``: the model in eval mode on the CPU and a JSON-able dict (recipe, timings, loss log every
    ``log_every`` steps, final metrics). Nothing is written to disk (see :func:`save_vae`). ``max_minutes`` stops
    training early once that much wall-clock time is spent; the cosine then runs on whichever is further along,
    the steps or the time budget (``max(step / steps, elapsed / budget)``), so a run cut by the clock still ends at
    a low learning rate (``steps`` very large = a purely time-based schedule; only then is the run not
    reproducible bit for bit). Evaluation and saving come after the budget. A non-finite
    loss raises ``FloatingPointError`` before anything could be saved.
    """
    from tqdm.auto import tqdm

    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}")
    if steps < 0 or batch_size < 1 or lr <= 0 or kl_weight < 0 or log_every < 1:
        raise ValueError(
            f"bad recipe steps={steps} batch_size={batch_size} lr={lr} kl_weight={kl_weight} log_every={log_every};"
            " expected steps >= 0, batch_size >= 1, lr > 0, kl_weight >= 0, log_every >= 1"
        )
    n, c, h, w = images.shape
    if h != w:
        raise ValueError(f"images must be square; got {h}x{w}")
    device = torch.device(device)
    images = images.detach().float().cpu().contiguous()
    batch_size = min(batch_size, n)

    torch.manual_seed(seed)
    vae = build_vae(c, h, block_out_channels, latent_channels, layers_per_block).to(device).train()
    n_params = sum(p.numel() for p in vae.parameters())
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    warmup = min(100, max(1, steps // 20))
    g_data = torch.Generator().manual_seed(seed)
    g_noise = torch.Generator(device=device).manual_seed(seed + 1)

    log: list[dict] = []
    acc = {"loss": 0.0, "l1": 0.0, "mse": 0.0, "kl": 0.0}
    acc_n = 0
    perm, pos = torch.randperm(n, generator=g_data), 0
    t0 = time.perf_counter()
    done = 0
    stopped_early = False
    bar = tqdm(total=steps, desc="vae", unit="step", disable=not progress, dynamic_ncols=True)
    for step in range(steps):
        if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
            stopped_early = True
            break
        if pos + batch_size > n:  # a fresh permutation per epoch; the ragged tail of the last one is dropped
            perm, pos = torch.randperm(n, generator=g_data), 0
        x = images[perm[pos : pos + batch_size]].to(device)
        pos += batch_size

        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=g_noise)
        x_hat = vae.decode(z).sample
        err = x_hat - x
        l1, mse = err.abs().mean(), err.square().mean()
        kl = posterior.kl().mean()  # summed over latent dims per sample, averaged over the batch
        loss = l1 + mse + kl_weight * kl
        if not torch.isfinite(loss):
            bar.close()
            raise FloatingPointError(f"non-finite VAE loss {loss.item()} at step {step} (lr={lr}); nothing was saved")
        elapsed = time.perf_counter() - t0
        progress_frac = (step - warmup) / max(1, steps - warmup)
        if max_minutes is not None and step >= warmup:
            progress_frac = max(progress_frac, elapsed / max(60 * max_minutes, 1e-9))
        lr_now = lr * _lr_factor(step, warmup, progress_frac)
        for group in opt.param_groups:
            group["lr"] = lr_now
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        done = step + 1

        for k, v in (("loss", loss), ("l1", l1), ("mse", mse), ("kl", kl)):
            acc[k] += v.item()
        acc_n += 1
        if done % log_every == 0 or done == steps:
            row = {"step": done, **{k: v / acc_n for k, v in acc.items()}, "lr": lr_now}
            row["psnr_train"] = 10 * math.log10(4.0 / max(row["mse"], 1e-12))  # [-1, 1] MSE -> [0, 1] PSNR
            log.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{row['psnr_train']:.1f}", kl=f"{row['kl']:.0f}")
            acc, acc_n = dict.fromkeys(acc, 0.0), 0
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0

    vae.eval()
    factor = 2 ** (len(block_out_channels) - 1)
    metrics = reconstruction_metrics(vae, images)  # decode(E(x)) does not involve scaling_factor
    vae.register_to_config(scaling_factor=1.0 / metrics["latent_std"])
    vae.cpu()
    info = {
        "method": "AutoencoderKL (Rombach et al. 2022), L1 + MSE + kl_weight * KL",
        "steps": done,
        "steps_planned": steps,
        "stopped_early": stopped_early,
        "batch_size": batch_size,
        "lr": lr,
        "lr_schedule": f"linear warm-up {warmup} steps, cosine to 0.01*lr over {steps} steps"
        + (f" or {max_minutes:g} min, whichever comes first" if max_minutes is not None else ""),
        "kl_weight": kl_weight,
        "seed": seed,
        "n_images": n,
        "image_shape": [c, h, w],
        "latent_shape": [latent_channels, h // factor, w // factor],
        "block_out_channels": [int(b) for b in block_out_channels],
        "layers_per_block": layers_per_block,
        "n_params": n_params,
        "seconds": round(seconds, 2),
        "s_per_step": round(seconds / max(done, 1), 4),
        "threads": torch.get_num_threads(),
        "device": str(device),
        **metrics,
        "scaling_factor": 1.0 / metrics["latent_std"],
        "log": log,
    }
    return vae, info


@torch.no_grad()
def _evaluate(vae, images: Tensor, batch_size: int = 256) -> tuple[Tensor, float]:
    """Unscaled posterior means ``E(x)`` (on the CPU) and the summed squared [0, 1]-scale error of their decodings."""
    device, means, sq = vae.device, [], 0.0
    for x in images.split(batch_size):
        x = x.to(device)
        mu = vae.encode(x).latent_dist.mean
        x_hat = vae.decode(mu).sample.clamp(-1, 1)
        sq += float(((x_hat - x) / 2).double().square().sum())
        means.append(mu.float().cpu())
    return torch.cat(means), sq


def latent_stats(vae, images: Tensor, batch_size: int = 256) -> tuple[float, float]:
    """Mean and std (over all elements) of the unscaled posterior-mean latents ``E(x)`` of ``images``."""
    with torch.no_grad():
        z = torch.cat([vae.encode(x.to(vae.device)).latent_dist.mean.cpu() for x in images.split(batch_size)])
    z = z.double()
    return float(z.mean()), float(z.std())


def reconstruction_metrics(vae, images: Tensor, batch_size: int = 256) -> dict[str, float]:
    """MSE and PSNR of ``decode(posterior mean)`` on the [0, 1] scale (outputs clamped to [-1, 1]), plus the mean
    and std (over all elements) of the unscaled posterior-mean latents, from one pass over ``images``."""
    z, sq = _evaluate(vae, images, batch_size)
    mse = sq / max(images.numel(), 1)
    z = z.double()
    return {
        "recon_mse": mse,
        "recon_psnr": 10 * math.log10(1.0 / max(mse, 1e-20)),
        "latent_mean": float(z.mean()),
        "latent_std": float(z.std()),
    }


def _card(info: dict) -> str:
    lat = "x".join(str(v) for v in info["latent_shape"])
    img = "x".join(str(v) for v in info["image_shape"])
    early = " (stopped early by the time budget)" if info.get("stopped_early") else ""
    return f"""# {info.get("name", "AutoencoderKL")}

A small KL-regularised autoencoder (diffusers `AutoencoderKL`, the Stable Diffusion layout) trained from scratch
on {info["n_images"]} images of `{info.get("data", "?")}` ({img}); latents are {lat}
(downsampling factor {info["image_shape"][1] // info["latent_shape"][1]}). It is the first stage of a small latent
text-to-image teacher (`fdistill.teachers.latent.LatentTeacher`, `StableDiffusionPipeline`):
latents = `scaling_factor * E(x)`.

## Recipe (`fdistill.train.vae`, Rombach et al. 2022)
- channels {info["block_out_channels"]}, {info["layers_per_block"]} ResNet layer(s) per block, no mid-block
  attention, {info["n_params"]:,} parameters
- loss: L1 + MSE of the reconstruction of a posterior sample + {info["kl_weight"]:g} * KL (summed per sample);
  no LPIPS / GAN terms, no augmentation
- Adam, lr {info["lr"]:g}, {info["lr_schedule"]}, grad-norm clip 1, batch {info["batch_size"]},
  {info["steps"]} steps{early}, seed {info["seed"]}
- {info["seconds"]:.0f} s ({info["s_per_step"]:.3f} s/step) on {info["device"]} with {info["threads"]} thread(s)
- `scaling_factor = 1 / std(E(x))` over the whole data set (unit-variance latents); `shift_factor` unset

## Numbers (whole data set, posterior means, [0, 1] scale)
| recon MSE | recon PSNR (dB) | latent mean | latent std | scaling_factor |
|---|---|---|---|---|
| {info["recon_mse"]:.6f} | {info["recon_psnr"]:.2f} | {info["latent_mean"]:.4f} | {info["latent_std"]:.4f} \
| {info["scaling_factor"]:.5f} |

`recon.png`: originals (top row) over reconstructions (bottom row).

## Use
```python
from diffusers import AutoencoderKL
vae = AutoencoderKL.from_pretrained("{info.get("path", "path/to/this/folder")}")
z = vae.config.scaling_factor * vae.encode(x).latent_dist.mean   # x in [-1, 1], (N, {img})
x_hat = vae.decode(z / vae.config.scaling_factor).sample
```

Made with: `{info.get("command", "")}`
"""


def save_vae(vae, out_dir: str | Path, info: dict, images: Tensor | None = None, n_show: int = 16) -> Path:
    """Write ``vae`` (safetensors + config.json), ``training_info.json``, ``README.md`` and (given ``images``)
    ``recon.png`` to ``out_dir``, replacing an existing folder atomically (temp dir, then rename)."""
    from fdistill.train.checkpoint import publish_dir
    from fdistill.train.teacher import save_image_grid

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    info = {**info, "path": info.get("path", str(out))}
    vae.save_pretrained(tmp, safe_serialization=True)
    (tmp / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    (tmp / "README.md").write_text(_card(info))
    if images is not None and len(images):
        x = images[:n_show].float()
        with torch.no_grad():
            x_hat = vae.decode(vae.encode(x.to(vae.device)).latent_dist.mean).sample.cpu().clamp(-1, 1)
        save_image_grid(torch.cat([x, x_hat]), tmp / "recon.png", nrow=len(x))
    return publish_dir(tmp, out)


def train_vae(
    images: Tensor,
    out_dir: str | Path,
    *,
    name: str | None = None,
    data: str | None = None,
    command: str | None = None,
    **fit_kwargs: Any,
) -> Path:
    """:func:`fit_vae` (``fit_kwargs``: ``steps``, ``batch_size``, ``lr``, ...) then :func:`save_vae`: train on
    ``images`` (N, C, H, W) in [-1, 1] and save to ``out_dir``.

    ``name``, ``data`` and ``command`` only go into the card and ``training_info.json`` (``command`` defaults to
    this process's command line). Returns ``out_dir``.
    """
    vae, info = fit_vae(images, **fit_kwargs)
    info["name"] = name or Path(out_dir).name
    info["data"] = data or "images"
    info["command"] = command if command is not None else shlex.join([Path(sys.executable).name, *sys.argv])
    return save_vae(vae, out_dir, info, images)


# --------------------------------------------------------------------------------------------------------------
# command line


_SIZED = ("emoji", "synthetic", "captioned_folder")  # data sets whose loader takes ``size``


def _channels(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers, e.g. 32,64,64")
    return out


def build_parser() -> argparse.ArgumentParser:
    from fdistill.data import DATASETS

    p = OneLineArgumentParser(
        prog="fdistill train-vae",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a small diffusers AutoencoderKL (Stable Diffusion layout, KL-regularised, Rombach et al. 2022)\n"
            "for a latent teacher, set scaling_factor = 1/std of its latents, and save it with a README card,\n"
            "training_info.json and recon.png (originals over reconstructions)."
        ),
        epilog=(
            "examples:\n"
            "  python -m fdistill.train.vae --data emoji --size 32 --out checkpoints/emoji_vae \\\n"
            "      --steps 1400 --batch-size 8 --lr 2e-3 --kl-weight 1e-6 --max-minutes 8 --threads 1\n"
            "  python -m fdistill.train.vae --data synthetic --size 16 --out /tmp/vae --steps 50 --channels 8,16\n"
            "reload:\n"
            "  from diffusers import AutoencoderKL; vae = AutoencoderKL.from_pretrained('checkpoints/emoji_vae')"
        ),
    )
    p.add_argument("--data", default="emoji", help=f"data set: one of {', '.join(DATASETS)} (default emoji)")
    p.add_argument("--root", default=None, help="where the data set's files are (default: its own cache)")
    p.add_argument(
        "--size",
        type=int,
        default=32,
        help=f"image size for {', '.join(_SIZED)} (default 32; the other sets have their own)",
    )
    p.add_argument("--out", required=True, help="output folder (replaced atomically), e.g. checkpoints/emoji_vae")
    p.add_argument("--steps", type=int, default=1400, help="optimizer steps (default 1400)")
    p.add_argument("--batch-size", type=int, default=8, help="images per step (default 8)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate, warm-up + cosine (default 2e-3)")
    p.add_argument("--kl-weight", type=float, default=1e-6, help="weight of the per-sample summed KL (default 1e-6)")
    p.add_argument(
        "--channels",
        type=_channels,
        default=(32, 64, 64),
        help="block_out_channels, comma-separated; L entries downsample by 2**(L-1) (default 32,64,64)",
    )
    p.add_argument("--latent-channels", type=int, default=4, help="latent channels (default 4)")
    p.add_argument("--layers-per-block", type=int, default=1, help="ResNet layers per block (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of init, data order and posterior samples (default 0)")
    p.add_argument("--log-every", type=int, default=50, help="steps between log rows / progress updates (default 50)")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop early (and save) after M minutes of training; the cosine LR follows whichever of steps and time"
        " is further along (default off)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fdistill.train.vae --data emoji --size 32 --out DIR [...]`` (``--help`` for the options)."""
    from fdistill.data import DATASETS, load_dataset

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except ArgumentError as e:
        print(f"error: {e} (see --help)", file=sys.stderr)
        return 2
    if args.data not in DATASETS:
        print(f"error: unknown data set {args.data!r}; accepted: {', '.join(DATASETS)}", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads {args.threads}; expected >= 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    kwargs = {"size": args.size} if args.data in _SIZED else {}
    if args.data == "synthetic":
        kwargs["channels"] = 3
    try:
        ds = load_dataset(args.data, root=args.root, split="train", **kwargs)
        out = train_vae(
            ds.images,
            args.out,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            kl_weight=args.kl_weight,
            block_out_channels=args.channels,
            latent_channels=args.latent_channels,
            layers_per_block=args.layers_per_block,
            seed=args.seed,
            log_every=args.log_every,
            progress=not args.no_progress,
            max_minutes=args.max_minutes,
            device=args.device,
            data=f"{args.data} (size {args.size})" if kwargs else args.data,
            command=shlex.join(["python", "-m", "fdistill.train.vae", *argv]),
        )
    except (OSError, ValueError, FloatingPointError, ImportError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    info = json.loads((out / "training_info.json").read_text())
    print(
        f"saved {out}: {info['steps']} steps in {info['seconds']:.0f} s, recon PSNR {info['recon_psnr']:.2f} dB, "
        f"latent std {info['latent_std']:.4f}, scaling_factor {info['scaling_factor']:.5f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
