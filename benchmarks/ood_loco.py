"""Leave-one-class-out on TrashNet: is a class the model never saw rejected as unknown?

For each class k: a linear head (the `linear` recipe's cheap stand-in: frozen ImageNet
backbone, logistic regression on its pooled features) trains on the train split *without*
class k; the temperature and the unknown-score threshold are chosen on the validation split
without class k (keep 95% of known items); then the test split scores known classes against
class k. Every score of wastenet.ood is compared (the ImageNet scores where the weights carry the
ImageNet head; the k-NN bank here holds the clean train features only)::

    python benchmarks/ood_loco.py --model mobilenetv2_100 --weights ../shared/weights/mobilenetv2_100.safetensors \
        --data ../shared/data/trashnet --split-file ../shared/data/trashnet-split.csv --out benchmarks/results/loco-mnv2.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wastenet import ood
from wastenet.data.datasets import build_cache, read_split_file
from wastenet.evaluation.calibration import fit_temperature
from wastenet.inference.ood_model import unknown_rule
from wastenet.inference.runner import FeaturePasses
from wastenet.models import create_model, pretrained_imagenet_head, resolve_weights_arg


def fit_head(x: np.ndarray, y: np.ndarray, n_classes: int, weight_decay: float = 1e-3, steps: int = 300) -> torch.nn.Linear:
    """Multinomial logistic regression on standardised features (full-batch L-BFGS)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], n_classes)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).long()
    opt = torch.optim.LBFGS(head.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(xt), yt) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--keep", type=float, default=ood.DEFAULT_KEEP)
    ap.add_argument("--dims", type=int, default=ood.DEFAULT_DIMS)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    t0 = time.time()
    rows = read_split_file(args.split_file, args.data)
    classes = sorted({r.label for r in rows})
    built = create_model(args.model, len(classes), weights=resolve_weights_arg(args.weights))
    model, prep = built.model.eval(), built.preprocessing
    imagenet_head = pretrained_imagenet_head(model, resolve_weights_arg(args.weights))  # None: no ImageNet scores
    cache = build_cache(args.data, rows, classes, prep.cache_size, prep.interpolation)
    feats, _ = FeaturePasses(model, prep, "cpu", len(cache.images))(cache.images, desc="features")
    split = np.array([r.split for r in cache.rows])
    y = cache.labels
    print(f"features of {len(feats)} images in {time.time() - t0:.0f}s", file=sys.stderr)

    folds = []
    for k, name in enumerate(classes):
        known = [c for c in range(len(classes)) if c != k]
        remap = {c: i for i, c in enumerate(known)}
        tr = (split == "train") & (y != k)
        va = (split == "val") & (y != k)
        te_known = (split == "test") & (y != k)
        te_unknown = (split == "test") & (y == k)
        mu, sd = feats[tr].mean(0), feats[tr].std(0) + 1e-6
        z = (feats - mu) / sd
        y_tr = np.array([remap[c] for c in y[tr]])
        y_va = np.array([remap[c] for c in y[va]])
        head = fit_head(z[tr], y_tr, len(known))
        with torch.no_grad():
            logits = head(torch.from_numpy(z).float()).numpy()
        t = fit_temperature(logits[va], y_va)
        # the product's own rule (wastenet.inference.ood_model.unknown_rule) on the fold's known classes
        rule = unknown_rule(feats[tr], y_tr, feats[va], logits[va], len(known), t, keep=args.keep,
                            imagenet_head=imagenet_head)
        fold = {"unknown_class": name, "known_test_accuracy": float((logits[te_known].argmax(1) ==
                                                                       np.array([remap[c] for c in y[te_known]])).mean())}
        for m, thr in rule["thresholds"].items():
            s = ood.scores(m, logits, t, feats, rule)
            fold[m] = {
                "auroc": ood.auroc(s[te_known], s[te_unknown]),
                "unknown_rejected": float((s[te_unknown] > thr).mean()),
                "known_kept": float((s[te_known] <= thr).mean()),
            }
        folds.append(fold)
        print(f"[{name}] " + "  ".join(f"{m} AUROC {fold[m]['auroc']:.3f} rej {fold[m]['unknown_rejected']:.2f}"
                                      for m in rule["thresholds"]), file=sys.stderr)
    summary = {m: {"mean_auroc": float(np.mean([f[m]["auroc"] for f in folds])),
                   "mean_unknown_rejected": float(np.mean([f[m]["unknown_rejected"] for f in folds])),
                   "mean_known_kept": float(np.mean([f[m]["known_kept"] for f in folds]))}
               for m in folds[0] if isinstance(folds[0][m], dict)}
    result = {"model": args.model, "keep": args.keep, "dims": args.dims, "folds": folds, "summary": summary,
              "seconds": round(time.time() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for m, s in summary.items():
        print(f"{m:12s} mean AUROC {s['mean_auroc']:.3f}  unknown rejected {s['mean_unknown_rejected']:.3f}  "
              f"known kept {s['mean_known_kept']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
