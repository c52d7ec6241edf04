"""`wastenet adapt`: a deployed model learns the items its bin sent to manual sort.

    wastenet review --export reviewed/                      # the labelled manual-sort items
    wastenet adapt --checkpoint runs/mnv2/best.pt --data reviewed/ \
        --data-mix ../shared/data/trashnet --mix-split-file ../shared/data/trashnet-split.csv --out runs/mnv2-site

The head is re-fitted on cached features (minutes on a CPU); calibration and the unknown-item
rule are re-fitted; taxonomy and threshold are kept (training/adapt.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "Fine-tune a deployed model's head on reviewed items (site adaptation), keeping calibration and the taxonomy."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from wastenet.training.adapt import AdaptConfig

    d = AdaptConfig()
    p.add_argument("--checkpoint", required=True, help="the deployed .pt checkpoint")
    p.add_argument("--data", required=True, help="reviewed items as class folders (wastenet review --export)")
    p.add_argument("--data-mix", help="the original training data, rehearsed so the model does not forget it")
    p.add_argument("--mix-split-file", help="split file of --data-mix (train rows rehearsed, val rows calibrate)")
    p.add_argument("--mix-per-class", type=int, default=d.mix_per_class, help="rehearsal images per class")
    p.add_argument("--views", type=int, default=d.views, help="augmented views per image")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", required=True, help="folder for the adapted best.pt")
    p.add_argument("--eval-data", help="a field folder to report on after adapting (with --class-map)")
    p.add_argument("--class-map", help="class map of --eval-data (see wastenet eval --class-map)")
    p.add_argument("--boxes", help="item boxes of --eval-data")


def run(args: argparse.Namespace) -> int:
    from wastenet.errors import ConfigError

    for name in ("mix_per_class", "views", "epochs"):
        if getattr(args, name) < (0 if name != "epochs" else 1):
            raise ConfigError(f"--{name.replace('_', '-')} is too small")
    if not 0 < args.lr < 1:
        raise ConfigError("--lr must be in (0, 1)")
    if bool(args.eval_data) != bool(args.class_map):
        raise ConfigError("--eval-data and --class-map go together")
    if not Path(args.data).is_dir():
        raise ConfigError(f"reviewed data folder not found: {args.data}")
    from wastenet.training.adapt import AdaptConfig, adapt

    cfg = AdaptConfig(views=args.views, epochs=args.epochs, lr=args.lr, mix_per_class=args.mix_per_class, seed=args.seed)
    result = adapt(args.checkpoint, args.data, args.out, mix=args.data_mix, mix_split=args.mix_split_file, cfg=cfg)
    Path(args.out, "adapt.json").write_text(json.dumps(result, indent=2))
    if args.eval_data:
        from wastenet.evaluation.field import evaluate_field, field_items, load_class_map
        from wastenet.inference.predictor import Classifier

        clf = Classifier.load(result["checkpoint"])
        items = field_items(args.eval_data, load_class_map(args.class_map, clf.classes, clf.taxonomy.bin_names),
                            args.boxes)
        evaluate_field(clf, args.eval_data, items, Path(args.out) / "field", views=["full"])
    print(f"adapted checkpoint: {result['checkpoint']} (validation accuracy {result['val_accuracy']:.4f}, "
          f"{result['seconds']:.0f}s)")
    return 0
