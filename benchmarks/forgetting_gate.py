"""Would a forgetting check have kept the versions that forget out? A replay over a ``site_stream.py`` result.

Adaptation re-fits only the head, so every version shares the base model's backbone: the features of
TrashNet's validation and test photos are computed once, and each version's head is applied to them.
For every version: its accuracy on the validation rows that ``adapt`` early-stops on (the rehearsal
split's ``val`` rows, ``mix_per_class // 2`` per class as :func:`wastenet.training.adapt.sample_per_class`
draws them) and on the test split (never used by any version). The check promotes a candidate only
if its validation accuracy is at least the base's minus ``--allowed`` (1 point); the question is
whether the versions that lose more than a point on test are the ones it stops::

    python benchmarks/forgetting_gate.py --result benchmarks/results/site-stream-field-lite0-256x320-adapt25-audit10-mixall.json \\
        --data ../shared/data/trashnet --split-file ../shared/data/trashnet-split.csv \\
        --out benchmarks/results/forgetting-gate-lite0-256x320.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--result", required=True, help="a site_stream.py result (its log's models/ folder is read)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--allowed", type=float, default=0.01, help="validation accuracy a candidate may lose")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch

    from wastenet import checkpoint
    from wastenet.data.datasets import build_cache, read_split_file
    from wastenet.inference.runner import FeaturePasses
    from wastenet.models import model_from_checkpoint
    from wastenet.preprocessing import Preprocessing
    from wastenet.site.versions import VersionStore
    from wastenet.training.adapt import AdaptConfig, sample_per_class

    r = json.loads(Path(args.result).read_text())
    store = VersionStore(Path(r["log_db"]).parent / "models")
    base = checkpoint.load(store.file_of(0))
    classes = list(base["classes"])
    prep = Preprocessing.from_dict(base["preprocessing"])
    model = model_from_checkpoint(base).eval()
    versions = store.list()
    per_class = next((v["inputs"].get("rehearsal_per_class") for v in versions if v["id"] > 0),
                     None) or AdaptConfig().mix_per_class
    rows = [x for x in read_split_file(args.split_file, args.data) if x.label in classes]
    val_rows = sample_per_class([x for x in rows if x.split == "val"], per_class // 2, AdaptConfig().seed)
    test_rows = [x for x in rows if x.split == "test"]
    passes = FeaturePasses(model, prep, "cpu", len(val_rows) + len(test_rows))

    def feats(part, desc):
        c = build_cache(args.data, part, classes, prep.cache_size, prep.interpolation)
        return torch.from_numpy(passes(c.images, desc=desc)[0]), [classes[i] for i in c.labels]

    x_val, l_val = feats(val_rows, "validation features")
    x_test, l_test = feats(test_rows, "test features")
    out = {"result": args.result, "rehearsal_per_class": per_class, "val_rows": len(l_val),
           "test_rows": len(l_test), "allowed": args.allowed, "versions": []}

    def accuracy(ckpt, x, labels):
        """The version's own head on the shared features (its classes may include kinds it grew)."""
        names, head = list(ckpt["classes"]), model_from_checkpoint(ckpt).eval().get_classifier()
        with torch.no_grad():
            pred = head(x.float()).argmax(1).numpy()
        return float(np.mean([names[p] == t for p, t in zip(pred, labels)]))

    base_val = accuracy(base, x_val, l_val)
    base_test = accuracy(base, x_test, l_test)
    for side in versions:
        vid = side["id"]
        ck = checkpoint.load(store.file_of(vid))
        val, test = accuracy(ck, x_val, l_val), accuracy(ck, x_test, l_test)
        e = {"id": vid, "promoted": side.get("promoted", vid == 0), "val_accuracy": val, "test_accuracy": test,
             "val_change": val - base_val, "test_change": test - base_test,
             "passes_check": val >= base_val - args.allowed - 1e-9}
        out["versions"].append(e)
        print(json.dumps(e), file=sys.stderr, flush=True)
    promoted = [e for e in out["versions"] if e["promoted"] and e["id"] > 0]
    forgot = [e["id"] for e in promoted if e["test_change"] < -args.allowed]
    stopped = [e["id"] for e in promoted if not e["passes_check"]]
    out.update(base_val_accuracy=base_val, base_test_accuracy=base_test, promoted_forgetting_on_test=forgot,
               promoted_stopped_by_check=stopped,
               stopped_that_forgot=sorted(set(forgot) & set(stopped)),
               stopped_that_did_not=sorted(set(stopped) - set(forgot)),
               forgot_but_passed=sorted(set(forgot) - set(stopped)))
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("base_val_accuracy", "base_test_accuracy", "promoted_forgetting_on_test",
                                          "promoted_stopped_by_check", "forgot_but_passed")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
