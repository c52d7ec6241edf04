"""Crash check for `wastenet serve`: 8 clients post photos while a reviewer relabels; kill -9 midway.

What it checks (the promises in docs/promises.md):

- no 5xx, before or after the kill;
- every request the server answered (200 with an id) is in the decision log after the restart,
  and every relabel it answered is in the review history;
- ``PRAGMA integrity_check`` of the log is ``ok``.

It starts the server itself on 127.0.0.1 (a free port), kills it with SIGKILL after
``--before`` seconds, restarts it on the same port and log, and runs ``--after`` seconds more.
Requests in flight at the kill, and attempts while the server is down, get no answer (counted
as ``no_answer_while_down``, not as errors: nothing was promised for them)::

    python benchmarks/crash_check.py --tiny                 # a random 64 px test_resnet, built here
    python benchmarks/crash_check.py --checkpoint runs/mnv2/best.pt --before 30 --after 20

Exit status 0 when every check holds, 1 otherwise. ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, wait_for_health  # noqa: E402
from load_test import REPO, SHARED, _free_port, load_photos  # noqa: E402 - one photo loader, one port picker

TOKEN = "crash-check-token"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_options(p)
    p.add_argument("--data", default=str(SHARED / "data" / "trashnet"))
    p.add_argument("--split-file", default=str(SHARED / "data" / "trashnet-split.csv"))
    p.add_argument("--max-images", type=int, default=60, help="photos cycled through")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--before", type=float, default=20.0, help="seconds of load before the kill")
    p.add_argument("--after", type=float, default=15.0, help="seconds of load after the restart")
    p.add_argument("--manual-every", type=int, default=3,
                   help="every N-th request asks threshold=1 (manual sort: a photo is stored for the reviewer)")
    p.add_argument("--json", default=None, metavar="FILE")
    return p.parse_args(argv)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--checkpoint FILE`` or ``--tiny``: the model a benchmark serves (see :func:`model_to_serve`)."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", help="model file to serve (.pt or .onnx)")
    g.add_argument("--tiny", action="store_true", help="build a random-init 64 px test_resnet checkpoint and serve it")


def model_to_serve(args: argparse.Namespace, work: Path) -> Path:
    """The ``--checkpoint`` file, or a tiny checkpoint built in ``work`` under ``--tiny``."""
    return tiny_checkpoint(work) if args.tiny else Path(args.checkpoint)


def tiny_checkpoint(folder: Path) -> Path:
    """A random-init timm ``test_resnet`` with the TrashNet classes and bins (seconds to build)."""
    from wastenet import checkpoint
    from wastenet.models import create_model
    from wastenet.taxonomy import load_taxonomy

    classes = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
    built = create_model("test_resnet", len(classes), weights=None, img_size=64)
    ck = checkpoint.make_checkpoint(built, classes=classes, taxonomy=load_taxonomy("trashnet", classes).to_dict())
    return checkpoint.save(ck, folder / "tiny.pt")


class Server:
    """`wastenet serve` in a child process, killable with SIGKILL and restartable on the same port."""

    def __init__(self, checkpoint: Path, db: Path) -> None:
        self.checkpoint, self.db, self.port = checkpoint, db, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wastenet", "serve", "--checkpoint", str(self.checkpoint), "--host", "127.0.0.1",
             "--port", str(self.port), "--log-db", str(self.db), "--review-token", TOKEN, "--log-level", "warning"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_health(self.proc, self.url)
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)  # no shutdown handler runs: the hard case
            self.proc.wait()


class Tally:
    """What the server answered, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.predict_ids: list[int] = []
        self.relabels: list[tuple[int, str]] = []
        self.status: dict[int, int] = {}
        self.unanswered = 0
        self.server_errors: list[str] = []

    def answer(self, r: httpx.Response) -> None:
        with self.lock:
            self.status[r.status_code] = self.status.get(r.status_code, 0) + 1
            if r.status_code >= 500:
                self.server_errors.append(f"{r.status_code} {r.request.url.path}: {r.text[:200]}")


def client_loop(url: Server, photos: list[tuple[str, bytes]], stop: threading.Event, tally: Tally,
                counter: itertools.count, manual_every: int) -> None:
    with httpx.Client(timeout=60) as http:
        while not stop.is_set():
            n = next(counter)
            name, data = photos[n % len(photos)]
            query = "?threshold=1" if manual_every and n % manual_every == 0 else ""
            try:
                r = http.post(url.url + "/api/predict" + query, files={"file": (name, data, "image/jpeg")})
            except httpx.TransportError:  # the server is dead or restarting: no answer, nothing promised
                with tally.lock:
                    tally.unanswered += 1
                time.sleep(0.05)
                continue
            tally.answer(r)
            if r.status_code == 200:
                with tally.lock:
                    tally.predict_ids.append(int(r.json()["id"]))


def reviewer_loop(url: Server, classes: list[str], stop: threading.Event, tally: Tally) -> None:
    rng = random.Random(0)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(timeout=60) as http:
        while not stop.is_set():
            try:
                items = http.get(url.url + "/api/review?limit=20", headers=auth).json()["items"]
                for it in items[:5]:
                    label = rng.choice(classes)
                    r = http.post(f"{url.url}/api/review/{it['id']}", json={"label": label}, headers=auth)
                    tally.answer(r)
                    if r.status_code == 200:
                        with tally.lock:
                            tally.relabels.append((int(it["id"]), label))
            except (httpx.TransportError, ValueError, KeyError):
                with tally.lock:
                    tally.unanswered += 1
            time.sleep(0.2)


def verify(db: Path, tally: Tally) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        logged = {r[0] for r in conn.execute("SELECT id FROM decisions")}
        history = set(conn.execute("SELECT decision_id, new_label FROM review_history"))
        rows = conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
    finally:
        conn.close()
    missing = sorted(set(tally.predict_ids) - logged)
    lost_relabels = [r for r in tally.relabels if r not in history]
    return {"integrity_check": integrity, "log_rows": rows, "answered_predictions": len(tally.predict_ids),
            "answered_missing_from_log": len(missing), "relabels_answered": len(tally.relabels),
            "relabels_missing_from_history": len(lost_relabels)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="wastenet-crash-"))
    ckpt = model_to_serve(args, work)
    photos = load_photos(Path(args.data), Path(args.split_file), "test", args.max_images)
    db = work / "decisions.sqlite"
    server = Server(ckpt, db)
    first_start = server.start()
    classes = httpx.get(server.url + "/api/health").json()["classes"]
    tally, stop, counter = Tally(), threading.Event(), itertools.count()
    threads = [threading.Thread(target=client_loop, args=(server, photos, stop, tally, counter, args.manual_every))
               for _ in range(args.clients)]
    threads.append(threading.Thread(target=reviewer_loop, args=(server, classes, stop, tally)))
    for t in threads:
        t.start()
    time.sleep(args.before)
    with tally.lock:
        before = {"predictions": len(tally.predict_ids), "relabels": len(tally.relabels)}
    server.kill()
    restart = server.start()
    time.sleep(args.after)
    stop.set()
    for t in threads:
        t.join()
    server.kill()
    result = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "clients": args.clients, "reviewer": 1,
        "before_kill_s": args.before, "after_restart_s": args.after, "startup_s": round(first_start, 1),
        "restart_s": round(restart, 1), "answered_before_kill": before,
        "status_counts": dict(sorted(tally.status.items())), "server_errors_5xx": len(tally.server_errors),
        "no_answer_while_down": tally.unanswered, **verify(db, tally),
    }
    ok = (result["server_errors_5xx"] == 0 and result["answered_missing_from_log"] == 0
          and result["relabels_missing_from_history"] == 0 and result["integrity_check"] == "ok")
    result["ok"] = ok
    print(json.dumps(result, indent=2))
    for e in tally.server_errors[:5]:
        print("5xx:", e, file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
