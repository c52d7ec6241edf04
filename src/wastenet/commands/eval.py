"""`wastenet eval`: evaluate a checkpoint on a split of a dataset and write a report.

    wastenet eval --checkpoint runs/densenet121-wastenet/best.pt --data ../shared/data/trashnet \
        --split-file ../shared/data/trashnet-split.csv --split test

The work is :class:`wastenet.evaluation.evaluator.Evaluator` (the same from Python).
"""

from __future__ import annotations

import argparse

HELP = "Evaluate a checkpoint: accuracy, P/R/F1, confusion matrix, calibration, bin decisions."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from wastenet.evaluation.evaluator import SPLITS  # torch-free

    p.add_argument("--checkpoint", required=True, help="a wastenet .pt checkpoint")
    p.add_argument("--data", required=True, help="class-folder dataset")
    p.add_argument("--split-file", help="CSV path,label,split (default: the run's split.csv beside the checkpoint)")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--threshold", type=float, help="decision threshold (default: the checkpoint's)")
    p.add_argument("--taxonomy", help="override the checkpoint's taxonomy")
    p.add_argument("--target-contamination", type=float,
                   help="suggest the lowest threshold whose worst-bin contamination on the validation split meets this")
    p.add_argument("--recalibrate", action="store_true",
                   help="fit the temperature again on the validation split and store it in the checkpoint")
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="report folder (default: CHECKPOINT_DIR/eval-SPLIT)")


def run(args: argparse.Namespace) -> int:
    from wastenet.evaluation.evaluator import Evaluator

    report = Evaluator.load(args.checkpoint, device=args.device).evaluate(
        args.data, split=args.split, split_file=args.split_file, threshold=args.threshold, taxonomy=args.taxonomy,
        target_contamination=args.target_contamination, recalibrate=args.recalibrate, tta=args.tta, out=args.out,
        log=lambda msg: print(msg, flush=True))
    print(report.summary())
    return 1 if report.skipped else 0
