"""Every method on three analytic mixtures, over seeds, one table (median and spread) and one PNG grid.

Mixtures: ``gmm8`` (configs/gmm8.yaml: 8 modes on a circle of radius 2, unequal weights); ``far2`` (two modes far
apart relative to their width, weights 0.7/0.3: mode-seeking divergences should drop the light mode); ``ring8w``
(8 modes on a circle of radius 4, std 0.3, weights proportional to 1..8, at the budget of the independent
reference loop: batch 512, 500 fake-score warm-up steps then 8,000 generator steps, lr 1e-3, Adam beta1 0, EMA
0.999, 20,000 evaluation samples; the loop's plain MLP generator, ``network.generator=mlp``; SiD, SIM, DI* and
Uni-Instruct at the loop's SiD rate 5e-4). Every run uses the method's own recipe (fdistill/methods/recipes.py)
for everything the budget does not fix. ``--reference-loop PATH`` also runs an independent minimal loop (e.g. the
``gmm_ref.py`` yardstick) on ``ring8w`` with the same seeds, so both sides share one machine load.
Finished runs are reused on a rerun (``--rerun`` starts them again).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from fdistill.bench.outputs import write_report
from fdistill.config import load_config
from fdistill.metrics.plots import scatter_panel
from fdistill.teachers import build_teacher
from fdistill.train.distill import Distiller

FAR2 = ["teacher.means=[[-4.0,0.0],[4.0,0.0]]", "teacher.stds=[0.3,0.3]", "teacher.weights=[0.7,0.3]"]
RING8W = [
    "teacher.means=[[4,0],[2.828427,2.828427],[0,4],[-2.828427,2.828427],[-4,0],[-2.828427,-2.828427],[0,-4],"
    "[2.828427,-2.828427]]",
    "teacher.stds=[0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3]",
    "teacher.weights=[1,2,3,4,5,6,7,8]",
    "network.hidden=128", "network.depth=4", "network.generator=mlp", "train.batch_size=512",
    "train.fake_warmup_steps=500",
    "train.steps=8500", "train.lr_generator=1e-3", "train.lr_fake=1e-3", "train.lr_disc=1e-3",
    "train.ema_decay=0.999", "train.num_eval_samples=20000", "train.log_every=500", "train.adam_beta1=0",
]  # fmt: skip
MIXTURES = {"gmm8": [], "far2": FAR2, "ring8w": RING8W}
#: the independent loop's SiD generator rate ("1e-3 diverges at alpha 1.2"), given on ring8w to SiD and the methods
#: that run on SiD's loop (SIM, DI*, Uni-Instruct). Uni-Instruct at P_mean 0, 3 seeds (median [min, max]): KL
#: 0.027 [0.013, 0.028] / 0.0175 [0.0101, 0.0200] at 5e-4 against 0.041 [0.015, 0.082] / 0.0463 [0.0152, 0.2830] at
#: 1e-3; JS 0.033 [0.030, 0.035] / 0.0110 [0.0067, 0.0123] against 0.030 [0.015, 0.045] / 0.0129 [0.0071, 0.0190]
#: (bench/results/gmm_ring8w_final_cpu.md, "Uni-Instruct at the SiD rate")
RING8W_SID_FAMILY = ("sid", "sim", "di_star", "uni_instruct")
RING8W_SID_RATE = ["train.lr_generator=5e-4"]


def budget_overrides(mixture: str, overrides: list[str]) -> list[str]:
    """The mixture's budget for one variant: ``MIXTURES[mixture]``, plus SiD's rate for its family on ring8w."""
    method = next((o.split("=", 1)[1] for o in overrides if o.startswith("method.name=")), "")
    sid_family = mixture == "ring8w" and method in RING8W_SID_FAMILY
    return [*MIXTURES[mixture], *(RING8W_SID_RATE if sid_family else [])]


VARIANTS: list[tuple[str, list[str]]] = [
    ("di", ["method.name=di"]),
    ("dmd", ["method.name=dmd"]),
    ("dmd+gan", ["method.name=dmd", "method.gan_weight=0.01"]),
    ("sid a=1.2", ["method.name=sid", "method.alpha=1.2"]),
    ("sid a=1.0", ["method.name=sid", "method.alpha=1.0"]),
    ("sid a=0.5", ["method.name=sid", "method.alpha=0.5"]),
    ("sim huber", ["method.name=sim"]),
    *[(f"fdistill {d}", ["method.name=fdistill", f"method.divergence={d}"])
      for d in ("rkl", "kl", "js", "sh", "jf", "sf", "neyman", "pearson", "alpha")],
    ("fdistill js teacher-feat", ["method.name=fdistill", "method.divergence=js", "method.disc_features=teacher"]),
    *[(f"uni {d}", ["method.name=uni_instruct", f"method.divergence={d}"]) for d in ("rkl", "kl", "js", "sf")],
    ("di_star rev=0.05", ["method.name=di_star", "method.alpha_rev=0.05", "reward.kind=gmm_component",
                          "reward.component=1"]),
]  # fmt: skip
#: the methods the recipes issue pins on ring8w, with its thresholds (median of the seeds): weight error, energy
RING8W_TARGETS = {
    "di": (0.025, 0.010), "dmd": (0.025, 0.010), "fdistill rkl": (0.025, 0.010),
    "fdistill js": (0.03, 0.012), "fdistill kl": (0.03, 0.012), "uni kl": (0.03, 0.012), "uni js": (0.03, 0.012),
    "sid a=1.0": (0.023 * 1.5, 0.019 * 1.5), "sim huber": (0.023 * 1.5, 0.019 * 1.5),
}  # fmt: skip
#: the same methods in the independent loop's names (``gmm_ref.py run --method``)
REFERENCE_NAMES = {"di": "di", "dmd": "dmd", "fdistill rkl": "fdistill-rkl", "fdistill js": "fdistill-js",
                   "fdistill kl": "fdistill-kl", "sid a=1.0": "sid-1.0"}  # fmt: skip


def run_one(mixture: str, overrides: list[str], steps: int | None, out: Path, seed: int) -> dict:
    """One engine run (in a worker process); returns its metrics and wall time, saves 2,000 samples for the grid."""
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    sys.stderr = open(out / "train.log", "w")  # noqa: SIM115  (worker process: its bar and logs, not interleaved)
    budget = [] if steps is None else [f"train.steps={steps}"]
    cfg = load_config("configs/gmm8.yaml", [*budget_overrides(mixture, overrides), *overrides, *budget, f"seed={seed}",
                                            f"output_dir={out}", "train.checkpoint_every=1000000"])  # fmt: skip
    t0 = time.perf_counter()
    d = Distiller(cfg)
    d.run()
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["seconds"] = time.perf_counter() - t0
    samples, _ = d.sample_student(2000, seed=1)
    torch.save(samples.cpu(), out / "samples_2k.pt")
    (out / "bench.json").write_text(json.dumps(metrics))
    return metrics


def run_reference(script: Path, method: str, seed: int, out: Path, rerun: bool = False) -> dict:
    """The independent loop on its 8-mode weighted ring (= ring8w) at its own defaults (= ring8w's budget); a
    finished run's JSON is reused unless ``rerun``."""
    work = out / "reference_loop"
    work.mkdir(parents=True, exist_ok=True)
    local = work / script.name
    if not local.exists():
        shutil.copy(script, local)  # it writes its runs next to itself
    t0 = time.perf_counter()
    done = work / "runs" / f"A_{method}_s{seed}_bench.json"
    if rerun or not done.exists():
        subprocess.run([sys.executable, str(local), "run", "--teacher", "A", "--method", method, "--seed", str(seed),
                        "--tag", "_bench"], capture_output=True, text=True, check=True)  # fmt: skip
    r = json.loads(done.read_text())
    if "seconds" not in r:
        r["seconds"] = r.get("wall_s", time.perf_counter() - t0)
    keys = {"mode_weight_error": "mode_weight_tv", "energy_distance": "energy", "off_mode": "off_mode",
            "modes_covered": "modes_covered", "teacher_nll": "nll"}  # fmt: skip
    return {**{ours: r[theirs] for ours, theirs in keys.items()}, "seconds": r["seconds"]}


def _spread(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    return fmt.format(med) + (f" [{fmt.format(min(values))}, {fmt.format(max(values))}]" if len(values) > 1 else "")


def table(results: dict[tuple[str, str, str], list[dict]]) -> str:
    lines = ["| mixture | method | runs by | seeds | modes | weight error: median [min, max] | energy distance | "
             "off-mode | NLL | s/run | target (w, ED) |", "|" + "---|" * 11]  # fmt: skip
    for (mixture, name, source), runs in results.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            lines.append(f"| {mixture} | {name} | {source} | | {runs[0]['error']} |" + " |" * 6)
            continue
        target = RING8W_TARGETS.get(name) if mixture == "ring8w" else None
        verdict = ""
        if target:
            w = statistics.median(r["mode_weight_error"] for r in ok)
            e = statistics.median(r["energy_distance"] for r in ok)
            met = "met" if w <= target[0] and e <= target[1] else "MISSED"
            verdict = f"{target[0]:.3f}, {target[1]:.3f}: {met}"
        lines.append(
            f"| {mixture} | {name} | {source} | {len(ok)} | {'/'.join(str(r['modes_covered']) for r in ok)} | "
            f"{_spread([r['mode_weight_error'] for r in ok], '{:.3f}')} | "
            f"{_spread([r['energy_distance'] for r in ok], '{:.4f}')} | "
            f"{_spread([r['off_mode'] for r in ok], '{:.3f}')} | "
            f"{statistics.median(r['teacher_nll'] for r in ok):.2f} | "
            f"{statistics.mean(r['seconds'] for r in ok):.0f} | "
            f"{verdict} |"
        )
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _killing_workers_on_stop(pool: ProcessPoolExecutor) -> Iterator[None]:
    """SIGTERM / SIGINT of the bench kill its worker processes too (without this a killed bench left them training
    on): the runs not started are dropped, the running ones killed (a stopped run must not write its bench.json,
    which would mark it finished); finished runs stay in ``--out`` and a rerun of the command skips them."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    except KeyboardInterrupt:
        workers = list((pool._processes or {}).values())  # no public handle before Python 3.14; shutdown drops it
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in workers:
            proc.kill()
        raise SystemExit(
            "fdistill bench gmm: stopped; its workers are killed, finished runs kept (rerun to go on)"
        ) from None
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fdistill bench gmm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--mixture", "--mixtures", dest="mixtures", default="gmm8,far2",
                   help="comma list of gmm8, far2, ring8w (default: gmm8,far2)")  # fmt: skip
    p.add_argument("--steps", type=int, default=None,
                   help="iterations per run (default: the mixture's: 2000 for gmm8/far2, 8500 for ring8w)")  # fmt: skip
    p.add_argument("--only", default="", help="comma list of variant names to run, e.g. 'di,fdistill js' "
                   "(default: all; on ring8w: the methods it has targets for)")  # fmt: skip
    p.add_argument("--seeds", default="0", help="comma list of seeds (default: 0), e.g. 0,1,2")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, one CPU thread each (default: 1)")
    p.add_argument("--reference-loop", type=Path, default=None,
                   help="an independent loop with gmm_ref.py's CLI, run on ring8w beside the engine")  # fmt: skip
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every engine run (repeatable), e.g. train.sigma_init=80")  # fmt: skip
    p.add_argument("--rerun", action="store_true", help="run again even where a finished run is in --out")
    p.add_argument("--out", default="runs/bench_gmm", help="folder for runs, table.md, results.json and grid.png")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    jobs: list[tuple] = []
    for mixture in args.mixtures.split(","):
        if mixture not in MIXTURES:
            p.error(f"--mixture {mixture!r}: choose from {', '.join(MIXTURES)}")
        wanted = only or (list(RING8W_TARGETS) if mixture == "ring8w" else [n for n, _ in VARIANTS])
        for name, overrides in VARIANTS:
            if name in wanted:
                for seed in seeds:
                    jobs.append((mixture, name, "engine", seed, [*overrides, *args.extra]))
                    if args.reference_loop and mixture == "ring8w" and name in REFERENCE_NAMES:
                        jobs.append((mixture, name, "reference loop", seed, REFERENCE_NAMES[name]))
    results: dict[tuple[str, str, str], list[dict]] = {}
    for mixture, name, source, _, _ in jobs:
        results.setdefault((mixture, name, source), [])
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool, _killing_workers_on_stop(pool):
        futures = []
        for mixture, name, source, seed, spec in jobs:
            slug = f"{mixture}_{name.replace(' ', '_').replace('=', '')}_s{seed}"
            done = out / slug / "bench.json"
            if source == "engine" and done.exists() and not args.rerun:
                futures.append(((mixture, name, source), None, json.loads(done.read_text())))
            elif source == "engine":
                futures.append(((mixture, name, source), pool.submit(run_one, mixture, spec, args.steps, out / slug,
                                                                     seed), None))  # fmt: skip
            else:
                futures.append(((mixture, name, source), pool.submit(run_reference, args.reference_loop.resolve(),
                                                                     spec, seed, out, args.rerun), None))  # fmt: skip
        for key, fut, known in futures:
            try:
                r = known if fut is None else fut.result()
            except Exception as e:  # one broken run must not lose the table of the others
                r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            results[key].append(r)
            print(
                f"{' | '.join(key)}: "
                + json.dumps(
                    {
                        k: v
                        for k, v in r.items()
                        if k
                        in ("mode_weight_error", "energy_distance", "off_mode", "modes_covered", "seconds", "error")
                    }
                ),
                flush=True,
            )
    write_report(out, table(results), {" | ".join(k): v for k, v in results.items()})
    _grid(out, [j for j in jobs if j[2] == "engine" and j[3] == seeds[0]])
    print(f"wrote {out / 'table.md'}, {out / 'results.json'} and {out / 'grid.png'}")
    return 0


def _grid(out: Path, jobs: list[tuple]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for mixture, name, _, seed, _ in jobs:
        f = out / f"{mixture}_{name.replace(' ', '_').replace('=', '')}_s{seed}" / "samples_2k.pt"
        if f.exists():
            teacher = build_teacher(load_config("configs/gmm8.yaml", MIXTURES[mixture]))
            real = teacher.sample_data(2000, generator=torch.Generator().manual_seed(0))
            panels.append((f"{mixture}: {name}", real, torch.load(f, weights_only=True)))
    if not panels:
        return
    cols = 6
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), dpi=90, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, real, fake) in zip(axes.flat, panels, strict=False):
        ax.axis("on")
        scatter_panel(ax, real, fake, title)
    fig.tight_layout()
    fig.savefig(out / "grid.png")
    plt.close(fig)
