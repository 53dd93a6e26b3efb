"""FSDP2 through the distillation trainer, two CPU processes (gloo), against a single-process run of the same global
batch: losses, the trained networks, the EMA, checkpoints (FSDP resume and single-process load) and the export.

accelerate picks FSDP only on accelerators: on a CPU-only machine ``ACCELERATE_USE_CPU=1`` gives ``MULTI_CPU`` (DDP)
whatever the FSDP plugin says. The workers therefore switch accelerate's shared state to ``DistributedType.FSDP`` with
an FSDP2 plugin right after the :class:`~accelerate.Accelerator` is built (:func:`_fsdp_on_cpu`), before the trainer
prepares anything: from there on ``accelerate.prepare`` (``fully_shard``, one unit per network: NO_WRAP), ``backward``,
``no_sync``, ``clip_grad_norm_``, ``save_state`` and ``load_state`` run their real FSDP2 code on CPU. The trainer
(``fdistill.train.distill.Distiller``) runs unchanged; only the accelerator class it builds is the shim's.

The single-process reference runs ``grad_accum`` x 2 micro-batches of the same size, micro-batch ``i`` drawing the
noise of process ``i // grad_accum``'s micro-batch ``i % grad_accum`` (the trainer's draws are keyed by process and
micro-batch): the same global batch, so one update of each network is the same sum of gradients. f-distill's two
cross-process batch normalisations (``method.ratio_bins``, ``method.normalize_h``) are off: they sum over the
processes' micro-batch ``i`` together, which a sequential run cannot reproduce (that reduction is covered by the
DDP tests). Case ``fake`` (head on fake-score features) runs the shipped template's FSDP settings
(``configs/accelerate/fsdp.yaml``: NO_WRAP, ``reshard_after_forward=False``, SHARDED_STATE_DICT), case ``teacher``
(head on teacher features) ``reshard_after_forward=True`` and FULL_STATE_DICT: both state-dict types resume under
FSDP and load into a single process. Case ``lora``: a LoRA student (``teacher.lora_rank=4``, generator and fake score)
of the tiny latent teacher, DMD without its GAN term (data-free): FSDP2 shards one unit per network whose parameters
mix the frozen base and the trainable adapters (each process keeps a shard of both; gradients are reduce-scattered for
the adapters only); only the adapters move, and the FSDP checkpoint resumes bit-exactly.

Slow (per case two two-process and two one-process runs, about 70 s on 2 cores): ``pytest -m slow tests/test_fsdp.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

GRAD_ACCUM, BATCH, PROCESSES = 2, 4, 2
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(PROCESSES),
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
ENV = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
RTOL, ATOL = 1e-4, 1e-5  # float32 sums in another order (gloo's average, sharded AdamW) after three updates


def _overrides(teacher: Path, out: Path, disc_features: str, single: bool) -> list[str]:
    accum = GRAD_ACCUM * PROCESSES if single else GRAD_ACCUM
    batch = BATCH * PROCESSES if single else BATCH
    return [
        "teacher.kind=unet", f"teacher.path={teacher}", "teacher.sample_nfe=2", "data.name=synthetic",
        "method.name=fdistill", "method.divergence=js", "method.gan_weight=0.01",
        f"method.disc_features={disc_features}", "method.ratio_bins=0", "method.normalize_h=false", "train.steps=3",
        "train.fake_warmup_steps=1",
        f"train.batch_size={batch}", f"train.grad_accum={accum}", "train.num_eval_samples=8", "train.eval_every=0",
        "train.max_minutes=0", "train.log_every=1", "train.checkpoint_every=2", "train.keep_checkpoints=5",
        "train.lr_generator=1e-3", "train.ema_decay=0.5", f"output_dir={out}",
    ]  # fmt: skip


# ---- the worker (run in the launched processes) --------------------------------------------------------------------


def _fsdp_on_cpu(state_dict_type: str, reshard: bool):
    """An Accelerator class that turns accelerate's MULTI_CPU (gloo) state into FSDP2 before anything is prepared."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    class FSDPOnCPU(Accelerator):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            assert self.distributed_type == DistributedType.MULTI_CPU, self.distributed_type
            plugin = FullyShardedDataParallelPlugin(
                fsdp_version=2, state_dict_type=state_dict_type, reshard_after_forward=reshard,
                auto_wrap_policy="no_wrap",
            )  # fmt: skip
            # AcceleratorState() copies PartialState's fields on every construction: set both
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            AcceleratorState._shared_state.update(distributed_type=DistributedType.FSDP, fsdp_plugin=plugin)
            assert self.is_fsdp2

    return FSDPOnCPU


def _emulated_step_generator(processes: int, accum: int):
    """Micro-batch ``i`` of one process draws what process ``i // accum``'s micro-batch ``i % accum`` draws."""
    from fdistill.train.loop import step_generator

    def gen(seed: int, step: int, phase: int, rank: int, micro: int = 0) -> torch.Generator:
        assert rank == 0
        return step_generator(seed, step, phase, micro // accum, micro % accum)

    return gen


def _worker(spec: dict) -> None:
    import fdistill.train.distill as distill_mod
    from fdistill.config import load_config

    if spec["fsdp"]:
        distill_mod.Accelerator = _fsdp_on_cpu(spec["state_dict_type"], spec["reshard"])
    else:
        distill_mod.step_generator = _emulated_step_generator(PROCESSES, GRAD_ACCUM)
    losses: dict[str, list] = {"fake": [], "disc": [], "generator": []}
    dsm = distill_mod.denoising_score_matching_loss

    def recorded_dsm(*args, **kwargs):
        out = dsm(*args, **kwargs)
        losses["fake"].append(out.mean().item())
        return out

    distill_mod.denoising_score_matching_loss = recorded_dsm
    cfg = load_config(None, spec["overrides"])
    d = distill_mod.Distiller(cfg, spec.get("resume"))
    acc = d.accelerator
    start = {"start_step": d.state.step}
    disc_loss, gen_loss, evaluate, ema_update = d._discriminator_loss, d.method.generator_loss, d.evaluate, d.ema.update

    def recorded_disc(*args):
        loss, logs = disc_loss(*args)
        losses["disc"].append(loss.item())
        return loss, logs

    def recorded_gen(inputs):
        out = gen_loss(inputs)
        losses["generator"].append(out.loss.float().mean().item())
        return out

    shadow = {k: v.clone() for k, v in d.ema.model.state_dict().items()}
    params = {n for n, _ in d.ema.model.named_parameters()}

    def shadow_update(model) -> None:  # the EMA of the gathered full parameters (accelerate's gather, rank 0)
        ema_update(model)
        full = acc.get_state_dict(d.generator)
        if acc.is_main_process:
            for k, v in full.items():
                shadow[k] = torch.lerp(shadow[k], v.to(shadow[k]), 1 - d.ema.decay) if k in params else v.clone()

    def final_state(final: bool):
        if final:  # before end_training (which destroys the process group): gather every network
            nets = {name: acc.get_state_dict(m) for name, m in (("generator", d.generator), ("fake", d.fake),
                                                                ("disc", d.disc)) if m is not None}  # fmt: skip
            if acc.is_main_process:
                ema = d.ema.model.state_dict()
                torch.save({**nets, "ema": ema, "shadow": shadow}, spec["out"] + ".pt")
        return evaluate(final)

    d._discriminator_loss, d.method.generator_loss, d.evaluate, d.ema.update = (
        recorded_disc, recorded_gen, final_state, shadow_update
    )  # fmt: skip
    d.run()
    Path(f"{spec['out']}.losses{acc.process_index}.json").write_text(json.dumps({**losses, **start}))


# ---- the test -----------------------------------------------------------------------------------------------------


def _run(spec: dict, fsdp: bool, tmp: Path) -> None:
    here = Path(__file__)
    cmd = [*(LAUNCH if fsdp else [sys.executable]), str(here), "--worker", json.dumps({**spec, "fsdp": fsdp})]
    env = {**os.environ, **(ENV if fsdp else {"OMP_NUM_THREADS": "1"})}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=here.parent.parent)
    assert done.returncode == 0, done.stderr[-4000:]


def _close(a: dict, b: dict, what: str, exact: bool = False) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        x, y = a[k].float(), b[k].float()
        if exact:
            assert torch.equal(x, y), f"{what}: {k} differs"
        else:
            torch.testing.assert_close(x, y, rtol=RTOL, atol=ATOL, msg=lambda m, k=k: f"{what}: {k}: {m}")


def _student(run: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted((run / "student" / "unet").glob("*.safetensors"))
    assert files, f"no exported student in {run}"
    return {k: v for f in files for k, v in load_file(str(f)).items()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("disc_features", "state_dict_type", "reshard"),
    [("fake", "SHARDED_STATE_DICT", False), ("teacher", "FULL_STATE_DICT", True)],  # False: the shipped template
)
def test_fsdp_two_processes_match_one(tmp_path, disc_features, state_dict_type, reshard):
    from test_image_distill import save_tiny_fmnist_teacher

    save_tiny_fmnist_teacher(tmp_path / "teacher")
    runs = {name: tmp_path / name for name in ("fsdp", "single", "fsdp_resumed", "single_from_fsdp")}

    def spec(name: str, single: bool, resume: Path | None = None) -> dict:
        out = {"overrides": _overrides(tmp_path / "teacher", runs[name], disc_features, single),
               "out": str(tmp_path / name), "state_dict_type": state_dict_type, "reshard": reshard}  # fmt: skip
        return {**out, "resume": str(resume)} if resume else out

    _run(spec("fsdp", False), True, tmp_path)
    _run(spec("single", True), False, tmp_path)
    fsdp, single = torch.load(tmp_path / "fsdp.pt"), torch.load(tmp_path / "single.pt")

    # losses: process p's micro-batch i is the reference's micro-batch p * GRAD_ACCUM + i
    ref = json.loads((tmp_path / "single.losses0.json").read_text())
    assert ref.pop("start_step") == 0
    per_proc = [json.loads((tmp_path / f"fsdp.losses{p}.json").read_text()) for p in range(PROCESSES)]
    for kind, values in ref.items():
        calls = len(values) // (GRAD_ACCUM * PROCESSES)
        got = [per_proc[p][kind][c * GRAD_ACCUM + i] for c in range(calls) for p in range(PROCESSES)
               for i in range(GRAD_ACCUM)]  # fmt: skip
        assert calls > 0 and len(got) == len(values), kind
        torch.testing.assert_close(torch.tensor(got), torch.tensor(values), rtol=RTOL, atol=ATOL)

    for name in ("generator", "fake", "disc", "ema"):
        _close(fsdp[name], single[name], f"{name}: FSDP vs one process")
    _close(fsdp["ema"], fsdp["shadow"], "EMA vs the EMA of the gathered parameters", exact=True)
    _close(_student(runs["fsdp"]), _student(runs["single"]), "exported student: FSDP vs one process")

    ckpt = runs["fsdp"] / "checkpoints" / "step_00000002"
    assert any(ckpt.glob("pytorch_model_fsdp*")), "not an FSDP checkpoint"
    _run(spec("fsdp_resumed", False, ckpt), True, tmp_path)
    resumed = torch.load(tmp_path / "fsdp_resumed.pt")
    assert json.loads((tmp_path / "fsdp_resumed.losses1.json").read_text())["start_step"] == 2
    for name in ("generator", "fake", "disc", "ema"):
        _close(resumed[name], fsdp[name], f"{name}: FSDP resumed at step 2 vs uninterrupted", exact=True)

    _run(spec("single_from_fsdp", True, ckpt), False, tmp_path)
    loaded = torch.load(tmp_path / "single_from_fsdp.pt")
    assert json.loads((tmp_path / "single_from_fsdp.losses0.json").read_text())["start_step"] == 2
    for name in ("generator", "fake", "disc", "ema"):
        _close(loaded[name], fsdp[name], f"{name}: one process resumed from the FSDP checkpoint vs FSDP")


# ---- a LoRA student of the tiny latent teacher -------------------------------------------------------------------

PROMPTS = ["a red apple", "a smiling face", "a blue car"]
LORA_RTOL = 1e-3  # ||FSDP - one process|| / ||one process|| per LoRA tensor (measured: below 1e-4)


def _lora_overrides(sd: Path, out: Path, single: bool) -> list[str]:
    """DMD (no GAN term: data-free, no real images) with LoRA adapters (rank 4) on generator and fake score."""
    from fdistill.teachers.latent import load_latent_teacher

    accum = GRAD_ACCUM * PROCESSES if single else GRAD_ACCUM
    batch = BATCH * PROCESSES if single else BATCH
    tc = SimpleNamespace(path=str(sd / "sd"), subfolder=None, dtype="float32", prompts_file=str(sd / "prompts.txt"))
    sigma = load_latent_teacher(tc).sigma_at(399)  # an integer timestep: the student exports as a stock pipeline
    return [
        "teacher.kind=latent", f"teacher.path={sd / 'sd'}", f"teacher.prompts_file={sd / 'prompts.txt'}",
        "teacher.lora_rank=4", "teacher.sample_nfe=2", "method.name=dmd", "method.guidance=1.5", "train.steps=3",
        "train.fake_warmup_steps=1", f"train.batch_size={batch}", f"train.grad_accum={accum}",
        "train.num_eval_samples=2", "train.eval_every=0", "train.max_minutes=0", "train.log_every=1",
        "train.checkpoint_every=2", "train.keep_checkpoints=5", "train.lr_generator=1e-3", "train.lr_fake=1e-3",
        "train.ema_decay=0.5", "train.generator_input=vp", f"train.sigma_init={sigma!r}", f"output_dir={out}",
    ]  # fmt: skip


def _base(state: dict, prefix: str) -> dict:
    """The frozen (non-LoRA) weights of a LoRA network's UNet under the UNet's own key names."""
    return {k[len(prefix) :].replace(".base_layer", ""): v for k, v in state.items()
            if k.startswith(prefix) and "lora_" not in k}  # fmt: skip


@pytest.mark.slow
def test_fsdp_lora_student_matches_one(tmp_path, monkeypatch):
    """FSDP2 shards modules whose parameters mix frozen (base) and trainable (LoRA) ones: two processes match one
    (RTOL / ATOL above), only the adapters move, the EMA is the EMA of the gathered parameters and the FSDP
    checkpoint (the shipped template's SHARDED_STATE_DICT) resumes bit-exactly."""
    from fixtures import save_tiny_latent_teacher
    from safetensors.torch import load_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the workers load local folders only
    save_tiny_latent_teacher(tmp_path / "sd")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    runs = {name: tmp_path / name for name in ("fsdp", "single", "fsdp_resumed")}

    def spec(name: str, single: bool, resume: Path | None = None) -> dict:
        out = {"overrides": _lora_overrides(tmp_path, runs[name], single), "out": str(tmp_path / name),
               "state_dict_type": "SHARDED_STATE_DICT", "reshard": False}  # fmt: skip
        return {**out, "resume": str(resume)} if resume else out

    _run(spec("fsdp", False), True, tmp_path)
    _run(spec("single", True), False, tmp_path)
    fsdp, single = torch.load(tmp_path / "fsdp.pt"), torch.load(tmp_path / "single.pt")

    ref = json.loads((tmp_path / "single.losses0.json").read_text())
    assert ref.pop("start_step") == 0 and ref.pop("disc") == []  # DMD without its GAN term: no discriminator
    per_proc = [json.loads((tmp_path / f"fsdp.losses{p}.json").read_text()) for p in range(PROCESSES)]
    for kind, values in ref.items():
        calls = len(values) // (GRAD_ACCUM * PROCESSES)
        got = [per_proc[p][kind][c * GRAD_ACCUM + i] for c in range(calls) for p in range(PROCESSES)
               for i in range(GRAD_ACCUM)]  # fmt: skip
        assert calls > 0 and len(got) == len(values), kind
        torch.testing.assert_close(torch.tensor(got), torch.tensor(values), rtol=RTOL, atol=ATOL)

    assert "disc" not in fsdp and "disc" not in single
    for name in ("generator", "fake", "ema"):
        _close(fsdp[name], single[name], f"{name}: FSDP vs one process")
    _close(fsdp["ema"], fsdp["shadow"], "EMA vs the EMA of the gathered parameters", exact=True)
    for name in ("generator", "fake"):  # the adapters are small (|B| ~ 1e-3): also relative, per tensor
        lora = [k for k in fsdp[name] if "lora_" in k]
        assert lora and all(fsdp[name][k].abs().max() > 0 for k in lora if "lora_B" in k), f"{name}: B still zero"
        for k in lora:
            err = (fsdp[name][k] - single[name][k]).norm() / single[name][k].norm()
            assert err < LORA_RTOL, f"{name}: {k}: relative error {err:.2e}"
    teacher = load_file(str(tmp_path / "sd" / "unet" / "diffusion_pytorch_model.safetensors"))
    for name, prefix in (("generator", "net.unet."), ("fake", "unet."), ("ema", "net.unet.")):
        _close(_base(fsdp[name], prefix), teacher, f"{name}: frozen base weights vs the teacher's", exact=True)
    _close(_student(runs["fsdp"]), _student(runs["single"]), "exported (fused) student: FSDP vs one process")

    ckpt = runs["fsdp"] / "checkpoints" / "step_00000002"
    assert any(ckpt.glob("pytorch_model_fsdp*")), "not an FSDP checkpoint"
    _run(spec("fsdp_resumed", False, ckpt), True, tmp_path)
    resumed = torch.load(tmp_path / "fsdp_resumed.pt")
    assert json.loads((tmp_path / "fsdp_resumed.losses1.json").read_text())["start_step"] == 2
    for name in ("generator", "fake", "ema"):
        _close(resumed[name], fsdp[name], f"{name}: FSDP resumed at step 2 vs uninterrupted", exact=True)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    sys.path.insert(0, str(Path(__file__).parent))
    _worker(json.loads(sys.argv[2]))
