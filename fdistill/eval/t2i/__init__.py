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
- ``CLIP score`` (``--clip-model NAME_OR_PATH``): Hessel et al. 2021's ``100 * cos`` through torchmetrics'
  ``CLIPScore`` with the CLIP the user names (a ``save_pretrained`` folder or a hub id such as
  ``openai/clip-vit-large-patch14``), the number f-distill and DMD2 report beside zero-shot COCO FID.
- ``± s`` (``--splits S``, default 3): match, FD, Inception FID and CLIP score of S disjoint interleaved prompt sets,
  their mean and sample std; each student row is compared with each teacher row and the difference called
  larger than the noise when ``|diff| > 2 sqrt(s_student^2 + s_teacher^2)`` (the rule of ``fdistill eval
  --against-teacher``).
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
:func:`evaluate_t2i` (which also takes a real image tensor and any :class:`T2IGenerator`), re-exported here.

Modules: :mod:`~fdistill.eval.t2i.base` (the generator interface, the equal-noise contract),
:mod:`~fdistill.eval.t2i.inputs` (prompts, real images), :mod:`~fdistill.eval.t2i.generators` (teacher and
student rows, timed generation), :mod:`~fdistill.eval.t2i.metrics` (R@k, diversity, embeddings),
:mod:`~fdistill.eval.t2i.evaluate` (:func:`evaluate_t2i`), :mod:`~fdistill.eval.t2i.table` (the Markdown table),
:mod:`~fdistill.eval.t2i.command` (``main``).
"""

from fdistill.eval.t2i.base import EvalT2ISetupError, T2IGenerator, batch_noise
from fdistill.eval.t2i.command import main
from fdistill.eval.t2i.evaluate import evaluate_t2i
from fdistill.eval.t2i.generators import load_student_generator, load_teacher, teacher_generators
from fdistill.eval.t2i.inputs import load_real_images, select_prompts
from fdistill.eval.t2i.metrics import diversity_scores, retrieval_accuracy
from fdistill.eval.t2i.table import format_table

__all__ = [
    "EvalT2ISetupError",
    "T2IGenerator",
    "batch_noise",
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
