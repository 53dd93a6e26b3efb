"""Every method and divergence on two analytic mixtures, one table and one PNG grid.

Mixtures: ``gmm8`` (configs/gmm8.yaml: 8 modes on a circle, unequal weights) and ``far2`` (two modes
far apart relative to their width, weights 0.7/0.3: the case where mode-seeking divergences should
drop the light mode and mode-covering ones should keep it). For each run: the exact metrics of
:mod:`fdistill.metrics.gmm` and the wall time, from the same steps, batch and seed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fdistill.config import load_config
from fdistill.train.distill import Distiller

FAR2 = [
    "teacher.means=[[-4.0,0.0],[4.0,0.0]]",
    "teacher.stds=[0.3,0.3]",
    "teacher.weights=[0.7,0.3]",
]

VARIANTS: list[tuple[str, list[str]]] = [
    ("di", ["method.name=di"]),
    ("dmd", ["method.name=dmd"]),
    ("dmd+gan", ["method.name=dmd", "method.gan_weight=0.01"]),
    ("sid a=1.2", ["method.name=sid", "method.alpha=1.2"]),
    ("sid a=0.5", ["method.name=sid", "method.alpha=0.5"]),
    ("sim huber", ["method.name=sim"]),
    *[(f"fdistill {d}", ["method.name=fdistill", f"method.divergence={d}"])
      for d in ("rkl", "kl", "js", "sh", "jf", "sf", "neyman", "pearson", "alpha")],
    ("fdistill js teacher-feat", ["method.name=fdistill", "method.divergence=js", "method.disc_features=teacher"]),
    *[(f"uni {d}", ["method.name=uni_instruct", f"method.divergence={d}"]) for d in ("rkl", "kl", "js", "sf")],
    ("di_star rev=0.05", ["method.name=di_star", "method.alpha_rev=0.05", "reward.kind=gmm_component",
                          "reward.component=1"]),
]  # fmt: skip

COLUMNS = ("modes", "w_err", "nll", "energy", "floor", "seconds")


def run_one(mixture: str, overrides: list[str], steps: int, out: Path, seed: int):
    extra = FAR2 if mixture == "far2" else []
    cfg = load_config("configs/gmm8.yaml", [*extra, *overrides, f"train.steps={steps}", f"seed={seed}",
                                            f"output_dir={out}", "train.checkpoint_every=1000000"])  # fmt: skip
    t0 = time.perf_counter()
    d = Distiller(cfg)
    d.run()
    seconds = time.perf_counter() - t0
    metrics = json.loads((out / "metrics.json").read_text())
    samples, _ = d.sample_student(2000, seed=1)
    real = d.teacher.sample_data(2000, generator=torch.Generator().manual_seed(0))
    return metrics, seconds, samples.cpu(), real


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fdistill bench gmm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--steps", type=int, default=2000, help="iterations per run (default: 2000, as configs/gmm8.yaml)")
    p.add_argument("--mixtures", default="gmm8,far2", help="comma list of gmm8,far2 (default: both)")
    p.add_argument("--only", default="", help="substring filter on variant names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_gmm", help="folder for runs, table.md and grid.png")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, panels = [], []
    for mixture in args.mixtures.split(","):
        for name, overrides in VARIANTS:
            if args.only and args.only not in name:
                continue
            slug = f"{mixture}_{name.replace(' ', '_').replace('=', '')}"
            try:
                m, sec, samples, real = run_one(mixture, overrides, args.steps, out / slug, args.seed)
            except Exception as e:  # one broken variant must not lose the table of the others
                rows.append((mixture, name, f"error: {type(e).__name__}: {e}", *[""] * (len(COLUMNS) - 1)))
                print(" | ".join(rows[-1]), flush=True)
                continue
            row = (mixture, name, f"{m['modes_covered']}/{m['num_modes']}", f"{m['mode_weight_error']:.3f}",
                   f"{m['teacher_nll']:.2f}", f"{m['energy_distance']:.4f}", f"{m['energy_distance_floor']:.4f}",
                   f"{sec:.0f}")  # fmt: skip
            rows.append(row)
            panels.append((f"{mixture}: {name}", real, samples))
            print(" | ".join(row), flush=True)
    table = ["| mixture | method | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    (out / "table.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    _grid(panels, out / "grid.png")
    print(f"wrote {out / 'table.md'} and {out / 'grid.png'}")
    return 0


def _grid(panels, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fdistill.plots import scatter_panel

    cols = 6
    lines = -(-len(panels) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(2.6 * cols, 2.6 * lines), dpi=90, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, real, fake) in zip(axes.flat, panels, strict=False):
        ax.axis("on")
        scatter_panel(ax, real, fake, title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
