"""The benchmark: train and compare (model, recipe, loss, seed) configurations on one split.

Writes a Table-I-style ``bench.md`` and ``bench.csv``: accuracy, precision, recall, F1 (mean ± std
over seeds), parameters, training wall time and CPU inference latency. Finished runs (a
``metrics.json`` in their folder) are reused, so an interrupted benchmark continues where it
stopped; every configuration is validated before the first run starts::

    from wastenet.training.bench import bench
    rows = bench("../shared/data/trashnet", split_file="../shared/data/trashnet-split.csv",
                 models=["mobilenetv2_100"], recipes=["linear", "wastenet"], seeds=[0, 1],
                 overrides={"epochs": 6}, out="runs/bench")
    rows[0]["f1"]                  # '0.912 ± 0.004'

``wastenet bench`` is the command line of it.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from wastenet.files import write_atomic, write_csv_atomic
from wastenet.training.config import TrainConfig

__all__ = ["COLUMNS", "bench", "cpu_latency_ms", "markdown_table"]

COLUMNS = ["model", "recipe", "loss", "seeds", "accuracy", "precision", "recall", "f1", "f1_macro",
           "parameters", "train_minutes", "latency_ms"]


def configs(data: str, out: str | Path, *, split_file: str | None = None, models: Sequence[str] = ("mobilenetv2_100",),
            weights_dir: str | None = None, recipes: Sequence[str] = ("wastenet",), losses: Sequence[str] = ("ce",),
            seeds: Sequence[int] = (0,), overrides: Mapping[str, Any] | None = None) -> Iterator[TrainConfig]:
    """One validated TrainConfig per (model, recipe, loss, seed), run folder ``OUT/MODEL-RECIPE-LOSS-sSEED``;
    ``weights_dir/MODEL.safetensors`` where it exists (else the hub)."""
    for model in models:
        weights = None
        if weights_dir:
            candidate = Path(weights_dir) / f"{model}.safetensors"
            weights = str(candidate) if candidate.is_file() else None
        for recipe in recipes:
            for loss in losses:
                for seed in seeds:
                    run_dir = Path(out) / f"{model}-{recipe}-{loss}-s{int(seed)}"
                    cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), "data": data, "split_file": split_file,
                                                 "model": model, "weights": weights, "recipe": recipe, "loss": loss,
                                                 "seed": int(seed), "out": str(run_dir), **dict(overrides or {})})
                    yield cfg.validate()


def cpu_latency_ms(checkpoint_path: str | Path, runs: int) -> float:
    """Median batch-1 forward time of the checkpoint's model on this CPU (fp32, eval; 5 warm-up passes first)."""
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


def bench(data: str, *, out: str | Path = "runs/bench", split_file: str | None = None,
          models: Sequence[str] = ("mobilenetv2_100",), weights_dir: str | None = None,
          recipes: Sequence[str] = ("wastenet",), losses: Sequence[str] = ("ce",), seeds: Sequence[int] = (0,),
          overrides: Mapping[str, Any] | None = None, latency_runs: int = 30,
          log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Train what is not finished yet, then one row per (model, recipe, loss) (:data:`COLUMNS`), also
    written to ``OUT/bench.csv`` and ``OUT/bench.md``. ``overrides`` are TrainConfig fields for every
    run; a bad one is a ConfigError before the first run."""
    cfgs = list(configs(data, out, split_file=split_file, models=models, weights_dir=weights_dir, recipes=recipes,
                        losses=losses, seeds=seeds, overrides=overrides))
    from wastenet.training.loop import log as train_log
    from wastenet.training.loop import train

    say = log or train_log
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for cfg in cfgs:
        run_dir = Path(cfg.out)
        metrics_file = run_dir / "metrics.json"
        if not metrics_file.is_file():
            say(f"=== {run_dir.name}")
            cfg.resume = (run_dir / "last.pt").is_file()
            train(cfg)
        result = json.loads(metrics_file.read_text())
        results.setdefault((cfg.model, cfg.recipe, cfg.loss), []).append(result)

    rows = []
    for (model, recipe, loss), runs in results.items():
        m = [r["metrics"] for r in runs]
        first_ckpt = out / f"{model}-{recipe}-{loss}-s{runs[0]['seed']}" / "best.pt"
        rows.append({
            "model": model, "recipe": recipe, "loss": loss, "seeds": len(runs),
            "accuracy": _mean_std([x["accuracy"] for x in m]),
            "precision": _mean_std([x["precision_weighted"] for x in m]),
            "recall": _mean_std([x["recall_weighted"] for x in m]),
            "f1": _mean_std([x["f1_weighted"] for x in m]),
            "f1_macro": _mean_std([x["f1_macro"] for x in m]),
            "parameters": f"{runs[0]['parameters'] / 1e6:.1f} M",
            "train_minutes": _mean_std([r["train_seconds"] / 60 for r in runs], 1),
            "latency_ms": f"{cpu_latency_ms(first_ckpt, latency_runs):.1f}",
        })
    write_csv_atomic(out / "bench.csv", rows, COLUMNS)
    write_atomic(out / "bench.md",
                 "Test split; precision/recall/F1 weighted by support (as the paper's Table I), F1 macro beside.\n"
                 "latency_ms: median batch-1 fp32 forward on this CPU.\n\n" + markdown_table(rows))
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a markdown table, :data:`COLUMNS` in order."""
    header = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    return header + "".join("| " + " | ".join(str(r[c]) for c in COLUMNS) + " |\n" for r in rows)


def _mean_std(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"
