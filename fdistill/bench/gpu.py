"""``fdistill bench gpu``: what distillation and one-step sampling cost on this device, in one Markdown table.

Every ratio is measured side by side in one run (docs/math.md §5: one iteration = the fake-score updates, then the
generator update; §2: the methods):

1. train   for every method (``fdistill.methods.names()``) on two teachers, the Fashion-MNIST EDMUNet
           (``checkpoints/fmnist_teacher``) and a random SD-1.5-sized latent UNet (SD 1.5's UNet2DConditionModel
           config at 64x64 latents, tiny random VAE and text encoder; nothing is downloaded): generator-step time,
           full-iteration time (``Distiller.train_step``), images/s and peak memory, at each precision mode:
           fp32, bf16 autocast, bf16 + torch.compile of the generator and fake score (not on CPU unless
           --compile-on-cpu). ratio = the fp32 row's iteration time / this row's (the speed-up of the mode).
2. sample  the teacher's EDM Heun sampler at its preset NFE (fmnist 35; SD 49 with CFG 1.75) vs the one-step
           student: images/s; ratio = student images/s / teacher images/s.
3. demo    DemoEngine (the Gradio demo's engine: CUDA + bf16 autocast on a GPU) serving a one-step student
           (checkpoints/fmnist_student, else a random one): a ``generate`` request of a batch without and with the
           teacher; ratio = the request with the teacher / the student alone.

Times are means over --steps calls after a warm-up call (compile rows: one more), CUDA synchronised. Peak memory:
``torch.cuda.max_memory_allocated`` growth on CUDA, the peak resident-set growth (VmHWM) on CPU. A row that fails
says why in its note; the others still run. Writes OUT/bench_gpu.md (the table) and OUT/bench_gpu.json.

  fdistill bench gpu                                    # a GPU machine: everything, batch 32, 5 timed steps
  fdistill bench gpu --methods dmd,fdistill --steps 3   # fewer rows
  fdistill bench gpu --device cpu --tiny                # any machine: tiny random networks, a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
from pathlib import Path

import torch

from fdistill import methods
from fdistill.bench.gpu_measure import MODES, Row, Settings, demo_rows, sampling_rows, train_row
from fdistill.bench.gpu_models import demo_student, fmnist_teacher, sd15_teacher

TEACHERS = {"fmnist": fmnist_teacher, "sd15-latent": sd15_teacher}
SECTIONS = ("train", "sample", "demo")
COLUMNS = ["section", "teacher", "row", "precision", "gen step ms", "iter ms", "img/s", "peak MB", "ratio", "note"]


def _choices(text: str, allowed, what: str) -> list[str]:
    picked = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in picked if t not in allowed]
    if bad or not picked:
        raise SystemExit(f"fdistill bench gpu: unknown {what} {', '.join(bad) or '(none)'}; accepted: "
                         f"{', '.join(allowed)}")  # fmt: skip
    return picked


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fdistill bench gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    cuda = torch.cuda.is_available()
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if cuda else "cpu",
                   help="where to measure (default: cuda when available, else cpu)")  # fmt: skip
    p.add_argument("--tiny", action="store_true", help="tiny random networks (a CPU smoke run, not a measurement)")
    p.add_argument("--methods", default=",".join(methods.names()), help="comma-separated methods (default: all)")
    p.add_argument("--teachers", default=",".join(TEACHERS), help=f"comma-separated: {', '.join(TEACHERS)}")
    p.add_argument("--precisions", default=",".join(MODES), help=f"comma-separated: {', '.join(MODES)}")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    p.add_argument("--steps", type=int, default=None, help="timed calls per row after warm-up (default: 5; CPU 2)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 32; CPU 4)")
    p.add_argument("--fake-updates", type=int, default=1, help="fake-score updates per iteration (default: 1)")
    p.add_argument("--compile-on-cpu", action="store_true", help="also measure bf16+compile on CPU")
    p.add_argument("--out", default="runs/bench_gpu", help="output folder (default: runs/bench_gpu)")
    return p


def _fmt(v, digits: int) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}" if abs(v) < 1e5 else f"{v:.3g}"


def markdown(rows: list[Row], header: list[str]) -> str:
    lines = [*header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [r.section, r.teacher, r.what, r.precision, _fmt(r.gen_ms, 1), _fmt(r.iter_ms, 1),
                 _fmt(r.images_per_s, 1), _fmt(r.peak_mb, 0), _fmt(r.ratio, 2), r.note.replace("|", "/")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _json_row(r: Row) -> dict:
    """The row as JSON values (a non-finite number is null)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in vars(r).items()}


def _with_fp32_ratios(rows: list[Row]) -> None:
    """ratio of a train row = the same method's and teacher's fp32 iteration time / its own."""
    fp32 = {(r.teacher, r.what): r.iter_ms for r in rows if r.precision == "fp32" and r.iter_ms}
    for r in rows:
        if r.section == "train" and r.iter_ms and (r.teacher, r.what) in fp32:
            r.ratio = fp32[(r.teacher, r.what)] / r.iter_ms


def _header(args, s: Settings, specs) -> list[str]:
    cpu = f"CPU ({torch.get_num_threads()} threads)"
    dev = torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else cpu
    tiny = ", tiny networks" if args.tiny else ""
    lines = [f"# fdistill bench gpu: {dev}", "",
             f"torch {torch.__version__}, python {platform.python_version()}, batch {s.batch}, {s.steps} timed calls "
             f"a row after warm-up, {s.fake_updates} fake update(s) an iteration{tiny}", "",
             f"command: `fdistill bench gpu {' '.join(args.argv)}`", ""]  # fmt: skip
    lines += [f"- {spec.name}: {spec.shape} (preset {spec.preset.name})" for spec in specs]
    lines += ["", "ratio: train = fp32 iteration time / this row's; sample = student img/s / teacher img/s; "
              "demo = request with the teacher / student alone. Precision: fp32 = float32 with a float32 teacher; "
              "bf16 = accelerate bf16 autocast with the preset's teacher dtype (SD: bfloat16)."]  # fmt: skip
    return lines


def run(args, s: Settings, root: Path) -> tuple[list[Row], list[str]]:
    names = _choices(args.methods, methods.names(), "method")
    modes = _choices(args.precisions, MODES, "precision")
    sections = _choices(args.sections, SECTIONS, "section")
    specs = [TEACHERS[t](root, args.tiny) for t in _choices(args.teachers, TEACHERS, "teacher")]
    rows: list[Row] = []

    def add(new: list[Row]) -> None:
        for r in new:
            print(f"  {r.section:6s} {r.teacher:12s} {r.what:32s} {r.precision:13s} iter {_fmt(r.iter_ms, 1):>9s} ms"
                  f"  {r.note}", file=sys.stderr, flush=True)  # fmt: skip
        rows.extend(new)

    for spec in specs:
        if "train" in sections:
            for name in names:
                for mode in modes:
                    add([train_row(spec, name, mode, s)])
        if "sample" in sections:
            for mode in (m for m in modes if not m.endswith("compile")):
                add(sampling_rows(spec, mode, s))
    if "demo" in sections:
        pixel = next((spec for spec in specs if spec.name == "fmnist"), None) or fmnist_teacher(root, args.tiny)
        add(demo_rows(*demo_student(root, pixel, args.tiny), s))
    _with_fp32_ratios(rows)
    return rows, _header(args, s, specs)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.device == "cuda" and not torch.cuda.is_available():
        print("fdistill bench gpu: --device cuda but CUDA is not available here; use --device cpu", file=sys.stderr)
        return 2
    cpu = args.device == "cpu"
    s = Settings(torch.device(args.device), args.batch or (4 if cpu else 32), args.steps or (2 if cpu else 5),
                 args.fake_updates, args.compile_on_cpu)  # fmt: skip
    if s.batch < 1 or s.steps < 1 or s.fake_updates < 1:
        print("fdistill bench gpu: --batch, --steps and --fake-updates must be >= 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fdistill_bench_gpu_") as root:
        rows, header = run(args, s, Path(root))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, header)
    (out / "bench_gpu.md").write_text(table)
    payload = {"header": header, "columns": COLUMNS, "rows": [_json_row(r) for r in rows]}
    (out / "bench_gpu.json").write_text(json.dumps(payload, indent=2, default=str))
    print(table)
    print(f"wrote {out / 'bench_gpu.md'} and {out / 'bench_gpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
