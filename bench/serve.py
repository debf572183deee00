"""Benchmark: the REST service under load, against the bare Predictor in the same run.

Starts `medsight serve` (through `run_server`, on a free loopback port, as a child process),
posts phantom PNGs to /v1/predict (multipart) at concurrency 1 (300 requests) and then 16
(1,700 requests) with httpx clients in threads, and prints requests/s, p50 and p99 latency
(client side, whole HTTP round trip), the error count (must be 0), the server's resident
memory (VmRSS, summed over its worker processes) after 100 and after 2,000 requests, and
the served p50 as a ratio of the bare `Predictor.predict_sample` p50 on the same images,
timed in this process before the server starts. The first 5 requests are warm-up and left
out of the concurrency-1 latencies (they still count towards the 100 / 2,000).

Without --bundle it trains a quick demo bundle first (the `demo` recipe on 60 + 60 synthetic
chest phantoms, 3 epochs). The client runs on the same machine as the server, so at
concurrency 16 they share the cores. Both the server and the bare loop run with
OMP_WAIT_POLICY=PASSIVE (what `medsight serve` sets unless it is already set).

Reproduce:
    .venv/bin/python bench/serve.py [--bundle RUN/model] [--workers 1] [--out bench/out/serve]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `medsight serve` sets it, so the bare loop is comparable
WARMUP = 5
PLAN = ((1, 300), (16, 1700))  # (concurrency, requests); RSS read after request 100 and after all 2,000


def demo_bundle(out: Path) -> tuple[Path, Path]:
    """A quick demo-recipe bundle on small phantoms: (bundle folder, data folder)."""
    from medsight.config import load_config
    from medsight.data.phantoms import make_chest_phantoms
    from medsight.workflows.train import run_training

    data = make_chest_phantoms(out / "data", n_per_class=60, size=64, seed=0)
    if not (out / "run" / "model" / "bundle.json").is_file():
        cfg = load_config(recipe="demo", overrides={"data.path": str(data), "train.epochs": 3, "eval.bootstrap": 100})
        run_training(cfg, out=out / "run", progress=False)
    return out / "run" / "model", data


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` and all its descendants (uvicorn workers), in MB."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return round(total / 1024, 1)


def bare_predictor_ms(bundle: Path, files: list[Path], n: int = 300) -> dict:
    """Latency of Predictor.predict_sample on already decoded samples (no HTTP, no decoding)."""
    from medsight.inference.predictor import Predictor
    from medsight.io import read_image

    predictor = Predictor(bundle)
    samples = [read_image(f) for f in files]
    for sample in samples[:WARMUP]:
        predictor.predict_sample(sample)
    times = []
    for i in range(n):
        start = time.perf_counter()
        predictor.predict_sample(samples[i % len(samples)])
        times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 2), "p99_ms": round(float(np.percentile(times, 99)), 2)}


def start_server(bundle: Path, port: int, workers: int, key: str, log: Path) -> subprocess.Popen:
    code = ("from pathlib import Path; from medsight.serve.server import run_server; "
            f"run_server(bundle=Path({str(bundle)!r}), port={port}, workers={workers}, log_level='warning')")
    env = {**os.environ, "MEDSIGHT_API_KEYS": key}
    with log.open("w") as handle:  # a file, not a pipe nobody reads (a full pipe would block the server)
        server = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                                  stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"the server did not start; see {log}:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)


def fire(base: str, key: str, payloads: list[bytes], *, concurrency: int, n: int, offset: int) -> dict:
    """``n`` POSTs at ``concurrency``; latencies in ms, error count, wall seconds."""
    local = threading.local()
    lock = threading.Lock()
    latencies: list[float] = []
    errors = 0

    def one(i: int) -> None:
        nonlocal errors
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60)
        data = payloads[(offset + i) % len(payloads)]
        start = time.perf_counter()
        try:
            ok = local.client.post("/v1/predict", files={"file": ("case.png", data, "image/png")}).status_code == 200
        except httpx.HTTPError:
            ok = False
        elapsed = (time.perf_counter() - start) * 1000
        with lock:
            latencies.append(elapsed)
            errors += not ok

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    return {"latencies": latencies, "errors": errors, "seconds": time.perf_counter() - start}


def summary(run: dict, skip: int = 0) -> dict:
    lat = run["latencies"][skip:]
    return {"requests": len(run["latencies"]), "errors": run["errors"],
            "requests_per_s": round(len(run["latencies"]) / run["seconds"], 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "mean_ms": round(statistics.fmean(lat), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None, help="a classification bundle (default: train a demo one)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "serve")
    args = parser.parse_args()
    import torch

    from medsight.data.phantoms import make_chest_phantoms

    if args.bundle is None:
        bundle, data = demo_bundle(args.out)
        data_note = "demo recipe bundle trained here (60+60 phantoms, 64 px, 3 epochs); inputs: its 64 px phantom PNGs"
    else:
        bundle, data = args.bundle, make_chest_phantoms(args.out / "data", n_per_class=60, size=64, seed=0)
        data_note = f"bundle {bundle}; inputs: 64 px synthetic chest phantom PNGs"
    load_at_start = round(os.getloadavg()[0], 2)  # other jobs on the machine make every timing noisier
    files = sorted(data.rglob("*.png"))[:50]
    payloads = [f.read_bytes() for f in files]
    bare = bare_predictor_ms(bundle, files)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    key = secrets.token_urlsafe(24)
    args.out.mkdir(parents=True, exist_ok=True)
    server = start_server(bundle, port, args.workers, key, args.out / "server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        first = fire(base, key, payloads, concurrency=1, n=100, offset=0)
        rss_100 = rss_mb(server.pid)
        rest = fire(base, key, payloads, concurrency=1, n=PLAN[0][1] - 100, offset=100)
        c1 = {"latencies": first["latencies"] + rest["latencies"], "errors": first["errors"] + rest["errors"],
              "seconds": first["seconds"] + rest["seconds"]}
        c16 = fire(base, key, payloads, concurrency=PLAN[1][0], n=PLAN[1][1], offset=PLAN[0][1])
        rss_2000 = rss_mb(server.pid)
        load_line = next(line for line in httpx.get(f"{base}/metrics", headers={"X-API-Key": key}).text.splitlines()
                         if line.startswith("medsight_model_load_seconds "))
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    s1, s16 = summary(c1, skip=WARMUP), summary(c16)
    result = {
        "benchmark": "medsight serve: POST /v1/predict (multipart PNG), client-side latency",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
                   f"torch {torch.__version__}, no GPU used",
        "command": "python bench/serve.py" + (f" --bundle {args.bundle}" if args.bundle else "")
                   + (f" --workers {args.workers}" if args.workers != 1 else ""),
        "data": data_note,
        "workers": args.workers,
        "load_average_1min_at_start": load_at_start,
        "model_load_seconds": round(float(load_line.split()[1]), 3),
        "concurrency_1": s1,
        "concurrency_16": s16,
        "errors_total": s1["errors"] + s16["errors"],
        "server_rss_mb_after_100": rss_100,
        "server_rss_mb_after_2000": rss_2000,
        "bare_predict_sample": bare,
        "served_p50_over_bare_p50": round(s1["p50_ms"] / bare["p50_ms"], 2),
    }
    print(json.dumps(result, indent=2))
    table = "\n".join([
        "| concurrency | requests | errors | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
        *(f"| {c} | {s['requests']} | {s['errors']} | {s['requests_per_s']} | {s['p50_ms']} | {s['p99_ms']} |"
          for c, s in ((1, s1), (16, s16))),
        "",
        f"Bare `Predictor.predict_sample`: p50 {bare['p50_ms']} ms, p99 {bare['p99_ms']} ms; served p50 / bare p50 = "
        f"{result['served_p50_over_bare_p50']}. Server RSS: {rss_100} MB after 100 requests, {rss_2000} MB after "
        f"2,000. Model load {result['model_load_seconds']} s. {result['machine']}, 1-min load average "
        f"{load_at_start} at the start.",
    ])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
