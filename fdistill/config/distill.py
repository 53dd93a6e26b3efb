"""The distillation run's configuration (``fdistill distill``): schema, method recipes and validation.

A run is described by one :class:`Config`. :func:`load_config` merges, in order, the schema defaults, a YAML preset
and ``key=value`` overrides (:func:`fdistill.config.schema.merge_layers`); any key the schema does not know, or a
value of the wrong type, raises :class:`ConfigError` with one line that names the key and what is accepted; so do
non-finite floats and numbers outside their range (:data:`RANGES`: rates >= 0, betas and decays in [0, 1), step
counts >= 1, ...), checked after the method's recipe (fdistill/methods/recipes.py, docs/math.md §3) fills its keys.
The keys ``teacher.kind``, ``teacher.means``, ``teacher.stds``, ``teacher.weights``, ``method.name``,
``method.divergence``, ``method.alpha``, ``train.steps``, ``train.batch_size``, ``seed`` and ``output_dir`` are a
public contract.

``method`` is one flat section shared by all methods so that switching ``method.name`` alone switches the method;
each method reads the fields it documents and the trainer warns about set fields the chosen method ignores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf

from fdistill import methods
from fdistill.config.schema import ConfigError, known_keys, merge_layers, opt, to_dataclass
from fdistill.core import divergences
from fdistill.core.noise import SigmaSampler
from fdistill.data import DATASETS
from fdistill.methods.recipes import DISC_WEIGHT, SIDA_DISC_WEIGHT, recipe_for
from fdistill.nets.generator import check_student_sigmas
from fdistill.teachers.gmm import GENERATOR_NETWORKS

RECIPE = "null = the method's recipe"


@dataclass
class TeacherConfig:
    kind: str = opt("gmm", "gmm | unet | latent")
    means: Any = opt(None, "gmm: component means, K points of dimension d")
    stds: Any = opt(None, "gmm: isotropic std of each component (K numbers)")
    weights: Any = opt(None, "gmm: component weights (K numbers, normalised)")
    conditional: bool = opt(False, "gmm: condition on the component label (enables CFG)")
    path: str | None = opt(None, "unet / latent: a local diffusers folder or a hub id")
    subfolder: str | None = opt(None, "unet / latent: subfolder of teacher.path holding the model")
    dtype: str = opt("float32", "frozen teacher precision: float32 | bfloat16 | float16")
    sample_nfe: int = opt(18, "teacher sampler steps used for sample grids / comparisons")
    prompts_file: str | None = opt(None, "latent: one prompt a line; cond = prompt id (none = empty prompt only)")
    prompt_cache: bool = opt(True, "latent: cache prompt embeddings (N x L x D in teacher.dtype) on first use")
    lora_rank: int = opt(0, "latent: > 0 trains LoRA adapters of this rank on the generator / fake UNet copies")
    lora_alpha: float | None = opt(None, "latent: LoRA scale numerator (null = lora_rank, i.e. scale 1)")
    gradient_checkpointing: bool = opt(False, "unet, latent: gradient checkpointing in the trainable UNet copies")
    variant: str | None = opt(None, "latent: diffusers weight variant to load, e.g. fp16")


@dataclass
class DataConfig:
    """Real data for the discriminator (image teachers); analytic teachers sample their own."""

    name: str = opt("fashion_mnist", "real data set: " + " | ".join(DATASETS))
    root: str | None = opt(None, "the data set's folder (captioned_folder: required); null = its default location")
    image_size: int | None = opt(None, "captioned_folder / emoji: image side; null = the loader's (64 / 512)")
    limit: int | None = opt(None, "captioned_folder / emoji: keep the first N images; null = all")


@dataclass
class NetworkConfig:
    """Student networks built from scratch (analytic teachers). Image teachers copy the teacher net."""

    hidden: int = opt(256, "gmm: MLP width of the generator / fake score")
    depth: int = opt(4, "gmm: MLP depth")
    sigma_data: float | None = opt(None, "EDM preconditioning sigma_data; null takes the teacher's data std")
    generator: str = opt("denoiser", "gmm: the generator's network, 'denoiser' (the fake score's EDM MLP, called at "
                         "sigma_init) or 'mlp' (a plain MLP of z, docs/math.md §5.1)")  # fmt: skip


@dataclass
class MethodConfig:
    name: str = opt("dmd", "a registered method: " + " | ".join(methods.names()))
    divergence: str = opt("rkl", "fdistill, uni_instruct: " + " | ".join(divergences.names()))
    divergence_alpha: float = opt(0.5, "parameter of the 'alpha' divergence")
    alpha: float = opt(1.2, "sid: alpha of the SiD loss (0.5 = exact Fisher gradient, 1 = SIM-l2)")
    distance: str = opt("pseudo_huber", "sim, di_star: pseudo_huber | l2")
    huber_c: float = opt(1.0, "sim, di_star: pseudo-Huber c (on the score difference)")
    normalize: bool = opt(True, "dmd, sid: per-sample L1 normaliser 1/mean|x0 - D_p|")
    guidance: float = opt(1.0, "teacher CFG scale for the reference score, w = 1 means off")
    gan_weight: float = opt(
        0.0,
        "non-saturating GAN term on the generator (dmd, fdistill, uni_instruct); "
        "sid: SiDA, scaled by numel / wf like the SiD term (SiDA CIFAR-10: 1e-4)",
    )
    disc_features: str = opt("fake", "discriminator head on 'fake' score or 'teacher' encoder features")
    disc_sigma: str | None = opt(
        None,
        "where the head is trained: 'generator' (DMD2: the generator loss's sigma, BCE x disc_weight) | 'fake' "
        "(SiDA: the fake score's DSM sigma and noise, BCE x disc_weight x mean lambda / (2 numel)); null: recipe",
    )
    disc_weight: float | None = opt(
        None, "disc BCE weight in the fake phase; null: 1 (SiDA's lsd) at disc_sigma fake, 0.01 on fake feats, else 1"
    )
    logit_clip: float = opt(10.0, "fdistill, uni_instruct: |logit| clamp before r = exp(logit)")
    ratio_min: float = opt(0.1, "fdistill: lower clip of the density ratio r")
    ratio_max: float = opt(20.0, "fdistill: upper clip of the density ratio r")
    ratio_bins: int = opt(10, "fdistill: per-noise-level E_q[r]=1 normalisation (log-sigma bins; 0 = off)")
    ratio_ema: float = opt(0.99, "fdistill: per-call decay of the per-bin ratio sums and counts (0 = batch)")
    normalize_h: bool = opt(True, "fdistill, uni_instruct: h / batch-mean(h)")
    alpha_rev: float = opt(0.0, "di_star: reward weight")
    alpha_cfg: float = opt(0.0, "di_star: CFG omega folded into the reference score (guidance = 1 + omega)")
    sigma: str | None = opt(
        None, f"generator sigma distribution ({' | '.join(SigmaSampler.KINDS)}); null = the paper's"
    )
    sigma_params: dict[str, float] = opt({}, "SigmaSampler fields, e.g. {p_mean: 0.0, p_std: 1.2} or {t_lo: 20}")
    fake_sigma: str | None = opt(None, "fake-score DSM distribution: a kind or 'same' (the generator's); " + RECIPE)
    fake_sigma_params: dict[str, float] = opt({}, "as method.sigma_params, for method.fake_sigma")


@dataclass
class RewardConfig:
    kind: str = opt("none", "none | gmm_component | classifier | clip | preference")
    component: int = opt(0, "gmm_component: reward = log N(x; mu_k, s_k^2 I) of this component")
    path: str | None = opt(None, "clip / preference: a folder or hub id; classifier: a folder (null: the shipped one)")
    tokenizer_path: str | None = opt(None, "clip / preference: tokenizer folder or hub id (null = reward.path)")
    scale: float | None = opt(None, "score = scale * cos(image, text); null = 100 (clip), logit_scale.exp()")
    dtype: str = opt("float32", "clip / preference: reward model precision: float32 | bfloat16 | float16")


@dataclass
class TrainConfig:
    steps: int = opt(2000, "generator updates in total (a resumed run continues to this number)")
    batch_size: int = opt(256, "samples per update and process")
    grad_accum: int = opt(1, "micro-batches per update (batch_size must be a multiple)")
    lr_generator: float = opt(1e-4, "generator AdamW learning rate")
    lr_fake: float = opt(1e-4, "fake-score AdamW learning rate")
    lr_disc: float = opt(1e-4, "discriminator AdamW learning rate")
    adam_beta1: float | None = opt(None, "AdamW beta1; " + RECIPE)
    adam_beta2: float | None = opt(None, "AdamW beta2; " + RECIPE)
    weight_decay: float | None = opt(None, "AdamW weight decay; " + RECIPE)
    fake_updates: int = opt(1, "fake-score (and discriminator) updates per generator update")
    fake_warmup_steps: int = opt(0, "fake/discriminator-only steps before the generator starts")
    sigma_init: float | None = opt(None, "G(z) = D_theta(sigma_init z, sigma_init); " + RECIPE + " (SiD 2.5, DMD2 80)")
    generator_input: str = opt("ve", "ve: x_in = sigma_init z; vp: x_in = sqrt(1 + sigma_init^2) z (SD students)")
    student_steps: int = opt(1, "K-step student trained by backward simulation (docs/math.md §2.10); 1 = one-step")
    student_sigmas: list[float] | None = opt(None, "the K decreasing levels, first = sigma_init; null = sigma_init "
                                             "then K-1 Karras-spaced levels")  # fmt: skip
    ema_decay: float = opt(0.999, "EMA decay of the exported generator")
    grad_clip: float | None = opt(
        None, "max grad norm for every network; 0 = off (norm still logged); " + RECIPE + " (DMD2 10)"
    )
    mixed_precision: str = opt("no", "no | bf16 (fp16 is refused)")
    checkpoint_every: int = opt(500, "steps between checkpoints")
    keep_checkpoints: int = opt(2, "checkpoints kept (older ones are deleted)")
    log_every: int = opt(25, "steps between metrics.jsonl rows")
    eval_every: int = opt(0, "steps between proxy evaluations inside training; 0 = only at the end")
    max_nonfinite: int = opt(5, "consecutive non-finite steps before the run stops")
    max_minutes: float = opt(0.0, "wall-clock budget: checkpoint, evaluate and stop when spent (0 = none)")
    init_generator: str | None = opt(None, "start the generator from an exported student folder (its unet/)")
    init_fake: str | None = opt(None, "start the fake score and head from a student folder (train.export_fake)")
    export_fake: bool = opt(False, "also save the fake score and head in RUN/student (for train.init_fake)")
    num_eval_samples: int = opt(4096, "student samples of the evaluation")
    num_workers: int = opt(0, "data loader workers")


@dataclass
class Config:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = opt(0, "seed of every random draw (networks, noise, evaluation)")
    output_dir: str = opt("runs/default", "the run directory")
    name: str = opt(MISSING, "run name (default: the preset's file name)")


CHOICES: dict[str, tuple[str, ...]] = {
    "teacher.kind": ("gmm", "unet", "latent"),
    "teacher.dtype": ("float32", "bfloat16", "float16"),
    "method.distance": ("pseudo_huber", "l2"),
    "method.disc_features": ("fake", "teacher"),
    "method.disc_sigma": ("generator", "fake"),  # null: the method's recipe (apply_recipe)
    "train.mixed_precision": ("no", "bf16", "fp16"),
    "train.generator_input": ("ve", "vp"),
    "network.generator": GENERATOR_NETWORKS,
    "reward.kind": ("none", "gmm_component", "classifier", "clip", "preference"),
    "reward.dtype": ("float32", "bfloat16", "float16"),
}


def _validate(cfg: Config) -> None:
    for key, accepted in CHOICES.items():
        value = OmegaConf.select(OmegaConf.structured(cfg), key)
        if value is not None and value not in accepted:  # only an optional (recipe-filled) key can be null
            raise ConfigError(f"{key}={value!r} is not accepted; choose one of: {', '.join(accepted)}")
    if cfg.method.name not in methods.names():
        raise ConfigError(
            f"method.name={cfg.method.name!r} is unknown; registered methods: {', '.join(methods.names())}"
        )
    if cfg.method.divergence not in divergences.names():
        raise ConfigError(
            f"method.divergence={cfg.method.divergence!r} is unknown; registered: {', '.join(divergences.names())}"
        )
    apply_recipe(cfg)
    if cfg.data.name not in DATASETS:
        raise ConfigError(f"data.name={cfg.data.name!r} is unknown; accepted: {', '.join(DATASETS)}")
    for key in ("data.image_size", "data.limit"):
        value = OmegaConf.select(OmegaConf.structured(cfg), key)
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value} must be >= 1 (or null for the loader's default)")
    for key in ("train.steps", "train.batch_size", "train.grad_accum", "train.fake_updates"):
        value = OmegaConf.select(OmegaConf.structured(cfg), key)
        if value < 1:
            raise ConfigError(f"{key}={value} must be >= 1")
    _validate_numbers(cfg)
    _validate_student_steps(cfg.train)
    if cfg.train.mixed_precision == "fp16":
        raise ConfigError(
            "train.mixed_precision=fp16 is refused: the fake score, discriminator and generator share accelerate's one "
            "GradScaler, which cannot unscale and skip their steps separately; use bf16 (DMD2: fp16 diverged)"
        )
    _validate_sigma(cfg.method)
    if cfg.teacher.kind == "gmm":
        _validate_gmm(cfg.teacher)
    elif cfg.network.generator != "denoiser":
        raise ConfigError(f"network.generator={cfg.network.generator} is for teacher.kind=gmm; a {cfg.teacher.kind} "
                          "teacher's generator is a copy of its network")  # fmt: skip


#: numeric keys and the interval they must lie in ("[0, inf)": finite and >= 0; "[0, inf]": inf allowed); null is
#: accepted where the schema allows it. Everything else that is a float must be finite (see ``INFINITE_OK``).
RANGES: dict[str, str] = {
    "train.lr_generator": "[0, inf)",
    "train.lr_fake": "[0, inf)",
    "train.lr_disc": "[0, inf)",
    "train.adam_beta1": "[0, 1)",
    "train.adam_beta2": "[0, 1)",
    "train.weight_decay": "[0, inf)",
    "train.fake_warmup_steps": "[0, inf)",
    "train.sigma_init": "(0, inf)",
    "train.ema_decay": "[0, 1]",
    "train.grad_clip": "[0, inf]",
    "train.checkpoint_every": "[1, inf)",
    "train.keep_checkpoints": "[0, inf)",
    "train.log_every": "[1, inf)",
    "train.eval_every": "[0, inf)",
    "train.max_nonfinite": "[1, inf)",
    "train.max_minutes": "[0, inf]",
    "train.num_eval_samples": "[1, inf)",
    "train.num_workers": "[0, inf)",
    "network.hidden": "[1, inf)",
    "network.depth": "[1, inf)",
    "network.sigma_data": "(0, inf)",
    "teacher.sample_nfe": "[1, inf)",
    "teacher.lora_rank": "[0, inf)",
    "teacher.lora_alpha": "(0, inf)",
    "method.huber_c": "(0, inf)",
    "method.gan_weight": "[0, inf)",
    "method.disc_weight": "[0, inf)",
    "method.logit_clip": "(0, inf]",
    "method.ratio_min": "(0, inf)",
    "method.ratio_max": "(0, inf]",
    "method.ratio_bins": "[0, inf)",
    "method.ratio_ema": "[0, 1)",
    "reward.component": "[0, inf)",
}
INFINITE_OK = {k for k, interval in RANGES.items() if interval.endswith("inf]")}


def _in_interval(value: float, interval: str) -> bool:
    lo, hi = (float(v) for v in interval[1:-1].split(","))
    above = value > lo or (interval[0] == "[" and value == lo)
    below = value < hi or (interval[-1] == "]" and value == hi)
    return above and below  # NaN is in no interval


def _describe(interval: str, value: float) -> str:
    lo, hi = (v.strip() for v in interval[1:-1].split(","))
    if hi == "inf":
        finite = "a finite number " if interval[-1] == ")" and isinstance(value, float) else ""
        return f"{finite}{'>=' if interval[0] == '[' else '>'} {lo}"
    return f"in {interval}"


def _validate_numbers(cfg: Config) -> None:
    """Every float is a finite number (NaN and inf only where ``INFINITE_OK``), every ``RANGES`` key in its range."""
    tree = OmegaConf.structured(cfg)
    for key in known_keys(Config):
        value = OmegaConf.select(tree, key)
        values = value.values() if OmegaConf.is_dict(value) else value if OmegaConf.is_list(value) else [value]
        flat = [v for item in values for v in (item if OmegaConf.is_list(item) else [item])]
        if key not in INFINITE_OK and any(isinstance(v, float) and not math.isfinite(v) for v in flat):
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            raise ConfigError(f"{key}={shown!r} must be finite (no nan or inf)")
        if key in RANGES and value is not None and not _in_interval(value, RANGES[key]):
            raise ConfigError(f"{key}={value!r} must be {_describe(RANGES[key], value)}")
    t, m = cfg.train, cfg.method
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.batch_size={t.batch_size} must be a multiple of train.grad_accum={t.grad_accum} "
                          "(the micro-batch is batch_size / grad_accum)")  # fmt: skip
    if m.ratio_min > m.ratio_max:
        raise ConfigError(f"method.ratio_min={m.ratio_min} must be <= method.ratio_max={m.ratio_max}")


def _validate_student_steps(t: TrainConfig) -> None:
    if t.student_steps < 1:
        raise ConfigError(f"train.student_steps={t.student_steps} must be >= 1 (1 = the one-step generator)")
    if t.student_sigmas is None:
        return
    if len(t.student_sigmas) != t.student_steps:
        raise ConfigError(
            f"train.student_sigmas has {len(t.student_sigmas)} levels but train.student_steps={t.student_steps}; "
            "give one level per step (or null for the default schedule)"
        )
    try:
        check_student_sigmas(t.student_sigmas, t.sigma_init)
    except ValueError as e:
        hint = "; set train.sigma_init to the first level" if "sigma_init" in str(e) else ""
        raise ConfigError(f"train.student_sigmas={list(t.student_sigmas)}: {e}{hint}") from None


def _validate_sigma(m: MethodConfig) -> None:
    for key, kind, extra in (("sigma", m.sigma, ()), ("fake_sigma", m.fake_sigma, ("same",))):
        if kind is not None and kind not in (*SigmaSampler.KINDS, *extra):
            raise ConfigError(f"method.{key}={kind!r}; choose one of: {', '.join((*SigmaSampler.KINDS, *extra))}")
    numeric = [f.name for f in fields(SigmaSampler) if f.name not in ("kind", "timestep_sigmas")]
    for key in ("sigma_params", "fake_sigma_params"):
        bad = [k for k in getattr(m, key) if k not in numeric]
        if bad:
            raise ConfigError(f"method.{key} has unknown parameter(s) {', '.join(bad)}; accepted: {', '.join(numeric)}")


def apply_recipe(cfg: Config) -> Config:
    """Fill the ``null`` recipe keys with the method's reference values (fdistill/methods/recipes.py); idempotent."""
    r, t, m = recipe_for(cfg.method.name), cfg.train, cfg.method
    for key, value in (("sigma_init", r.sigma_init), ("adam_beta1", r.adam_betas[0]), ("adam_beta2", r.adam_betas[1]),
                       ("weight_decay", r.weight_decay), ("grad_clip", r.grad_clip)):  # fmt: skip
        if getattr(t, key) is None:
            setattr(t, key, value)
    if m.fake_sigma is None:
        m.fake_sigma = r.fake_sigma
    if m.disc_sigma is None:
        m.disc_sigma = r.disc_sigma
    if m.disc_weight is None and "disc_weight" in methods.get(m.name).uses:
        m.disc_weight = SIDA_DISC_WEIGHT if m.disc_sigma == "fake" else DISC_WEIGHT[m.disc_features]
    return cfg


def _validate_gmm(t: TeacherConfig) -> None:
    if t.means is None:
        raise ConfigError("teacher.kind=gmm needs teacher.means, a list of points, e.g. teacher.means=[[0,0],[2,2]]")
    try:
        means = [[float(v) for v in m] for m in t.means]
    except (TypeError, ValueError):
        raise ConfigError(f"teacher.means must be a list of points (lists of numbers), got {t.means!r}") from None
    k, dims = len(means), {len(m) for m in means}
    if k == 0 or len(dims) != 1:
        raise ConfigError(f"teacher.means must hold K >= 1 points of one dimension, got dimensions {sorted(dims)}")
    for key in ("stds", "weights"):
        value = getattr(t, key)
        if value is not None and (
            not isinstance(value, (list, tuple)) and not OmegaConf.is_list(value) or len(value) != k
        ):
            raise ConfigError(f"teacher.{key} must be a list of {k} numbers (one per component), got {value!r}")
    numbers = {}
    for key in ("stds", "weights"):
        value = getattr(t, key)
        try:
            numbers[key] = None if value is None else [float(v) for v in value]
        except (TypeError, ValueError):
            raise ConfigError(f"teacher.{key} must be a list of {k} numbers, got {value!r}") from None
    if not all(math.isfinite(v) for m in means for v in m):
        raise ConfigError(f"teacher.means must be finite, got {means}")
    stds, weights = numbers["stds"], numbers["weights"]
    if stds is not None and not all(0 < s < math.inf for s in stds):
        raise ConfigError(f"teacher.stds must be positive and finite, got {list(t.stds)}")
    if weights is not None and (not all(0 <= w < math.inf for w in weights) or sum(weights) <= 0):
        raise ConfigError(f"teacher.weights must be non-negative and finite with a positive sum, got {list(t.weights)}")


def load_config(path: str | Path | None = None, overrides: Sequence[str] | None = None) -> Config:
    """Schema defaults <- YAML preset ``path`` <- ``key=value`` overrides, validated."""
    merged = merge_layers(Config, path, overrides or ())
    if OmegaConf.is_missing(merged, "name"):
        merged.name = Path(path).stem if path is not None else "run"
    cfg: Config = to_dataclass(merged, Config)
    _validate(cfg)
    return cfg


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(to_yaml(cfg))
