"""Prediction throughput with decoding included, against the model's bare forward pass.

    python benchmarks/predict_throughput.py --checkpoint runs/mnv2/best.pt \
        --data ../shared/data/trashnet --split-file ../shared/data/trashnet-split.csv --limit 256

Bare forward: the backend's ``predict_arrays`` on an already preprocessed batch, repeated.
End to end: ``Classifier.predict`` on JPEG paths (decode, EXIF, resize, crop, normalise,
forward, softmax, bins) with the same batch size. Prints a markdown row and writes JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--limit", type=int, default=256, help="test images used end to end")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode-workers", type=int, default=2, help="decoding threads (0: in line)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    from wastenet import Classifier
    from wastenet.data.images import load_image
    from wastenet.preprocessing import preprocess_images

    with open(args.split_file, newline="") as f:
        paths = [str(Path(args.data) / r["path"]) for r in csv.DictReader(f) if r["split"] == "test"][: args.limit]
    clf = Classifier.load(args.checkpoint)
    batch = preprocess_images([load_image(p) for p in paths[: args.batch_size]], clf.preprocessing)

    clf.backend.predict_arrays(batch)  # warm-up
    forward_times = []
    for _ in range(max(args.repeats, 3)):
        t0 = time.perf_counter()
        clf.backend.predict_arrays(batch)
        forward_times.append(time.perf_counter() - t0)
    forward_ips = len(batch) / min(forward_times)

    workers = args.decode_workers
    clf.predict(paths[: args.batch_size], batch_size=args.batch_size, decode_workers=workers)  # warm-up
    e2e_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        preds = clf.predict(paths, batch_size=args.batch_size, decode_workers=workers)
        e2e_times.append(time.perf_counter() - t0)
    assert not any(p.error for p in preds)
    e2e_ips = len(paths) / min(e2e_times)
    result = {"checkpoint": args.checkpoint, "arch": clf.arch, "backend": clf.backend_name if hasattr(clf, "backend_name") else type(clf.backend).__name__,
              "batch_size": args.batch_size, "decode_workers": workers, "cpus": os.cpu_count(), "images": len(paths), "forward_images_per_s": round(forward_ips, 1),
              "predict_images_per_s": round(e2e_ips, 1), "ratio": round(e2e_ips / forward_ips, 3)}
    print(f"| {clf.arch} | {args.batch_size} | {workers} | {forward_ips:.1f} | {e2e_ips:.1f} | {e2e_ips / forward_ips:.0%} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
