"""Cost of one-step students and of their distillation, measured side by side in one run.

1. Sampling: student images/s at NFE 1 vs the teacher's images/s at ``--teacher-nfe`` (EDM Heun),
   same network, same batch: the speed-up of distillation.
2. Training: seconds per distillation iteration of every method (one fake-score update + one generator
   update, ``train.fake_updates=1``) divided by the seconds of one plain denoising-score-matching step
   of the same network at the same batch (forward + backward + Adam); and peak memory relative to that
   step. Data-free methods that do not back-propagate through the networks (DI, DMD) ideally cost about
   3 forwards + 2 backwards of the network per iteration; SiD/SIM/Uni-Instruct/DI* add a backward through
   the frozen teacher and fake score; f-distill/GAN variants add the discriminator's passes.

Peak memory: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the resident-set growth of a fresh
process per measurement (coarse, includes allocator caching).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fdistill.config import load_config
from fdistill.core.noise import SigmaSampler, denoising_score_matching_loss
from fdistill.nets.unet import EDMUNet
from fdistill.teachers.diffusers import UNetTeacher
from fdistill.train.distill import Distiller

METHODS = [
    ("di", []),
    ("dmd", []),
    ("sid", ["method.alpha=1.2"]),
    ("sim", []),
    ("fdistill js", ["method.divergence=js"]),
    ("fdistill js teacher-feat", ["method.divergence=js", "method.disc_features=teacher"]),
    ("uni_instruct kl", ["method.divergence=kl"]),
    ("di_star (no reward)", []),
]


def _tiny_teacher(path: Path) -> None:
    torch.manual_seed(0)
    EDMUNet(sample_size=32, block_out_channels=(32, 64, 64), attention_levels=(2,), num_classes=10).save_pretrained(
        path
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _seconds_per_call(step, iters: int, device: torch.device) -> float:
    """Mean wall time of ``step()`` over ``iters`` calls after one warm-up call (CUDA synchronised)."""
    step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / iters


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(kind: str, teacher: str, batch: int, iters: int, device: str, extra: list[str]) -> dict:
    """One measurement in this process: ``kind`` = 'dsm', 'sample:NFE' or a method name."""
    dev = torch.device(device)
    base = _peak_mb(dev)
    if kind == "dsm" or kind.startswith("sample:"):
        t = UNetTeacher.from_pretrained(teacher).to(dev)
        net = t.make_network().to(dev)
        x = torch.randn(batch, *t.sample_shape, device=dev)
        labels = torch.randint(0, max(t.num_classes, 1), (batch,), device=dev) if t.num_classes else None
        if kind == "dsm":
            opt = torch.optim.Adam(net.parameters(), 1e-4)
            sig = SigmaSampler("lognormal")

            def step() -> None:
                loss = denoising_score_matching_loss(
                    lambda a, s: net(a, s, labels), x, sig(batch).to(dev), torch.randn_like(x)
                ).mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        else:
            nfe = int(kind.split(":")[1])

            def step() -> None:
                with torch.no_grad():
                    if nfe == 1:
                        net(2.5 * x, torch.full((batch,), 2.5, device=dev), labels)
                    else:
                        t.sample(batch, labels, nfe=nfe, device=dev)

        seconds = _seconds_per_call(step, iters, dev)
    else:
        name = kind.split()[0]
        with tempfile.TemporaryDirectory() as out:
            over = [f"teacher.path={teacher}", f"method.name={name}", f"train.batch_size={batch}",
                    f"output_dir={out}", "train.fake_warmup_steps=0", *extra]  # fmt: skip
            cfg = load_config("configs/fmnist_fdistill_js.yaml", over)
            d = Distiller(cfg)
            fake_mods, fake_opts = d.fake_update_parts()

            def step() -> None:
                d.state.step += 1
                d._apply(fake_opts, fake_mods, d.fake_phase(d.state.step, 0))
                d._apply([d.opt_g], {"generator": d.generator}, d.generator_phase(d.state.step))

            seconds = _seconds_per_call(step, iters, dev)
    return {"kind": kind, "seconds": seconds, "peak_mb": _peak_mb(dev), "base_mb": base}


def _in_subprocess(kind: str, args, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "fdistill.bench.image", "--_one", kind, "--teacher", args.teacher,
           "--batch", str(args.batch), "--iters", str(args.iters), "--device", args.device,
           "--_extra", json.dumps(extra)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fdistill bench image", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--teacher", default="checkpoints/fmnist_teacher", help="EDMUNet teacher folder, or 'tiny'")
    p.add_argument("--batch", type=int, default=32, help="batch size (default: 32)")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per measurement (default: 3)")
    p.add_argument("--teacher-nfe", type=int, default=35, help="teacher sampler NFE to compare with (default: 35)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", default="", help="substring filter on method names (default: all)")
    p.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_extra", default="[]", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._one:
        print(
            json.dumps(measure(args._one, args.teacher, args.batch, args.iters, args.device, json.loads(args._extra)))
        )
        return 0
    if args.teacher == "tiny":
        args.teacher = str(Path(tempfile.mkdtemp()) / "teacher")
        _tiny_teacher(Path(args.teacher))
    print(f"teacher {args.teacher}, batch {args.batch}, device {args.device}, torch {torch.__version__}")
    s1 = _in_subprocess("sample:1", args, [])
    sn = _in_subprocess(f"sample:{args.teacher_nfe}", args, [])
    print(f"\nsampling: student NFE 1 {args.batch / s1['seconds']:.1f} img/s, teacher NFE {args.teacher_nfe} "
          f"{args.batch / sn['seconds']:.2f} img/s -> speed-up x{sn['seconds'] / s1['seconds']:.1f}")  # fmt: skip
    dsm = _in_subprocess("dsm", args, [])
    dsm_mem = dsm["peak_mb"] - dsm["base_mb"]
    rows = [f"| DSM step (reference) | {dsm['seconds']:.3f} | 1.00 | {dsm_mem:.0f} | 1.00 |"]
    for name, extra in METHODS:
        if args.only and args.only not in name:
            continue
        r = _in_subprocess(name, args, extra)
        mem = r["peak_mb"] - r["base_mb"]
        rows.append(f"| {name} | {r['seconds']:.3f} | {r['seconds'] / dsm['seconds']:.2f} | {mem:.0f} | "
                    f"{mem / max(dsm_mem, 1e-9):.2f} |")  # fmt: skip
    print("\n| method | s/iter | x DSM step | peak MB | x DSM |\n|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
