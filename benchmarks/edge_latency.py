"""Edge runtimes compared: PyTorch eager vs onnxruntime fp32 vs onnxruntime INT8 (QDQ).

For each ``--checkpoint``: export fp32 ONNX, quantise to INT8 (calibrated on the split's
train rows), then measure on this CPU

* batch-1 latency p50/p90 (warm-up, then >= ``--runs`` timed calls, runtimes interleaved
  round-robin so that load from other processes hits all three alike),
* batch-32 throughput (images/s),
* each with 1 and 2 threads (``torch.set_num_threads`` / ``intra_op_num_threads``),
* file sizes, test accuracy of each runtime on the split's test rows, and top-1 label
  agreement torch vs ORT fp32 (should be 100%) and ORT fp32 vs INT8.

Writes a markdown table to stdout and everything to ``--json``::

    python benchmarks/edge_latency.py --checkpoint runs/mnv2/best.pt runs/densenet121/best.pt \\
        --data ../shared/data/trashnet --split-file ../shared/data/trashnet-split.csv \\
        --json benchmarks/results/edge_latency.json

``--limit N`` evaluates accuracy on N evenly spread test images only (a smoke run).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from _common import cpu_model


def read_split(split_file: Path, root: Path, split: str) -> list[tuple[Path, str]]:
    with split_file.open(newline="") as f:
        return [(root / r["path"], r["label"]) for r in csv.DictReader(f) if r["split"] == split]


def load_batch(paths: list[Path], prep: Any) -> np.ndarray:
    from wastenet.data.images import load_image
    from wastenet.preprocessing import preprocess_images

    return preprocess_images([load_image(p) for p in paths], prep)


def percentiles(ts: list[float]) -> dict[str, float]:
    a = np.asarray(ts) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "mean_ms": float(a.mean()), "n": len(ts)}


def interleaved(fns: dict[str, Callable[[], Any]], warmup: int, runs: int, max_seconds: float,
                chunk: int = 20) -> dict[str, list[float]]:
    """Time each function ``runs`` times after ``warmup`` calls each, in alternating chunks
    of ``chunk`` calls, so that load from other processes hits every runtime alike.

    Not call-by-call round robin: onnxruntime's pool threads and PyTorch's OpenMP threads
    spin for a while after each call and would steal the next runtime's cores (measured:
    eager batch-1 at 2 threads 8x slower when interleaved call by call). The first call of
    each chunk is untimed for the same reason. Stops early, with at least ``chunk`` timings
    each, once ``max_seconds`` have passed.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    while min(len(v) for v in times.values()) < runs:
        for k, fn in fns.items():
            fn()  # untimed: lets the other runtime's spinning threads go idle
            for _ in range(min(chunk, runs - len(times[k]))):
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        if time.perf_counter() - start > max_seconds:
            break
    return times


def predict_all(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, bs: int = 32) -> np.ndarray:
    return np.concatenate([fn(x[i : i + bs]) for i in range(0, len(x), bs)])


def bench_checkpoint(ckpt_path: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from wastenet import checkpoint
    from wastenet.export.int8 import default_exclude, parse_exclude, quantize_int8
    from wastenet.export.onnx import export_onnx, onnx_session, spread
    from wastenet.models import model_from_checkpoint
    from wastenet.preprocessing import Preprocessing

    ckpt = checkpoint.load(ckpt_path)
    classes = list(ckpt["classes"])
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    name = f"{ckpt['arch']}-{ckpt_path.parent.name}-{ckpt_path.stem}"
    root, split_file = Path(args.data), Path(args.split_file)
    train = [p for p, _ in read_split(split_file, root, "train")]
    test = read_split(split_file, root, "test")
    if args.limit:
        test = spread(test, args.limit)
    log = lambda msg: print(f"[{name}] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    fp32_path, int8_path = work / f"{name}.onnx", work / f"{name}.int8.onnx"
    t = time.perf_counter()
    fp32 = export_onnx(ckpt_path, fp32_path, opset=args.opset, check_images=spread(train, 8))
    log(f"fp32 export {time.perf_counter() - t:.1f}s, parity {fp32.max_abs_diff:.2e}")
    exclude = parse_exclude(args.int8_exclude)
    t = time.perf_counter()
    int8 = quantize_int8(fp32_path, int8_path, train, n_calib=args.calib_count, method=args.calib_method,
                         exclude=exclude)
    log(f"int8 quantisation {time.perf_counter() - t:.1f}s ({int8.details['calibration_images']} calibration images)")

    model = model_from_checkpoint(ckpt).eval()

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    def ort_fn(sess: Any) -> Callable[[np.ndarray], np.ndarray]:
        return lambda x: sess.run(["logits"], {"input": x})[0]

    # ---- accuracy on the test rows (2 threads, batch 32)
    t = time.perf_counter()
    x_test = load_batch([p for p, _ in test], prep)
    y_test = np.array([classes.index(label) for _, label in test])
    log(f"decoded {len(test)} test images in {time.perf_counter() - t:.1f}s")
    torch.set_num_threads(2)
    preds = {"pytorch_eager": predict_all(eager, x_test).argmax(1),
             "ort_fp32": predict_all(ort_fn(onnx_session(fp32_path, 2)), x_test).argmax(1),
             "ort_int8": predict_all(ort_fn(onnx_session(int8_path, 2)), x_test).argmax(1)}
    accuracy = {k: float((v == y_test).mean()) for k, v in preds.items()}

    # ---- latency and throughput
    x1 = np.ascontiguousarray(x_test[:1])
    xb = np.ascontiguousarray(np.resize(x_test, (args.batch, *x_test.shape[1:])))  # repeat if fewer images
    timing: dict[str, dict[str, Any]] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        sessions = {"ort_fp32": onnx_session(fp32_path, threads), "ort_int8": onnx_session(int8_path, threads)}
        fns = {"pytorch_eager": eager, **{k: ort_fn(s) for k, s in sessions.items()}}
        t1 = interleaved({k: (lambda f=f: f(x1)) for k, f in fns.items()}, args.warmup, args.runs, args.max_seconds)
        tb = interleaved({k: (lambda f=f: f(xb)) for k, f in fns.items()}, 1, args.batch_runs, args.max_seconds,
                         chunk=max(1, args.batch_runs // 2))
        for k in fns:
            b32 = percentiles(tb[k])
            timing.setdefault(k, {})[f"threads_{threads}"] = {
                "batch1": percentiles(t1[k]),
                f"batch{args.batch}": {**b32, "images_per_s": args.batch / (b32["p50_ms"] / 1e3)},
            }
        log(f"timed with {threads} thread(s): " + ", ".join(
            f"{k} {timing[k][f'threads_{threads}']['batch1']['p50_ms']:.1f} ms" for k in fns))

    sizes = {"checkpoint_pt": ckpt_path.stat().st_size, "ort_fp32": fp32.size_bytes, "ort_int8": int8.size_bytes}
    return {
        "name": name, "checkpoint": str(ckpt_path), "arch": ckpt["arch"], "input_size": prep.input_size,
        "n_test": len(test), "limit": args.limit, "accuracy": accuracy,
        "agreement": {"torch_vs_ort_fp32": float((preds["pytorch_eager"] == preds["ort_fp32"]).mean()),
                      "ort_fp32_vs_int8": float((preds["ort_fp32"] == preds["ort_int8"]).mean())},
        "sizes_bytes": sizes, "timing": timing, "fp32_parity_max_abs_diff": fp32.max_abs_diff,
        "int8": {"method": args.calib_method, "calibration_images": int8.details["calibration_images"],
                 "excluded": int8.details["excluded"],
                 "default_exclude": list(default_exclude(ckpt["arch"])),
                 "quantize_linear_nodes": int8.details["quantize_linear_nodes"]},
        "files": {"fp32": str(fp32_path), "int8": str(int8_path)},
    }


def markdown(results: list[dict[str, Any]], batch: int) -> str:
    lines = [f"| model | runtime | threads | batch-1 p50 ms | batch-1 p90 ms | speed-up vs eager (p50) | "
             f"batch-{batch} img/s | file MB | test acc |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    size_key = {"pytorch_eager": "checkpoint_pt", "ort_fp32": "ort_fp32", "ort_int8": "ort_int8"}
    for r in results:
        for rt, per_thread in r["timing"].items():
            for th, m in per_thread.items():
                eager_p50 = r["timing"]["pytorch_eager"][th]["batch1"]["p50_ms"]
                b1 = m["batch1"]
                lines.append(
                    f"| {r['arch']} | {rt} | {th.split('_')[1]} | {b1['p50_ms']:.2f} | {b1['p90_ms']:.2f} | "
                    f"{eager_p50 / b1['p50_ms']:.2f}x | {m[f'batch{batch}']['images_per_s']:.1f} | "
                    f"{r['sizes_bytes'][size_key[rt]] / 1e6:.2f} | {r['accuracy'][rt]:.4f} |")
        ag = r["agreement"]
        lines.append(f"\n{r['arch']}: {r['n_test']} test images; label agreement torch vs ORT fp32 "
                     f"{ag['torch_vs_ort_fp32']:.2%}, ORT fp32 vs INT8 {ag['ort_fp32_vs_int8']:.2%}; INT8 kept in "
                     f"float: {', '.join(r['int8']['excluded']) or 'nothing'}\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from wastenet.export.int8 import CALIBRATION_METHODS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", nargs="+", required=True, help="wastenet .pt checkpoints")
    p.add_argument("--data", required=True, help="dataset root (the split file's paths are relative to it)")
    p.add_argument("--split-file", required=True, help="CSV path,label,split: train rows calibrate, test rows score")
    p.add_argument("--json", default="edge_latency.json", help="where to write the full results")
    p.add_argument("--work-dir", default=None, help="keep the exported .onnx files here (default: a temp dir)")
    p.add_argument("--limit", type=int, default=0, help="score only this many test images (0 = all)")
    p.add_argument("--threads", default="1,2", help="comma list of thread counts")
    p.add_argument("--runs", type=int, default=200, help="timed batch-1 calls per runtime")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls first")
    p.add_argument("--batch", type=int, default=32, help="throughput batch size")
    p.add_argument("--batch-runs", type=int, default=10, help="timed batch calls per runtime")
    p.add_argument("--max-seconds", type=float, default=60.0, help="time budget per timing loop")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--calib-count", type=int, default=200)
    p.add_argument("--calib-method", default="minmax", choices=CALIBRATION_METHODS)
    p.add_argument("--int8-exclude", default="auto", help="'auto', 'none' or a comma list (see wastenet export)")
    args = p.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",") if t]

    import onnxruntime
    import torch

    env = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
           "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
           "loadavg_start": list(os.getloadavg()), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    with tempfile.TemporaryDirectory(prefix="edge-latency-") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = [bench_checkpoint(Path(c), args, work) for c in args.checkpoint]
    env["loadavg_end"] = list(os.getloadavg())
    out = {"environment": env, "settings": {k: v for k, v in vars(args).items() if k != "checkpoint"},
           "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"CPU: {env['cpu']} ({env['cores']} cores visible), torch {env['torch']}, onnxruntime "
          f"{env['onnxruntime']}, load average {env['loadavg_start'][0]:.1f} -> {env['loadavg_end'][0]:.1f}\n")
    busy = max(env["loadavg_start"][0], env["loadavg_end"][0])
    if busy > (env["cores"] or 1) - 0.5:
        # other processes held the cores: multi-threaded PyTorch (OpenMP barriers) suffers most
        print(f"WARNING: load average {busy:.1f} on {env['cores']} cores: other processes competed for the "
              "CPU; multi-thread figures (PyTorch's above all) are unreliable, rerun on an idle machine.\n")
    print(markdown(results, args.batch))
    print(f"full results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
