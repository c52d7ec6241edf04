"""INT8 calibration methods and float exclusions for one fp32 ONNX file, scored on the VALIDATION split.

Chooses ``export.int8.DEFAULT_EXCLUDE`` without touching the test split: for each variant, top-1
agreement with the fp32 file and accuracy on the split's val rows (calibration on its train rows)::

    python benchmarks/int8_variants.py --onnx runs/edge-lite0-ft/lite0.onnx --data ../shared/data/trashnet \\
        --split-file ../shared/data/trashnet-split.csv --json benchmarks/results/int8-variants-lite0.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from wastenet.data.datasets import read_split_file
from wastenet.export.int8 import quantize_int8
from wastenet.export.onnx import load_images, run_session
from wastenet.inference.onnx_runtime import onnx_session, read_metadata
from wastenet.preprocessing import Preprocessing, preprocess_images

VARIANTS = [("minmax", ()), ("percentile", ()), ("entropy", ()), ("minmax", ("first_conv",)),
            ("minmax", ("classifier",)), ("minmax", ("blocks.0",)), ("minmax", ("blocks.0", "first_conv")),
            ("percentile", ("blocks.0",))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", required=True, type=Path, help="an fp32 file from `wastenet export`")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--split-file", required=True)
    p.add_argument("--json", required=True)
    args = p.parse_args()
    rows = read_split_file(args.split_file, args.data)
    train = [args.data / r.path for r in rows if r.split == "train"]
    val = [r for r in rows if r.split == "val"]
    meta = read_metadata(args.onnx)
    images, _ = load_images([args.data / r.path for r in val])
    x = preprocess_images(images, Preprocessing.from_dict(meta["preprocessing"]))
    y = np.array([meta["classes"].index(r.label) for r in val])
    ref = run_session(onnx_session(args.onnx), x, batch_size=32).argmax(1)
    out = {"fp32": {"val_acc": float((ref == y).mean())}}
    print(f"fp32: val accuracy {out['fp32']['val_acc']:.4f}", flush=True)
    for method, exclude in VARIANTS:
        t = time.perf_counter()
        key = f"{method} exclude={'+'.join(exclude) or 'none'}"
        q = args.onnx.with_name(f"variant-{method}-{'+'.join(exclude) or 'none'}.onnx")
        quantize_int8(args.onnx, q, train, n_calib=200, method=method, exclude=exclude)
        got = run_session(onnx_session(q), x, batch_size=32).argmax(1)
        out[key] = {"val_agreement": float((got == ref).mean()), "val_acc": float((got == y).mean()),
                    "mb": q.stat().st_size / 1e6, "seconds": round(time.perf_counter() - t, 1)}
        print(f"{key}: agreement {out[key]['val_agreement']:.4f}, val accuracy {out[key]['val_acc']:.4f}", flush=True)
    Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
