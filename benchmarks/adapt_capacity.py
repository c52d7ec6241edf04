"""What adaptation may change (issue 23 item 7): the head alone, or the head plus a small adapter.

Replays a ``site_stream.py`` run offline on frozen features: the items the server's reviewer labelled
(manual sort and audits, in stream order) are the only training data, and every candidate is scored
only on items streamed *after* the ones it learned from (the stream's honesty rule). At every 50th
reviewed item (the server's ``--adapt-every``), each variant is trained on the oldest 80% of what was
reviewed so far plus the rehearsal set, early-stopped on the newest 20% plus the rehearsal validation
rows (as ``adapt`` does), and scored on the next items of the stream until the following adaptation
point, and on every later item:

- ``head``: the model's linear head re-fitted (what ``adapt`` does today);
- ``adapter``: a residual bottleneck on the pooled features (``f + B relu(A f)``, ``B`` starting at 0,
  so it begins as the deployed model) before the same head, trained together;
- ``mlp``: a fresh two-layer head (features -> 256 -> classes), the most capacity of the three;
- ``anchored-W`` (e.g. ``anchored-1``): the same linear head, trained as the deployed head plus a change
  that starts at zero, with AdamW's weight decay ``W`` on the change: decay *towards the deployed head*
  (L2-SP) instead of towards zero, a lever against forgetting;
- ``lr-R`` (e.g. ``lr-0.0003``): the linear head with a smaller step size.
With ``--check-data/--check-split`` every candidate is also scored on that split's ``test`` rows
(TrashNet's: never trained on), the forgetting the issue bounds.

All variants see the same features (clean plus 4 augmented views of each reviewed item) and the
same rehearsal features (``adapt``'s cache from the stream's server, ``--rehearsal-cache``), so the
comparison is of what is trained, not of what is seen. Scores: top-1 class accuracy; and, after a
temperature fitted on the validation rows, the coverage and accuracy of the items whose confidence
reaches the model's threshold (the auto-sorted ones)::

    python benchmarks/adapt_capacity.py --checkpoint runs/s10-densenet121-finetune/best.pt \\
        --result benchmarks/results/site-stream-field-densenet121-adapt.json \\
        --stream ../shared/data/field-drinkingwaste --class-map benchmarks/field/drinkingwaste.yaml \\
        --rehearsal-cache /tmp/wastenet-site-stream-XXXX/models/.feature-cache/rehearsal-KEY.npz \\
        --out benchmarks/results/adapt-capacity-field-densenet121.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

VARIANTS = ("head", "adapter", "mlp")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_head(variant: str, base_head, dim: int, n_classes: int, seed: int):
    """The module trained on features for one variant (a fresh copy; ``base_head`` is not changed)."""
    import copy

    import torch
    from torch import nn

    torch.manual_seed(seed)
    if variant == "head":
        return copy.deepcopy(base_head)
    if variant == "adapter":
        class Residual(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.down, self.up = nn.Linear(dim, 64), nn.Linear(64, dim)
                nn.init.zeros_(self.up.weight)
                nn.init.zeros_(self.up.bias)

            def forward(self, x):
                return x + self.up(torch.relu(self.down(x)))

        return nn.Sequential(Residual(), copy.deepcopy(base_head))
    if variant == "mlp":
        return nn.Sequential(nn.Linear(dim, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, n_classes))
    if variant.startswith("anchored-"):
        class Anchored(nn.Module):
            """The deployed head (frozen buffers) plus a trainable change starting at zero."""

            def __init__(self) -> None:
                super().__init__()
                self.register_buffer("w0", base_head.weight.detach().clone())
                self.register_buffer("b0", base_head.bias.detach().clone())
                self.dw, self.db = nn.Parameter(torch.zeros_like(self.w0)), nn.Parameter(torch.zeros_like(self.b0))

            def forward(self, x):
                return x @ (self.w0 + self.dw).T + self.b0 + self.db
        return Anchored()
    if variant.startswith("lr-"):
        return copy.deepcopy(base_head)
    raise ValueError(variant)


def variant_config(variant: str):
    """The head's fit for a variant: ``adapt``'s, but for ``anchored-W`` (its weight decay) and ``lr-R``."""
    from wastenet.training.adapt import AdaptConfig

    if variant.startswith("anchored-"):
        return AdaptConfig(weight_decay=float(variant.split("-", 1)[1]))
    if variant.startswith("lr-"):
        return AdaptConfig(lr=float(variant.split("-", 1)[1]))
    return AdaptConfig()


def scores(logits, labels, temperature: float, threshold: float) -> dict:
    z = logits / temperature
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pred, conf = p.argmax(1), p.max(1)
    auto = conf >= threshold
    return {"n": int(len(labels)), "accuracy": float((pred == labels).mean()) if len(labels) else None,
            "coverage": float(auto.mean()) if len(labels) else None,
            "auto_accuracy": float((pred[auto] == labels[auto]).mean()) if auto.any() else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--result", required=True, help="a site_stream.py result (its 'decided' list and order)")
    ap.add_argument("--stream", required=True)
    ap.add_argument("--class-map", required=True)
    ap.add_argument("--rehearsal-cache", required=True, help="adapt's rehearsal-*.npz (x_mix, y_mix, x_val, y_val)")
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--features", help="cache the stream's features here (.npz)")
    ap.add_argument("--check-data", help="a dataset whose --check-split test rows score forgetting")
    ap.add_argument("--check-split")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch

    from wastenet import checkpoint
    from wastenet.data.augment import AugmentConfig, KerasAugment
    from wastenet.data.composite import CameraJitter
    from wastenet.data.datasets import Row, build_cache
    from wastenet.evaluation.calibration import fit_temperature
    from wastenet.evaluation.field import load_class_map
    from wastenet.inference.runner import FeaturePasses
    from wastenet.machine import cpu_description
    from wastenet.models import model_from_checkpoint
    from wastenet.preprocessing import Preprocessing
    from wastenet.training.adapt import AdaptConfig, fit_head

    torch.set_num_threads(2)
    result = json.loads(Path(args.result).read_text())
    # photos of no item (a floors stream: truth None) teach the unknown-item rule, not the head compared here
    decided = sorted((d for d in result["decided"] if d["truth"] is not None), key=lambda d: d["i"])
    with open(result["order"], newline="") as f:
        paths = [r["path"] for r in csv.DictReader(f)]
    ckpt = checkpoint.load(args.checkpoint)
    classes = list(ckpt["classes"])
    cmap = load_class_map(args.class_map, classes, [])
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    threshold = float(ckpt.get("threshold") or 0.9)
    labels = np.array([classes.index(d["truth"]) for d in decided])
    assert all(cmap[Path(paths[d["i"]]).parts[0]].name == d["truth"] for d in decided)

    feats_file = Path(args.features) if args.features else None
    if feats_file is not None and feats_file.is_file():
        z = np.load(feats_file)
        clean, views = z["clean"], z["views"]
    else:
        rows = [Row(paths[d["i"]], d["truth"]) for d in decided]
        cache = build_cache(args.stream, rows, classes, prep.cache_size, prep.interpolation)
        assert not cache.skipped, cache.skipped
        model = model_from_checkpoint(ckpt).eval()
        passes = FeaturePasses(model, prep, "cpu", len(rows) * (1 + args.views))
        torch.manual_seed(0)
        augment = torch.nn.Sequential(KerasAugment(AugmentConfig()), CameraJitter())
        clean = passes(cache.images, desc="stream features (clean)")[0]
        views = np.stack([passes(cache.images, augment=augment, desc=f"stream features (view {v + 1}/{args.views})")[0]
                          for v in range(args.views)])
        if feats_file is not None:
            np.savez(feats_file, clean=clean, views=views)
    x_check = y_check = None
    if args.check_data:
        from wastenet.data.datasets import read_split_file

        test_rows = [r for r in read_split_file(args.check_split, args.check_data) if r.split == "test"
                     and r.label in classes]
        c = build_cache(args.check_data, test_rows, classes, prep.cache_size, prep.interpolation)
        check_passes = FeaturePasses(model_from_checkpoint(ckpt).eval(), prep, "cpu", len(test_rows))
        x_check, y_check = torch.from_numpy(check_passes(c.images, desc="check features")[0]), c.labels
    reh = np.load(args.rehearsal_cache)
    x_mix, y_mix = torch.from_numpy(reh["x_mix"]), torch.from_numpy(reh["y_mix"]).long()
    x_mval, y_mval = reh["x_val"], reh["y_val"]
    base_head = model_from_checkpoint(ckpt).get_classifier().eval()

    reviewed = [k for k, d in enumerate(decided) if d["kind"] in ("manual_sort", "audit")]
    points = [reviewed[n - 1] + 1 for n in range(args.every, len(reviewed) + 1, args.every)]
    variants = args.variants.split(",")
    out = {"cpu": cpu_description(), "checkpoint": args.checkpoint, "result": args.result,
           "every": args.every, "reviewed": len(reviewed), "items": len(decided), "threshold": threshold,
           "points": []}
    for p_i, t in enumerate(points):
        seen = [k for k in reviewed if k < t]
        cut = int(round(len(seen) * 0.8))
        train_idx, val_idx = seen[:cut], seen[cut:]
        x_rev = torch.from_numpy(np.concatenate([clean[train_idx]] + [v[train_idx] for v in views]))
        y_rev = torch.from_numpy(np.tile(labels[train_idx], 1 + len(views))).long()
        x_val = np.concatenate([clean[val_idx], x_mval])
        y_val = np.concatenate([labels[val_idx], y_mval])
        nxt = points[p_i + 1] if p_i + 1 < len(points) else len(decided)
        window, later = list(range(t, nxt)), list(range(t, len(decided)))
        if not window:
            continue
        row = {"after_item": t, "reviewed": len(seen), "trained_on": len(train_idx), "next_items": len(window),
               "variants": {}}
        for variant in variants:
            t0 = time.time()
            head = make_head(variant, base_head, clean.shape[1], len(classes), seed=0)
            val_logits = fit_head(head, (x_rev, y_rev), (x_mix, y_mix),
                                  (torch.from_numpy(x_val), torch.from_numpy(y_val).long()),
                                  variant_config(variant)).numpy()
            temperature = float(fit_temperature(val_logits, y_val))
            with torch.no_grad():
                logits = head(torch.from_numpy(clean)).numpy()
            row["variants"][variant] = {
                "seconds": round(time.time() - t0, 1), "temperature": temperature,
                "next": scores(logits[window], labels[window], temperature, threshold),
                "later": scores(logits[later], labels[later], temperature, threshold),
                "rehearsal_val_accuracy": float((val_logits[len(val_idx):].argmax(1) == y_mval).mean()),
            }
            if x_check is not None:
                with torch.no_grad():
                    row["variants"][variant]["check_accuracy"] = float(
                        (head(x_check).argmax(1).numpy() == y_check).mean())
        _log(f"after item {t} ({len(seen)} reviewed): " + "; ".join(
            f"{v} next {r['next']['accuracy']:.3f} (auto {r['next']['coverage']:.2f} at {r['next']['auto_accuracy'] or 0:.3f})"
            f" rehearsal val {r['rehearsal_val_accuracy']:.3f}"
            + (f" check {r['check_accuracy']:.3f}" if "check_accuracy" in r else "") for v, r in row["variants"].items()))
        out["points"].append(row)
    # the stream as each variant would have served it: every item scored by the last candidate trained before it
    total = {}
    for variant in variants:
        hits = n = auto = auto_hits = 0
        for row in out["points"]:
            s = row["variants"][variant]["next"]
            n += s["n"]
            hits += s["accuracy"] * s["n"]
            auto += s["coverage"] * s["n"]
            auto_hits += (s["auto_accuracy"] or 0) * s["coverage"] * s["n"]
        total[variant] = {"n": n, "accuracy": hits / n if n else None, "coverage": auto / n if n else None,
                          "auto_accuracy": auto_hits / auto if auto else None}
        checks = [row["variants"][variant].get("check_accuracy") for row in out["points"]]
        if x_check is not None and checks:
            total[variant]["check_accuracy_min"] = min(checks)
            total[variant]["check_accuracy_last"] = checks[-1]
    out["after_first_adaptation"] = total
    if x_check is not None:
        with torch.no_grad():
            out["base_check_accuracy"] = float((base_head(x_check).argmax(1).numpy() == y_check).mean())
    Path(args.out).write_text(json.dumps(out, indent=2))
    for v, s in total.items():
        print(f"{v}: {s['n']} items after the first adaptation: accuracy {s['accuracy']:.3f}, "
              f"coverage {s['coverage']:.3f}, auto-sorted accuracy {s['auto_accuracy']:.3f}"
              + (f"; check accuracy min {s['check_accuracy_min']:.3f}, last {s['check_accuracy_last']:.3f} "
                 f"(base {out['base_check_accuracy']:.3f})" if "check_accuracy_min" in s else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
