"""Load test for `wastenet serve`: latency alone, then under N concurrent clients.

Posts real TrashNet photos (the split file's test rows) to ``POST /api/predict`` and reports
requests/s, p50/p90/p99 latency and errors, first for one client (the single-request
latency), then for ``--clients`` threads at once. Prints a markdown table row and JSON.

Against a running server::

    wastenet serve --checkpoint runs/densenet121/best.pt --port 8000 &
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --clients 8 --requests 400

Or let the script start (and stop) the server itself, with extra ``serve`` options::

    python benchmarks/load_test.py --checkpoint runs/densenet121/best.pt \\
        --serve-args "--max-batch 8" --json bench-serve.json

Target: p99 under 8 concurrent clients at most 4x the single-request p50, zero errors.
The clients are Python threads: on a 2-core box they take CPU from the server, so for
numbers that describe the server alone run the script on another machine (``--url``) or pin
the two apart (``taskset -c 0 wastenet serve ...`` / ``taskset -c 1 python load_test.py``).
``server_batching`` in the JSON shows how many requests shared each forward pass.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from _common import wait_for_health

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WASTENET_SHARED", REPO.parent / "shared"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", default=None, help="a running server (default: start one with --checkpoint)")
    p.add_argument("--checkpoint", default=None, help="start `wastenet serve` with this model file")
    p.add_argument("--serve-args", default="", help="extra options for `wastenet serve` (quoted)")
    p.add_argument("--data", default=str(SHARED / "data" / "trashnet"), help="dataset root (class folders)")
    p.add_argument("--split-file", default=str(SHARED / "data" / "trashnet-split.csv"),
                   help="CSV path,label,split; its --split rows are used (missing file: every image)")
    p.add_argument("--split", default="test", help="which split's rows to post")
    p.add_argument("--max-images", type=int, default=200, help="photos held in memory and cycled through")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients in the load phase")
    p.add_argument("--requests", type=int, default=200, help="requests in the load phase (all clients)")
    p.add_argument("--duration", type=float, default=None,
                   help="run the load phase for this many seconds instead of --requests")
    p.add_argument("--single", type=int, default=30, help="requests in the single-client phase")
    p.add_argument("--warmup", type=int, default=5, help="untimed requests first")
    p.add_argument("--no-log", action="store_true", help="ask the server not to log decisions (log=false)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON here")
    p.add_argument("--label", default=None, help="name for the markdown row (default: the server's model)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- data


def load_photos(data: Path, split_file: Path | None, split: str, limit: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of up to ``limit`` photos, spread over classes (every k-th row)."""
    if split_file is not None and split_file.is_file():
        with open(split_file, newline="") as f:
            paths = [data / r["path"] for r in csv.DictReader(f) if r["split"] == split]
    else:
        paths = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        sys.exit(f"no images found under {data} (split {split!r})")
    step = max(1, len(paths) // limit)
    chosen = paths[::step][:limit]
    return [(p.name, p.read_bytes()) for p in chosen]


# --------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: str, extra: str, log_db: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "wastenet", "serve", "--checkpoint", checkpoint, "--port", str(port),
           "--log-db", str(log_db), "--log-level", "warning", *shlex.split(extra)]
    proc = subprocess.Popen(cmd, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    wait_for_health(proc, url)
    return proc, url


# --------------------------------------------------------------------------- load


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def add(self, latency: float | None, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.latencies.append(latency)  # type: ignore[arg-type]
            else:
                self.errors.append(error)


def _post(client: httpx.Client, url: str, photo: tuple[str, bytes], rec: Recorder | None) -> None:
    t0 = time.perf_counter()
    error = None
    try:
        r = client.post(url, files={"file": (photo[0], photo[1], "image/jpeg")})
        if r.status_code != 200:
            error = f"HTTP {r.status_code}: {r.text[:200]}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    if rec is not None:
        rec.add(time.perf_counter() - t0, error)


def run_phase(url: str, photos: list[tuple[str, bytes]], clients: int, total: int | None,
              duration: float | None, offset: int = 0) -> dict[str, Any]:
    rec = Recorder()
    counter = iter(range(10**12))
    counter_lock = threading.Lock()
    stop_at = None
    start = threading.Barrier(clients + 1)

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            start.wait()
            while True:
                with counter_lock:
                    i = next(counter)
                if total is not None and i >= total:
                    return
                if stop_at is not None and time.perf_counter() >= stop_at:
                    return
                _post(client, url, photos[(offset + i) % len(photos)], rec)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    if duration is not None:
        stop_at = t0 + duration  # workers read it through the closure on each request
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return summarize(rec, clients, elapsed)


def _percentile(sorted_values: list[float], q: float) -> float:
    # nearest-rank on the sorted sample (no interpolation): p99 of 100 values is the 99th
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def summarize(rec: Recorder, clients: int, elapsed: float) -> dict[str, Any]:
    lat = sorted(rec.latencies)
    n = len(lat) + len(rec.errors)
    return {
        "clients": clients,
        "requests": n,
        "ok": len(lat),
        "errors": len(rec.errors),
        "error_samples": rec.errors[:5],
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(lat) / elapsed, 2) if elapsed > 0 else None,
        "mean_ms": round(1000 * statistics.fmean(lat), 1) if lat else None,
        "p50_ms": round(1000 * _percentile(lat, 50), 1) if lat else None,
        "p90_ms": round(1000 * _percentile(lat, 90), 1) if lat else None,
        "p99_ms": round(1000 * _percentile(lat, 99), 1) if lat else None,
        "max_ms": round(1000 * lat[-1], 1) if lat else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.url and not args.checkpoint:
        sys.exit("give --url of a running server or --checkpoint to start one")
    photos = load_photos(Path(args.data), Path(args.split_file) if args.split_file else None, args.split,
                         args.max_images)
    proc = None
    tmp_db = None
    url = args.url
    if url is None:
        import tempfile

        tmp_db = Path(tempfile.mkdtemp(prefix="wastenet-load-")) / "decisions.sqlite"
        proc, url = start_server(args.checkpoint, args.serve_args, tmp_db)
    url = url.rstrip("/")
    predict_url = url + "/api/predict" + ("?log=false" if args.no_log else "")
    try:
        health = httpx.get(url + "/api/health", timeout=10).json()
        with httpx.Client(timeout=120) as client:
            for i in range(args.warmup):
                _post(client, predict_url, photos[i % len(photos)], None)
        single = run_phase(predict_url, photos, 1, args.single, None)
        load = run_phase(predict_url, photos, args.clients, None if args.duration else args.requests,
                         args.duration, offset=args.single)
        try:
            batching = httpx.get(url + "/api/health", timeout=10).json().get("batching")
        except httpx.HTTPError:
            batching = None
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    ratio = (load["p99_ms"] / single["p50_ms"]) if load["p99_ms"] and single["p50_ms"] else None
    result = {
        "model": health.get("model"),
        "backend": health.get("backend"),
        "label": args.label or f"{health.get('model')} ({health.get('backend')})",
        "server_args": args.serve_args,
        "photos": len(photos),
        "logged": not args.no_log,
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "single": single,
        "load": load,
        "p99_over_single_p50": round(ratio, 2) if ratio else None,
        "server_batching": batching,
        "target_met": bool(ratio is not None and ratio <= 4.0 and load["errors"] == 0 and single["errors"] == 0),
    }
    print("| model | clients | single p50 ms | load req/s | load p50 ms | load p99 ms | p99 / single | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {result['label']} | {load['clients']} | {single['p50_ms']} | {load['requests_per_s']} | "
          f"{load['p50_ms']} | {load['p99_ms']} | {result['p99_over_single_p50']} | "
          f"{load['errors'] + single['errors']} |")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if load["errors"] == 0 and single["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
