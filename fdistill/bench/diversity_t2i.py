"""The text-to-image (emoji) half of ``fdistill bench diversity`` (Gandikota & Bau 2025; docs/math.md §2.11).

Rows: the SD-style latent teacher at each ``--teacher-nfe`` with CFG ``w`` (``fdistill eval-t2i``'s
:func:`~fdistill.eval.t2i.generators.teacher_generators`), the exported one-step student (its
:func:`~fdistill.eval.t2i.generators.load_student_generator`: the stock pipeline call) and its hybrids
(:func:`fdistill.apps.sample.hybrid_sample` on the latent pair of :mod:`fdistill.apps.hybrid_latent`: the
teacher's first N Heun steps of the ``hybrid_nfe`` schedule with the same CFG ``w``, its x0 at ``sigma_N`` re-noised
to the student's level, then the student). Every row draws batch ``b`` from the noise of ``seed + b`` (the
eval-t2i equal-noise contract), so the hybrid with N = 0 is the student's own call on the same ``z`` (to float
rounding).

Columns (all ``fdistill eval-t2i``'s, :func:`~fdistill.eval.t2i.evaluate.evaluate_t2i`): caption match (mean +- std
over images), R@1, FD of caption-match image embeddings against real emoji (NOT Inception FID), ms/image; and the
diversity across seeds: per prompt, the mean pairwise ``1 - cos`` of the caption-match embeddings of its
``seeds`` samples (:func:`~fdistill.eval.t2i.metrics.diversity_scores`), reported as mean +- std over prompts, with
the per-pixel std across seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fdistill.apps.hybrid_latent import LatentStudent
from fdistill.apps.sample import hybrid_sample
from fdistill.eval.t2i.base import T2IGenerator
from fdistill.eval.t2i.evaluate import DIVERSITY_SEED_OFFSET, evaluate_t2i
from fdistill.eval.t2i.generators import generate, load_student_generator, load_teacher, teacher_generators
from fdistill.eval.t2i.inputs import load_real_images, select_prompts
from fdistill.eval.t2i.metrics import diversity_scores, reward_image_features
from fdistill.rewards import CLIPReward, PreferenceReward
from fdistill.teachers.latent import LatentTeacher


@dataclass
class T2IOptions:
    """What every row shares: the checkpoints, prompt / seed counts, CFG, batching and device."""

    teacher: str = "checkpoints/emoji_teacher"
    student: str = "checkpoints/emoji_student"
    reward: str = "checkpoints/emoji_caption_match"
    num_prompts: int = 100
    seeds: int = 4
    guidance: float = 3.0
    real: str = "emoji"  # eval-t2i's --real: emoji, an image folder or an .npz of images
    num_real: int | None = None
    batch_size: int = 64
    seed: int = 0
    device: str = "cpu"


class _CachedStudent(LatentStudent):
    """A :class:`LatentStudent` whose prompt encodings are computed once (outside the clock, like eval-t2i's)."""

    def __init__(self, inner: LatentStudent) -> None:
        self.__dict__.update(inner.__dict__)
        self._cache: dict[tuple[int, ...], Tensor] = {}

    def embeddings(self, ids: Tensor) -> Tensor:
        key = tuple(int(i) for i in ids.tolist())
        if key not in self._cache:
            self._cache[key] = super().embeddings(ids)
        return self._cache[key]


def hybrid_generator(
    student: _CachedStudent, teacher: LatentTeacher, name: str, steps: int, nfe: int, w: float, device: torch.device
) -> T2IGenerator:
    """The hybrid with ``steps`` teacher Heun steps of the NFE-``nfe`` schedule as an eval-t2i generator; its
    ``info`` records the hand-over (sigma, student level) and the NFEs of the last batch."""
    info: dict = {"hybrid_steps": steps, "hybrid_nfe": nfe}
    teacher_nfe = 2 * steps + 1 if steps else 0  # N Heun steps (2 evaluations each) + the x0 at the hand-over

    def encode(prompts: list[str]) -> Tensor:
        ids = teacher.prompt_ids(prompts).to(device)
        teacher.prompt_table.embeddings(ids, len(prompts), device)  # fill the caches outside the clock
        teacher.prompt_table.embeddings(None, 1, device)
        student.embeddings(ids.cpu())
        return ids

    def sample(ids: Tensor, seed: int) -> Tensor:
        out = hybrid_sample(student, teacher, ids.shape[0], steps, nfe=nfe, class_labels=ids.tolist(), seed=seed,
                            guidance=w)  # fmt: skip
        info.update(handover_sigma=out.handover_sigma, student_start=out.student_start,
                    teacher_nfe=out.teacher_nfe, student_nfe=out.student_nfe)  # fmt: skip
        return out.images

    return T2IGenerator(name=f"hybrid N={steps} + student {name}", kind="hybrid", nfe=teacher_nfe + student.num_steps,
                        unet_evals=teacher_nfe * (1 if w == 1.0 else 2) + student.num_steps, cfg=w, encode=encode,
                        sample=sample, info=info)  # fmt: skip


def seed_diversity(
    gen: T2IGenerator, reward: CLIPReward, prompts: list[str], seeds: int, opts: T2IOptions
) -> dict[str, float]:
    """Diversity across ``seeds`` samples of each prompt (eval-t2i's seed-major batches and seeds): the mean and
    std over prompts of the per-prompt mean pairwise ``1 - cos``, and the per-pixel std across seeds."""
    device = torch.device(opts.device)
    images, _ = generate(gen, [p for _ in range(seeds) for p in prompts], opts.batch_size,
                         opts.seed + DIVERSITY_SEED_OFFSET, device)  # fmt: skip
    feats = reward_image_features(reward, images, opts.batch_size)
    s, d = seeds, len(prompts)
    feats, images = feats.view(s, d, -1), images.view(s, d, *images.shape[1:])
    per_prompt = torch.tensor([diversity_scores(feats[:, i : i + 1], images[:, i : i + 1])[0] for i in range(d)])
    _, pixel_std = diversity_scores(feats, images)
    std = float(per_prompt.std(correction=1)) if d > 1 else 0.0
    return {"diversity": float(per_prompt.mean()), "diversity_std": std, "pixel_std": pixel_std}


def t2i_generators(
    opts: T2IOptions, teacher: LatentTeacher, teacher_nfe: list[int], hybrid: list[int], hybrid_nfe: int
) -> list[T2IGenerator]:
    """The rows: the teacher at each NFE with CFG ``opts.guidance``, the student, its hybrids."""
    device = torch.device(opts.device)
    name = Path(opts.student).name
    gens = teacher_generators(teacher, teacher_nfe, [opts.guidance], device)
    gens.append(load_student_generator(opts.student, device, f"student {name}", teacher.sample_shape))
    student = _CachedStudent(LatentStudent.from_folder(opts.student, device))
    gens += [hybrid_generator(student, teacher, name, n, hybrid_nfe, opts.guidance, device) for n in hybrid]
    return gens


def t2i_rows(opts: T2IOptions, teacher_nfe: list[int], hybrid: list[int], hybrid_nfe: int) -> dict:
    """Every row of the emoji table (``fdistill eval-t2i``'s result dict, each row with its seed diversity)."""
    device = torch.device(opts.device)
    teacher = load_teacher(opts.teacher, None, device)
    table = teacher.prompts
    prompts = [table[i] for i in select_prompts(table, opts.num_prompts)]
    gens = t2i_generators(opts, teacher, teacher_nfe, hybrid, hybrid_nfe)
    reward = PreferenceReward.from_pretrained(str(opts.reward), table, device=device)
    real = load_real_images(opts.real, teacher.image_size, opts.num_real)
    result = evaluate_t2i(gens, reward, prompts, rank_pool=table, real_images=real, diversity_prompts=0,
                          batch_size=opts.batch_size, seed=opts.seed, device=device)  # fmt: skip
    for gen, row in zip(gens, result["rows"], strict=True):
        row.update(seed_diversity(gen, reward, prompts, opts.seeds, opts))
        row["seconds_per_image"] = row["ms_per_image"] / 1e3
    result.update(data="emoji", diversity_seeds=opts.seeds, diversity_prompts=prompts, hybrid_nfe=hybrid_nfe,
                  guidance=opts.guidance, teacher=opts.teacher, student=opts.student, reward=opts.reward)  # fmt: skip
    return result


def _nfe(r: dict) -> str:
    info = r.get("info") or {}
    if r["kind"] == "hybrid" and info.get("hybrid_steps"):
        return f"{r['nfe']} ({info['teacher_nfe']} + {info['student_nfe']})"
    return str(r["nfe"])


def _sigma(r: dict) -> str:
    sigma = (r.get("info") or {}).get("handover_sigma")
    return "-" if sigma is None else f"{sigma:.3g}"


def t2i_table(result: dict) -> str:
    """The Markdown table of :func:`t2i_rows`' result."""
    lines = [
        f"### emoji: {result['num_prompts']} prompts (match, R@1, FD), {len(result['diversity_prompts'])} prompts x "
        f"{result['diversity_seeds']} seeds (diversity), seed {result['seed']}, CFG w = {result['guidance']:g}",
        "",
        f"match = {result['reward_scale']:.4g} x cosine of the caption-match model, mean +- std over images; R@1 "
        f"against {result['rank_pool_size']} prompts; FD of caption-match embeddings vs {result['num_real']} real "
        "emoji (NOT Inception FID); diversity: per prompt the mean pairwise 1 - cos across seeds, mean +- std over "
        f"prompts; hybrids: the teacher's first N Heun steps of its NFE-{result['hybrid_nfe']} schedule (CFG w), "
        "NFE = total (teacher + student); UNet evals double the teacher's with CFG",
        "",
        "| model | NFE | UNet evals | ms/image | hand-over sigma | match | R@1 | FD (caption-match) | diversity | "
        "pixel std |",
        "|" + "---|" * 10,
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['name']} | {_nfe(r)} | {r['unet_evals']} | {r['ms_per_image']:.3g} | {_sigma(r)} | "
            f"{r['match']:.3f} +- {r['match_std']:.3f} | {r['R@1']:.3f} | {r['fd_caption_match']:.4f} | "
            f"{r['diversity']:.4f} +- {r['diversity_std']:.4f} | {r['pixel_std']:.4f} |"
        )
    return "\n".join(lines) + "\n"
