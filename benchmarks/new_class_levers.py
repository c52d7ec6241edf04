"""Which head fit learns a new kind from fewer reviewed photos? Offline, on frozen features, on a base
model trained *without* the kind: a screen of levers to be confirmed later on a real stream.

The head is grown by the kind (:func:`wastenet.training.grow.grow_classes`) and fitted as adaptation does
(:func:`wastenet.training.adapt.fit_head`): the reviewed half holds *k* photos of the kind plus *k* old-class
photos (never in the rehearsal or check rows), each with 4 augmented views, of which ``--reviewed-val`` (20%,
as ``adapt`` holds out) are validation rows instead; the rehearsal half 100 training photos per class; early
stopping on those rows plus 50 validation photos per class. Every draw (``--seeds``) shuffles the kind's photos
and the old-class reviewed photos anew. Scored: recall on the kind's photos no variant learned from, accuracy on
the old classes' test photos. Variants (``--variants``):

- ``zero``: the grown row starts at zero (adaptation before session 20: ``AdaptConfig(imprint_new=False)``);
- ``new-rows``: then a second fit of the grown rows alone (old rows fixed), early-stopped on the validation
  loss averaged per class (the kind's few validation rows weigh as much as a class);
- ``balanced-stop``: one fit, early-stopped on that per-class loss;
- ``views-12``: the kind's reviewed photos with 12 augmented views instead of 4;
- ``imprint``: the grown row starts along the kind's mean reviewed feature
  (:func:`wastenet.training.grow.imprint_rows`, what adaptation does since session 20); then the same fit;
- ``last-block``: DenseNet's last dense block (``denseblock4`` + ``norm5``, batch-norm statistics frozen) trained
  with the head on cached ``transition3`` outputs (``--block-features``), block at ``--block-lr``; bf16 autocast
  as ``--amp auto`` would use on a CPU with bf16. By default on the same rehearsal as the others (100 photos per
  class, 4 views); ``--block-mix-per-class``/``--block-mix-views`` make it cheaper (and then not comparable).

::

    python benchmarks/new_class_levers.py --checkpoint runs/s20-densenet121-no-glass/best.pt \\
        --data ../shared/data/trashnet --split-file SPLIT-WITHOUT-GLASS.csv \\
        --full-split ../shared/data/trashnet-split.csv --new glass --out benchmarks/results/new-class-levers-glass.json
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

VIEWS, MORE_VIEWS = 4, 12


def per_class_ce(logits, y):
    """Cross-entropy averaged per class, then over the classes present (each class weighs alike)."""
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, y, reduction="none")
    return sum(ce[y == c].mean() for c in y.unique()) / len(y.unique())


def fit_rows(head, rows, reviewed, rehearsal, val, cfg):
    """Fit only ``rows`` of a Linear ``head`` (others fixed), early-stopped on :func:`per_class_ce`."""
    from wastenet.training.adapt import train_early_stopped

    mask = torch.zeros(head.weight.shape[0], 1)
    mask[rows] = 1
    fixed_w, fixed_b = head.weight.detach().clone(), head.bias.detach().clone()

    def keep_the_others():  # AdamW moves nothing with a zero grad, but be exact
        with torch.no_grad():
            head.weight.copy_(head.weight * mask + fixed_w * (1 - mask))
            head.bias.copy_(head.bias * mask[:, 0] + fixed_b * (1 - mask[:, 0]))

    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=0.0)
    train_early_stopped(head, head, opt, reviewed, rehearsal, val, replace(cfg, seed=cfg.seed + 1),
                        val_loss=per_class_ce, after_step=keep_the_others)


def split_last_block(model):
    """(trunk, block) of a timm DenseNet: ``block(trunk(x))`` is ``forward_features(x)``."""
    import torch.nn as nn

    names = [n for n, _ in model.features.named_children()]
    if "denseblock4" not in names:
        raise SystemExit("error: --variants last-block needs a DenseNet checkpoint")
    i, children = names.index("denseblock4"), list(model.features.children())
    return nn.Sequential(*children[:i]).eval(), nn.Sequential(*children[i:]).eval()


class FrozenStatistics(torch.nn.Module):
    """A model whose batch-norm statistics stay the base model's: ``train()`` keeps it in eval mode."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def train(self, mode: bool = True):
        return super().train(False)


def fit_last_block(model, block, reviewed, rehearsal, val, cfg, block_lr, epochs):
    """:func:`fit_head`'s loop with the last block trained too (inputs are trunk outputs; batch-norm statistics
    frozen), early-stopped on the validation loss."""
    from wastenet.training.adapt import train_early_stopped

    def run(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return torch.cat([model.forward_head(block(x[i:i + 256].float())) for i in range(0, len(x), 256)]).float()

    opt = torch.optim.AdamW([{"params": model.get_classifier().parameters(), "lr": cfg.lr},
                             {"params": block.parameters(), "lr": block_lr}], weight_decay=cfg.weight_decay)
    train_early_stopped(FrozenStatistics(model), run, opt, reviewed, rehearsal, val, replace(cfg, epochs=epochs))


def fit_balanced_stop(head, reviewed, rehearsal, val, cfg):
    """:func:`fit_head`, early-stopped on :func:`per_class_ce` instead of one loss over every row."""
    from wastenet.training.adapt import train_early_stopped

    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_early_stopped(head, head, opt, reviewed, rehearsal, val, cfg, val_loss=per_class_ce)


def last_block_result(model, zb, z, mix_small, seed, k, kv, kt, ov, ot, new_index, args) -> dict:
    """One last-block fit on trunk outputs (the same reviewed draw as the head-only variants) and its scores."""
    from wastenet.training.adapt import AdaptConfig

    T = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731  (float16: the block casts per batch)
    L = lambda a: torch.from_numpy(np.asarray(a)).long()  # noqa: E731
    flat = lambda f, idx, views: T(np.concatenate([f[v][idx] for v in range(1 + views)]))  # noqa: E731
    x_rev = torch.cat([flat(zb["kind"], kt, VIEWS), flat(zb["spare"], ot, VIEWS)])
    y_rev = torch.cat([torch.full((len(kt) * (1 + VIEWS),), new_index), L(np.tile(z["spare_y"][ot], 1 + VIEWS))])
    n_mix = zb["mix"].shape[1]
    assert len(mix_small) == n_mix  # the trunk outputs hold main's mix_small rows, in that order
    x_mix = flat(zb["mix"], np.arange(n_mix), args.block_mix_views)
    y_mix = L(np.tile(z["mix_y"][mix_small], 1 + args.block_mix_views))
    x_val = torch.cat([T(zb["kind"][0][kv]), T(zb["spare"][0][ov]), T(zb["val"][0])])
    y_val = torch.cat([torch.full((len(kv),), new_index), L(z["spare_y"][ov]), L(z["val_y"])])
    m = copy.deepcopy(model).eval()
    _, block = split_last_block(m)
    t1 = time.time()
    fit_last_block(m, block, (x_rev, y_rev), (x_mix, y_mix), (x_val, y_val), AdaptConfig(seed=seed), args.block_lr,
                   args.block_epochs)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pred = lambda x: torch.cat([m.forward_head(block(x[i:i + 128].float())).float().argmax(1)  # noqa: E731
                                    for i in range(0, len(x), 128)])
        recall = float((pred(T(zb["unseen"][0])) == new_index).float().mean())
        old = float((pred(T(zb["test"][0])) == L(z["test_y"])).float().mean())
    return {"seed": seed, "k": k, "variant": "last-block", "recall": round(recall, 4),
            "old_class_accuracy": round(old, 4), "seconds": round(time.time() - t1, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a base model trained without --new")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split-file", required=True, help="the base model's split file (without the kind)")
    ap.add_argument("--full-split", required=True, help="the split file with the kind (its photos are read from it)")
    ap.add_argument("--new", required=True)
    ap.add_argument("--counts", default="10,15,20,25,30")
    ap.add_argument("--seeds", type=int, default=3, help="draws of the reviewed photos")
    ap.add_argument("--variants", default="zero,imprint,new-rows,balanced-stop,views-12")
    ap.add_argument("--reviewed-val", type=float, default=0.2, help="share of the reviewed photos held for validation")
    ap.add_argument("--pool", type=int, default=120, help="photos of the kind the draws take reviewed ones from "
                    "(the rest are scored)")
    ap.add_argument("--features", help="an .npz to keep the computed features in (read when present)")
    ap.add_argument("--block-features", help="an .npz to keep the trunk outputs last-block trains on (read when present)")
    ap.add_argument("--block-lr", type=float, default=1e-4)
    ap.add_argument("--block-epochs", type=int, default=15)
    ap.add_argument("--block-mix-per-class", type=int, default=100, help="rehearsal photos per class for last-block")
    ap.add_argument("--block-mix-views", type=int, default=4, help="augmented rehearsal views for last-block")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    counts, variants = [int(c) for c in args.counts.split(",")], args.variants.split(",")

    from wastenet import checkpoint
    from wastenet.data.datasets import Row, build_cache, read_split_file
    from wastenet.inference.runner import FeaturePasses
    from wastenet.models import model_from_checkpoint
    from wastenet.preprocessing import Preprocessing
    from wastenet.training.adapt import AdaptConfig, fit_head, sample_per_class
    from wastenet.training.grow import grow_classes, imprint_rows
    from wastenet.training.rehearsal import adapt_augment

    t0 = time.time()
    ckpt = grow_classes(checkpoint.load(args.checkpoint), {args.new: "recyclable"})
    classes = list(ckpt["classes"])
    new_index = len(classes) - 1
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    model = model_from_checkpoint(ckpt).eval()
    with open(args.full_split, newline="") as f:
        kind = sorted((Row(r["path"], args.new) for r in csv.DictReader(f) if r["label"] == args.new), key=lambda r: r.path)
    random.Random(0).shuffle(kind)
    pool, unseen = kind[:args.pool], kind[args.pool:]  # reviewed photos are drawn from the pool; the rest scored
    rows = read_split_file(args.split_file, args.data)
    mix_train = sample_per_class([r for r in rows if r.split == "train"], 100, 0)
    mix_val = sample_per_class([r for r in rows if r.split == "val"], 50, 0)
    in_val = {r.path for r in mix_val}
    spare = sorted((r for r in rows if r.split == "val" and r.path not in in_val), key=lambda r: r.path)
    old_test = [r for r in rows if r.split == "test"]

    stored = Path(args.features) if args.features else None
    if stored is not None and stored.is_file():
        z = dict(np.load(stored))
    else:
        passes = FeaturePasses(model, prep, "cpu", len(pool) * (1 + MORE_VIEWS) + len(unseen) + len(spare) * (1 + VIEWS)
                               + len(mix_train) * (1 + VIEWS) + len(mix_val) + len(old_test))
        torch.manual_seed(0)
        augment = adapt_augment()

        def feats(part, views, desc):
            c = build_cache(args.data, part, classes, prep.cache_size, prep.interpolation)
            out = [passes(c.images, desc=desc)[0]] + [passes(c.images, augment=augment, desc=f"{desc} (view {v + 1})")[0]
                                                      for v in range(views)]
            return np.stack(out), c.labels   # [1 + views, N, D]

        z = {}
        z["kind"], _ = feats(pool, MORE_VIEWS, "the kind, reviewed")
        z["unseen"], _ = feats(unseen, 0, "the kind, scored")
        z["spare"], z["spare_y"] = feats(spare, VIEWS, "old classes, reviewed")
        z["mix"], z["mix_y"] = feats(mix_train, VIEWS, "rehearsal")
        z["val"], z["val_y"] = feats(mix_val, 0, "validation")
        z["test"], z["test_y"] = feats(old_test, 0, "old classes, test")
        if stored is not None:
            np.savez(stored, **z)
    print(f"features ready in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    if "last-block" in variants:  # its rehearsal: the first --block-mix-per-class of every class
        rank = np.zeros(len(z["mix_y"]), int)
        for c in np.unique(z["mix_y"]):
            rank[z["mix_y"] == c] = np.arange(int((z["mix_y"] == c).sum()))
        mix_small = np.flatnonzero(rank < args.block_mix_per_class)
    if "last-block" in variants:
        from wastenet.inference.runtime import map_cached

        trunk, _ = split_last_block(model)
        stored_b = Path(args.block_features) if args.block_features else None
        if stored_b is not None and stored_b.is_file():
            zb = dict(np.load(stored_b))
        else:
            from wastenet.progress import Progress

            torch.manual_seed(0)
            augment = adapt_augment()
            run = lambda x: trunk(x)  # noqa: E731

            def trunk_out(part, views, desc):
                c = build_cache(args.data, part, classes, prep.cache_size, prep.interpolation)
                out = []
                for v in range(1 + views):
                    with Progress(len(c.images), desc if v == 0 else f"{desc} (view {v})") as bar, torch.no_grad():
                        out.append(map_cached(run, c.images, prep, "cpu", augment=augment if v else None,
                                              progress=bar).numpy().astype(np.float16))
                return np.stack(out)

            zb = {"kind": trunk_out(pool, VIEWS, "trunk: the kind, reviewed"),
                  "unseen": trunk_out(unseen, 0, "trunk: the kind, scored"),
                  "spare": trunk_out(spare, VIEWS, "trunk: old classes, reviewed"),
                  "mix": trunk_out([mix_train[i] for i in mix_small], args.block_mix_views, "trunk: rehearsal"),
                  "val": trunk_out(mix_val, 0, "trunk: validation"),
                  "test": trunk_out(old_test, 0, "trunk: old classes, test")}
            if stored_b is not None:
                np.savez(stored_b, **zb)
        print(f"trunk outputs ready in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)

    T = lambda a: torch.from_numpy(np.asarray(a)).float()  # noqa: E731
    L = lambda a: torch.from_numpy(np.asarray(a)).long()  # noqa: E731

    def flat(f, idx, views):  # rows idx of f[0..views], view-major
        return T(np.concatenate([f[v][idx] for v in range(1 + views)]))

    x_mix, y_mix = flat(z["mix"], np.arange(z["mix"].shape[1]), VIEWS), L(np.tile(z["mix_y"], 1 + VIEWS))
    x_test, y_test = T(z["test"][0]), L(z["test_y"])
    results = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        order_kind, order_old = rng.permutation(len(pool)), rng.permutation(len(spare))
        x_unseen = T(z["unseen"][0])
        for k in counts:
            n_val = int(math.floor(k * args.reviewed_val))
            kv, kt = order_kind[:n_val], order_kind[n_val:k]
            ov, ot = order_old[:n_val], order_old[n_val:k]
            x_val = torch.cat([T(z["kind"][0][kv]), T(z["spare"][0][ov]), T(z["val"][0])])
            y_val = torch.cat([torch.full((len(kv),), new_index), L(z["spare_y"][ov]), L(z["val_y"])])
            for variant in variants:
                if variant == "last-block":
                    results.append(last_block_result(model, zb, z, mix_small, seed, k, kv, kt, ov, ot, new_index, args))
                    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
                    continue
                kind_views = MORE_VIEWS if variant == "views-12" else VIEWS
                x_rev = torch.cat([flat(z["kind"], kt, kind_views), flat(z["spare"], ot, VIEWS)])
                y_rev = torch.cat([torch.full((len(kt) * (1 + kind_views),), new_index),
                                   L(np.tile(z["spare_y"][ot], 1 + VIEWS))])
                cfg = AdaptConfig(seed=seed)
                head = copy.deepcopy(model.get_classifier())
                t1 = time.time()
                if variant == "imprint":
                    imprint_rows(head, [new_index], T(z["kind"][0][kt]), torch.full((len(kt),), new_index))
                if variant == "balanced-stop":
                    fit_balanced_stop(head, (x_rev, y_rev), (x_mix, y_mix), (x_val, y_val), cfg)
                else:
                    fit_head(head, (x_rev, y_rev), (x_mix, y_mix), (x_val, y_val), cfg)
                    if variant == "new-rows":
                        fit_rows(head, [new_index], (x_rev, y_rev), (x_mix, y_mix), (x_val, y_val), cfg)
                with torch.no_grad():
                    recall = float((head(x_unseen).argmax(1) == new_index).float().mean())
                    old = float((head(x_test).argmax(1) == y_test).float().mean())
                results.append({"seed": seed, "k": k, "variant": variant, "recall": round(recall, 4),
                                "old_class_accuracy": round(old, 4), "seconds": round(time.time() - t1, 1)})
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    with torch.no_grad():
        base_old = float((model.get_classifier()(x_test)[:, :new_index].argmax(1) == y_test).float().mean())
    summary = {}
    for variant in variants:
        for k in counts:
            rs = [r for r in results if r["variant"] == variant and r["k"] == k]
            summary.setdefault(variant, {})[k] = {"recall": round(float(np.mean([r["recall"] for r in rs])), 3),
                                                  "old_class_accuracy": round(float(np.mean([r["old_class_accuracy"] for r in rs])), 3)}
    for variant, by_k in summary.items():
        print(f"{variant:14s} " + "  ".join(f"k={k}: {v['recall']:.3f}/{v['old_class_accuracy']:.3f}"
                                              for k, v in by_k.items()), file=sys.stderr)
    print(f"base old-class accuracy {base_old:.3f}", file=sys.stderr)
    Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint, "new": args.new, "base_old_class_accuracy": base_old,
                                          "summary": summary, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
