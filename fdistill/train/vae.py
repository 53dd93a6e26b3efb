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
atomically. CLI: ``python -m fdistill.train.vae --data emoji --size 32 --out checkpoints/emoji_vae`` (:func:`main`;
its flags are the fields of :class:`fdistill.config.vae.VAEConfig`). SIGTERM / SIGINT end training after the current
step and the folder is written as after a full run (``stopped_by_signal``); the run's checkpoints in ``OUT.run``
(every ``--checkpoint-every`` steps and at the stop, :mod:`fdistill.train.resumable`) let ``--resume latest``
continue it bit for bit; they are removed once a run has finished.
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fdistill.config.args import ArgumentError, OneLineArgumentParser, one_line
from fdistill.config.schema import ConfigError, add_flags, from_flags
from fdistill.config.vae import SIZED, VAEConfig, VAERecipe, check_config, check_recipe, parse_channels
from fdistill.data import load_dataset
from fdistill.metrics.plots import save_image_grid
from fdistill.train import resumable
from fdistill.train.checkpoint import publish_dir
from fdistill.train.loop import GracefulStop, NonFiniteError

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
    from diffusers import AutoencoderKL  # lazy: diffusers is heavy to import

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


def _loss(vae, x: Tensor, generator: torch.Generator, kl_weight: float) -> dict[str, Tensor]:
    """``L1 + MSE`` of the reconstruction of a posterior sample + ``kl_weight * KL`` (summed per sample)."""
    posterior = vae.encode(x).latent_dist
    err = vae.decode(posterior.sample(generator=generator)).sample - x
    l1, mse = err.abs().mean(), err.square().mean()
    kl = posterior.kl().mean()  # summed over latent dims per sample, averaged over the batch
    return {"loss": l1 + mse + kl_weight * kl, "l1": l1, "mse": mse, "kl": kl}


def _resume_key(r: VAERecipe, images: Tensor) -> dict[str, Any]:
    """The settings a checkpoint must share with the run resuming it: everything that changes the trajectory."""
    keys = ("steps", "batch_size", "lr", "kl_weight", "latent_channels", "layers_per_block", "seed", "log_every")
    return {**{k: getattr(r, k) for k in keys}, "channels": parse_channels(r.block_out_channels),
            "images": list(images.shape)}  # fmt: skip


def _update(vae, opt: torch.optim.Optimizer, loss: Tensor, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
    opt.step()


def _train(vae, images: Tensor, r: VAERecipe, device: torch.device, warmup: int, run_dir: Path | None) -> dict:
    """The optimisation loop; returns ``steps`` done, the loss ``log``, ``seconds`` and how it stopped.

    Stops early when ``max_minutes`` is spent or on SIGTERM / SIGINT (:class:`GracefulStop`: the current step
    finishes; the caller then evaluates and saves as after a full run). With ``run_dir``, the full state is saved
    every ``checkpoint_every`` steps, at a stop and at the end, and ``r.resume`` continues from such a checkpoint
    (:mod:`fdistill.train.resumable`): the two generators, data order, weights, Adam moments and log are restored."""
    n, batch_size, steps = len(images), min(r.batch_size, len(images)), r.steps
    opt = torch.optim.Adam(vae.parameters(), lr=r.lr)
    gens = (torch.Generator().manual_seed(r.seed), torch.Generator(device=device).manual_seed(r.seed + 1))
    g_data, g_noise = gens
    s: dict[str, Any] = {"step": 0, "perm": torch.randperm(n, generator=g_data), "pos": 0, "acc_n": 0, "log": [],
                         "acc": dict.fromkeys(("loss", "l1", "mse", "kl"), 0.0), "seconds": 0.0}  # fmt: skip
    tensors, key, saved = vae.state_dict(), _resume_key(r, images), -1  # saved: the step last checkpointed
    if run_dir is not None and (state := resumable.start(run_dir, r.resume, key)) is not None:
        s = resumable.unpack(state, tensors, opt, gens)
        saved = s["step"]
    out = {"steps": s["step"], "stopped_early": False, "stopped_by_signal": False}
    t0 = time.perf_counter() - s["seconds"]

    def checkpoint() -> None:
        nonlocal saved
        s["seconds"] = time.perf_counter() - t0
        if run_dir is not None and saved != s["step"]:
            resumable.save(run_dir, s["step"], resumable.pack(tensors, opt, gens, s), key)
            saved = s["step"]

    bar = tqdm(total=steps, initial=s["step"], desc="vae", unit="step", disable=not r.progress, dynamic_ncols=True)
    with GracefulStop() as stop:
        for step in range(s["step"], steps):
            if r.max_minutes is not None and time.perf_counter() - t0 > 60 * r.max_minutes:
                out["stopped_early"] = True
                break
            if stop.requested:
                out["stopped_by_signal"] = True
                break
            if s["pos"] + batch_size > n:  # a fresh permutation per epoch; the ragged tail of the last one is dropped
                s["perm"], s["pos"] = torch.randperm(n, generator=g_data), 0
            parts = _loss(vae, images[s["perm"][s["pos"] : s["pos"] + batch_size]].to(device), g_noise, r.kl_weight)
            s["pos"] += batch_size
            loss = parts["loss"]
            if not torch.isfinite(loss):
                bar.close()
                raise NonFiniteError(f"non-finite VAE loss {loss.item()} at step {step} (lr={r.lr}); nothing was saved")
            progress_frac = (step - warmup) / max(1, steps - warmup)
            if r.max_minutes is not None and step >= warmup:
                progress_frac = max(progress_frac, (time.perf_counter() - t0) / max(60 * r.max_minutes, 1e-9))
            lr_now = r.lr * _lr_factor(step, warmup, progress_frac)
            _update(vae, opt, loss, lr_now)
            done = out["steps"] = s["step"] = step + 1

            for k, v in parts.items():
                s["acc"][k] += v.item()
            s["acc_n"] += 1
            if done % r.log_every == 0 or done == steps:
                row = {"step": done, **{k: v / s["acc_n"] for k, v in s["acc"].items()}, "lr": lr_now}
                row["psnr_train"] = 10 * math.log10(4.0 / max(row["mse"], 1e-12))  # [-1, 1] MSE -> [0, 1] PSNR
                s["log"].append(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{row['psnr_train']:.1f}", kl=f"{row['kl']:.0f}")
                s["acc"], s["acc_n"] = dict.fromkeys(s["acc"], 0.0), 0
            if (r.checkpoint_every and done % r.checkpoint_every == 0) or done == steps:
                checkpoint()
            bar.update(1)
    bar.close()
    checkpoint()  # at a stop (or a run with nothing left to do): resumable from here
    return {**out, "seconds": s["seconds"], "log": s["log"]}


def fit_vae(
    images: Tensor, recipe: VAERecipe | None = None, *, run_dir: str | Path | None = None, **overrides: Any
) -> tuple[Any, dict]:
    """Build and train an ``AutoencoderKL`` on ``images`` (N, C, H, W) in [-1, 1], then set its ``scaling_factor``.

    ``recipe`` (default :class:`VAERecipe`; a :class:`VAEConfig` works too) with ``overrides`` of its fields, e.g.
    ``fit_vae(images, steps=100, block_out_channels=(8, 16), progress=False)``. Returns ``(vae, info)``: the model
    in eval mode on the CPU and a JSON-able dict (recipe, timings, loss log every ``log_every`` steps, final
    metrics). Nothing is written to disk (see :func:`save_vae`) but, given ``run_dir``, resumable checkpoints
    (``run_dir/checkpoints``: every ``checkpoint_every`` steps, at a stop and at the end; ``resume="latest"`` or a
    checkpoint folder continues from one and ends with the uninterrupted run's weights and log; settings that change
    the trajectory must match). ``max_minutes`` stops training early once that much wall-clock time is spent; the
    cosine then runs on whichever is further along, the steps or the time budget
    (``max(step / steps, elapsed / budget)``), so a run cut by the clock still ends at a low learning rate
    (``steps`` very large = a purely time-based schedule; only then is the run not reproducible bit for bit).
    SIGTERM / SIGINT stop it the same way after the current step (``stopped_by_signal``; resumable with
    ``run_dir``).
    Evaluation and saving come after the budget. A non-finite loss raises :class:`NonFiniteError` before anything
    could be saved.
    """
    r = replace(recipe if recipe is not None else VAERecipe(), **overrides)
    check_recipe(r)
    if r.resume is not None and run_dir is None:
        raise ConfigError(f"resume={r.resume!r} needs the run_dir holding the checkpoints")
    channels = parse_channels(r.block_out_channels)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    if h != w:
        raise ValueError(f"images must be square; got {h}x{w}")
    device = torch.device(r.device)
    images = images.detach().float().cpu().contiguous()

    torch.manual_seed(r.seed)
    vae = build_vae(c, h, channels, r.latent_channels, r.layers_per_block).to(device).train()
    n_params = sum(p.numel() for p in vae.parameters())
    warmup = min(100, max(1, r.steps // 20))
    run = _train(vae, images, r, device, warmup, None if run_dir is None else Path(run_dir))
    done, seconds = run["steps"], run["seconds"]

    vae.eval()
    factor = 2 ** (len(channels) - 1)
    metrics = reconstruction_metrics(vae, images)  # decode(E(x)) does not involve scaling_factor
    vae.register_to_config(scaling_factor=1.0 / metrics["latent_std"])
    vae.cpu()
    info = {
        "method": "AutoencoderKL (Rombach et al. 2022), L1 + MSE + kl_weight * KL",
        "steps": done,
        "steps_planned": r.steps,
        "stopped_early": run["stopped_early"],
        "stopped_by_signal": run["stopped_by_signal"],
        "batch_size": min(r.batch_size, n),
        "lr": r.lr,
        "lr_schedule": f"linear warm-up {warmup} steps, cosine to 0.01*lr over {r.steps} steps"
        + (f" or {r.max_minutes:g} min, whichever comes first" if r.max_minutes is not None else ""),
        "kl_weight": r.kl_weight,
        "seed": r.seed,
        "n_images": n,
        "image_shape": [c, h, w],
        "latent_shape": [r.latent_channels, h // factor, w // factor],
        "block_out_channels": list(channels),
        "layers_per_block": r.layers_per_block,
        "n_params": n_params,
        "seconds": round(seconds, 2),
        "s_per_step": round(seconds / max(done, 1), 4),
        "threads": torch.get_num_threads(),
        "device": str(device),
        **metrics,
        "scaling_factor": 1.0 / metrics["latent_std"],
        "log": run["log"],
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
    early = " (stopped early by a signal)" if info.get("stopped_by_signal") else early
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
    recipe: VAERecipe | None = None,
    *,
    name: str | None = None,
    data: str | None = None,
    command: str | None = None,
    **overrides: Any,
) -> Path:
    """:func:`fit_vae` (``recipe`` and ``overrides`` of its fields: ``steps``, ``batch_size``, ``lr``, ...) then
    :func:`save_vae`: train on ``images`` (N, C, H, W) in [-1, 1] and save to ``out_dir``.

    ``name``, ``data`` and ``command`` only go into the card and ``training_info.json`` (``command`` defaults to
    this process's command line). Checkpoints go to ``OUT.run`` (:func:`fdistill.train.resumable.run_dir_for`),
    which is removed once the model is saved, unless a signal stopped the run (``resume="latest"`` continues it).
    Returns ``out_dir``.
    """
    run_dir = resumable.run_dir_for(out_dir)
    vae, info = fit_vae(images, recipe, run_dir=run_dir, **overrides)
    info["name"] = name or Path(out_dir).name
    info["data"] = data or "images"
    info["command"] = command if command is not None else shlex.join([Path(sys.executable).name, *sys.argv])
    out = save_vae(vae, out_dir, info, images)
    if not info["stopped_by_signal"]:
        resumable.finish(run_dir)
    return out


# --------------------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    """``fdistill train-vae``: one flag per field of :class:`fdistill.config.vae.VAEConfig`."""
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
    return add_flags(p, VAEConfig)


def _error(e: BaseException) -> int:
    print(f"error: {one_line(str(e).splitlines()[0] if str(e) else type(e).__name__)}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fdistill.train.vae --data emoji --size 32 --out DIR [...]`` (``--help`` for the options)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = from_flags(build_parser().parse_args(argv), VAEConfig)
    except ArgumentError as e:
        print(f"error: {one_line(e)} (see --help)", file=sys.stderr)
        return 2
    try:
        check_config(cfg)
        check_recipe(cfg)
    except ConfigError as e:
        return _error(e)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    kwargs = {"size": cfg.size} if cfg.data in SIZED else {}
    if cfg.data == "synthetic":
        kwargs["channels"] = 3
    try:
        ds = load_dataset(cfg.data, root=cfg.root, split="train", **kwargs)
        out = train_vae(
            ds.images,
            cfg.out,
            cfg,
            data=f"{cfg.data} (size {cfg.size})" if kwargs else cfg.data,
            command=shlex.join(["python", "-m", "fdistill.train.vae", *argv]),
        )
    except (OSError, ValueError, NonFiniteError, ImportError) as e:
        return _error(e)
    info = json.loads((out / "training_info.json").read_text())
    if info.get("stopped_by_signal"):
        print(f"stopped by signal at step {info['steps']}; saved the model trained so far and a checkpoint, "
              "continue with --resume latest")  # fmt: skip
    print(
        f"saved {out}: {info['steps']} steps in {info['seconds']:.0f} s, recon PSNR {info['recon_psnr']:.2f} dB, "
        f"latent std {info['latent_std']:.4f}, scaling_factor {info['scaling_factor']:.5f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
