"""The site-adaptation learning curve on the field set: accuracy after 0, 10, 25, 50 labelled items per class.

The field set has few distinct objects photographed many times, on a handful of floors, and
no scene labels. So the split is by *surface*: every photo's floor (the largest square beside
its item box) is summarised by its colour and texture and k-means groups the photos into
surfaces; alternate surfaces go to the adaptation pool and to the evaluation pool, so no floor
is both taught and tested. For each N, N items per class are drawn from the pool,
`wastenet adapt` re-fits the model (with a TrashNet rehearsal mix), and the evaluation pool is
scored as `predict` decides it; TrashNet test accuracy checks for forgetting::

    python benchmarks/adapt_curve.py --checkpoint runs/mnv2/best.pt --field ../shared/data/field-drinkingwaste \
        --class-map benchmarks/field/drinkingwaste.yaml --trashnet ../shared/data/trashnet \
        --split-file ../shared/data/trashnet-split.csv --out benchmarks/results/adapt-curve.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from wastenet.data.images import load_image
from wastenet.evaluation.field import evaluate_field, field_items, floor_crop, load_class_map
from wastenet.inference.predictor import Classifier
from wastenet.training.adapt import AdaptConfig, adapt


def surface_features(root: Path, items) -> np.ndarray:
    """Mean/std colour and a texture energy of each photo's floor crop."""
    feats = []
    for it in items:
        img = load_image(root / it.path)
        floor = floor_crop(img, it.box) if it.box else img
        a = np.asarray((floor or img).resize((64, 64)), dtype=np.float64) / 255.0
        tex = np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()
        feats.append(np.concatenate([a.mean((0, 1)), a.std((0, 1)), [tex * 4]]))
    return np.asarray(feats)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = (x - x.mean(0)) / (x.std(0) + 1e-9)
    centres = z[rng.choice(len(z), k, replace=False)]
    for _ in range(iters):
        labels = ((z[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        centres = np.stack([z[labels == c].mean(0) if (labels == c).any() else centres[c] for c in range(k)])
    return labels


def trashnet_test_accuracy(ckpt: str, root: str, split_file: str) -> float:
    from wastenet.data.datasets import read_split_file

    rows = [r for r in read_split_file(split_file, root) if r.split == "test"]
    clf = Classifier.load(ckpt)
    preds = clf.predict([str(Path(root) / r.path) for r in rows], unknown_rule=False)
    return float(np.mean([p.label == r.label for p, r in zip(preds, rows)]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--field", required=True)
    ap.add_argument("--class-map", required=True)
    ap.add_argument("--boxes", help="default: FIELD/labels.csv")
    ap.add_argument("--trashnet", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--counts", default="0,10,25,50")
    ap.add_argument("--surfaces", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    root = Path(args.field)
    base = Classifier.load(args.checkpoint)
    cmap = load_class_map(args.class_map, base.classes, base.taxonomy.bin_names)
    items = field_items(root, cmap, args.boxes or root / "labels.csv")
    surface = kmeans(surface_features(root, items), args.surfaces, args.seed)
    pool = [it for it, s in zip(items, surface) if s % 2 == 0]
    held = [it for it, s in zip(items, surface) if s % 2 == 1]
    split_info = {"surfaces": args.surfaces, "pool": len(pool), "held_out": len(held),
                  "pool_per_class": {c: sum(it.foreign == c for it in pool) for c in cmap},
                  "held_out_per_class": {c: sum(it.foreign == c for it in held) for c in cmap}}
    print(f"split by surface: {split_info}", file=sys.stderr)
    results = []
    work = Path(tempfile.mkdtemp(prefix="wastenet-adapt-"))
    for n in [int(c) for c in args.counts.split(",")]:
        t0 = time.time()
        ckpt = args.checkpoint
        if n > 0:
            rng = random.Random(args.seed)
            reviewed = work / f"reviewed-{n}"
            for foreign, target in cmap.items():
                mine = [it for it in pool if it.foreign == foreign]
                rng.shuffle(mine)
                folder = reviewed / target.name
                folder.mkdir(parents=True, exist_ok=True)
                for it in mine[:n]:
                    (folder / Path(it.path).name).symlink_to((root / it.path).resolve())
            r = adapt(args.checkpoint, reviewed, work / f"adapted-{n}", mix=args.trashnet,
                      mix_split=args.split_file, cfg=AdaptConfig(seed=args.seed))
            ckpt = r["checkpoint"]
        adapt_seconds = time.time() - t0
        clf = Classifier.load(ckpt)
        field = evaluate_field(clf, root, held, work / f"report-{n}", views=["full"])["full"]
        row = {"labelled_per_class": n, "adapt_seconds": round(adapt_seconds, 1),
               "field_class_accuracy": field["class_accuracy"], "field_manual_sort": field["manual_sort_rate"],
               "field_auto_sorted_class_accuracy": field["auto_sorted_class_accuracy"],
               "trashnet_test_accuracy": trashnet_test_accuracy(ckpt, args.trashnet, args.split_file)}
        results.append(row)
        print(json.dumps(row), file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint, "split": split_info, "rows": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
