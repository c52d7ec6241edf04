"""The edge set-up, checked on a stream's versions (issue 23 item 5): every promoted version exported to
ONNX and INT8 with `wastenet export`, and scored against its own `.pt` on the items it was judged on.

A torch-free bin receives a new `.onnx` from the machine that holds its log. This takes a finished
``site_stream.py`` run's versions folder (``<log dir>/models``), exports each promoted version as a user
would (``wastenet export --int8``, calibrated on a split's train rows), and scores the ``.pt``, the fp32
``.onnx`` and the ``.int8.onnx`` on the version's held-out reviewed items (the newest 20% it was
promoted on, never trained on; their photos are read from the decision log), each with the label its
reviewer gave::

    python benchmarks/edge_versions.py --result benchmarks/results/site-stream-field-densenet121-adapt.json \\
        --calib-data ../shared/data/trashnet --calib-split ../shared/data/trashnet-split.csv \\
        --out benchmarks/results/edge-versions-densenet121.json
    python benchmarks/edge_versions.py --result ... --calib-from-log --out ...   # calibrated on the site's photos

Target: each INT8 version within 1 point of its fp32 accuracy on those items. Held-out photos of no
item (labelled ``not_an_item`` on a floors stream) are no class: each file is scored on whether it refuses them.
"""

from __future__ import annotations

import argparse
import io
import json
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from wastenet.ood import NOT_AN_ITEM


def logged_photos(db: str, ids: list[int]) -> tuple[list[Image.Image], list[str]]:
    with sqlite3.connect(db) as conn:
        rows = {i: (img, label) for i, img, label in conn.execute(
            f"SELECT id, image, reviewed_label FROM decisions WHERE id IN ({','.join('?' * len(ids))})", ids)}
    keep = [i for i in ids if i in rows and rows[i][0] is not None]
    return ([Image.open(io.BytesIO(rows[i][0])).convert("RGB") for i in keep], [rows[i][1] for i in keep])


def scores(model: str, images: list, labels: list[str], empty: list) -> tuple[float | None, int]:
    """One file, loaded once: its class accuracy on the items (the unknown-item rule off: it compares the
    classifiers; None without items), and how many photos of no item it refuses (sends to manual sort) as it
    would decide them."""
    from wastenet.inference.predictor import Classifier

    clf = Classifier.load(model)
    acc = None
    if labels:
        preds = clf.predict(images, unknown_rule=False, progress=False)
        acc = sum(p.label == y for p, y in zip(preds, labels)) / len(labels)
    refused = sum(not p.sorted for p in clf.predict(empty, progress=False)) if empty else 0
    return acc, refused


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--result", required=True, help="a site_stream.py result (its log_db names the versions folder)")
    ap.add_argument("--calib-data", help="calibrate on this folder's --calib-split train rows (e.g. TrashNet)")
    ap.add_argument("--calib-split")
    ap.add_argument("--calib-from-log", action="store_true",
                    help="calibrate each version on the site photos it was trained on (from the log), not --calib-data")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from wastenet.machine import cpu_description

    r = json.loads(Path(args.result).read_text())
    models = Path(r["log_db"]).parent / "models"
    work = Path(tempfile.mkdtemp(prefix="wastenet-edge-versions-"))
    if not args.calib_from_log and not (args.calib_data and args.calib_split):
        ap.error("give --calib-data and --calib-split, or --calib-from-log")
    out = {"cpu": cpu_description(), "result": args.result, "calibration": "site photos trained on" if
           args.calib_from_log else f"{args.calib_data} train rows", "versions": []}
    for v in r["version_list"]:
        if not v["promoted"] or v["id"] == 0:
            continue
        side = json.loads((models / f"{v['id']:04d}.json").read_text())
        images, labels = logged_photos(r["log_db"], side["inputs"]["held_out"])
        int8 = work / f"{v['id']:04d}.int8.onnx"  # with --int8, --out is the INT8 file; the fp32 one goes beside it
        cmd = [sys.executable, "-m", "wastenet", "export", "--checkpoint", side["file"], "--out", str(int8), "--int8"]
        if args.calib_from_log:  # the photos the bin's camera takes, which the version learned from
            calib = work / f"calib-{v['id']:04d}" / "site"
            calib.mkdir(parents=True)
            for k, im in enumerate(logged_photos(r["log_db"], side["inputs"]["trained_on"])[0]):
                im.save(calib / f"{k}.jpg", quality=95)
            cmd += ["--calib-data", str(calib.parent)]
        else:
            cmd += ["--calib-data", args.calib_data, "--calib-split-file", args.calib_split]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        (onnx,) = [p for p in work.glob(f"{v['id']:04d}*.onnx") if p != int8]
        # photos of no item (a floors stream) are no class: they are scored by whether each file refuses them
        empty = [im for im, y in zip(images, labels) if y == NOT_AN_ITEM]
        images, labels = [im for im, y in zip(images, labels) if y != NOT_AN_ITEM], [y for y in labels if y != NOT_AN_ITEM]
        files = {"pt": side["file"], "onnx": str(onnx), "int8": str(int8)}
        got = {k: scores(f, images, labels, empty) for k, f in files.items()}
        row = {"id": v["id"], "held_out": len(labels), **{k: acc for k, (acc, _) in got.items()},
               "int8_mb": round(int8.stat().st_size / 2**20, 2), "held_out_empty": len(empty),
               "empty_refused": {k: n for k, (_, n) in got.items()}}
        row["int8_minus_fp32_points"] = (None if row["int8"] is None else round(100 * (row["int8"] - row["onnx"]), 2))
        print(f"version {v['id']}: {row['held_out']} held-out items: .pt {_f(row['pt'])}, .onnx {_f(row['onnx'])}, "
              f".int8.onnx {_f(row['int8'])} ({row['int8_mb']} MB)"
              + (f"; photos of no item refused (.pt/.onnx/.int8): {'/'.join(str(n) for n in row['empty_refused'].values())}"
                 f" of {len(empty)}" if empty else ""), flush=True)
        out["versions"].append(row)
    out["all_within_1_point"] = all(abs(x["int8_minus_fp32_points"]) <= 1 for x in out["versions"]
                                    if x["int8_minus_fp32_points"] is not None)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    sys.exit(main())
