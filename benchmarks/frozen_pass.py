"""Frozen-backbone pass speed per backend, in one run on this CPU: the numbers behind the rule
in ``wastenet.inference.runner.choose_backend``.

A frozen pass is a no-grad forward of the pooled pre-logit features (the head-stage feature
cache, teacher logits, calibration and test passes). For each model this times, interleaved
round by round so that load from other jobs hits every backend alike:

* eager NCHW fp32, eager channels-last fp32, eager channels-last bf16 autocast (PyTorch),
* onnxruntime fp32 (the same module traced to ONNX; export time reported apart),

and names "today's path" (what `wastenet train` used before this script existed: eager,
channels-last, the ``--amp auto`` dtype of this CPU) and the ratio of each backend to it::

    flock /tmp/wastenet-cpu.lock python benchmarks/frozen_pass.py --models densenet121,mobilenetv2_100 \\
        --json benchmarks/results/frozen_pass.json

Random weights (speed does not depend on the values), the shared weights' architecture kwargs,
batch 32, ``--threads`` torch/ORT threads (default 2, the training default here).

Stand-in for a CPU without bf16 on one that has it: ``ONEDNN_MAX_CPU_ISA=AVX2`` caps PyTorch's
oneDNN kernels at AVX2, and PyTorch then reports no native bf16, so today's path is eager fp32 as on
an AVX2-only CPU. onnxruntime's MLAS has no such switch: its row keeps this CPU's ISA (an upper
bound for an AVX2-only CPU). The JSON records the cap.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import cpu_description, timed_rounds

MODEL_KWARGS = {"mobilenetv2_100": {"pad_type": "same"}}


class Features(torch.nn.Module):
    """Pooled pre-logit features: what the head stage caches."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def bench_model(arch: str, n_images: int, batch: int, size: int, rounds: int, threads: int) -> dict:
    import onnxruntime as ort
    import timm

    from wastenet.inference.runtime import autocast_for

    torch.manual_seed(0)
    net = Features(timm.create_model(arch, num_classes=6, **MODEL_KWARGS.get(arch, {})).eval())
    x = torch.randn(n_images, 3, size, size)
    batches = [x[i : i + batch] for i in range(0, n_images, batch)]
    today_dtype = autocast_for(torch.device("cpu"), "auto")
    runners = {}

    def eager(channels_last: bool, bf16: bool):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = copy.deepcopy(net).to(memory_format=fmt)  # .to(memory_format) converts in place

        @torch.no_grad()
        def run() -> None:
            for b in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    model(b.contiguous(memory_format=fmt)).float()
        return run

    runners["eager NCHW fp32"] = eager(False, False)
    t0 = time.perf_counter()
    path = Path(tempfile.mkdtemp()) / f"{arch}.onnx"
    torch.onnx.export(net, (x[:2],), str(path),
                      dynamo=False, opset_version=17, input_names=["input"], output_names=["features"],
                      dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}})
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    export_s = time.perf_counter() - t0
    np_batches = [b.numpy() for b in batches]
    runners["onnxruntime fp32"] = lambda: [sess.run(None, {"input": b}) for b in np_batches]
    runners["eager channels-last fp32"] = eager(True, False)
    runners["eager channels-last bf16"] = eager(True, True)
    times = timed_rounds(runners, rounds)
    rate = {k: n_images / statistics.median(v) for k, v in times.items()}
    today = "eager channels-last bf16" if today_dtype is torch.bfloat16 else "eager channels-last fp32"
    return {
        "arch": arch, "images_per_round": n_images, "batch": batch, "size": size, "rounds": rounds,
        "threads": threads, "onnx_export_seconds": round(export_s, 1), "today": today,
        "img_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ratio_to_today": {k: round(v / rate[today], 2) for k, v in rate.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="densenet121,mobilenetv2_100")
    ap.add_argument("--images", type=int, default=64, help="images per timed round")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"cpu": cpu_description(), "torch": torch.__version__,
              "bf16_native": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
              "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "models": []}
    cap = f"; oneDNN capped at {result['onednn_max_cpu_isa']}" if result["onednn_max_cpu_isa"] else ""
    print(f"CPU: {result['cpu']}{cap}; torch {torch.__version__}; {args.threads} threads; batch {args.batch}; "
          f"native bf16: {result['bf16_native']}")
    print("| model | backend | img/s | × today's path |\n| --- | --- | --- | --- |")
    for arch in args.models.split(","):
        r = bench_model(arch, args.images, args.batch, args.size, args.rounds, args.threads)
        result["models"].append(r)
        for k, v in r["img_per_s"].items():
            mark = " (today)" if k == r["today"] else ""
            print(f"| {arch} | {k}{mark} | {v:.1f} | {r['ratio_to_today'][k]:.2f} |")
        print(f"| {arch} | (ONNX export, once per pass) | {r['onnx_export_seconds']} s | |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
