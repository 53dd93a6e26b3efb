"""The distillation trainer: one loop for every registered method (DESIGN.md "one distillation step").

Per iteration (each method's recipe, fdistill/methods/recipes.py, fills the config keys left null):
1. **Fake-score phase** (``train.fake_updates`` times; fake score and discriminator in train mode, the
   generator in eval mode): ``x_g = G(z)`` without gradients, EDM denoising score matching of ``D_q`` on
   them (ALGORITHMS.md §1.3) at ``method.fake_sigma`` (DMD2/FastGen: the generator's own distribution,
   SiD: EDM's lognormal); where the method needs a density ratio or a GAN term, the discriminator is
   trained in the same phase with BCE on real vs generated samples with the real batch's labels, noised
   with the same sigma and noise, its loss reaching the fake-score backbone at ``disc_weight`` when the head
   sits on fake-score features: at the generator loss's sigma (DMD2: weight 1e-2) or, ``method.disc_sigma =
   fake`` (SiDA), at the DSM term's own sigma and noise, weighted like that term.
2. **Generator phase** (from ``train.fake_warmup_steps`` on; only the generator in train mode): ``x0 =
   G(z)``, ``sigma`` from the method's distribution, the method's per-sample loss with the teacher, the
   fake score and the discriminator frozen (parameters frozen, differentiable in their input), then clip,
   step, EMA.

A K-step student (``train.student_steps`` = K > 1, docs/math.md §2.10) is trained by backward simulation: each
sample of both phases draws a step ``k ~ U{1..K}``, its chain runs steps ``1..k-1`` without gradients and the phase
uses ``x0 = D_theta(x_k, sigma_k)`` (with gradients in the generator phase): every step is trained on its own
sampling-time inputs and the fake score on the outputs of every step. K = 1 draws nothing extra.

Gradient accumulation runs ``train.grad_accum`` micro-batches per update for every network, syncing
DDP gradients on the last one only. Every random draw comes from a generator seeded by a hash of
(seed, step, phase, micro-batch, process), so ``--resume latest`` continues bit-for-bit, also after SIGTERM /
SIGINT (the current step is finished and checkpointed, then the run returns) or SIGKILL. Non-finite
losses or gradients skip the update (nothing is written), are counted and stop the run after
``train.max_nonfinite`` in a row with a message naming the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from torch import Tensor, nn
from tqdm.auto import tqdm

from fdistill import methods
from fdistill.config import Config, ConfigError, apply_recipe, save_config
from fdistill.core.noise import SigmaSampler, append_dims, denoising_score_matching_loss, edm_loss_weight
from fdistill.methods.base import GeneratorInputs
from fdistill.rewards import build_reward
from fdistill.teachers import build_teacher
from fdistill.train.checkpoint import (
    DistillState,
    any_process,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from fdistill.train.ema import EMA, full
from fdistill.train.latent_eval import evaluate_latent_run
from fdistill.train.loop import (
    Budget,
    GracefulStop,
    NonFiniteError,
    frozen,
    grads_finite,
    step_generator,
    stopped_message,
    truncate_metrics,
)
from fdistill.train.metrics_log import MetricsLog, by_noise_level, flat_hparams
from fdistill.train.networks import (
    RealData,
    build_networks,
    prepare_networks,
    save_fake_weights,
    warn_ignored_method_fields,
)
from fdistill.train.run_eval import EvalInputs, ScorerCache, evaluate_run

__all__ = ["Distiller", "NonFiniteError", "RealData", "distill"]  # RealData: re-exported for callers

log = logging.getLogger("fdistill")


_GLOBAL_PHASE = 1_000_000  # torch's global RNG of a step (phases: 0 generator, 1 + k the k-th fake update)


class Distiller:
    """Holds the networks, optimizers and state of one distillation run; :meth:`run` is the loop."""

    def __init__(self, cfg: Config, resume: str | None = None) -> None:
        self.cfg = cfg = apply_recipe(cfg)
        self.run_dir = Path(cfg.output_dir)
        tc = cfg.train
        self.accelerator = Accelerator(
            mixed_precision=tc.mixed_precision, log_with="tensorboard", project_dir=str(self.run_dir)
        )
        acc = self.accelerator
        set_seed(cfg.seed)
        self.teacher = build_teacher(cfg).to(acc.device).eval().requires_grad_(False)
        self.method = methods.build(cfg.method).to(acc.device)
        warn_ignored_method_fields(cfg.method, self.method)
        mc = cfg.method
        self.sigma_gen = self._sigma_sampler(SigmaSampler(mc.sigma) if mc.sigma else self.method.default_sigma,
                                             mc.sigma_params)  # fmt: skip
        same = mc.fake_sigma == "same"
        self.sigma_fake = self.sigma_gen if same else self._sigma_sampler(SigmaSampler(mc.fake_sigma),
                                                                          mc.fake_sigma_params)  # fmt: skip
        log.info("sigma: generator %s, fake score %s", self.sigma_gen, "same" if same else self.sigma_fake)
        self.reward = build_reward(cfg, self.teacher)
        self.real = RealData(cfg, self.teacher) if self.method.needs_discriminator else None

        nets = build_networks(cfg, self.teacher, self.method)
        self.ema = EMA(nets.generator, tc.ema_decay).to(acc.device)
        nets, (self.opt_g, self.opt_f, self.opt_d) = prepare_networks(acc, nets, tc)
        self.generator, self.fake, self.disc = nets.generator, nets.fake, nets.discriminator
        self.state = DistillState()
        acc.register_for_checkpointing(self.ema, self.method, self.state)

        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        ckpt = resolve_resume(self.run_dir, resume)
        if ckpt is not None:
            load_checkpoint(acc, ckpt)
            log.info("resumed from %s at step %d", ckpt, self.state.step)
        if acc.is_main_process:
            self._drop_metrics_after(ckpt)
        self.metrics = MetricsLog(acc, self.run_dir)
        self.scorers = ScorerCache()

    def _drop_metrics_after(self, ckpt: Path | None) -> None:
        """``metrics.jsonl`` keeps the rows up to the state the run starts from: those logged before the resumed
        checkpoint was written, none for a run starting at step 0 (a killed attempt's rows are logged again)."""
        path, st = self.run_dir / "metrics.jsonl", self.state
        own = ckpt is not None and ckpt.resolve().parent.parent == self.run_dir.resolve()
        size = 0 if ckpt is None else st.metrics_bytes if own and st.metrics_bytes >= 0 else None
        if dropped := truncate_metrics(path, st.step, size):
            since = f"after the checkpoint of step {st.step}" if ckpt is not None else "by an earlier attempt"
            log.warning("%s: dropped %d row(s) logged %s (they are logged again)", path, dropped, since)

    def _sigma_sampler(self, sampler: SigmaSampler, params: dict[str, float]) -> SigmaSampler:
        """``sampler`` with ``params`` applied, the VP teacher's timestep table attached for ``ddpm_uniform``, and
        [sigma_min, sigma_max] narrowed to the teacher's (a DDPM-trained latent teacher has sigma in [0.029, 14.6]:
        draws outside would all be clamped to its first or last timestep)."""
        ints = {"grid_lo", "grid_hi", "t_lo", "t_hi"}
        sampler = dataclasses.replace(sampler, **{k: int(v) if k in ints else float(v) for k, v in params.items()})
        if sampler.kind == "ddpm_uniform":
            table = self.teacher.timestep_sigmas
            if table is None:
                raise ConfigError("method.sigma / fake_sigma = ddpm_uniform needs a VP (DDPM) teacher; this one is EDM")
            sampler = dataclasses.replace(sampler, timestep_sigmas=tuple(float(v) for v in table))
        lo, hi = self.teacher.sigma_min, self.teacher.sigma_max
        return dataclasses.replace(sampler, sigma_min=max(sampler.sigma_min, lo), sigma_max=min(sampler.sigma_max, hi))

    # ---- pieces of one iteration --------------------------------------------------------------

    def _noise(self, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
        return torch.randn(shape, generator=gen).to(self.accelerator.device)

    def _latents(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor | None]:
        z = self._noise((n, *self.teacher.sample_shape), gen)
        cond = self.teacher.sample_labels(n, gen, "cpu")
        return z, None if cond is None else cond.to(self.accelerator.device)

    def _chain_draws(self, n: int, gen: torch.Generator) -> tuple[Tensor | None, Tensor | None]:
        """Backward simulation of a K-step student (docs/math.md §2.10): a step ``k ~ U{1..K}`` per sample and the
        ``(K - 1, n, ...)`` re-noising draws of its chain, from the phase's generator; nothing is drawn when K = 1
        (the one-step path's random stream is unchanged)."""
        steps = self.cfg.train.student_steps
        if steps == 1:
            return None, None
        k = torch.randint(1, steps + 1, (n,), generator=gen).to(self.accelerator.device)
        return k, self._noise((steps - 1, n, *self.teacher.sample_shape), gen)

    def _disc_logit(self, disc: nn.Module, fake_net: nn.Module):
        source = fake_net if self.cfg.method.disc_features == "fake" else self.teacher

        def logit(x_t: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
            return disc(source.features(x_t, sigma, cond), sigma)

        return logit

    def _teacher_fn(self):
        w = self.method.teacher_guidance

        def denoise(x_t: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
            return self.teacher.denoise(x_t, sigma, cond, guidance=w)

        return denoise

    def _train_only(self, *modules: nn.Module | None) -> None:
        """Train mode for the networks being updated, eval mode (no dropout) for the frozen ones: dropout teachers
        then give one D_p / D_q per input (SiD: dropout only in the network being updated)."""
        for m in (self.generator, self.fake, self.disc):
            if m is not None:
                m.train(any(m is u for u in modules))

    def fake_phase(self, step: int, k: int) -> dict[str, Tensor]:
        acc, tc = self.accelerator, self.cfg.train
        micro = tc.batch_size // tc.grad_accum
        logs: dict[str, Tensor] = {}
        modules = [m for m in (self.fake, self.disc) if m is not None]
        self._train_only(*modules)
        for i in range(tc.grad_accum):
            gen = step_generator(self.cfg.seed, step, 1 + k, acc.process_index, i)
            z, cond = self._latents(micro, gen)
            k_sim, chain_noise = self._chain_draws(micro, gen)  # the student's output at a random step of its chain
            real = None
            if self.disc is not None:  # the fake batch takes the real batch's labels / prompts: p(c) cancels in r
                real = self.real.sample(micro, gen, acc.device)
                cond = real[1] if real[1] is not None else cond
            sync = i == tc.grad_accum - 1
            ctx = contextlib.ExitStack()
            if not sync:
                for m in modules:
                    ctx.enter_context(acc.no_sync(m))
            with ctx, acc.autocast():
                with torch.no_grad():
                    x_g = self._generate(z, cond, chain_noise, k_sim).float()
                sigma = self.sigma_fake(micro, gen).to(acc.device)
                eps = self._noise(x_g.shape, gen)
                loss_fake = denoising_score_matching_loss(
                    lambda x, s, c=cond: self.fake(x, s, c), x_g, sigma, eps, self.teacher.sigma_data
                ).mean()
                loss = loss_fake
                logs["loss/fake"] = loss_fake.detach()
                if self.disc is not None:
                    at_fake = self.cfg.method.disc_sigma == "fake"  # SiDA: the DSM term's sigma and noise
                    loss_d, dlogs = self._discriminator_loss(x_g, cond, real, gen, (sigma, eps) if at_fake else None)
                    loss = loss + self.cfg.method.disc_weight * loss_d
                    logs.update(dlogs)
                acc.backward(loss / tc.grad_accum)
        return logs

    def _discriminator_loss(
        self, x_g: Tensor, cond: Tensor | None, real: tuple, gen: torch.Generator, noise: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """BCE on real vs generated samples (same labels, same sigma and eps), in one forward of the (possibly
        wrapped) head; features from the fake score reach its backbone (DMD2; under FSDP2 through its wrapper, as
        ``features`` is a registered FSDP forward method: :func:`fdistill.train.networks.prepare_networks`).

        ``noise = None`` (DMD2): fresh draws at the generator loss's sigma, the batch-mean BCE. ``noise = (sigma,
        eps)`` of the DSM term (SiDA): the BCE weighted like that term, ``mean lambda(sigma) * BCE / (2 numel)``
        (docs/math.md §2.3: SiDA's DSM error is a sum over the pixels, ours a mean)."""
        acc = self.accelerator
        (x_real, cond_real), n = real, x_g.shape[0]
        sigma, eps = noise or (self.sigma_gen(n, gen).to(acc.device), self._noise(x_g.shape, gen))
        sigma2, eps2 = sigma.repeat(2), eps.repeat(2, *([1] * (x_g.ndim - 1)))
        x_t = torch.cat([x_real, x_g]) + append_dims(sigma2, x_g.ndim) * eps2
        both = None if cond is None else torch.cat([cond_real, cond])
        source = acc.unwrap_model(self.fake) if self.cfg.method.disc_features == "fake" else self.teacher
        logits = self.disc(source.features(x_t, sigma2, both), sigma2)
        l_real, l_fake = logits[:n], logits[n:]
        per_sample, sd = self.method.discriminator_loss(l_real, l_fake), self.teacher.sigma_data
        bce = per_sample.mean()
        weight = 1.0 if noise is None else edm_loss_weight(sigma, sd).mean() / (2 * x_g[0].numel())
        logs = {"loss/disc": bce, "disc/logit_real": l_real.mean(), "disc/logit_fake": l_fake.mean(),
                **by_noise_level("disc/bce", per_sample, sigma, sd)}  # fmt: skip
        return weight * bce, {k: v.detach() for k, v in logs.items()}

    def generator_phase(self, step: int) -> dict[str, Tensor]:
        acc, tc = self.accelerator, self.cfg.train
        micro = tc.batch_size // tc.grad_accum
        fake_raw, disc_raw = self._frozen_view(self.fake), self._frozen_view(self.disc)
        logs: dict[str, Tensor] = {}
        self._train_only(self.generator)
        for i in range(tc.grad_accum):
            gen = step_generator(self.cfg.seed, step, 0, acc.process_index, i)
            z, cond = self._latents(micro, gen)
            k_sim, chain_noise = self._chain_draws(micro, gen)
            sync = i == tc.grad_accum - 1
            ctx = contextlib.nullcontext() if sync else acc.no_sync(self.generator)
            with ctx, acc.autocast(), frozen(fake_raw, disc_raw):
                x0 = self._generate(z, cond, chain_noise, k_sim)
                sigma = self.sigma_gen(micro, gen).to(acc.device)
                inputs = GeneratorInputs(
                    x0=x0,
                    sigma=sigma,
                    eps=self._noise(x0.shape, gen),
                    teacher=self._teacher_fn(),
                    fake=lambda x, s, c: fake_raw(x, s, c),
                    cond=cond,
                    logit=self._disc_logit(disc_raw, fake_raw) if disc_raw is not None else None,
                    reward=self.reward,
                    all_reduce_sum=self._all_reduce_sum,
                )
                out = self.method.generator_loss(inputs)
                loss = out.loss.float().mean()
                acc.backward(loss / tc.grad_accum)
            logs["loss/generator"] = loss.detach()
            logs.update({f"method/{k}": v for k, v in out.logs.items()})
        return logs

    def _generate(self, z: Tensor, cond: Tensor | None, noise: Tensor | None, k: Tensor | None) -> Tensor:
        """``G(z)`` (K = 1, the call of a one-step run) or the K-step student's x0 at step ``k`` by backward
        simulation, in one forward of the (possibly wrapped) generator."""
        if k is None:
            return self.generator(z, cond)
        return self.generator(z, cond, noise=noise, step=k)

    def _frozen_view(self, module: nn.Module | None) -> nn.Module | None:
        """The module to call with frozen parameters in the generator step: the unwrapped one under DDP
        (a DDP forward would expect gradients for its parameters), the wrapper itself under FSDP (its
        forward gathers the sharded parameters)."""
        if module is None:
            return None
        return (
            module
            if self.accelerator.distributed_type == DistributedType.FSDP
            else self.accelerator.unwrap_model(module)
        )

    def _all_reduce_sum(self, x: Tensor) -> Tensor:
        return self.accelerator.reduce(x, "sum") if self.accelerator.num_processes > 1 else x

    def _finite_everywhere(self, ok: bool) -> bool:
        return not any_process(self.accelerator, not ok)[0]

    def fake_update_parts(self) -> tuple[dict[str, nn.Module], list]:
        """The fake-score update's networks by log name (``fake``, and ``disc`` when a head trains) and optimizers."""
        mods = {name: m for name, m in (("fake", self.fake), ("disc", self.disc)) if m is not None}
        return mods, [o for o in (self.opt_f, self.opt_d) if o is not None]

    def _apply(self, optimizers, modules: dict[str, nn.Module], logs: dict) -> bool:
        """Clip each of ``modules`` to ``train.grad_clip`` (0: no clipping; the norm is logged as ``grad_norm/<name>``
        either way), check finiteness on every process, step (or skip) and zero the gradients."""
        acc = self.accelerator
        ok = all(grads_finite(acc.unwrap_model(m)) for m in modules.values()) and all(
            torch.isfinite(v).all() for k, v in logs.items() if k.startswith("loss/")
        )
        ok = self._finite_everywhere(ok)
        if ok:
            max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else float("inf")  # 0: norm only
            for name, m in modules.items():
                logs[f"grad_norm/{name}"] = self._clip(m, max_norm)
            for opt in optimizers:
                opt.step()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        return ok

    def _clip(self, module: nn.Module, max_norm: float) -> Tensor:
        """Clip ``module``'s gradients to total norm ``max_norm``; returns the norm before clipping. Under FSDP2 torch's
        clip (DTensor-aware: the norm is over the full gradient) is called directly: accelerate's FSDP branch finds
        the model by comparing parameter lists with ``==``, which DTensors of two same-shaped networks refuse."""
        if self.accelerator.is_fsdp2:
            self.accelerator.unscale_gradients()
            return full(torch.nn.utils.clip_grad_norm_(list(module.parameters()), max_norm))
        return self.accelerator.clip_grad_norm_(module.parameters(), max_norm)

    # ---- the loop -----------------------------------------------------------------------------

    def train_step(self, step: int) -> tuple[bool, dict]:
        """One iteration: ``fake_updates`` fake-score (+ discriminator) updates, then the generator update and its
        EMA (after the warm-up). Returns whether every update was finite, and the logs."""
        acc, tc = self.accelerator, self.cfg.train
        torch.manual_seed(step_generator(self.cfg.seed, step, _GLOBAL_PHASE, acc.process_index).initial_seed())
        logs: dict = {}
        ok = True
        fake_mods, fake_opts = self.fake_update_parts()
        for k in range(tc.fake_updates):
            flogs = self.fake_phase(step, k)
            ok &= self._apply(fake_opts, fake_mods, flogs)
            logs.update(flogs)
        if step >= tc.fake_warmup_steps:
            glogs = self.generator_phase(step)
            g_ok = self._apply([self.opt_g], {"generator": self.generator}, glogs)
            if g_ok:
                self.ema.update(acc.unwrap_model(self.generator))
            ok &= g_ok
            logs.update(glogs)
        return ok, logs

    def run(self) -> Path:
        """Train to ``train.steps`` (or the ``train.max_minutes`` budget), checkpointing, then evaluate. SIGTERM /
        SIGINT (:mod:`fdistill.train.signals`) finish the current step, save a checkpoint and return without the
        final evaluation; ``--resume latest`` continues bit-for-bit."""
        stop = GracefulStop()
        try:
            return self._run(stop)
        finally:
            stop.restore()

    def _run(self, stop: GracefulStop) -> Path:
        acc, tc, st = self.accelerator, self.cfg.train, self.state
        acc.init_trackers("fdistill", config=flat_hparams(self.cfg))
        bar = tqdm(total=tc.steps, initial=st.step, disable=not acc.is_local_main_process, desc="distill",
                   dynamic_ncols=True)  # fmt: skip
        consecutive_bad, budget, s0, last_eval = 0, Budget(tc.max_minutes), st.step, {}
        if st.step == 0 and tc.eval_every:
            last_eval = self.evaluate(final=False)  # the starting point, to measure improvement against
        while st.step < tc.steps:
            step = st.step
            ok, logs = self.train_step(step)
            st.step += 1
            st.images_seen += tc.batch_size * acc.num_processes
            if ok:
                consecutive_bad = 0
            else:
                consecutive_bad += 1
                st.nonfinite_total += 1
                log.warning("non-finite loss or gradient at step %d: update skipped (%d in a row)", step,
                            consecutive_bad)  # fmt: skip
                if consecutive_bad >= tc.max_nonfinite:
                    last = list_checkpoints(self.run_dir)
                    where = str(last[-1]) if last else "none yet"
                    acc.end_training()
                    raise NonFiniteError(
                        f"{consecutive_bad} non-finite steps in a row at step {step}; nothing was saved from them. "
                        f"Last good checkpoint: {where}. Lower the learning rates or enable train.grad_clip."
                    )
            bar.update(1)
            if st.step % tc.log_every == 0 or st.step == tc.steps:
                rate = (st.step - s0) / max(budget.elapsed_s(), 1e-9)
                row = self.metrics.log(st.step, {**logs, "steps_per_s": rate, "images_seen": st.images_seen,
                                                 "nonfinite_total": st.nonfinite_total})  # fmt: skip
                post = {k.split("/")[-1]: f"{v:.3g}" for k, v in row.items() if k.startswith("loss/")}
                bar.set_postfix({**post, **self._budget_postfix(bar, rate, budget.elapsed_s(), last_eval)})
            if tc.eval_every and st.step % tc.eval_every == 0 and st.step < tc.steps:
                last_eval = self.evaluate(final=False)
            # any process out of time or signalled stops all of them at the same step
            out_of_time, stopping = any_process(self.accelerator, budget.spent(), stop.requested)
            if st.step % tc.checkpoint_every == 0 or st.step == tc.steps or out_of_time or stopping:
                st.metrics_bytes = self.metrics.size()
                save_checkpoint(acc, self.run_dir, st.step, tc.keep_checkpoints)
            if stopping:
                bar.close()
                acc.end_training()
                if acc.is_main_process:
                    log.info(stopped_message(st.step))
                return self.run_dir
            if out_of_time:
                log.info("train.max_minutes=%g spent at step %d: stopping (resume continues)", tc.max_minutes, st.step)
                break
        bar.close()
        self.evaluate(final=True)
        if tc.export_fake:
            save_fake_weights(acc, self.fake, self.disc, self.run_dir / "student")
        acc.end_training()
        return self.run_dir

    def _budget_postfix(self, bar: tqdm, rate: float, spent_s: float, last_eval: dict) -> dict[str, str]:
        """Under ``train.max_minutes`` the bar's total is the step the budget will reach (not ``train.steps``), with
        the time left; the latest proxy FID where one was measured."""
        out = {"fid": f"{last_eval['proxy_fid']:.1f}"} if "proxy_fid" in last_eval else {}
        if self.cfg.train.max_minutes > 0:
            left = max(60 * self.cfg.train.max_minutes - spent_s, 0.0)
            bar.total = min(self.cfg.train.steps, self.state.step + int(rate * left))
            out["left"] = f"{left / 60:.1f}min"
        return out

    # ---- evaluation ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample_student(self, n: int, seed: int) -> tuple[Tensor, Tensor | None]:
        """``n`` samples of the EMA student with its full K-step chain (z, labels, then the K - 1 re-noising draws)."""
        gen = torch.Generator().manual_seed(seed)
        z, cond = self._latents(n, gen)
        if self.ema.model.steps == 1:
            return self.ema.model(z, cond).float(), cond
        noise = torch.stack([self._noise(z.shape, gen) for _ in range(self.ema.model.steps - 1)])
        return self.ema.model(z, cond, noise=noise).float(), cond

    def evaluate(self, final: bool) -> dict[str, float]:
        if not self.accelerator.is_main_process:
            return {}
        run = EvalInputs(
            cfg=self.cfg,
            teacher=self.teacher,
            run_dir=self.run_dir,
            step=self.state.step,
            images_seen=self.state.images_seen,
            sample=self.sample_student,
            student=self.ema.model,
            device=self.accelerator.device,
            scorers=self.scorers,
            guidance=self.method.teacher_guidance,
            reward=self.reward,
            is_main=self.accelerator.is_main_process,
        )
        result = (evaluate_latent_run if self.cfg.teacher.kind == "latent" else evaluate_run)(run, final)
        self.metrics.log(self.state.step, {f"eval/{k}": v for k, v in result.items() if isinstance(v, int | float)})
        if final:
            (self.run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
        return result


def distill(cfg: Config, resume: str | None = None) -> Path:
    """Run (or resume) a distillation described by ``cfg``; returns the run directory."""
    return Distiller(cfg, resume).run()
