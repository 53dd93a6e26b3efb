"""Teacher training: EDM denoising score matching of an :class:`~fdistill.nets.unet.EDMUNet` (Karras et al. 2022),
or (``model: sd_latent``) a Stable-Diffusion-style text-to-image teacher (:mod:`.latent_recipe`).

One documented loop (NVlabs/edm ``training_loop.py`` in spirit, on accelerate; :mod:`.trainer`):

- ``sigma ~ LogNormal(P_mean=-1.2, P_std=1.2)``, loss ``lambda(sigma) * mean_chw (D(x + sigma eps) - x)^2`` with
  ``lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` (EDM Eq. 8 / Table 1;
  :func:`fdistill.core.noise.denoising_score_matching_loss`, docs/math.md §1.3; :mod:`.edm_recipe`);
- class labels replaced by the null label with probability ``label_dropout`` (classifier-free guidance,
  Ho & Salimans 2022), so the teacher has both branches of ``D_u + w (D_c - D_u)`` (:mod:`fdistill.core.guidance`);
- EMA of the weights with EDM's half-life in images and ramp-up (``beta = 0.5 ** (B / min(h, r * nimg))``);
  the EMA network is the teacher that is exported (``save_pretrained``) and sampled;
- exact resume (:mod:`.state`): data order is a per-epoch permutation seeded by ``(seed, epoch)`` and indexed by the
  step, and every random draw of a step (sigma, eps, label dropout, network dropout) comes from
  :func:`fdistill.train.loop.step_generator` of ``(seed, step, phase, rank)``; ``accelerator.save_state`` stores
  model, optimizer, LR schedule, EMA and counters.

Usable as ``fdistill train-teacher CONFIG [key=value ...] [--resume latest|PATH] [--dry-run]`` (:func:`main`,
:mod:`.cli`; the schema is :mod:`fdistill.config.teacher`) or from Python (:func:`train_teacher`). The run directory
(``output_dir``) holds ``config.yaml``, ``metrics.jsonl``, TensorBoard logs, ``samples/*.png``, ``checkpoints/step_*``
and the EMA export ``teacher/`` (``EDMUNet.from_pretrained(run_dir / "teacher")``); ``--export DEST`` writes a model
card folder (:mod:`.card`).
"""

from fdistill.config.teacher import TeacherTrainConfig, load_teacher_config, teacher_config_yaml
from fdistill.train.teacher.card import export_card, export_latent_card, held_out_dsm_loss
from fdistill.train.teacher.cli import build_parser, main
from fdistill.train.teacher.edm_recipe import EDMRecipe, sample_grid
from fdistill.train.teacher.state import StepSampler, ema_beta
from fdistill.train.teacher.trainer import build_recipe, train_teacher

__all__ = [
    "EDMRecipe",
    "StepSampler",
    "TeacherTrainConfig",
    "build_parser",
    "build_recipe",
    "ema_beta",
    "export_card",
    "export_latent_card",
    "held_out_dsm_loss",
    "load_teacher_config",
    "main",
    "sample_grid",
    "teacher_config_yaml",
    "train_teacher",
]
