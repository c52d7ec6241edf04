"""`wastenet eval`: evaluate a checkpoint on a split of a dataset and write a report.

    wastenet eval --checkpoint runs/densenet121-wastenet/best.pt --data ../shared/data/trashnet \
        --split-file ../shared/data/trashnet-split.csv --split test
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Evaluate a checkpoint: accuracy, P/R/F1, confusion matrix, calibration, bin decisions."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a wastenet .pt checkpoint")
    p.add_argument("--data", required=True, help="class-folder dataset")
    p.add_argument("--split-file", help="CSV path,label,split (default: the run's split.csv beside the checkpoint)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
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
    from wastenet.decision import check_threshold
    from wastenet.errors import ConfigError

    if args.threshold is not None:
        check_threshold(args.threshold, name="--threshold")
    if args.target_contamination is not None and not 0 <= args.target_contamination < 1:
        raise ConfigError("--target-contamination must be in [0, 1)")
    ckpt_path = Path(args.checkpoint)
    split_file = args.split_file or (ckpt_path.parent / "split.csv")
    if not Path(args.data).is_dir():
        raise ConfigError(f"dataset folder not found: {args.data}")

    from wastenet import checkpoint
    from wastenet.data.datasets import Row, build_cache, read_split_file, scan_folder
    from wastenet.evaluation import calibration as cal
    from wastenet.evaluation.decisions import suggest_threshold
    from wastenet.evaluation.runner import evaluate
    from wastenet.models import model_from_checkpoint
    from wastenet.preprocessing import Preprocessing
    from wastenet.taxonomy import default_taxonomy_for, identity_taxonomy, load_taxonomy
    from wastenet.inference.runtime import predict_logits, resolve_device

    ckpt = checkpoint.load(ckpt_path)
    classes = ckpt["classes"]
    spec = args.taxonomy or ckpt.get("taxonomy") or default_taxonomy_for(classes) or identity_taxonomy(classes)
    taxonomy = load_taxonomy(spec, classes)
    threshold = ckpt["threshold"] if args.threshold is None else args.threshold
    if Path(split_file).is_file():
        rows = read_split_file(split_file, args.data)
    elif args.split == "all" or args.split_file is None:
        rows = [Row(r.path, r.label, "test") for r in scan_folder(args.data)[0]]
        if args.split != "all":
            print(f"no split file: evaluating every image in {args.data}", flush=True)
        args.split = "all"
    else:
        raise ConfigError(f"split file not found: {split_file}")
    unknown = sorted({r.label for r in rows} - set(classes))
    if unknown:
        raise ConfigError(f"the dataset has classes the model does not know: {unknown}")
    wanted = rows if args.split == "all" else [r for r in rows if r.split == args.split]
    if not wanted:
        raise ConfigError(f"no rows in split {args.split!r}")

    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    device = resolve_device(args.device)
    model = model_from_checkpoint(ckpt).to(device)
    dtype = None  # full precision: the numbers describe the model as `predict` and `export` run it
    cache = build_cache(args.data, wanted, classes, prep.resize_size, prep.interpolation)
    for path, reason in cache.skipped:
        print(f"skipped {path}: {reason}")
    suggestion = None
    if args.target_contamination is not None or args.recalibrate:
        val_rows = [r for r in rows if r.split == "val"]
        if not val_rows:
            raise ConfigError("--target-contamination and --recalibrate need validation rows in the split file")
        val = build_cache(args.data, val_rows, classes, prep.resize_size, prep.interpolation)
        val_logits = predict_logits(model, val.images, prep, device, dtype, tta=args.tta).numpy()
    if args.recalibrate:
        ckpt["temperature"] = float(cal.fit_temperature(val_logits, val.labels))
        checkpoint.save(ckpt, ckpt_path)
        print(f"temperature {ckpt['temperature']:.3f} fitted on {len(val.labels)} validation images, "
              f"saved in {ckpt_path}")
    if args.target_contamination is not None:
        suggestion = suggest_threshold(cal.softmax(val_logits, ckpt["temperature"]), val.labels, classes,
                                           taxonomy, args.target_contamination)
        suggestion["target"] = args.target_contamination
    out = Path(args.out) if args.out else ckpt_path.parent / f"eval-{args.split}"
    result = evaluate(model, prep, classes, taxonomy, cache.images, cache.labels, out,
                      temperature=ckpt["temperature"], threshold=threshold, rows=cache.rows,
                      title=f"{ckpt['arch']} on {args.split} ({Path(args.data).name})", split=args.split,
                      target_contamination=suggestion, device=device, dtype=dtype, tta=args.tta)
    m, c, dec = result["metrics"], result["calibration"], result["decision"]
    print(f"{args.split}: {m['n']} images  accuracy {m['accuracy']:.4f}  macro F1 {m['f1_macro']:.4f}  "
          f"weighted F1 {m['f1_weighted']:.4f}")
    print(f"calibration: T={c['temperature']:.3f}  ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f}")
    print(f"threshold {threshold}: coverage {dec['coverage']:.4f}  accepted bin accuracy {dec['accepted_bin_accuracy']}")
    if suggestion:
        print(f"suggested threshold for contamination <= {suggestion['target']}: {suggestion['threshold']:.4f} "
              f"(val coverage {suggestion['coverage']:.4f}, achievable {suggestion['achievable']})")
    print(f"report: {out / 'report.md'}")
    return 1 if cache.skipped else 0
