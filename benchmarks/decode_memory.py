"""Decode memory of `wastenet serve`: a burst of large-pixel, small-byte uploads, and RSS before, at peak, after.

Starts a real ``wastenet serve`` on 127.0.0.1 (a free port; a random-init 64 px test_resnet with
``--tiny``), then fires ``--rounds`` bursts of ``--burst`` concurrent uploads of ``--size`` x ``--size``
TIFFs (deflated flat colour: 36 Mpx in ~172 kB with the default 6000) and reads the server's
``VmRSS`` and ``VmHWM`` from ``/proc/PID/status``: before the first burst, the highest RSS seen
during each burst (sampled every 20 ms), and after each burst once the answers are in and one
second has passed. Flat "after" figures mean the memory went back::

    python benchmarks/decode_memory.py --tiny                       # this tree's `wastenet serve`
    python benchmarks/decode_memory.py --tiny --src /tmp/old/src    # another tree's (a before/after pair)
    python benchmarks/decode_memory.py --tiny --serve-args "--decode-mpx 80"

Only requests to 127.0.0.1; every loop is bounded in count and time. ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_description, wait_for_health  # noqa: E402
from crash_check import add_model_options, model_to_serve  # noqa: E402 - one model choice, one tiny builder
from load_test import REPO, _free_port  # noqa: E402 - one port picker


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_options(p)
    p.add_argument("--size", type=int, default=6000, help="side of each uploaded TIFF, in pixels")
    p.add_argument("--burst", type=int, default=8, help="concurrent uploads per burst")
    p.add_argument("--rounds", type=int, default=3, help="bursts, one after the other")
    p.add_argument("--max-decodes", type=int, default=2)
    p.add_argument("--serve-args", default="", help="more `wastenet serve` options, one string")
    p.add_argument("--src", default=None, help="run the server from this source folder (PYTHONPATH), e.g. "
                                               "an older tree for a before/after pair")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a burst may take at most")
    p.add_argument("--json", default=None, metavar="FILE")
    return p.parse_args(argv)


def big_tiff(side: int, seed: int) -> bytes:
    """A ``side`` x ``side`` RGB TIFF, deflated: flat colour, one per seed (many pixels, few bytes:
    36 Mpx in ~172 kB, the issue's upload)."""
    from PIL import Image

    img = Image.new("RGB", (side, side), (40 + seed * 20 % 200, 160, 60))
    buf = io.BytesIO()
    img.save(buf, "TIFF", compression="tiff_deflate")
    return buf.getvalue()


def status_kb(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in kB (from /proc/PID/status)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def burst(url: str, photos: list[bytes], pid: int, timeout: float) -> dict[str, Any]:
    """Post every photo at once (one thread each); the statuses and the highest RSS seen meanwhile."""
    statuses: list[int] = []
    lock = threading.Lock()
    done = threading.Event()
    peak = [status_kb(pid)["VmRSS"]]

    def post(i: int, data: bytes) -> None:
        try:
            with httpx.Client(timeout=timeout) as http:
                r = http.post(f"{url}/api/predict", files={"file": (f"big{i}.tif", data, "image/tiff")})
                code = r.status_code
        except httpx.HTTPError:
            code = -1
        with lock:
            statuses.append(code)

    def sample() -> None:
        deadline = time.monotonic() + timeout
        while not done.is_set() and time.monotonic() < deadline:
            peak[0] = max(peak[0], status_kb(pid)["VmRSS"])
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    threads = [threading.Thread(target=post, args=(i, d)) for i, d in enumerate(photos)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    seconds = time.monotonic() - t0
    done.set()
    sampler.join(5)
    return {"statuses": sorted(statuses), "peak_rss_kb": peak[0], "seconds": round(seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="decode-memory-"))
    checkpoint = model_to_serve(args, work)
    photos = [big_tiff(args.size, k) for k in range(args.burst)]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve())
    cmd = [sys.executable, "-m", "wastenet", "serve", "--checkpoint", str(checkpoint), "--host", "127.0.0.1",
           "--port", str(port), "--log-db", str(work / "d.sqlite"), "--review-token", "decode-memory",
           "--max-decodes", str(args.max_decodes), "--log-level", "warning", *shlex.split(args.serve_args)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_health(proc, url)
        before = status_kb(proc.pid)
        rounds = []
        for _ in range(max(1, args.rounds)):
            result = burst(url, photos, proc.pid, args.timeout)
            time.sleep(1.0)  # let the last answers' buffers go
            result["after_rss_kb"] = status_kb(proc.pid)["VmRSS"]
            rounds.append(result)
        hwm = status_kb(proc.pid)["VmHWM"]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    report = {
        "cpu": cpu_description(), "command": " ".join(shlex.quote(c) for c in cmd[1:]), "src": args.src,
        "photo": {"side": args.size, "megapixels": round(args.size ** 2 / 1e6, 1),
                  "kilobytes": round(sum(len(p) for p in photos) / len(photos) / 1024)},
        "burst": args.burst, "max_decodes": args.max_decodes,
        "rss_before_mb": round(before["VmRSS"] / 1024), "hwm_mb": round(hwm / 1024),
        "rounds": [{"peak_rss_mb": round(r["peak_rss_kb"] / 1024), "after_rss_mb": round(r["after_rss_kb"] / 1024),
                    "seconds": r["seconds"], "statuses": r["statuses"]} for r in rounds],
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    after = ", ".join(f"{r['after_rss_mb']}" for r in report["rounds"])
    print(f"RSS before {report['rss_before_mb']} MB, peak (VmHWM) {report['hwm_mb']} MB, after each burst {after} MB "
          f"({args.burst} x {report['photo']['megapixels']} Mpx TIFFs of ~{report['photo']['kilobytes']} kB, "
          f"--max-decodes {args.max_decodes}; {report['cpu']})")
    bad = [s for r in rounds for s in r["statuses"] if s != 200]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
