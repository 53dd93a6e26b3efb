"""Each method's training recipe as its reference code runs it (docs/math.md §5.1-5.3).

A config value left at ``null`` (``train.sigma_init``, ``train.adam_beta1``, ``train.adam_beta2``,
``train.weight_decay``, ``train.grad_clip``, ``method.fake_sigma``, ``method.disc_sigma``, ``method.disc_weight``)
takes the method's reference value from :data:`RECIPES` when the config is loaded, so ``--dry-run`` and the saved
``config.yaml`` show what a run really uses. The generator's sigma distribution is the method's
``default_sigma``; ``fake_sigma = "same"`` trains the fake score on exactly that distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Recipe:
    reference: str
    sigma_init: float  # G(z) = D_theta(sigma_init z, sigma_init)
    adam_betas: tuple[float, float]
    weight_decay: float  # AdamW's decoupled decay, every network
    grad_clip: float  # max grad norm per network, 0 = off
    fake_sigma: str  # fake-score DSM sigma distribution: a SigmaSampler kind, or "same" as the generator's
    disc_sigma: str = "generator"  # where a discriminator head is trained: "generator" (DMD2) or "fake" (SiDA)


_SID = Recipe("SiD (mingyuanzhou/SiD run_sid.sh, sid_training_loop.py; SiDA: SIDA_EDMLoss)", 2.5, (0.0, 0.999), 0.0,
              0.0, "lognormal", "fake")  # fmt: skip
_DMD2 = Recipe("DMD2 (tianweiy/DMD2 main/edm, experiments/imagenet)", 80.0, (0.9, 0.999), 0.01, 10.0, "same")

RECIPES: dict[str, Recipe] = {
    "di": Recipe("Diff-Instruct (pkulwj1994/diff_instruct README)", 1.0, (0.0, 0.999), 0.0, 0.0, "lognormal"),
    "dmd": _DMD2,
    "fdistill": replace(_DMD2, reference="f-distill (NVlabs/FastGen configs/methods/config_f_distill.py)"),
    "sid": _SID,
    "sim": replace(_SID, reference="SIM: no public training code; SiD's loop"),
    # its fsim_loss.py trains the head as SiDA does (disc_sigma "fake", SiD's); on ring8w DMD2's placement gave
    # better JS numbers (bench/results/gmm_ring8w_final_cpu.md, last section)
    "uni_instruct": replace(_SID, reference="Uni-Instruct (a-little-hoof/Uni_Instruct run_uni_instruct.sh, SiDA fork)"),
    "di_star": replace(_SID, reference="Diff-Instruct*: no public training code; SIM's (= SiD's) loop"),
}

#: DMD2's weight of the discriminator BCE on the fake-score backbone ("larger values break the fake score",
#: DMD2 #73); a head on frozen teacher features has its own optimizer, so any weight is only its scale: 1.
DISC_WEIGHT = {"fake": 1e-2, "teacher": 1.0}
#: SiDA's ``lsd``: with ``disc_sigma = "fake"`` the BCE is weighted like the DSM term it shares the update with
#: (``lsd * mean lambda(sigma) * mean BCE / (2 numel)``, :meth:`fdistill.train.distill.Distiller._discriminator_loss`)
SIDA_DISC_WEIGHT = 1.0


def recipe_for(name: str) -> Recipe:
    """The method's recipe; a method registered outside this package without one gets SiD's (no momentum, no
    clip, no decay: the conservative choice)."""
    return RECIPES.get(name, _SID)
