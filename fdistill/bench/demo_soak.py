"""Soak test of the Gradio demo: N clients for a fixed time; errors, latency, server memory and temp files.

    fdistill bench demo-soak                                   # 16 clients x 180 s, shipped student, cache age 30 s
    fdistill bench demo-soak --clients 4 --duration 60 --cache-age 10
    fdistill bench demo-soak --checkpoint runs/x/student --clients 8 --duration 600 --cache-age 60
    fdistill bench demo-soak --cache-age 0      # the server's default cache age (3600 s): the cache only grows

The server and the clients are :mod:`demo_load`'s: ``fdistill demo`` in a child process on 127.0.0.1 (student
only, ``--no-teacher``: the one-step student path is what is measured; ``checkpoints/fmnist_student`` when present,
else a random ``--arch`` student), each client a ``gradio_client.Client`` in its own thread calling ``/generate``
with ``--images`` images and a new seed per request, back to back until ``--duration`` runs out (after one untimed
warm-up call per client). Every answer is checked: the student gallery holds ``--images`` PNG files (signature and a
PIL decode of the downloaded file) and the info text names the student; an exception or any other answer is an
error, and the run needs 0 of them.

Memory and disk. The server gets a fresh ``GRADIO_TEMP_DIR`` (where Gradio 6 writes every result image, one
``<sha256>/image.png`` per image) and ``--cache-ttl S`` (``--cache-age``): the PNGs older than S s are deleted with
their folders every S/4 s (:func:`fdistill.apps.demo.sweep_cache`; Gradio's own ``delete_cache`` sweep every S/2 s stops
for good the first time a request finishes during it), so a file lives at most about 1.25 S and the cache should
never hold more than what 2 S seconds of requests write: the bound checked at the end (PNGs, bytes and folders),
once the run has lasted 1.5 S. The server's RSS (``/proc/PID/status`` VmRSS, or psutil) and the cache's bytes,
files, folders and oldest file are sampled every ``--sample-every`` s; the start values are taken after the
warm-up. Growth per 1000 requests is (end - start) / requests served * 1000, which includes the first allocations
and the cache filling up to its bound, and, for the steady state, the least-squares slope over the second half's
samples (the cache's saw-tooth between sweeps makes it noisy over runs of a few S).
``--cache-age 0`` leaves the server's default (3600 s), which a soak does not outlast: the cache then grows by
one PNG per image. The clients' downloads go to a private folder and are deleted once checked (gradio_client also
leaves one empty staging folder per downloaded file in ``tempfile.gettempdir()``; that is pointed at a private
folder too, and the count is reported).

Prints a Markdown table and writes the result as JSON (``--out``, default ``runs/bench/demo_soak_<N>x<T>s.json``);
exits 1 when there was an error or the cache ended above the bound.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fdistill.bench import demo_load

REPO = demo_load.REPO
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (``/proc/PID/status`` VmRSS, else psutil; NaN when neither)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except Exception:
        return float("nan")


def footprint(folder: Path) -> dict[str, int]:
    """Bytes and count of the files under ``folder``, of its PNGs, and of its sub-folders (vanishing ones skipped),
    and the age of its oldest file (seconds since its ctime, which Gradio's sweep goes by)."""
    out = {"bytes": 0, "files": 0, "pngs": 0, "dirs": 0, "oldest_s": 0.0}
    now, stack = time.time(), [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    out["dirs"] += 1
                    stack.append(Path(e.path))
                elif e.is_file(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    out["bytes"] += st.st_size
                    out["oldest_s"] = max(out["oldest_s"], now - st.st_ctime)
                    out["files"] += 1
                    out["pngs"] += e.name.endswith(".png")
            except OSError:
                continue
    return out


def check_answer(out, images: int) -> tuple[str | None, int]:
    """``(None, bytes downloaded)`` for a good ``/generate`` answer, else ``(what is wrong, 0)``; deletes the files."""
    from PIL import Image

    if not isinstance(out, tuple | list) or len(out) != 4:
        return f"not a 4-tuple: {type(out).__name__}", 0
    student, _, info, _ = out
    if not isinstance(student, list) or len(student) != images:
        return f"student gallery of {len(student) if isinstance(student, list) else type(student).__name__} items", 0
    problem, size = None, 0
    for item in student:
        path = Path(item["image"]) if isinstance(item, dict) and isinstance(item.get("image"), str) else None
        if path is None:
            problem = problem or f"gallery item is not an image: {item!r:.80}"
            continue
        try:
            data = path.read_bytes()
            if not data.startswith(PNG_SIGNATURE):
                raise ValueError(f"not a PNG: {data[:8]!r}")
            with Image.open(path) as im:
                im.load()
            size += len(data)
        except Exception as e:
            problem = problem or f"bad image {path.name}: {type(e).__name__}: {e}"
        finally:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()
    if problem is None and not (isinstance(info, str) and "one-step student" in info):
        problem = f"info text without the student's latency: {info!r:.80}"
    return problem, (0 if problem else size)


def slope_per_1000(samples: list[dict], key: str) -> float:
    """Least-squares growth of ``key`` per 1000 requests over ``samples`` (NaN with fewer than 3 or no requests)."""
    x = np.array([s["requests"] for s in samples], dtype=float)
    y = np.array([s[key] for s in samples], dtype=float)
    if len(x) < 3 or np.ptp(x) == 0:
        return float("nan")
    return float(np.polyfit(x, y, 1)[0] * 1000)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def soak(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="fdistill_demo_soak_") as tmp:
        tmp = Path(tmp)
        cache, downloads, staging = tmp / "gradio_cache", tmp / "client_downloads", tmp / "client_staging"
        for folder in (cache, downloads, staging):
            folder.mkdir()
        student, what = demo_load.resolve_student(args.checkpoint, args.arch, tmp)
        port, log = demo_load.free_port(), tmp / "server.log"
        url = f"http://127.0.0.1:{port}/"
        extra = ["--cache-ttl", str(args.cache_age)] if args.cache_age > 0 else []
        proc = demo_load.start_server(
            student, port, args.server_concurrency, log, extra, {"GRADIO_TEMP_DIR": str(cache)}
        )
        saved_tempdir, tempfile.tempdir = tempfile.tempdir, str(staging)  # gradio_client's per-download staging
        try:
            class_name = demo_load.first_class(student)
            device = demo_load.probe_device(url, proc, log, class_name)
            kwargs = demo_load.request_kwargs(class_name, args.images)
            clients = demo_load.warm_clients(url, args.clients, kwargs, download_files=str(downloads))
            result = run_soak(args, proc, clients, kwargs, cache)
        finally:
            tempfile.tempdir = saved_tempdir
            demo_load.stop_server(proc)
        server_log = log.read_text(errors="replace")
        result["client_staging_dirs"] = footprint(staging)["dirs"]
    result["server_log_errors"] = server_log.count("Traceback") + server_log.count("generation failed")
    result.update(student=what, device=device, images_per_request=args.images, clients=args.clients,
                  server_concurrency=args.server_concurrency, cache_age_s=args.cache_age or 3600,
                  duration_s=args.duration)  # fmt: skip
    return result


def run_soak(args: argparse.Namespace, proc, clients: list, kwargs: dict, cache: Path) -> dict:
    lock, stop = threading.Lock(), threading.Event()
    seeds = iter(range(1, 2**31))
    latencies: list[float] = []
    compute: list[float] = []
    errors: dict[str, int] = {}
    first_errors: list[str] = []
    downloaded = [0]
    samples: list[dict] = []

    def sample(t0: float) -> dict:
        s = {"t": time.perf_counter() - t0, "requests": len(latencies), "rss_mb": rss_mb(proc.pid), **footprint(cache)}
        samples.append(s)
        return s

    def sampler(t0: float) -> None:
        while not stop.wait(args.sample_every):
            sample(t0)
            if proc.poll() is not None:
                with lock:
                    errors["server exited"] = 1
                    first_errors.append(f"the server exited with code {proc.returncode}")
                stop.set()

    def worker(c, deadline: float) -> None:
        while not stop.is_set() and time.perf_counter() < deadline:
            with lock:
                seed = next(seeds)
            try:
                ms, server_ms, out = demo_load.timed_request(c, seed, kwargs)
                problem, size = check_answer(out, args.images)
            except Exception as e:
                ms, server_ms, problem, size = float("nan"), float("nan"), f"{type(e).__name__}: {e}", 0
            with lock:
                if problem is None:
                    latencies.append(ms)
                    compute.append(server_ms)
                    downloaded[0] += size
                else:
                    kind = problem.split(":")[0]
                    errors[kind] = errors.get(kind, 0) + 1
                    if len(first_errors) < 5:
                        first_errors.append(f"seed {seed}: {problem:.300}")

    t0 = time.perf_counter()
    start = sample(t0)
    watcher = threading.Thread(target=sampler, args=(t0,), daemon=True)
    watcher.start()
    with ThreadPoolExecutor(len(clients)) as ex:
        list(ex.map(worker, clients, [t0 + args.duration] * len(clients)))
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    end = sample(t0)

    served = len(latencies)
    n_errors = sum(errors.values())
    rps = served / wall
    per_1000 = 1000 / served if served else float("nan")
    age = args.cache_age or 3600
    lifetime = age + max(1, age // 2)  # the run outlasted a file's life even under Gradio's sweep alone
    bound_files = math.ceil(2 * age * rps * args.images) + 2 * args.images
    bound_bytes = math.ceil(2 * age * rps * (downloaded[0] / served if served else 0.0)) + 64 * 1024
    checked = wall >= lifetime
    below = end["pngs"] <= bound_files and end["bytes"] <= bound_bytes and end["dirs"] <= bound_files + 8
    bound = {"pngs": bound_files, "bytes": bound_bytes, "dirs": bound_files + 8, "checked": checked, "below": below}
    peak = {k: max(s[k] for s in samples) for k in ("rss_mb", "bytes", "pngs", "dirs")}
    return {
        "requests": served,
        "errors": n_errors,
        "errors_by_kind": errors,
        "first_errors": first_errors,
        "wall_s": wall,
        "rps": rps,
        "img_s": rps * args.images,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=float("nan")),
        "server_compute_p50_ms": float(np.nanmedian(compute)) if compute else float("nan"),
        "start": start,
        "end": end,
        "peak": peak,
        "growth_per_1000_requests": {
            "rss_mb": (end["rss_mb"] - start["rss_mb"]) * per_1000,
            **{k: (end[k] - start[k]) * per_1000 for k in ("bytes", "files", "pngs", "dirs")},
        },
        # the warm-up's allocations and the cache filling up to its bound are in (end - start); the second half's
        # slope (least squares over its samples) is what still grows once the server is in its steady state
        "growth_per_1000_requests_second_half": {
            k: slope_per_1000([s for s in samples if s["t"] >= wall / 2], k)
            for k in ("rss_mb", "bytes", "pngs", "dirs")
        },
        "png_bytes_per_request": downloaded[0] / served if served else float("nan"),
        "cache_bound": bound,
        "samples": samples,
    }


def markdown(r: dict) -> str:
    mb = 2**20
    s, e, g, b = r["start"], r["end"], r["growth_per_1000_requests"], r["cache_bound"]
    h = r["growth_per_1000_requests_second_half"]
    verdict = ("yes" if b["below"] else "NO") if b["checked"] else f"not checked (run < 1.5 x {r['cache_age_s']} s)"
    lines = [
        f"\nfdistill demo soak: {r['student']}; {r['clients']} clients x {r['duration_s']:g} s; "
        f"{r['images_per_request']} images/request; server --concurrency {r['server_concurrency']}, --cache-ttl "
        f"{r['cache_age_s']}; {r['device']}; localhost\n",
        "| requests | errors | req/s | images/s | p50 ms | p95 ms | RSS start -> end MiB (per 1k req; 2nd half) | "
        "cache start -> end MiB, PNGs, dirs (per 1k req) | cache below 2 x age bound |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
        f"| {r['requests']} | {r['errors']} | {r['rps']:.1f} | {r['img_s']:.1f} | {r['p50_ms']:.0f} | "
        f"{r['p95_ms']:.0f} | {s['rss_mb']:.0f} -> {e['rss_mb']:.0f} ({g['rss_mb']:+.1f}; {h['rss_mb']:+.1f}) | "
        f"{s['bytes'] / mb:.2f} -> {e['bytes'] / mb:.2f} ({g['bytes'] / mb:+.2f}), {s['pngs']} -> {e['pngs']} "
        f"({g['pngs']:+.0f}), {s['dirs']} -> {e['dirs']} ({g['dirs']:+.0f}) | {verdict} "
        f"(end {e['pngs']} PNGs / {e['bytes'] / mb:.2f} MiB, bound {b['pngs']} / {b['bytes'] / mb:.2f}; "
        f"peak {r['peak']['pngs']} PNGs) |",
    ]
    if r["errors"]:
        lines += ["", f"errors: {r['errors_by_kind']}; first: {r['first_errors']}"]
    if r["server_log_errors"]:
        lines += ["", f"server log: {r['server_log_errors']} tracebacks / failed generations"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo_load.add_student_args(p)
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default: 16)")
    p.add_argument("--duration", type=float, default=180.0, help="seconds of load after the warm-up (default: 180)")
    p.add_argument("--images", type=int, default=4, help="images per request (default: 4)")
    p.add_argument("--server-concurrency", type=int, default=2, help="the demo's --concurrency (default: 2)")
    p.add_argument(
        "--cache-age",
        type=int,
        default=30,
        help="the demo's --cache-ttl: result PNGs older than this many seconds are deleted every half of "
        "it (default: 30; 0: the server's default, 3600)",
    )
    p.add_argument(
        "--sample-every",
        type=float,
        default=5.0,
        help="seconds between samples of the server's RSS and cache (default: 5)",
    )
    p.add_argument("--out", default=None, help="JSON result (default: runs/bench/demo_soak_<clients>x<duration>s.json)")
    args = p.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.images < 1 or args.cache_age < 0 or args.sample_every <= 0:
        p.error("--clients and --images must be >= 1, --duration and --sample-every > 0, --cache-age >= 0")

    result = soak(args)
    out = Path(args.out) if args.out else REPO / "runs" / "bench" / f"demo_soak_{args.clients}x{args.duration:g}s.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nresult: {out}")
    bound = result["cache_bound"]
    return 1 if result["errors"] or (bound["checked"] and not bound["below"]) else 0


if __name__ == "__main__":
    sys.exit(main())
