"""Training-step and inference speed of one model in fp32 / bf16 and NCHW / channels-last.

Why `--amp auto` and `--channels-last` default the way they do on CPU. Synthetic input (speed
does not depend on pixel values), the model's own architecture with a 6-class head, the
torch thread count of a training run. Run it alone: the machine has 2 cores.

    python benchmarks/precision_layout.py --models densenet121,mobilenetv2_100 \
        --out benchmarks/results/precision_layout.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from _common import cpu_model, timed_rounds

MODEL_KWARGS = {"mobilenetv2_100": {"pad_type": "same"}}  # as the shared weights' sidecar asks


def measure(arch: str, bf16: bool, channels_last: bool, batch: int, size: int, repeats: int, warmup: int) -> dict:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = timm.create_model(arch, num_classes=6, **MODEL_KWARGS.get(arch, {})).to(memory_format=fmt)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 6, (batch,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> None:
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def infer() -> None:
        model.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)

    train_s = statistics.median(timed_rounds({"train": train_step}, repeats, warmup)["train"])
    infer_s = statistics.median(timed_rounds({"infer": infer}, repeats, warmup)["infer"])
    return {"model": arch, "precision": "bf16" if bf16 else "fp32",
            "layout": "channels_last" if channels_last else "nchw",
            "train_img_s": round(batch / train_s, 1), "infer_img_s": round(batch / infer_s, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="densenet121,mobilenetv2_100")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for arch in a.models.split(","):
        for channels_last in (False, True):
            for bf16 in (False, True):
                r = measure(arch, bf16, channels_last, a.batch, a.size, a.repeats, a.warmup)
                rows.append(r)
                print(json.dumps(r), flush=True)
    print("\n| model | precision | layout | train img/s | inference img/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['precision']} | {r['layout']} | {r['train_img_s']} | {r['infer_img_s']} |")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"torch": torch.__version__, "cpu": cpu_model(),
                                     "threads": a.threads, "batch": a.batch, "size": a.size,
                                     "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                                     "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
