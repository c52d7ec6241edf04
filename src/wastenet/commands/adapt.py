"""`wastenet adapt`: a deployed model learns the items its bin sent to manual sort.

    wastenet review --export reviewed/                      # the labelled manual-sort items
    wastenet adapt --checkpoint runs/mnv2/best.pt --data reviewed/ \
        --data-mix ../shared/data/trashnet --mix-split-file ../shared/data/trashnet-split.csv --out runs/mnv2-site
    # or straight from the service's log: the newest 20% of reviewed items are held out, and the
    # candidate is scored against the current model on them (site/learn.py)
    wastenet adapt --checkpoint runs/mnv2/best.pt --from-log runs/mnv2/decisions.sqlite \
        --data-mix ../shared/data/trashnet --mix-split-file ../shared/data/trashnet-split.csv --out runs/mnv2-site
    # the rehearsal set's features alone, into a versions folder's cache (the service's start does this)
    wastenet adapt --checkpoint runs/mnv2/best.pt --prepare-rehearsal --versions runs/mnv2/models \
        --data-mix ../shared/data/trashnet --mix-split-file ../shared/data/trashnet-split.csv

The head is re-fitted on cached features (minutes on a CPU); calibration and the unknown-item
rule are re-fitted; taxonomy and threshold are kept (training/adapt.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from wastenet.files import write_atomic

if TYPE_CHECKING:
    from wastenet.training.adapt import AdaptConfig

HELP = "Fine-tune a deployed model's head on reviewed items (site adaptation), keeping calibration and the taxonomy."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from wastenet.site.learn import COMPARISONS
    from wastenet.training.adapt import AdaptConfig

    d = AdaptConfig()
    p.add_argument("--checkpoint", required=True, help="the deployed .pt checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="reviewed items as class folders (wastenet review --export)")
    src.add_argument("--from-log", metavar="DB", help="the service's decision log: its reviewed items, the newest "
                                                      "20%% held out to compare the candidate with the model")
    src.add_argument("--prepare-rehearsal", action="store_true",
                     help="only compute --data-mix's features into --versions' feature cache, for the runs to come "
                          "(the service does this when it starts)")
    p.add_argument("--new-class-min", type=int, default=10,
                   help="with --from-log: reviewed items a new kind needs to become a class (default %(default)s)")
    p.add_argument("--holdout-max", type=int, default=None, metavar="N",
                   help="with --from-log: hold out at most N of the newest reviewed items (default: 20%% of them, "
                        "however many that is)")
    p.add_argument("--compare", choices=COMPARISONS, default=None,
                   help="with --from-log: what the candidate must not be worse at on the held-out items: every "
                        "item's class (default), or the class of the items each model sorts itself")
    p.add_argument("--versions", metavar="DIR", help="with --from-log: add the candidate as a version in DIR "
                                                      "(the service's <log dir>/models), active if promoted")
    p.add_argument("--parent", type=int, default=0, help="with --versions: the version the candidate came from")
    p.add_argument("--max-forgetting", type=float, default=None, metavar="POINTS",
                   help="with --from-log: points of accuracy on --data-mix's validation rows a candidate may lose "
                        "against the model its versions started from, or it is not promoted (default: 1)")
    p.add_argument("--skip-search-threshold", action="store_true",
                   help="do not refit the unknown-item threshold under --search (minutes; unused without --search)")
    p.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads (default: PyTorch's choice)")
    p.add_argument("--data-mix", help="the original training data, rehearsed so the model does not forget it")
    p.add_argument("--mix-split-file", help="split file of --data-mix (train rows rehearsed, val rows calibrate)")
    p.add_argument("--mix-per-class", type=int, default=d.mix_per_class, help="rehearsal images per class")
    p.add_argument("--views", type=int, default=d.views, help="augmented views per image")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", help="folder for the adapted best.pt (required unless --prepare-rehearsal)")
    p.add_argument("--eval-data", help="a field folder to report on after adapting (with --class-map)")
    p.add_argument("--class-map", help="class map of --eval-data (see wastenet eval --class-map)")
    p.add_argument("--boxes", help="item boxes of --eval-data")


def run(args: argparse.Namespace) -> int:
    from wastenet.errors import ConfigError
    from wastenet.files import check_output
    from wastenet.site.learn import check_max_forgetting

    for name in ("mix_per_class", "views", "epochs"):
        if getattr(args, name) < (0 if name != "epochs" else 1):
            raise ConfigError(f"--{name.replace('_', '-')} is too small")
    if not 0 < args.lr < 1:
        raise ConfigError("--lr must be in (0, 1)")
    if bool(args.eval_data) != bool(args.class_map):
        raise ConfigError("--eval-data and --class-map go together")
    if args.data and not Path(args.data).is_dir():
        raise ConfigError(f"reviewed data folder not found: {args.data}")
    if args.from_log and not Path(args.from_log).is_file():
        raise ConfigError(f"decision log not found: {args.from_log}")
    if args.new_class_min < 2:
        raise ConfigError("--new-class-min must be at least 2")
    if args.holdout_max is not None:
        from wastenet.site.learn import check_holdout_max

        if not args.from_log:
            raise ConfigError("--holdout-max goes with --from-log (it holds out reviewed items of the log)")
        check_holdout_max(args.holdout_max)
    if args.compare is not None and not args.from_log:
        raise ConfigError("--compare goes with --from-log (it decides a promotion)")
    if args.max_forgetting is not None:
        if not args.from_log:
            raise ConfigError("--max-forgetting goes with --from-log (it decides a promotion)")
        check_max_forgetting(args.max_forgetting)
    if args.prepare_rehearsal:
        if not (args.data_mix and args.mix_split_file and args.versions):
            raise ConfigError("--prepare-rehearsal needs --data-mix, --mix-split-file and --versions")
    elif not args.out:
        raise ConfigError("--out is required (a folder for the adapted best.pt)")
    else:
        check_output(args.out, folder=True)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError("--threads must be at least 1")
        import torch

        torch.set_num_threads(args.threads)
    if args.from_log:
        return _from_log(args)
    if args.prepare_rehearsal:
        from wastenet.site.learn import FEATURE_CACHE
        from wastenet.training.adapt import prepare_rehearsal

        prepare_rehearsal(args.checkpoint, args.data_mix, args.mix_split_file, Path(args.versions) / FEATURE_CACHE,
                          _config(args))
        return 0
    from wastenet.training.adapt import adapt

    cfg = _config(args)
    result = adapt(args.checkpoint, args.data, args.out, mix=args.data_mix, mix_split=args.mix_split_file, cfg=cfg,
                   search=not args.skip_search_threshold)
    write_atomic(Path(args.out, "adapt.json"), json.dumps(result, indent=2))
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


def _from_log(args: argparse.Namespace) -> int:
    import sys

    from wastenet.site.learn import learn_from_log

    result = learn_from_log(args.from_log, args.checkpoint, args.out, mix=args.data_mix, mix_split=args.mix_split_file,
                            new_class_min=args.new_class_min, search=not args.skip_search_threshold, cfg=_config(args),
                            **({} if args.max_forgetting is None else {"max_forgetting": args.max_forgetting}),
                            versions=args.versions, parent=args.parent, holdout_max=args.holdout_max,
                            compare=args.compare or "class",
                            log=lambda m: print(m, file=sys.stderr, flush=True))
    write_atomic(Path(args.out, "adapt.json"), json.dumps(result, indent=2))
    cur, cand = result["scores"]["current"], result["scores"]["candidate"]
    print(f"candidate {result['candidate']}: held-out class accuracy {_f(cur['class_accuracy'])} -> "
          f"{_f(cand['class_accuracy'])} on {cand['n']} items; "
          f"{'promoted' if result['promoted'] else 'not promoted'}: {result['reason']}"
          + (f" (version {result['version']})" if "version" in result else ""))
    return 0


def _config(args: argparse.Namespace) -> "AdaptConfig":
    """The head's fit from the command line, the same for ``--data`` and ``--from-log``."""
    from wastenet.training.adapt import AdaptConfig

    return AdaptConfig(views=args.views, epochs=args.epochs, lr=args.lr, mix_per_class=args.mix_per_class, seed=args.seed)


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
