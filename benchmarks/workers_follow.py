"""Do all the workers of ``wastenet serve --workers N`` serve the version that was activated through one of them?

A real server with N worker processes on loopback. A second version of the model is added to the log's
versions folder (a copy of the checkpoint, as an offline ``adapt --from-log --versions`` would add one),
activated through ``POST /api/models/1/activate``, and then ``--requests`` predictions, each on a new
connection (the kernel spreads them over the workers), say which version decided them; then the same after
a rollback to version 0::

    python benchmarks/workers_follow.py --checkpoint runs/s17-lite0-256x320-ft/best.pt \\
        --image ../shared/data/trashnet/glass/glass1.jpg --out benchmarks/results/workers-follow.json

With ``--adapt-every N --reviews R --review-data DIR`` it measures instead whether ``--adapt-every`` counts
once for the whole server: a fresh ``serve --workers N --adapt-every N --threshold 1`` (every item goes to
manual sort), R photos of DIR's class folders predicted, and those sent to manual sort reviewed with their folder's label, each request
on its own connection, waiting for the run after every N reviews (so none is refused for running). One
count for the server makes (reviewed) // N versions, trained on N, 2N, ... reviewed items; a count per worker makes
more (a worker that did not start the last run counts from its own start). Without ``--adapt-mix`` a run
needs 5 reviewed items of a class after the hold-out to have validation rows, hence 48 for 6 classes::

    python benchmarks/workers_follow.py --checkpoint runs/s17-lite0-256x320-ft/best.pt --adapt-every 48 \\
        --reviews 96 --review-data ../shared/data/trashnet --out benchmarks/results/workers-adapt-every.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import cpu_model, wait_for_health
from load_test import _free_port  # one port picker (crash_check.py takes it from there too)

TOKEN = "workers-follow-token"


def versions_served(url: str, image: bytes, n: int) -> dict[str, int]:
    """How many of ``n`` predictions, each on its own connection, each version decided."""
    import httpx

    seen = Counter(str(httpx.post(url + "/api/predict", files={"file": ("x.jpg", image, "image/jpeg")},
                                  timeout=60).json().get("model_version")) for _ in range(n))
    return dict(sorted(seen.items()))


def review_photos(folder: Path, n: int) -> list[tuple[Path, str]]:
    """``n`` photos of ``folder``'s class folders, one class after another (so every run sees every class)."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir())
    per_class = [sorted(d.glob("*.jpg")) for d in classes]
    rows = [(photos[i], d.name) for i in range(n) for d, photos in zip(classes, per_class) if i < len(photos)]
    return rows[:n]


def count_phase(url: str, models: Path, rows: list[tuple[Path, str]], every: int, run_timeout: float) -> dict:
    """Predict and review ``rows``; after every ``every`` reviews wait for the run that should start."""
    import httpx

    from wastenet.site.versions import VersionStore

    auth = {"Authorization": f"Bearer {TOKEN}"}
    store = VersionStore(models)

    def candidates() -> int:  # versions after 0, the model the server started with
        return len([v for v in store.ids() if v])

    k, failed = 0, []
    for photo, label in rows:
        p = httpx.post(url + "/api/predict", files={"file": ("x.jpg", photo.read_bytes(), "image/jpeg")},
                       timeout=60).json()
        if p["decision"] != "manual_sort":  # sure enough even at threshold 1: no photo kept, nothing to learn
            continue
        httpx.post(f"{url}/api/review/{p['id']}", json={"label": label}, headers=auth, timeout=60).raise_for_status()
        k += 1
        if k % every == 0:  # one run is due now: wait until its candidate is a version
            deadline = time.monotonic() + run_timeout
            while candidates() < k // every and time.monotonic() < deadline:
                time.sleep(0.5)
            if candidates() < k // every:
                failed.append({"reviewed": k, "log_tail": (models / "adapt.log").read_text(errors="replace")[-600:]
                               if (models / "adapt.log").is_file() else None})
    time.sleep(5)  # a run that should not have started would have started by now
    deadline = time.monotonic() + run_timeout
    while any(models.glob(".candidate-*")) and time.monotonic() < deadline:  # a run's working folder
        time.sleep(0.5)
    versions = [{"id": v["id"], "reviewed": len(v["inputs"].get("trained_on") or []) +
                 len(v["inputs"].get("held_out") or [])} for v in store.list() if v["id"]]
    return {"predicted": len(rows), "reviewed": k, "every": every, "expected_versions": k // every,
            "versions": versions, "no_run_at": failed,
            "one_count": [v["reviewed"] for v in versions] == [every * (i + 1) for i in range(k // every)]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a .pt model")
    ap.add_argument("--image", help="a JPEG to predict")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds between the activation and the predictions")
    ap.add_argument("--adapt-every", type=int, default=None, help="measure --adapt-every's count instead")
    ap.add_argument("--reviews", type=int, default=60)
    ap.add_argument("--review-data", default=None, help="class folders of photos to review (with --adapt-every)")
    ap.add_argument("--run-timeout", type=float, default=120.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if (args.adapt_every is None) != (args.review_data is None):
        ap.error("--adapt-every and --review-data go together")
    if args.adapt_every is None and args.image is None:
        ap.error("--image is needed (or --adapt-every with --review-data)")

    import httpx

    from wastenet.site.versions import VersionStore

    work = Path(tempfile.mkdtemp(prefix="wastenet-workers-follow-"))
    db, port = work / "decisions.sqlite", _free_port()
    url = f"http://127.0.0.1:{port}"
    extra = [] if args.adapt_every is None else ["--adapt-every", str(args.adapt_every), "--threshold", "1",
                                                 "--audit-rate", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "wastenet", "serve", "--checkpoint", args.checkpoint,
                             "--port", str(port), "--workers", str(args.workers), "--log-db", str(db),
                             "--log-level", "warning", "--review-token", TOKEN, *extra])
    out: dict = {"cpu": cpu_model(), "checkpoint": args.checkpoint, "workers": args.workers}
    try:
        wait_for_health(proc, url)
        if args.adapt_every is not None:
            rows = review_photos(Path(args.review_data), args.reviews)
            out["adapt_every"] = count_phase(url, work / "models", rows, args.adapt_every, args.run_timeout)
            print(f"--adapt-every {args.adapt_every}, {args.reviews} reviews through {args.workers} workers: "
                  f"{out['adapt_every']['versions']}", file=sys.stderr)
            Path(args.out).write_text(json.dumps(out, indent=2))
            print(json.dumps(out))
            return 0 if out["adapt_every"]["one_count"] else 1
        image = Path(args.image).read_bytes()
        out.update(requests=args.requests, settle_s=args.settle)
        store = VersionStore(work / "models")
        store.set_base(args.checkpoint)
        store.add(args.checkpoint, parent=0, inputs={}, scores={}, promoted=False, reason="added by workers_follow.py")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for vid in (1, 0):
            r = httpx.post(f"{url}/api/models/{vid}/activate", json={}, headers=auth, timeout=120)
            r.raise_for_status()
            time.sleep(args.settle)
            out[f"after_activating_{vid}"] = served = versions_served(url, image, args.requests)
            print(f"activated version {vid} through one worker: {served} of {args.requests} predictions "
                  "(version: count)", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    out["all_follow"] = all(set(out[f"after_activating_{v}"]) == {str(v)} for v in (1, 0))
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out))
    return 0 if out["all_follow"] else 1


if __name__ == "__main__":
    sys.exit(main())
