"""A kind the model has no class for, learned on the stream: how many reviewed items until it is recognised,
and what it costs the old classes. Reads a ``site_stream.py`` result whose class map has a ``new:BIN`` folder.

The base model is trained on TrashNet *without* ``trash`` (its split file lacks those rows); the stream
is every trash photo (none seen by the base model) mixed with half of the other classes' test photos;
the other half (never streamed, never reviewed) checks the old classes::

    wastenet train --data ../shared/data/trashnet --split-file SPLIT-WITHOUT-TRASH.csv --taxonomy TAX.yaml \\
        --model mobilenetv2_100 --weights ../shared/weights/mobilenetv2_100.safetensors --recipe linear \\
        --out runs/mnv2-no-trash
    python benchmarks/site_stream.py --checkpoint runs/mnv2-no-trash/best.pt --stream ../shared/data/trashnet \\
        --class-map benchmarks/field/trashnet-new-trash.yaml --order benchmarks/results/new-class-order.csv \\
        --adapt-every 10 --adapt-mix ../shared/data/trashnet --adapt-mix-split SPLIT-WITHOUT-TRASH.csv \\
        --out benchmarks/results/site-stream-new-class.json
    python benchmarks/new_class.py --result benchmarks/results/site-stream-new-class.json --new trash \\
        --check benchmarks/results/new-class-check.csv --data ../shared/data/trashnet

Recognised: recall (top-1 label) of at least 0.8 on the kind's next 50 items after a version holding it
was promoted (``recall_next`` of the first such version; ``recognised``: the first version whose next 50
reach 0.8, and how many reviewed items of the kind it had trained on). Target: after <= 30 reviewed items of the kind, old classes <= 1 point worse.

``--every-candidate`` also scores the candidates the rule kept out (their files stay in the versions
folder): each one's own recall on the kind's next 50 stream items after it was made, and its old-class
accuracy. It tells whether recognition waits for the learning or for the rule (``candidates``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any


def check_accuracy(model: Any, data: Path, rows: list[dict[str, str]]) -> float:
    """Top-1 accuracy on ``rows`` of ``model`` (a file, or a loaded Classifier)."""
    from wastenet.inference.predictor import Classifier

    clf = Classifier.load(model) if isinstance(model, (str, Path)) else model
    preds = clf.predict([str(data / r["path"]) for r in rows], unknown_rule=False)
    return sum(p.label == r["label"] for p, r in zip(preds, rows)) / len(rows)


def every_candidate(r: dict, new: str, data: Path, check: list[dict[str, str]], n_next: int,
                    label_of: dict[int, str]) -> list[dict]:
    """Every version that holds the kind, promoted or not: recall of its own top-1 labels on the kind's next
    ``n_next`` stream items after it was made, and its old-class accuracy on ``check``."""
    from wastenet.inference.predictor import Classifier

    models = Path(r["log_db"]).parent / "models"
    with open(r["order"], newline="") as f:
        order = list(csv.DictReader(f))
    with sqlite3.connect(r["log_db"]) as conn:  # one row per streamed item, in stream order
        made = [row[0] for row in conn.execute("SELECT created_at FROM decisions ORDER BY id")]
    out = []
    for v in r["version_list"]:
        if new not in (v.get("new_classes") or {}):  # a version made before the kind had its K items
            continue
        side = json.loads((models / f"{v['id']:04d}.json").read_text())
        start = next((i for i, t in enumerate(made) if t > side["created_at"]), len(made))
        after = [o for o in order[start:] if o["label"] == new][:n_next]
        clf = Classifier.load(side["file"])
        seen = clf.predict([str(Path(r["stream"]) / o["path"]) for o in after], unknown_rule=False) if after else []
        out.append({"id": v["id"], "promoted": v["promoted"], "first_item_after": start,
                    "reviewed_new_trained_on": sum(label_of.get(i) == new for i in side["inputs"].get("trained_on") or []),
                    "recall_next": sum(p.label == new for p in seen) / len(seen) if seen else None,
                    "recall_next_n": len(seen),
                    "old_class_accuracy": check_accuracy(clf, data, check)})
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--result", required=True)
    ap.add_argument("--new", required=True, help="the new kind's name (its folder)")
    ap.add_argument("--check", required=True, help="CSV path,label of old-class photos never streamed")
    ap.add_argument("--data", required=True)
    ap.add_argument("--next", type=int, default=50)
    ap.add_argument("--every-candidate", action="store_true", help="also score the candidates kept out")
    args = ap.parse_args()
    r = json.loads(Path(args.result).read_text())
    versions = r["version_list"]
    grown = [v for v in versions if v["promoted"] and args.new in (v.get("new_classes") or {})]
    with open(args.check, newline="") as f:
        check = list(csv.DictReader(f))
    models = Path(r["log_db"]).parent / "models"
    base_acc = check_accuracy(r["checkpoint"], Path(args.data), check)
    out = {"base_old_class_accuracy": base_acc, "versions": []}
    with sqlite3.connect(r["log_db"]) as conn:
        label_of = dict(conn.execute("SELECT id, reviewed_label FROM decisions WHERE reviewed_label IS NOT NULL"))
    for v in versions:
        side = json.loads((models / f"{v['id']:04d}.json").read_text())
        trained = side["inputs"].get("trained_on") or []
        entry = {"id": v["id"], "promoted": v["promoted"], "reason": v["reason"],
                 "reviewed_new_trained_on": sum(label_of.get(i) == args.new for i in trained),
                 "new_class": args.new in (v.get("new_classes") or {}) or any(
                     args.new in (g.get("new_classes") or {}) for g in versions if g["id"] < v["id"] and g["promoted"]),
                 "old_class_accuracy": check_accuracy(side["file"], Path(args.data), check) if v["promoted"] else None}
        out["versions"].append(entry)
    if grown:
        first = grown[0]
        vid_model = first["model_id"]
        items = r["decided"]
        start = next((it["i"] for it in items if it["version"] == vid_model), None)
        after = [it for it in items if start is not None and it["i"] >= start and it["truth"] == args.new][: args.next]
        recall = sum(it["label"] == args.new for it in after) / len(after) if after else None
        side = json.loads((models / f"{first['id']:04d}.json").read_text())
        out.update(first_version_with_it=first["id"], first_item_served_by_it=start,
                   reviewed_new_items_before=sum(label_of.get(i) == args.new for i in side["inputs"]["trained_on"]),
                   recall_next=recall, next_n=len(after))
    # every promoted version with the kind: its recall on the kind's next items from the one it first served
    items = r["decided"]
    for e, v in zip(out["versions"], versions):
        start = next((it["i"] for it in items if it["version"] == v["model_id"]), None)
        if not (v["promoted"] and e["new_class"]) or start is None:
            continue
        after = [it for it in items if it["i"] >= start and it["truth"] == args.new][: args.next]
        e.update(first_item_served=start, recall_next=sum(it["label"] == args.new for it in after) / len(after)
                 if after else None, recall_next_n=len(after))
    hit = next((e for e in out["versions"] if (e.get("recall_next") or 0) >= 0.8 and e.get("recall_next_n") == args.next),
               None)
    out["recognised"] = None if hit is None else {k: hit[k] for k in ("id", "reviewed_new_trained_on", "recall_next",
                                                                       "first_item_served")}
    if args.every_candidate:
        out["candidates"] = every_candidate(r, args.new, Path(args.data), check, args.next, label_of)
    final = [e for e in out["versions"] if e["old_class_accuracy"] is not None][-1]
    out["final_old_class_accuracy"] = final["old_class_accuracy"]
    print(json.dumps(out, indent=2))
    Path(args.result).with_suffix(".new-class.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
