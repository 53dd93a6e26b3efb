"""Per-method FID table on an image teacher: distill one student per method, then Inception-FID every student
(NFE 1) and the teacher at each sampler NFE, all with one protocol, in one command.

Every student starts from the same preset (``--config``, by default the README's main job
``configs/fmnist_fdistill_js.yaml``) with the same seed, batch, learning rates and ``--steps``; only the method
keys in :data:`RUNS` change. GAN-capable methods (DMD2, f-distill, Uni-Instruct) keep the preset's
``method.gan_weight`` and the data-free ones (DI, SiD, SIM, DI*) run without real data. Runs and evaluations are
subprocesses (``fdistill distill`` / ``fdistill eval``), ``--jobs`` at a time with one thread each, and every
finished piece is kept: rerunning the command resumes killed runs (``--resume latest``) and skips finished ones.

Outputs in ``--out``: one run directory and ``<run>.log`` per method, ``<run>/fid.json``, ``teacher_fid.json``
and ``table.md`` (also printed). The FID uses ``--num-samples`` generated images against the first
``--num-reference`` test images: with fewer than 2048 samples it is biased upwards, so compare only rows of one
table.

    fdistill bench image-fid --steps 150 --jobs 2                      # ~1 h on a 2-core CPU
    fdistill bench image-fid --only sid,dmd --steps 2000 --out runs/long   # on a GPU: raise --steps
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RUNS: dict[str, list[str]] = {
    "fdistill_js": ["method.name=fdistill", "method.divergence=js"],
    "fdistill_kl": ["method.name=fdistill", "method.divergence=kl"],
    "di": ["method.name=di", "method.gan_weight=0", "method.divergence=rkl"],
    "dmd": ["method.name=dmd", "method.divergence=rkl"],
    "sid": ["method.name=sid", "method.gan_weight=0", "method.divergence=rkl"],
    "sim": ["method.name=sim", "method.gan_weight=0", "method.divergence=rkl"],
    "uni_instruct_kl": ["method.name=uni_instruct", "method.divergence=kl"],
    # R = log p(y|x) of checkpoints/fmnist_classifier; at alpha_rev 1 its gradient on x0 is about 1/4 of the SIM
    # regulariser's (measured on the 283-step f-distill student and its fake score: 1.8 vs 8.2 per sample)
    "di_star": [
        "method.name=di_star",
        "method.gan_weight=0",
        "method.divergence=rkl",
        "reward.kind=classifier",
        "method.alpha_rev=1.0",
    ],
}


def _fdistill(args: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "a") as f:
        f.write(f"\n$ fdistill {' '.join(args)}\n")
        f.flush()
        done = subprocess.run([sys.executable, "-m", "fdistill", *args], stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"fdistill {args[0]} failed (exit {done.returncode}); see {log}")


def _eval_args(source: str, out: Path, a: argparse.Namespace) -> list[str]:
    return ["eval", source, "--reference", a.reference, "--num-samples", str(a.num_samples), "--num-reference",
            str(a.num_reference), "--seed", "0", "--channels-last", "--json", str(out)]  # fmt: skip


def run_method(name: str, a: argparse.Namespace) -> dict:
    """Distill (or resume, or reuse) the student of one method, then evaluate it (or reuse its ``fid.json``)."""
    run, log = a.out / name, a.out / f"{name}.log"
    if not (run / "student" / "model_index.json").is_file():
        resume = ["--resume", "latest"] if (run / "checkpoints").is_dir() else []
        over = [*RUNS[name], f"train.steps={a.steps}", "train.max_minutes=0", f"output_dir={run}", *a.override]
        _fdistill(["distill", a.config, *over, *resume], log)
    if not (run / "fid.json").is_file():
        _fdistill(_eval_args(str(run / "student"), run / "fid.json", a), log)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval/' in line]
    return {"run": name, "fid": json.loads((run / "fid.json").read_text()),
            "proxy": [r.get("eval/proxy_fid") for r in evals], "final": json.loads((run / "metrics.json").read_text()),
            "overrides": RUNS[name]}  # fmt: skip


def run_teacher(a: argparse.Namespace, student: Path) -> dict:
    """The teacher at every ``--teacher-nfe`` with the same protocol (through a student run, which names it)."""
    out = a.out / "teacher_fid.json"
    if not out.is_file():
        _fdistill([*_eval_args(str(student), out, a), "--teacher-nfe", a.teacher_nfe], a.out / "teacher_fid.log")
    return json.loads(out.read_text())


def table(rows: list[dict], teacher: dict | None) -> str:
    lines = ["| model | NFE | steps | images seen | proxy FID start -> end | FID | KID | precision | recall |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in (teacher or {}).get("table", []):
        if t["model"] == "teacher":
            lines.append(f"| teacher | {t['nfe']} | | | | {t['fid']:.1f} | {t['kid_mean']:.3f} | "
                         f"{t['precision']:.3f} | {t['recall']:.3f} |")  # fmt: skip
    for r in sorted(rows, key=lambda r: r["fid"]["fid"]):
        f, p, end = r["fid"], [x for x in r["proxy"] if x is not None], r["final"]
        proxy = f"{p[0]:.1f} -> {p[-1]:.1f}" if p else "n/a"
        lines.append(f"| {r['run']} | 1 | {end['step']} | {end['images_seen']} | {proxy} | {f['fid']:.1f} | "
                     f"{f['kid']['mean']:.3f} | {f['precision']:.3f} | {f['recall']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fdistill bench image-fid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--config", default="configs/fmnist_fdistill_js.yaml", help="shared preset (default: %(default)s)")
    p.add_argument("--steps", type=int, default=150, help="generator steps of every run (default: 150)")
    p.add_argument("--only", default="", help=f"comma-separated runs (default: all of {', '.join(RUNS)})")
    p.add_argument("--jobs", type=int, default=2, help="subprocesses at a time, one thread each (default: 2)")
    p.add_argument("--out", type=Path, default=Path("runs/fmnist_methods"), help="output folder (default: %(default)s)")
    p.add_argument("--reference", default="fashion_mnist:test", help="FID reference (default: %(default)s)")
    p.add_argument("--num-samples", type=int, default=500, help="generated images per FID (default: 500)")
    p.add_argument("--num-reference", type=int, default=1000, help="reference images (default: 1000)")
    p.add_argument("--teacher-nfe", default="9,17,35", help="teacher rows, '' for none (default: %(default)s)")
    p.add_argument("--override", nargs="*", default=[], help="extra key=value for every run, e.g. train.batch_size=64")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()] or list(RUNS)
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        p.error(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(RUNS)}")
    a.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:  # FIFO: the teacher starts when the last run has started
        futures = [pool.submit(run_method, n, a) for n in names]
        first = a.out / names[0] / "student"
        teacher_job = pool.submit(lambda: futures[0].result() and run_teacher(a, first)) if a.teacher_nfe else None
        rows = [f.result() for f in futures]
        teacher = teacher_job.result() if teacher_job else None
    text = table(rows, teacher)
    (a.out / "table.md").write_text(text + "\n")
    (a.out / "table.json").write_text(json.dumps({"rows": rows, "teacher": teacher}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
