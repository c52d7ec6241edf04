"""`wastenet bench`: compare (model, recipe, loss, seed) configurations on one split.

Writes a Table-I-style markdown and CSV: accuracy, precision, recall, F1 (mean ± std over
seeds), parameters, training wall time and CPU inference latency. Finished runs are reused,
so an interrupted benchmark continues where it stopped. The benchmark itself is
:func:`wastenet.training.bench.bench`; this module parses and prints::

    wastenet bench --data ../shared/data/trashnet --split-file ../shared/data/trashnet-split.csv \
        --models mobilenetv2_100,densenet121 --weights-dir ../shared/weights \
        --recipes linear,finetune,wastenet --losses ce --seeds 0 --out runs/bench
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "Train and compare several (model, recipe, loss, seed) configurations on one split."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="class-folder dataset")
    p.add_argument("--split-file", help="CSV path,label,split shared by every run (recommended)")
    p.add_argument("--models", default="mobilenetv2_100", help="comma-separated architectures")
    p.add_argument("--weights-dir", help="folder with MODEL.safetensors (+ .json); others come from the hub")
    p.add_argument("--recipes", default="wastenet", help="comma-separated: wastenet, finetune, linear")
    p.add_argument("--losses", default="ce", help="comma-separated: ce, focal")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="training option for every run, e.g. --set epochs=6 --set head_views=4")
    p.add_argument("--latency-runs", type=int, default=30, help="batch-1 forward passes timed per model")
    p.add_argument("--out", default="runs/bench", help="folder for the runs, bench.md and bench.csv")


def _scalar(text: str) -> Any:
    """'3' -> 3, '1e-3' -> 0.001, 'true' -> True, 'null' -> None; anything else stays text ('off', 'none')."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def _parse_sets(items: list[str]) -> dict[str, Any]:
    from wastenet.errors import ConfigError

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = _scalar(value)
    return out


def run(args: argparse.Namespace) -> int:
    from wastenet.files import check_output
    from wastenet.training.bench import bench, markdown_table

    check_output(args.out, folder=True)

    rows = bench(args.data, out=args.out, split_file=args.split_file, models=_list(args.models),
                 weights_dir=args.weights_dir, recipes=_list(args.recipes), losses=_list(args.losses),
                 seeds=[_seed(s) for s in _list(args.seeds)], overrides=_parse_sets(args.set),
                 latency_runs=args.latency_runs)
    print(markdown_table(rows))
    return 0


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seed(text: str) -> int:
    from wastenet.errors import ConfigError

    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers, got {text!r}") from None
