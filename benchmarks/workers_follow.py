"""Do all the workers of ``wastenet serve --workers N`` serve the version that was activated through one of them?

A real server with N worker processes on loopback. A second version of the model is added to the log's
versions folder (a copy of the checkpoint, as an offline ``adapt --from-log --versions`` would add one),
activated through ``POST /api/models/1/activate``, and then ``--requests`` predictions, each on a new
connection (the kernel spreads them over the workers), say which version decided them; then the same after
a rollback to version 0::

    python benchmarks/workers_follow.py --checkpoint runs/s17-lite0-256x320-ft/best.pt \\
        --image ../shared/data/trashnet/glass/glass1.jpg --out benchmarks/results/workers-follow.json
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a .pt model")
    ap.add_argument("--image", required=True, help="a JPEG to predict")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds between the activation and the predictions")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import httpx

    from wastenet.site.versions import VersionStore

    image = Path(args.image).read_bytes()
    work = Path(tempfile.mkdtemp(prefix="wastenet-workers-follow-"))
    db, port = work / "decisions.sqlite", _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "wastenet", "serve", "--checkpoint", args.checkpoint,
                             "--port", str(port), "--workers", str(args.workers), "--log-db", str(db),
                             "--log-level", "warning", "--review-token", TOKEN])
    out: dict = {"cpu": cpu_model(), "checkpoint": args.checkpoint, "workers": args.workers,
                 "requests": args.requests, "settle_s": args.settle}
    try:
        wait_for_health(proc, url)
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
