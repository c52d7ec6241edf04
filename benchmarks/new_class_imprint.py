"""A new kind learned from k reviewed photos, offline on frozen features: does starting its head row
from its photos' mean feature ("imprinting") instead of zero make it recognised sooner?

The base model was trained without the kind (its split file lacks it). The head is grown by the kind
(:func:`wastenet.training.grow.grow_classes`) and re-fitted with :func:`wastenet.training.adapt.fit_head`
as adaptation does: the reviewed half holds *k* photos of the kind plus *k* old-class photos (never in
the rehearsal or check rows), each with 4 augmented views; the rehearsal half 100 training photos per
class; early stopping on 50 validation photos per class. Scored: recall on every other photo of the kind,
accuracy on the old classes' test photos (never trained on)::

    python benchmarks/new_class_imprint.py --checkpoint runs/s12-mnv2-linear-no-cardboard/best.pt \\
        --data ../shared/data/trashnet --split-file SPLIT-WITHOUT-CARDBOARD.csv \\
        --full-split ../shared/data/trashnet-split.csv --new cardboard --out benchmarks/results/new-class-imprint.json
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import random
import sys
from pathlib import Path

import numpy as np

COUNTS = (10, 15, 20, 30, 45, 60)
VIEWS = 4


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a base model trained without --new")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split-file", required=True, help="the base model's split file (without the kind)")
    ap.add_argument("--full-split", required=True, help="the split file with the kind (its photos are read from it)")
    ap.add_argument("--new", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch

    from wastenet import checkpoint
    from wastenet.data.augment import AugmentConfig, KerasAugment
    from wastenet.data.composite import CameraJitter
    from wastenet.data.datasets import Row, build_cache, read_split_file
    from wastenet.inference.runner import FeaturePasses
    from wastenet.models import model_from_checkpoint
    from wastenet.preprocessing import Preprocessing
    from wastenet.training.adapt import AdaptConfig, fit_head, sample_per_class
    from wastenet.training.grow import grow_classes

    ckpt = grow_classes(checkpoint.load(args.checkpoint), {args.new: "recyclable"})
    classes = list(ckpt["classes"])
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    model = model_from_checkpoint(ckpt).eval()
    with open(args.full_split, newline="") as f:
        kind = [Row(r["path"], args.new) for r in csv.DictReader(f) if r["label"] == args.new]
    random.Random(0).shuffle(kind)
    rows = read_split_file(args.split_file, args.data)
    mix_train = sample_per_class([r for r in rows if r.split == "train"], 100, 0)
    mix_val = sample_per_class([r for r in rows if r.split == "val"], 50, 0)
    in_val = {r.path for r in mix_val}
    spare = [r for r in rows if r.split == "val" and r.path not in in_val]
    random.Random(1).shuffle(spare)
    k_max = max(COUNTS)
    old_reviewed, old_test = spare[:k_max], [r for r in rows if r.split == "test"]

    passes = FeaturePasses(model, prep, "cpu", (len(mix_train) + 2 * k_max) * (1 + VIEWS) + len(kind) + len(old_test))
    torch.manual_seed(0)
    augment = torch.nn.Sequential(KerasAugment(AugmentConfig()), CameraJitter())

    def feats(part: list, views: int = 0, desc: str = "features"):
        c = build_cache(args.data, part, classes, prep.cache_size, prep.interpolation)
        out = [passes(c.images, desc=desc)[0]] + [passes(c.images, augment=augment, desc=f"{desc} (view)")[0]
                                                  for _ in range(views)]
        return torch.from_numpy(np.concatenate(out)).float(), torch.from_numpy(np.tile(c.labels, 1 + views)).long()

    x_new, y_new = feats(kind[:k_max], VIEWS, "the kind, reviewed")   # view-major: clean k_max rows, then each view
    x_rest, _ = feats(kind[k_max:], 0, "the kind, unseen")
    x_old, y_old = feats(old_reviewed, VIEWS, "old classes, reviewed")
    x_mix, y_mix = feats(mix_train, VIEWS, "rehearsal")
    x_val, y_val = feats(mix_val, 0, "validation")
    x_test, y_test = feats(old_test, 0, "old classes, test")
    new_index = len(classes) - 1
    results = []
    for k in COUNTS:
        take = torch.cat([torch.arange(k) + v * k_max for v in range(1 + VIEWS)])
        x_rev, y_rev = torch.cat([x_new[take], x_old[take]]), torch.cat([y_new[take], y_old[take]])
        for start in ("zero", "imprint"):
            head = copy.deepcopy(model.get_classifier())
            if start == "imprint":
                with torch.no_grad():
                    mean = x_rev[y_rev == new_index].mean(0)
                    head.weight[new_index] = mean / mean.norm() * head.weight[:new_index].norm(dim=1).mean()
                    head.bias[new_index] = head.bias[:new_index].mean()
            fit_head(head, (x_rev, y_rev), (x_mix, y_mix), (x_val, y_val), AdaptConfig())
            with torch.no_grad():
                recall = float((head(x_rest).argmax(1) == new_index).float().mean())
                old = float((head(x_test).argmax(1) == y_test).float().mean())
            results.append({"k": k, "start": start, "recall": recall, "old_class_accuracy": old})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint, "new": args.new, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
