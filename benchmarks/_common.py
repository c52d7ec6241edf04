"""Helpers the benchmark scripts share: the CPU's name (:mod:`wastenet.machine`), waiting for a server, timing rounds.

Scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path``::

    from _common import cpu_model, timed_rounds, wait_for_health

    proc = subprocess.Popen([sys.executable, "-m", "wastenet", "serve", ...])
    startup_s = wait_for_health(proc, "http://127.0.0.1:8000")
    times = timed_rounds({"eager": run_eager, "onnxruntime": run_ort}, rounds=3)   # {name: [seconds]}
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Callable, Mapping

# the CPU's name and precision flags live in the package (every run's summary.json records them too)
from wastenet.machine import PRECISION_FLAGS, cpu_description, cpu_model  # noqa: E402,F401


def wait_for_health(proc: subprocess.Popen, url: str, timeout_s: float = 180.0, poll_s: float = 0.2) -> float:
    """Seconds until the server ``proc`` answers ``GET URL/api/health`` with 200.

    Exits the script with one line if the server dies first, or kills it and exits after
    ``timeout_s`` (model loading on a busy 2-core box takes a while).
    """
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            sys.exit(f"server exited with status {proc.returncode}")
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.TransportError:
            pass
        time.sleep(poll_s)  # also after a non-200 answer: do not spin on a starting server
    proc.kill()
    proc.wait()
    sys.exit(f"server did not start within {timeout_s:.0f} s")


def timed_rounds(fns: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall-clock seconds of each function, ``rounds`` times, interleaved round by round so that
    load from other jobs hits every function alike; ``warmup`` untimed calls each first (oneDNN
    and onnxruntime build their kernels on the first calls)::

        timed_rounds({"train": train_step}, rounds=6, warmup=2)["train"]   # [s, s, ...]
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times
