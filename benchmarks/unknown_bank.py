"""Why a site's own items go to manual sort on new floors: the unknown-item rule of each version, replayed.

On the field stream most manual sorts are refusals by the unknown-item rule (``reason`` ``unknown``
in the log), not low confidence, and they come where a floor the model has not seen arrives. An
adapted version's k-NN bank is a random sample of everything it was fitted on: a few hundred
reviewed site items (clean and augmented views) among thousands of rehearsal rows. This replays a
``site_stream.py`` run offline: for every version that served items, its rule is fitted again from
the same inputs (the reviewed items it trained on, from its version file, split as ``adapt`` splits
them; the rehearsal features from the stream's cache; the threshold from adapt's validation rows)
with each bank variant, and scored on exactly the items that version served (never ones it learned
from: they were streamed before it was made)::

    python benchmarks/unknown_bank.py --result benchmarks/results/site-stream-field-densenet121-adapt25-audit10.json \\
        --stream ../shared/data/field-drinkingwaste --order benchmarks/results/field-order.csv \\
        --rehearsal-cache /tmp/wastenet-site-stream-XXXX/models/.feature-cache/rehearsal-KEY.npz \\
        --out benchmarks/results/unknown-bank-field-densenet121.json

Variants: ``random`` (a seeded sample of 1,024 of all rows: what adaptation did before session 14),
``site-half`` (the site's reviewed rows keep up to half of the 1,024), ``site-half+prior`` (and half
of the ImageNet prior), ``random+negatives`` and ``site-half+prior+negatives`` (with, as not-an-item
examples, the empty-floor squares of every ``--negatives-every``-th item streamed before the version,
as if a reviewer had labelled each; the second is what adaptation does once a site has labelled
photos of no item: BENCHMARKS.md "Not an item"), ``random-4096`` (a larger sample). The augmented
views are this script's own draws (the same augmentation, another generator), so ``random`` matches
the served refusals closely but not exactly; the ``served`` column is the log's own count. Last,
each checkpoint's own rule (the base model's, every version's) on every empty-floor square.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_description  # noqa: E402

VARIANTS = {"random": {}, "site-half": {"site": True}, "site-half+prior": {"site": True, "prior": True},
            "random+negatives": {"negatives": True},
            "site-half+prior+negatives": {"site": True, "prior": True, "negatives": True},
            "random-4096": {"bank_rows": 4096}}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def floor_features(root: Path, paths: list[str], model, prep, classes: list[str]) -> np.ndarray:
    """Features of an empty-floor square beside every photo's item box (``field.floor_crop``; rows
    of NaN where the photo has no box or no room for one): what must stay unknown."""
    import tempfile

    from wastenet.data.datasets import Row, build_cache
    from wastenet.data.images import load_image
    from wastenet.evaluation.field import floor_crop, read_boxes
    from wastenet.inference.runner import FeaturePasses

    boxes = read_boxes(root / "labels.csv")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / classes[0]).mkdir()
        have = []
        for i, p in enumerate(paths):
            crop = floor_crop(load_image(root / p), boxes[p]) if p in boxes else None
            if crop is not None:
                crop.save(Path(tmp) / classes[0] / f"{i}.png")
                have.append(i)
        cache = build_cache(tmp, [Row(f"{classes[0]}/{i}.png", classes[0]) for i in have], classes,
                            prep.cache_size, prep.interpolation)
        feats, _ = FeaturePasses(model, prep, "cpu", len(have))(cache.images, desc="empty floors")
    out = np.full((len(paths), feats.shape[1]), np.nan, np.float32)
    out[have] = feats
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--result", required=True, help="a site_stream.py RESULT.json (its log folder must still exist)")
    ap.add_argument("--stream", required=True)
    ap.add_argument("--order", required=True)
    ap.add_argument("--rehearsal-cache", required=True, help="the stream's models/.feature-cache/rehearsal-*.npz (.rehearsal-cache before session 12)")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--features", help="an .npz keeping the stream's features between runs (computed when missing)")
    ap.add_argument("--negatives-every", type=int, default=5, help="a not-an-item example per N earlier items")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import sqlite3

    import torch

    from wastenet import checkpoint, ood
    from wastenet.data.augment import AugmentConfig, KerasAugment
    from wastenet.data.composite import CameraJitter
    from wastenet.data.datasets import Row, build_cache
    from wastenet.inference.ood_model import unknown_rule
    from wastenet.inference.runner import FeaturePasses
    from wastenet.models import model_from_checkpoint
    from wastenet.preprocessing import Preprocessing
    from wastenet.training.adapt import AdaptConfig, split_reviewed

    r = json.loads(Path(args.result).read_text())
    decided = r["decided"]
    with open(args.order, newline="") as f:
        paths = [row["path"] for row in csv.DictReader(f)][: len(decided)]
    log_db = Path(r["log_db"])
    with sqlite3.connect(log_db) as conn:
        refused = {i - 1 for (i,) in conn.execute("SELECT id FROM decisions WHERE reason = 'unknown'")}

    base = checkpoint.load(r["checkpoint"])
    classes = list(base["classes"])
    prep = Preprocessing.from_dict(base["preprocessing"])
    model = model_from_checkpoint(base).eval()
    rows = [Row(p, d["truth"] if d["truth"] in classes else classes[0]) for p, d in zip(paths, decided)]
    stored = Path(args.features) if args.features else None
    if stored is not None and stored.is_file():
        with np.load(stored) as z:
            clean, views, floors = z["clean"], z["views"], z["floors"]
    else:
        cache = build_cache(args.stream, rows, classes, prep.cache_size, prep.interpolation)
        passes = FeaturePasses(model, prep, "cpu", len(rows) * (1 + args.views))
        clean, _ = passes(cache.images, desc="stream (clean)")
        torch.manual_seed(0)
        augment = torch.nn.Sequential(KerasAugment(AugmentConfig()), CameraJitter())
        views = np.stack([passes(cache.images, augment=augment, desc=f"stream (view {v + 1}/{args.views})")[0]
                          for v in range(args.views)])
        floors = floor_features(Path(args.stream), paths, model, prep, classes)
        if stored is not None:
            np.savez(stored, clean=clean, views=views, floors=floors)
    with np.load(args.rehearsal_cache) as z:
        x_mix, y_mix, x_val, y_val = z["x_mix"], z["y_mix"], z["x_val"], z["y_val"]
    n_mix = len(y_mix) // (1 + args.views)
    imagenet = (base.get("ood") or {}).get("imagenet")
    imagenet = None if imagenet is None else {k: imagenet[k].numpy() for k in ("weight", "bias")}

    models = log_db.parent / "models"
    out: dict = {"cpu": cpu_description(), "result": args.result, "versions": [], "totals": {}}
    for side in sorted(models.glob("[0-9][0-9][0-9][0-9].json")):
        v = json.loads(side.read_text())
        served = [i for i, d in enumerate(decided) if d["version"] == v["model_id"]]
        if v["id"] == 0 or not served:
            continue
        ckpt = checkpoint.load(v["file"])
        vm = model_from_checkpoint(ckpt).eval()
        head = vm.get_classifier()
        # adapt's own split of the items the version trained on (the newest 20% held out for the
        # promotion are not among them): 80% train, 20% calibration and the unknown-item threshold
        reviewed = sorted((Row(f"{decided[i - 1]['truth']}/{i}.jpg", decided[i - 1]["truth"])
                           for i in v["inputs"]["trained_on"]), key=lambda row: (row.label, row.path))
        rev_train, rev_val = split_reviewed(reviewed, AdaptConfig().val_share, v["inputs"].get("seed", 0))
        tr = [int(Path(row.path).stem) - 1 for row in rev_train]
        ho = [int(Path(row.path).stem) - 1 for row in rev_val]
        site_clean, site_views = clean[tr], views[:, tr].reshape(-1, clean.shape[1])
        train_feats = np.concatenate([site_clean, x_mix[:n_mix]])
        train_labels = np.concatenate([np.array([classes.index(decided[i]["truth"]) for i in tr]), y_mix[:n_mix]])
        val_feats = np.concatenate([clean[ho], x_val])
        # rows of train_feats then of the views below that are the site's reviewed items
        site_mask = np.r_[np.ones(len(tr), bool), np.zeros(n_mix, bool),
                          np.ones(len(site_views), bool), np.zeros(len(x_mix) - n_mix, bool)]
        with torch.no_grad():
            val_logits = head(torch.from_numpy(val_feats).float()).numpy()
            served_logits = head(torch.from_numpy(clean[served]).float()).numpy()
        temperature = float(ckpt["temperature"])
        row = {"version": v["id"], "served": len(served), "trained_on": len(tr),
               "refused_served": sum(i in refused for i in served)}
        # the empty floors a reviewer would have labelled before this version: every Nth earlier item's
        before = [i for i in range(min(served)) if not np.isnan(floors[i, 0])][args.negatives_every - 1::args.negatives_every]
        row["negatives"] = len(before)
        for name, opt in VARIANTS.items():
            rule = unknown_rule(train_feats, train_labels, val_feats, val_logits, len(classes), temperature,
                                keep=ckpt["ood"]["keep"], method=ckpt["ood"]["method"],
                                extra_feats=np.concatenate([site_views, x_mix[n_mix:]]), imagenet_head=imagenet,
                                site_rows=site_mask if opt.get("site") else None,
                                site_prior=site_mask if opt.get("prior") else None,
                                bank_rows=opt.get("bank_rows"),
                                negatives=floors[before] if opt.get("negatives") and before else None)
            m, t = rule["method"], rule["thresholds"][rule["method"]]
            row[name] = int((ood.scores(m, served_logits, temperature, clean[served], rule) > t).sum())
            empty = [i for i in served if not np.isnan(floors[i, 0])]
            with torch.no_grad():
                floor_logits = head(torch.from_numpy(floors[empty]).float()).numpy()
            row[f"{name} floors refused"] = int((ood.scores(m, floor_logits, temperature, floors[empty], rule) > t).sum())
            row["floors"] = len(empty)
            for part in m.split("+") if "+" in m else []:  # which score refuses them
                med, top = (float(x) for x in rule["scales"][part])
                scaled = (ood.feature_score(part, clean[served], rule) - med) / max(top - med, 1e-9)
                row[f"{name} by {part}"] = int((scaled > t).sum())
        out["versions"].append(row)
        _log(json.dumps(row))
    # each checkpoint's own rule (the base model's and every version's) on every empty-floor square
    ok = ~np.isnan(floors[:, 0])
    for name, path in [("base", r["checkpoint"])] + [(f"version {int(p.stem)}", p) for p in sorted(models.glob("[0-9]*.pt"))]:
        ckpt = checkpoint.load(path)
        rule = ckpt["ood"]
        with torch.no_grad():
            logits = model_from_checkpoint(ckpt).eval().get_classifier()(torch.from_numpy(floors[ok]).float()).numpy()
        s = ood.scores(rule["method"], logits, float(ckpt["temperature"]), floors[ok], rule)
        out.setdefault("own_rule_floors_refused", {})[name] = float((s > rule["thresholds"][rule["method"]]).mean())
    _log(json.dumps(out["own_rule_floors_refused"]))
    for key in out["versions"][0] if out["versions"] else []:
        if key != "version":
            out["totals"][key] = sum(v[key] for v in out["versions"])
    Path(args.out).write_text(json.dumps(out, indent=2))
    _log(json.dumps(out["totals"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
