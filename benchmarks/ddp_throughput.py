"""Training throughput (images/s): one process vs data-parallel processes under torchrun.

Each case trains the same fixed number of finetune steps of the same global batch with the
real training loop (``Trainer.run_backbone_stage``: augmentation, forward, backward, DDP
all-reduce, optimiser, one-cycle schedule) on real TrashNet photos; validation and
checkpoint writes are switched off so that only training is timed. One untimed epoch warms
up (allocator, oneDNN kernels), then ``--repeats`` epochs of ``--steps`` steps are timed;
images/s is that of the fastest timed epoch (all epoch times are listed). Run it on a quiet
machine: on a shared CPU, a process with 2 OpenMP threads stalls whenever one of its
threads is preempted, which is far worse than the cost of DDP.

On a CPU the cases share the same cores: 1 process x C threads vs P processes x C/P threads
(``OMP_NUM_THREADS`` and ``torch.set_num_threads``), so the table shows whether splitting
the batch across processes beats intra-op threading on this machine::

    python benchmarks/ddp_throughput.py                       # 1 x 2 threads vs 2 x 1 thread
    python benchmarks/ddp_throughput.py --steps 20 --img-size 224 --json ddp.json

On GPUs (one process per GPU), e.g. 1 vs 8 GPUs::

    python benchmarks/ddp_throughput.py --device cuda --procs 1,8 --batch-size 256 --steps 50

Prints a markdown table (with the exact command of each case) and, with ``--json``, writes
the numbers. A case can also be run by hand: the ``--worker`` command lines in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WASTENET_SHARED", REPO.parent / "shared"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "data" / "trashnet"))
    p.add_argument("--split-file", default=str(SHARED / "data" / "trashnet-split.csv"))
    p.add_argument("--model", default="mobilenetv2_100")
    p.add_argument("--weights", default=str(SHARED / "weights" / "mobilenetv2_100.safetensors"))
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32, help="the global batch (split across processes)")
    p.add_argument("--steps", type=int, default=8, help="optimiser steps per timed epoch")
    p.add_argument("--repeats", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    p.add_argument("--limit-per-class", type=int, default=None,
                   help="train images decoded per class (default: just enough for --steps x --batch-size)")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--procs", default="1,2", help="comma-separated process counts to compare")
    p.add_argument("--cores", type=int, default=os.cpu_count(),
                   help="CPU threads shared by each case: C/P threads per process (CPU only)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results here")
    # internal: one case, run by the launcher (or by hand, under torchrun)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- one case
def worker(a: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from wastenet.data.datasets import ImageCache
    from wastenet.models import create_model, resolve_weights_arg
    from wastenet.taxonomy import identity_taxonomy
    from wastenet.inference import runtime
    from wastenet.training import distributed, loop
    from wastenet.training.config import TrainConfig
    from wastenet.training.recipes import Stage

    if a.threads:
        torch.set_num_threads(a.threads)
    device = distributed.setup(runtime.resolve_device(a.device))
    try:
        n_train = a.steps * a.batch_size
        cfg = TrainConfig(data=a.data, split_file=a.split_file, model=a.model, weights=a.weights, recipe="finetune",
                          batch_size=a.batch_size, img_size=a.img_size, amp=a.amp, channels_last=a.channels_last,
                          device=a.device, limit_per_class=a.limit_per_class, workers=a.threads or 1).validate()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            rows, classes = loop.prepare_rows(cfg, Path(cfg.data), out)
            if cfg.limit_per_class is None:
                cfg.limit_per_class = -(-n_train // len(classes))
                rows = loop._limit(rows, cfg.limit_per_class)
            rows = [r for r in rows if r.split == "train"]  # validation is not timed
            torch.manual_seed(0)
            built = create_model(cfg.model, len(classes), weights=resolve_weights_arg(cfg.weights), img_size=cfg.img_size)
            data = loop.prepare_data(cfg, Path(cfg.data), rows, classes, built.preprocessing.cache_size,
                                     built.preprocessing.interpolation)
            if len(data.train) < n_train:
                raise SystemExit(f"only {len(data.train)} train images for {a.steps} steps x {a.batch_size}: "
                                 "raise --limit-per-class")
            pick = np.random.default_rng(0).permutation(len(data.train))[:n_train]
            data.train = ImageCache(data.train.images[pick], data.train.labels[pick], [data.train.rows[i] for i in pick])
            trainer = loop.Trainer(cfg, built, data, out, identity_taxonomy(classes).to_dict(), device,
                                   runtime.autocast_for(device, cfg.amp))
            trainer.validate = lambda: (float("nan"), float("nan"))   # time training only
            trainer.save_last = lambda *args, **kw: None
            n_groups = len(trainer.groups)
            stage = Stage("finetune", {g: cfg.lr for g in range(n_groups)}, epochs=1 + a.repeats, patience=10**9)
            distributed.barrier()
            trainer._begin_stage()
            trainer.run_backbone_stage(stage)
            seconds = [float(r["seconds"]) for r in trainer.state.history[1:]]  # epoch 1 warms up
        if distributed.is_main() and a.result:
            Path(a.result).write_text(json.dumps({
                "procs": distributed.world_size(), "threads_per_proc": torch.get_num_threads(),
                "device": str(device.type), "amp": a.amp, "global_batch": a.batch_size,
                "per_rank_batch": a.batch_size // distributed.world_size(), "steps": a.steps,
                "epoch_seconds": seconds, "images_per_s": round(n_train / min(seconds), 2),  # best epoch: least disturbed
            }))
    finally:
        distributed.teardown()


# --------------------------------------------------------------------------- launcher
def case_command(a: argparse.Namespace, procs: int, threads: int | None, result: Path) -> tuple[list[str], dict]:
    passed = ["--data", a.data, "--split-file", a.split_file, "--model", a.model, "--weights", a.weights,
              "--img-size", str(a.img_size), "--batch-size", str(a.batch_size), "--steps", str(a.steps),
              "--repeats", str(a.repeats), "--amp", a.amp, "--device", a.device]
    if a.limit_per_class:
        passed += ["--limit-per-class", str(a.limit_per_class)]
    if a.channels_last:
        passed.append("--channels-last")
    if threads:
        passed += ["--threads", str(threads)]
    script = [str(Path(__file__).relative_to(REPO)) if Path(__file__).is_relative_to(REPO) else __file__,
              "--worker", *passed, "--result", str(result)]
    if procs == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *script]
    env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    return cmd, env


def shown(cmd: list[str], env: dict) -> str:
    words = ["python" if w == sys.executable else w for w in cmd]
    return " ".join([*(f"{k}={v}" for k, v in env.items()), shlex.join(words)])


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.worker:
        worker(a)
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for procs in [int(p) for p in a.procs.split(",")]:
            threads = max(1, a.cores // procs) if a.device == "cpu" else None
            result = Path(tmp) / f"p{procs}.json"
            cmd, env = case_command(a, procs, threads, result)
            print(f"running: {shown(cmd, env)}", file=sys.stderr, flush=True)
            t0 = time.time()
            proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **env})
            if proc.returncode != 0 or not result.is_file():
                print(f"case with {procs} process(es) failed (status {proc.returncode})", file=sys.stderr)
                return 1
            r = json.loads(result.read_text())
            r.update(command=shown(cmd, env), wall_s=round(time.time() - t0, 1))
            results.append(r)
    base = results[0]["images_per_s"]
    print(f"\n{a.model} @ {a.img_size}px, finetune, global batch {a.batch_size}, {a.steps} steps x "
          f"{a.repeats} timed epochs, amp {a.amp}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs\n")
    print("| processes | threads/process | batch/process | images/s | speed-up | epoch seconds | command |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['procs']} | {r['threads_per_proc']} | {r['per_rank_batch']} | {r['images_per_s']} | "
              f"{r['images_per_s'] / base:.2f}x | {', '.join(f'{s:.2f}' for s in r['epoch_seconds'])} | "
              f"`{r['command']}` |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
