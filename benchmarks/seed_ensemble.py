"""How much of the error is seed-to-seed variance: each checkpoint alone, with flip TTA, and the
average of their calibrated probabilities, on the validation and test splits.

Nothing is tuned here (no weights, no threshold): the ensemble is the plain mean, so its test
figure is as honest as a single model's. Runs in fp32, as deployed. Run it alone (2 cores).

    python benchmarks/seed_ensemble.py --data ../shared/data/trashnet \
        --split-file ../shared/data/trashnet-split.csv \
        runs/bench3/densenet121-wastenet-ce-s{0,1,2}/best.pt --out benchmarks/results/seed_ensemble.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from wastenet.data.datasets import read_split_file
from wastenet.data.images import load_image
from wastenet.inference.predictor import Classifier


def probabilities(clf: Classifier, images: list, tta: bool, batch: int = 32) -> np.ndarray:
    out = [clf.probabilities(clf.preprocess(images[i : i + batch]), tta=tta) for i in range(0, len(images), batch)]
    return np.concatenate(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--split-file", required=True, type=Path)
    p.add_argument("--out", type=Path)
    a = p.parse_args()

    rows = read_split_file(a.split_file, a.data)
    results: dict[str, dict[str, float]] = {}
    for split in ("val", "test"):
        part = [r for r in rows if r.split == split]
        images = [load_image(a.data / r.path) for r in part]
        members: dict[bool, list[np.ndarray]] = {False: [], True: []}
        classes = None
        for ckpt in a.checkpoints:
            clf = Classifier.load(ckpt)
            classes = classes or clf.classes
            if clf.classes != classes:
                raise SystemExit(f"{ckpt}: classes differ from the first checkpoint's")
            y = np.array([classes.index(r.label) for r in part])
            for tta in (False, True):
                probs = probabilities(clf, images, tta)
                members[tta].append(probs)
                name = f"{ckpt.parent.name}{' + flip TTA' if tta else ''}"
                results.setdefault(name, {})[split] = float((probs.argmax(1) == y).mean())
        for tta in (False, True):
            mean = np.mean(members[tta], axis=0)
            name = f"mean of {len(a.checkpoints)}{' + flip TTA' if tta else ''}"
            results.setdefault(name, {})[split] = float((mean.argmax(1) == y).mean())

    print("| model | val accuracy | test accuracy |\n|---|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['val']:.4f} | {r['test']:.4f} |")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"checkpoints": [str(c) for c in a.checkpoints], "accuracy": results}, indent=2))


if __name__ == "__main__":
    main()
