"""`wastenet eval`: evaluate a model file (.pt or .onnx) on a split of a dataset and write a report.

    wastenet eval --checkpoint runs/densenet121-wastenet/best.pt --data ../shared/data/trashnet \
        --split-file ../shared/data/trashnet-split.csv --split test

The work is :class:`wastenet.evaluation.evaluator.Evaluator` (the same from Python).

Field mode: a foreign data set, its classes mapped onto the model's (evaluation/field.py)::

    wastenet eval --checkpoint runs/x/best.pt --data ../shared/data/field-drinkingwaste \
        --class-map field.yaml --boxes ../shared/data/field-drinkingwaste/labels.csv
"""

from __future__ import annotations

import argparse

HELP = "Evaluate a model file (.pt or .onnx): accuracy, P/R/F1, confusion matrix, calibration, bin decisions."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from wastenet.evaluation.evaluator import SPLITS  # torch-free

    p.add_argument("--checkpoint", required=True,
                   help="model file: a training checkpoint (.pt) or an exported model (.onnx, fp32 or INT8), "
                        "as predict and serve take")
    p.add_argument("--data", required=True, help="class-folder dataset")
    p.add_argument("--split-file", help="CSV path,label,split (default: the run's split.csv beside the checkpoint)")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--skip-missing", action="store_true",
                   help="leave out split rows whose file does not exist (default: refuse the split)")
    p.add_argument("--threshold", type=float, help="decision threshold (default: the checkpoint's)")
    p.add_argument("--bin-thresholds", metavar="BIN=P,...|FILE.yaml",
                   help="per-bin thresholds, e.g. recyclable=0.97,landfill=0.6 (other bins: --threshold)")
    p.add_argument("--taxonomy", help="override the checkpoint's taxonomy")
    p.add_argument("--target-contamination", metavar="P|BIN=P,...|FILE.yaml",
                   help="suggest the lowest threshold whose worst-bin contamination on the validation split meets P; "
                        "per bin (e.g. recyclable=0.02,landfill=0.3): a threshold for each named bin, printed as "
                        "--bin-thresholds and confirmed on --split")
    p.add_argument("--recalibrate", action="store_true",
                   help="fit the temperature again on the validation split and store it in the checkpoint")
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--device", default="auto")
    g = p.add_argument_group("field mode (a foreign data set)")
    g.add_argument("--class-map", metavar="YAML",
                   help="classes: {foreign: model_class | bin:NAME | unknown}; evaluates every image of --data "
                        "through predict (a .pt or .onnx model)")
    g.add_argument("--boxes", metavar="CSV", help="path,label,bbox (xmin,ymin,xmax,ymax): also score item crops "
                                                 "and floor-only crops (which must go to manual sort)")
    g.add_argument("--ood-threshold", type=float, help="unknown-item score threshold (default: the model's)")
    g.add_argument("--search", action="store_true",
                   help="look at windows of each photo too; the most item-like one decides (as predict --search)")
    g.add_argument("--views", default=None, help="comma-separated views: full, crop, floor (default: full, and "
                                                 "crop,floor when --boxes is given)")
    p.add_argument("--out", help="report folder (default: CHECKPOINT_DIR/eval-SPLIT)")


def run_field(args: argparse.Namespace) -> int:
    """The field report: every image of a foreign folder, scored as `predict` decides it."""
    from wastenet.evaluation.evaluator import Evaluator

    results, out = Evaluator.field(args.checkpoint, args.data, args.class_map, boxes=args.boxes,
                                   views=args.views.split(",") if args.views else None, threshold=args.threshold,
                                   bin_thresholds=args.bin_thresholds, ood_threshold=args.ood_threshold,
                                   search=args.search, out=args.out, device=args.device)
    print(f"report: {out / 'report.md'}")
    return 1 if any(r["errors"] or r["skipped"] for r in results.values()) else 0


def run(args: argparse.Namespace) -> int:
    from wastenet.evaluation.evaluator import Evaluator

    from wastenet.errors import ConfigError

    if args.class_map:
        return run_field(args)
    field_only = [f"--{n.replace('_', '-')}" for n in ("boxes", "ood_threshold", "search", "views") if getattr(args, n)]
    if field_only:
        raise ConfigError(f"{', '.join(field_only)} belong to the field mode: add --class-map")
    report = Evaluator.load(args.checkpoint, device=args.device).evaluate(
        args.data, split=args.split, split_file=args.split_file, threshold=args.threshold,
        bin_thresholds=args.bin_thresholds, taxonomy=args.taxonomy,
        target_contamination=args.target_contamination, recalibrate=args.recalibrate, tta=args.tta, out=args.out,
        skip_missing=args.skip_missing,
        log=lambda msg: print(msg, flush=True))
    print(report.summary())
    return 1 if report.skipped else 0
