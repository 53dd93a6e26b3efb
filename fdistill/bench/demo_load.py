"""Load test of the Gradio demo: requests/s and p50/p95 latency for 1, 4 and 16 concurrent clients.

    fdistill bench demo-load                                   # shipped student if present, else a random one
    fdistill bench demo-load --checkpoint runs/x/student --requests 64 --clients 1,4,16,32
    fdistill bench demo-load --arch tiny --server-concurrency 1

The server is ``fdistill demo`` in a child process bound to 127.0.0.1 (so the clients' Python threads do not
share its GIL); each concurrent client is a ``gradio_client.Client`` in its own thread calling
``/generate`` (student only, ``--images`` per request, fixed seeds). Every level sends the same bounded number
of requests after one untimed warm-up call per client. Latency is client-observed (HTTP + queue + compute);
the ``compute`` column is the server's own student latency for the same request, parsed from the info text,
so the gap is what the web stack and queueing cost. Without a checkpoint the student is the Fashion-MNIST
architecture (``--arch fmnist``, 32x32, random weights: same compute as the real one) or a tiny net.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

from fdistill.data.fashion_mnist import CLASS_NAMES  # noqa: E402
from fdistill.export.pipeline import export_student  # noqa: E402
from fdistill.nets.unet import EDMUNet  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ARCHS = {
    "fmnist": {"sample_size": 32, "block_out_channels": (32, 64, 128), "attention_levels": (2,), "norm_num_groups": 32,
               "attention_head_dim": 32, "num_classes": 10},
    "tiny": {"sample_size": 16, "block_out_channels": (8, 16), "attention_levels": (), "norm_num_groups": 4,
             "attention_head_dim": 8, "num_classes": 10},
}  # fmt: skip


def random_student(arch: str, folder: Path) -> Path:
    torch.manual_seed(0)
    return export_student(EDMUNet(**ARCHS[arch]), 2.5, folder / f"student_{arch}", class_names=CLASS_NAMES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_student(checkpoint: str | None, arch: str, folder: Path) -> tuple[Path, str]:
    """The student to serve and how to name it: ``checkpoint``, else the shipped one, else a random ``arch`` one."""
    shipped = REPO / "checkpoints" / "fmnist_student"
    if checkpoint:
        return Path(checkpoint), checkpoint
    if (shipped / "model_index.json").is_file():
        return shipped, str(shipped.relative_to(REPO))
    return random_student(arch, folder), f"random {arch} student (no checkpoint)"


def first_class(student: Path) -> str | None:
    """The class every request asks for (the second class name, as the load test always did; None: unconditional)."""
    names = json.loads((student / "model_index.json").read_text()).get("class_names") or []
    return names[1 % len(names)] if names else None


def start_server(
    student: Path,
    port: int,
    concurrency: int,
    log: Path,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """``fdistill demo`` (student only, CPU, 127.0.0.1:``port``) in a child process; ``extra_args`` are appended to its
    command line, ``env`` updates its environment."""
    cmd = [sys.executable, "-m", "fdistill", "demo", "--checkpoint", str(student), "--no-teacher"]
    cmd += ["--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--concurrency", str(concurrency), "--max-queue", "256", *(extra_args or [])]
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0):
    from gradio_client import Client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"demo_load: the server exited with code {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            return Client(url, verbose=False)
        except Exception:
            time.sleep(0.5)
    sys.exit(f"demo_load: the server did not answer within {timeout:.0f} s; log: {log}")


STUDENT_MS = re.compile(r"one-step student \| 1 \| ([\d.]+) ms")


def probe_device(url: str, proc: subprocess.Popen, log: Path, class_name: str | None) -> str:
    """Wait for the server, send one 1-image request, and return the device it reports (``'device ?'``: none)."""
    probe = wait_until_up(url, proc, log)
    _, _, info, _ = probe.predict(class_name=class_name, seed=0, num_images=1, api_name="/generate")
    device = re.search(r"· ([^·]+)$", info.splitlines()[0])
    return device.group(1).strip() if device else "device ?"


def request_kwargs(class_name: str | None, images: int) -> dict:
    """The ``/generate`` arguments of every load-test request but the seed: student only, ``images`` images."""
    return {"class_name": class_name, "num_images": images, "run_teacher": False, "api_name": "/generate"}


def warm_clients(url: str, clients: int, kwargs: dict, **client_kwargs) -> list:
    """``clients`` ``gradio_client.Client`` objects, each after one untimed call (connection, session, server-side
    caches); ``client_kwargs`` go to ``Client`` (e.g. ``download_files``)."""
    from gradio_client import Client

    pool_clients = [Client(url, verbose=False, **client_kwargs) for _ in range(clients)]
    for c in pool_clients:
        c.predict(seed=0, **kwargs)
    return pool_clients


def timed_request(client, seed: int, kwargs: dict) -> tuple[float, float, tuple]:
    """One ``/generate`` call: client-observed latency (ms), the server's student latency parsed from the info text
    (ms, NaN when absent) and the call's outputs ``(student_gallery, teacher_gallery, info, seed_used)``."""
    t0 = time.perf_counter()
    out = client.predict(seed=seed, **kwargs)
    dt = time.perf_counter() - t0
    info = out[2] if isinstance(out, tuple | list) and len(out) > 2 and isinstance(out[2], str) else ""
    m = STUDENT_MS.search(info)
    return dt * 1e3, float(m.group(1)) if m else float("nan"), out


def run_level(url: str, clients: int, requests: int, images: int, class_name: str) -> dict[str, float]:
    kwargs = request_kwargs(class_name, images)
    pool_clients = warm_clients(url, clients, kwargs)
    latencies: list[float] = []
    compute: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker(c) -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            ms, server_ms, _ = timed_request(c, i, kwargs)
            with lock:
                latencies.append(ms)
                compute.append(server_ms)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(worker, pool_clients))
    wall = time.perf_counter() - t0
    lat = np.array(latencies)
    return {"clients": clients, "requests": len(lat), "rps": len(lat) / wall, "img_s": len(lat) * images / wall,
            "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
            "compute": float(np.nanmedian(compute))}  # fmt: skip


def add_student_args(p: argparse.ArgumentParser) -> None:
    """``--checkpoint`` and ``--arch``: the student the demo serves (shared by the load and soak benchmarks)."""
    p.add_argument(
        "--checkpoint",
        default=None,
        help="student folder (default: checkpoints/fmnist_student if present, else a random --arch one)",
    )
    p.add_argument(
        "--arch",
        choices=sorted(ARCHS),
        default="fmnist",
        help="architecture of the random student used without a checkpoint (default: fmnist)",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_student_args(p)
    p.add_argument("--clients", default="1,4,16", help="comma list of concurrent client counts (default: 1,4,16)")
    p.add_argument("--requests", type=int, default=48, help="timed requests per level (default: 48)")
    p.add_argument("--images", type=int, default=4, help="images per request (default: 4)")
    p.add_argument("--server-concurrency", type=int, default=2, help="the demo's --concurrency (default: 2)")
    args = p.parse_args(argv)  # fmt: skip

    levels = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="fdistill_demo_load_") as tmp:
        tmp = Path(tmp)
        student, what = resolve_student(args.checkpoint, args.arch, tmp)
        port, log = free_port(), tmp / "server.log"
        url = f"http://127.0.0.1:{port}/"
        proc = start_server(student, port, args.server_concurrency, log)
        try:
            class_name = first_class(student)
            device = probe_device(url, proc, log, class_name)
            rows = [run_level(url, c, args.requests, args.images, class_name) for c in levels]
        finally:
            stop_server(proc)
    print(f"\nfdistill demo load test: {what}; {args.images} images/request; server --concurrency "
          f"{args.server_concurrency}; {device}; localhost\n")  # fmt: skip
    print("| clients | requests | req/s | images/s | p50 ms | p95 ms | server compute p50 ms |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['rps']:.1f} | {r['img_s']:.1f} | {r['p50']:.0f} | "
              f"{r['p95']:.0f} | {r['compute']:.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
