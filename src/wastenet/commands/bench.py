"""`wastenet bench`: compare (model, recipe, loss, seed) configurations on one split.

Writes a Table-I-style markdown and CSV: accuracy, precision, recall, F1 (mean ± std over
seeds), parameters, training wall time and CPU inference latency. Finished runs are reused,
so an interrupted benchmark continues where it stopped::

    wastenet bench --data ../shared/data/trashnet --split-file ../shared/data/trashnet-split.csv \
        --models mobilenetv2_100,densenet121 --weights-dir ../shared/weights \
        --recipes linear,finetune,wastenet --losses ce --seeds 0 --out runs/bench
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path
from typing import Any

HELP = "Train and compare several (model, recipe, loss, seed) configurations on one split."

COLUMNS = ["model", "recipe", "loss", "seeds", "accuracy", "precision", "recall", "f1", "f1_macro",
           "parameters", "train_minutes", "latency_ms"]


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


def _configs(args: argparse.Namespace):
    from wastenet.training.config import TrainConfig

    overrides = _parse_sets(args.set)
    for model in args.models.split(","):
        weights = None
        if args.weights_dir:
            candidate = Path(args.weights_dir) / f"{model}.safetensors"
            weights = str(candidate) if candidate.is_file() else None
        for recipe in args.recipes.split(","):
            for loss in args.losses.split(","):
                for seed in (int(s) for s in args.seeds.split(",")):
                    out = Path(args.out) / f"{model}-{recipe}-{loss}-s{seed}"
                    cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), "data": args.data,
                                                 "split_file": args.split_file, "model": model, "weights": weights,
                                                 "recipe": recipe, "loss": loss, "seed": seed, "out": str(out),
                                                 **overrides})
                    yield cfg.validate()


def cpu_latency_ms(checkpoint_path: Path, runs: int) -> float:
    """Median batch-1 forward time of the checkpoint's model on this CPU (fp32, eval)."""
    import torch

    from wastenet import checkpoint
    from wastenet.models import model_from_checkpoint

    ck = checkpoint.load(checkpoint_path)
    model = model_from_checkpoint(ck)
    size = ck["preprocessing"]["input_size"]
    x = torch.randn(1, 3, size, ck["preprocessing"].get("input_width") or size)
    times = []
    with torch.inference_mode():
        for i in range(runs + 5):
            t0 = time.perf_counter()
            model(x)
            if i >= 5:  # warm-up
                times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _mean_std(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def run(args: argparse.Namespace) -> int:
    configs = list(_configs(args))  # validates everything before the first run starts
    from wastenet.training.loop import log, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for cfg in configs:
        run_dir = Path(cfg.out)
        metrics_file = run_dir / "metrics.json"
        if not metrics_file.is_file():
            log(f"=== {run_dir.name}")
            cfg.resume = (run_dir / "last.pt").is_file()
            train(cfg)
        result = json.loads(metrics_file.read_text())
        results.setdefault((cfg.model, cfg.recipe, cfg.loss), []).append(result)

    rows = []
    for (model, recipe, loss), runs in results.items():
        m = [r["metrics"] for r in runs]
        first_ckpt = Path(args.out) / f"{model}-{recipe}-{loss}-s{runs[0]['seed']}" / "best.pt"
        rows.append({
            "model": model, "recipe": recipe, "loss": loss, "seeds": len(runs),
            "accuracy": _mean_std([x["accuracy"] for x in m]),
            "precision": _mean_std([x["precision_weighted"] for x in m]),
            "recall": _mean_std([x["recall_weighted"] for x in m]),
            "f1": _mean_std([x["f1_weighted"] for x in m]),
            "f1_macro": _mean_std([x["f1_macro"] for x in m]),
            "parameters": f"{runs[0]['parameters'] / 1e6:.1f} M",
            "train_minutes": _mean_std([r["train_seconds"] / 60 for r in runs], 1),
            "latency_ms": f"{cpu_latency_ms(first_ckpt, args.latency_runs):.1f}",
        })
    with (out / "bench.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    header = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    table = header + "".join("| " + " | ".join(str(r[c]) for c in COLUMNS) + " |\n" for r in rows)
    (out / "bench.md").write_text(
        "Test split; precision/recall/F1 weighted by support (as the paper's Table I), F1 macro beside.\n"
        "latency_ms: median batch-1 fp32 forward on this CPU.\n\n" + table)
    print(table)
    return 0
