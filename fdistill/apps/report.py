"""``fdistill report RUN_DIR``: a Markdown report with curves, sample grids, final metrics and the config of a run.

Reads what the trainer writes into a run directory:

- ``metrics.jsonl``: one JSON object per logged step with ``step`` and any scalar keys (``loss/generator``,
  ``loss/fake``, ``proxy_fid``, ...). Keys sharing a ``prefix/`` are drawn in one figure (one curve per key);
  every other key gets its own figure. Curves are plotted against ``step`` (raw, plus a moving average when
  the series is long and noisy);
- ``metrics.json``: the final evaluation; scalars become a table, and a ``table`` list of rows (e.g. the
  teacher-vs-student rows of ``fdistill eval --teacher-nfe``: ``model``, ``nfe``, ``fid``, ...) becomes a
  second table;
- ``config.yaml``: included verbatim as the resolved configuration;
- ``*.png`` in the run directory (sample grids): linked in the report, final ``samples.png`` first.

Writes ``report.md`` and ``report_figures/*.png`` (matplotlib, Agg backend) into RUN_DIR (or ``--out``), and
records the hardware the report was made on next to any hardware the run itself recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

SCALAR_TYPES = (int, float)


def read_metrics_jsonl(path: str | Path) -> list[dict]:
    """Rows of ``metrics.jsonl``; blank and malformed lines (a killed run's last line) are skipped."""
    rows = []
    path = Path(path)
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def series(rows: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``key -> (steps, values)`` for every finite scalar key (a resumed run's repeated steps: last one wins)."""
    by_key: dict[str, dict[float, float]] = defaultdict(dict)
    for row in rows:
        step = row["step"]
        for k, v in row.items():
            if k == "step" or isinstance(v, bool) or not isinstance(v, SCALAR_TYPES) or not math.isfinite(v):
                continue
            by_key[k][float(step)] = float(v)
    out = {}
    for k, d in by_key.items():
        steps = np.array(sorted(d))
        out[k] = (steps, np.array([d[s] for s in steps]))
    return out


def group_keys(keys: list[str]) -> dict[str, list[str]]:
    """``loss/generator`` and ``loss/fake`` -> one group ``loss``; ungrouped keys stand alone."""
    groups: dict[str, list[str]] = defaultdict(list)
    for k in sorted(keys):
        groups[k.split("/", 1)[0] if "/" in k else k].append(k)
    return dict(groups)


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    head = np.cumsum(y[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(y, kernel, mode="valid")])


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def plot_group(name: str, keys: list[str], data: dict, out: Path, smooth: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for k in keys:
        steps, values = data[k]
        window = smooth if smooth > 0 else max(1, len(values) // 25)
        if window > 1 and len(values) > 2 * window:
            (line,) = ax.plot(steps, values, alpha=0.25, linewidth=0.8)
            ax.plot(steps, _moving_average(values, window), color=line.get_color(), label=f"{k} (avg {window})")
        else:
            ax.plot(steps, values, marker="o" if len(values) < 30 else None, markersize=3, label=k)
    if all(np.all(data[k][1] > 0) for k in keys) and max(np.ptp(np.log10(data[k][1])) for k in keys) > 2:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{_safe_name(name)}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if (abs(v) >= 1e4 or (abs(v) < 1e-3 and v != 0)) else f"{v:.4f}".rstrip("0").rstrip(".")
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v).replace("|", "\\|")


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return ""
    if columns is None:
        columns = []
        for r in rows:
            columns += [c for c in r if c not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def hardware() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _final_scalars(metrics: dict, prefix: str = "") -> list[dict]:
    rows = []
    for k, v in metrics.items():
        if k == "table":
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict) and all(isinstance(x, SCALAR_TYPES) or x is None for x in v.values()):
            rows.append({"metric": key, "value": v})
        elif isinstance(v, dict):
            rows += _final_scalars(v, prefix=f"{key}.")
        elif isinstance(v, (*SCALAR_TYPES, str)) or v is None:
            rows.append({"metric": key, "value": v})
    return rows


def make_report(run_dir: str | Path, out: str | Path | None = None, smooth: int = 0, title: str | None = None) -> Path:
    """Write ``report.md`` (+ ``report_figures/``) for ``run_dir``; returns the Markdown path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    out_dir = Path(out) if out else run_dir
    fig_dir = out_dir / "report_figures"
    fig_dir.mkdir(parents=True, exist_ok=True)

    rows = read_metrics_jsonl(run_dir / "metrics.jsonl")
    final_path = run_dir / "metrics.json"
    final = json.loads(final_path.read_text()) if final_path.is_file() else {}
    config_path = run_dir / "config.yaml"
    config_text = config_path.read_text() if config_path.is_file() else None
    pngs = sorted(p for p in run_dir.glob("*.png"))
    pngs.sort(key=lambda p: (p.name != "samples.png", p.name))
    if not rows and not final and config_text is None and not pngs:
        raise FileNotFoundError(f"{run_dir}: none of metrics.jsonl, metrics.json, config.yaml or *.png found")

    def rel(p: Path) -> str:
        return os.path.relpath(p, out_dir)

    md = [f"# {title or 'Run report: ' + run_dir.resolve().name}", "", f"Run directory: `{run_dir.resolve()}`", ""]
    data = series(rows)
    if data:
        steps = [r["step"] for r in rows]
        md += ["## Training curves", "", f"{len(rows)} logged rows, steps {min(steps)} to {max(steps)}.", ""]
        last = {k: (int(s[-1]) if float(s[-1]).is_integer() else s[-1], v[-1]) for k, (s, v) in data.items()}
        md += [markdown_table([{"key": k, "last step": s, "last value": v} for k, (s, v) in sorted(last.items())]), ""]
        for name, keys in group_keys(list(data)).items():
            path = plot_group(name, keys, data, fig_dir, smooth)
            md += [f"![{name}]({rel(path)})", ""]
    else:
        md += ["## Training curves", "", "_no metrics.jsonl rows_", ""]

    if final:
        md += ["## Final metrics", ""]
        scalars = _final_scalars(final)
        if scalars:
            md += [markdown_table(scalars, ["metric", "value"]), ""]
        table = final.get("table")
        if isinstance(table, list) and table and all(isinstance(r, dict) for r in table):
            md += ["### Teacher vs student", "", markdown_table(table), ""]

    if pngs:
        md += ["## Samples", ""]
        for p in pngs:
            md += [f"**{p.name}**", "", f"![{p.stem}]({rel(p)})", ""]

    md += ["## Configuration", ""]
    md += ["```yaml", config_text.rstrip(), "```", ""] if config_text is not None else ["_no config.yaml_", ""]
    md += ["## Hardware", "", "Report generated on:", "", markdown_table([hardware()]), ""]
    run_hw = final.get("hardware") if isinstance(final.get("hardware"), dict) else None
    if run_hw:
        md += ["Run recorded:", "", markdown_table([run_hw]), ""]

    report = out_dir / "report.md"
    report.write_text("\n".join(md))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="fdistill report",
        description="Markdown report (curves, final metrics, teacher-vs-student table, sample grids, config, "
        "hardware) of a run directory.",
    )
    p.add_argument("run_dir", help="run directory (holds metrics.jsonl, metrics.json, config.yaml, *.png)")
    p.add_argument("--out", default=None, help="where report.md and report_figures/ go (default: RUN_DIR)")
    p.add_argument("--smooth", type=int, default=0,
                   help="moving-average window for curves; 0 = automatic (len/25), 1 = none (default: 0)")  # fmt: skip
    p.add_argument("--title", default=None, help="report title (default: 'Run report: <dir name>')")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        path = make_report(args.run_dir, args.out, args.smooth, args.title)
    except (FileNotFoundError, json.JSONDecodeError) as e:
        print(f"fdistill report: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
