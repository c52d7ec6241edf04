"""Site adaptation: a deployed model learns the items its own bin sent to manual sort.

``wastenet serve`` logs every decision, ``wastenet review`` labels the manual-sort items and
exports them as class folders; ``adapt`` re-fits the classifier head on them in minutes on a
CPU. The backbone stays frozen (so features can be computed once per view and cached), the
head starts from the deployed one, and a rehearsal sample of the original training data
(``mix``) keeps it from forgetting. Calibration (temperature) and the unknown-item rule are
re-fitted on held-out reviewed items plus the original validation images; the taxonomy and
the threshold are kept::

    result = adapt("runs/mnv2/best.pt", "reviewed/", "runs/mnv2-site",
                   mix="../shared/data/trashnet", mix_split="../shared/data/trashnet-split.csv")
    result["val_accuracy"], result["checkpoint"]
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from wastenet.data.datasets import Row, build_cache, read_split_file, scan_folder
from wastenet.errors import ConfigError
from wastenet.training import rehearsal

# torch is imported inside the functions: `wastenet adapt --help` (and the CLI's parser, built for
# every mode) must work on the torch-free edge install


@dataclass
class AdaptConfig:
    views: int = 4              # augmented views per reviewed/mix image (plus the clean one)
    epochs: int = 40
    lr: float = 1e-3
    weight_decay: float = 0.01
    mix_per_class: int = 100    # rehearsal: original training images per class
    val_share: float = 0.2      # reviewed items held out for calibration and early stopping
    patience: int = 6
    seed: int = 0
    batch_size: int = 64
    imprint_new: bool = True    # a grown kind's row starts from its reviewed photos (grow.imprint_rows), not zero


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _shuffled_by_label(rows: list[Row], seed: int) -> list[list[Row]]:
    """The rows grouped by label (labels sorted), each group shuffled by one ``seed``-ed generator
    in that order, so that a seed always draws the same items::

        [g[:2] for g in _shuffled_by_label(rows, seed=0)]   # two random items of every class
    """
    rng = random.Random(seed)
    by: dict[str, list[Row]] = {}
    for r in rows:
        by.setdefault(r.label, []).append(r)
    groups = []
    for label in sorted(by):
        rs = by[label][:]
        rng.shuffle(rs)
        groups.append(rs)
    return groups


def sample_per_class(rows: list[Row], per_class: int, seed: int) -> list[Row]:
    """Up to ``per_class`` random rows of every class (the rehearsal set adapt draws; seeded)."""
    return [r for rs in _shuffled_by_label(rows, seed) for r in rs[:per_class]]


def split_reviewed(rows: list[Row], share: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Stratified: each class keeps at least one training item; classes with one item give no val."""
    train, val = [], []
    for rs in _shuffled_by_label(rows, seed):
        n_val = int(math.floor(len(rs) * share)) if len(rs) > 1 else 0
        val += rs[:n_val]
        train += rs[n_val:]
    return train, val


def reviewed_rows(folder: str | Path, classes: list[str]) -> list[Row]:
    """Class folders of reviewed items (and ``not_an_item/``: photos that show no item); a folder that is
    neither a model class nor that is a ConfigError."""
    from wastenet.ood import NOT_AN_ITEM

    rows, found = scan_folder(folder, min_classes=1) if Path(folder).is_dir() else ([], [])
    if not any(r.label != NOT_AN_ITEM for r in rows):
        raise ConfigError(f"no reviewed images in {folder} (expected class folders, e.g. from `wastenet review --export`)")
    foreign = sorted(set(found) - set(classes) - {NOT_AN_ITEM})
    if foreign:
        raise ConfigError(f"reviewed classes the model does not know: {', '.join(foreign)} "
                          f"(its classes: {', '.join(classes)})")
    return rows


def rehearsal_rows(mix: str | Path | None, mix_split: str | Path | None, classes: list[str],
                   cfg: AdaptConfig) -> tuple[list[Row], list[Row]]:
    """``(train, val)``: the rehearsal set's rows of ``classes``, ``cfg.mix_per_class`` per class of its train
    rows (rehearsed) and half as many of its val rows (early stopping, calibration); seeded. No ``mix``: none."""
    if not mix:
        return [], []
    if not mix_split:
        raise ConfigError("--data-mix needs --mix-split-file (its train rows are rehearsed, its val rows calibrate)")
    mix_rows = [r for r in read_split_file(mix_split, mix) if r.label in classes]
    return (sample_per_class([r for r in mix_rows if r.split == "train"], cfg.mix_per_class, cfg.seed),
            sample_per_class([r for r in mix_rows if r.split == "val"], cfg.mix_per_class // 2, cfg.seed))


def prepare_rehearsal(checkpoint_path: str | Path, mix: str | Path, mix_split: str | Path,
                      feature_cache: str | Path, cfg: AdaptConfig | None = None, device: str = "cpu") -> dict[str, Any]:
    """Compute the rehearsal set's features into ``feature_cache`` now, as :func:`adapt` would on its first run
    from a version of this model, so that run does not (the service does this when it starts: its first
    adaptation took 256 s instead of 20-41 s on the default model). Nothing to do when they are stored::

        prepare_rehearsal("runs/x/best.pt", "../shared/data/trashnet", "../shared/data/trashnet-split.csv",
                          "runs/x/models/.feature-cache")   # {"cache": ".../rehearsal-KEY.npz", "computed": True, ...}
    """
    from wastenet import checkpoint
    from wastenet.inference.runner import FeaturePasses
    from wastenet.models import model_from_checkpoint
    from wastenet.preprocessing import Preprocessing
    from wastenet.training.feature_store import backbone_key

    cfg = cfg or AdaptConfig()
    t0 = time.time()
    ckpt = checkpoint.load(checkpoint_path)
    classes, prep = list(ckpt["classes"]), Preprocessing.from_dict(ckpt["preprocessing"])
    mix_train, mix_val = rehearsal_rows(mix, mix_split, classes, cfg)
    if not mix_train:
        raise ConfigError(f"{mix_split}: no train rows of the model's classes ({', '.join(classes)}) to rehearse")
    model = model_from_checkpoint(ckpt).to(device)
    stored = rehearsal.cache_file(feature_cache, backbone_key(model, prep.to_dict()), mix, mix_train, mix_val, cfg)
    computed = rehearsal.read_cache(stored) is None
    if computed:
        parts = [build_cache(mix, rows, classes, prep.cache_size, prep.interpolation) if rows else None
                 for rows in (mix_train, mix_val)]
        for p, why in (s for c in parts if c is not None for s in c.skipped):
            _log(f"skipped {p}: {why}")
        n_images = len(parts[0]) * (1 + cfg.views) + (len(parts[1]) if parts[1] is not None else 0)
        passes = FeaturePasses(model, prep, device, n_images)
        rehearsal.write_cache(stored, *rehearsal.rehearsal_features(passes, rehearsal.adapt_augment(), *parts, cfg))
    seconds = time.time() - t0
    _log(f"rehearsal features {'computed' if computed else 'already stored'} for {len(mix_train)} + {len(mix_val)} "
         f"images in {seconds:.0f}s: {stored}")
    return {"cache": str(stored), "computed": computed, "mix_train": len(mix_train), "mix_val": len(mix_val),
            "seconds": round(seconds, 1)}


def adapt(checkpoint_path: str | Path, data: str | Path, out: str | Path, *, mix: str | Path | None = None,
          mix_split: str | Path | None = None, cfg: AdaptConfig | None = None, device: str = "cpu",
          search: bool = True, new_classes: dict[str, str] | None = None,
          feature_cache: str | Path | None = None) -> dict[str, Any]:
    """Fit the head on reviewed items (+ a rehearsal mix), write ``out/best.pt``; returns a summary.

    ``search=False`` skips fitting the unknown-item threshold under ``--search`` (minutes of windows
    on the validation photos, which a service that does not search never uses). ``new_classes``
    ({class: bin}) first grows the head by kinds the model has no class for (their reviewed items
    are class folders in ``data`` too): :func:`wastenet.training.grow.grow_classes`. ``feature_cache``
    (a folder) keeps the rehearsal set's features between runs: the backbone is frozen, so a run from
    a version of the same model reads them instead of recomputing most of its passes. Forgetting is
    measured against the input model, on the rehearsal set's validation rows (``rehearsal_reference``).
    """
    import torch

    from wastenet import checkpoint
    from wastenet.evaluation.finalise import SplitData, finalise
    from wastenet.inference.runner import FeaturePasses
    from wastenet.models import model_from_checkpoint
    from wastenet.preprocessing import Preprocessing

    cfg = cfg or AdaptConfig()
    t0 = time.time()
    ckpt = checkpoint.load(checkpoint_path)
    input_classes = list(ckpt["classes"])
    if new_classes:
        from wastenet.training.grow import grow_classes

        ckpt = grow_classes(ckpt, new_classes)
    classes = list(ckpt["classes"])
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    from wastenet.ood import NOT_AN_ITEM

    rev = reviewed_rows(data, classes)
    # photos that show no item are no class: they teach the unknown-item rule what an empty floor looks like
    empty = [Row(r.path, classes[0]) for r in sorted(rev, key=lambda r: r.path) if r.label == NOT_AN_ITEM]
    rev = [r for r in rev if r.label != NOT_AN_ITEM]
    rev_train, rev_val = split_reviewed(rev, cfg.val_share, cfg.seed)
    mix_train, mix_val = rehearsal_rows(mix, mix_split, classes, cfg)
    if not rev_val and not mix_val:
        # split_reviewed holds out floor(share * n) items of a class: the first one at n = ceil(1 / share)
        need = max(2, math.ceil(1 / cfg.val_share - 1e-9)) if cfg.val_share > 0 else None
        raise ConfigError("adapt needs validation images: "
                          + (f"at least {need} reviewed items of one class, " if need else "")
                          + "or --data-mix")

    def cache(root: Any, rows: list[Row]) -> Any:
        c = build_cache(root, rows, classes, prep.cache_size, prep.interpolation)
        for p, why in c.skipped:
            _log(f"skipped {p}: {why}")
        return c

    model = model_from_checkpoint(ckpt).to(device)
    backbone = None
    if feature_cache:  # what every stored feature depends on, hashed once per run
        from wastenet.training.feature_store import ItemFeatureStore, backbone_key

        backbone = backbone_key(model, prep.to_dict())
    cache_file = rehearsal.cache_file(feature_cache, backbone, mix, mix_train, mix_val, cfg) if backbone else None
    cached = rehearsal.read_cache(cache_file) if cache_file is not None else None
    parts = {"reviewed train": cache(data, rev_train), "reviewed val": cache(data, rev_val) if rev_val else None,
             "mix train": cache(mix, mix_train) if mix_train and cached is None else None,
             "mix val": cache(mix, mix_val) if mix_val and cached is None else None,
             "not an item": cache(data, empty) if empty else None}
    torch.manual_seed(cfg.seed)
    augment = rehearsal.adapt_augment()

    augmented = ("reviewed train", "mix train", "not an item")  # the parts seen through cfg.views augmented views
    n_images = sum(len(p) * (1 + (cfg.views if k in augmented else 0)) for k, p in parts.items() if p is not None)
    passes = FeaturePasses(model, prep, device, n_images)  # one runner (one ONNX export) for every pass

    def views_of(c: Any, n_views: int, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        return rehearsal.features_with_views(passes, augment, c, n_views, desc)

    store = None
    if backbone:
        store = ItemFeatureStore(feature_cache, backbone, cfg.views, cfg.seed)
        clean, views = store.features(parts["reviewed train"], passes, augment)
        x_rev = torch.from_numpy(np.concatenate([clean, *views]))
        y_rev = torch.from_numpy(np.tile(parts["reviewed train"].labels, 1 + cfg.views)).long()
    else:
        x_rev, y_rev = views_of(parts["reviewed train"], cfg.views, "reviewed features")
    if cached is not None:
        x_mix, y_mix, mix_x_val, mix_y_val = (torch.from_numpy(cached[k]) for k in ("x_mix", "y_mix", "x_val", "y_val"))
        y_mix, mix_y_val = y_mix.long(), mix_y_val.long()
        _log(f"rehearsal features read from {cache_file}")
    else:
        x_mix, y_mix, mix_x_val, mix_y_val = rehearsal.rehearsal_features(
            passes, augment, parts["mix train"], parts["mix val"], cfg, dim=x_rev.shape[1])
        if cache_file is not None:
            rehearsal.write_cache(cache_file, x_mix, y_mix, mix_x_val, mix_y_val)
    val_feats, val_labels = [], []
    if parts["reviewed val"] is not None:
        f = (store.features(parts["reviewed val"], passes, with_views=False, desc="validation features")[0]
             if store is not None else passes(parts["reviewed val"].images, desc="validation features")[0])
        val_feats.append(torch.from_numpy(f))
        val_labels.append(torch.from_numpy(parts["reviewed val"].labels).long())
    n_rev_val = len(parts["reviewed val"]) if parts["reviewed val"] is not None else 0
    x_val, y_val = torch.cat([*val_feats, mix_x_val]), torch.cat([*val_labels, mix_y_val])
    negatives = None
    if parts["not an item"] is not None:
        # seen through the same augmented views as the items, as the k-NN bank holds them: the not-an-item probe
        # is fitted against the bank (BENCHMARKS.md "A probe for 'no item'")
        n = len(parts["not an item"])
        if store is not None:
            clean, views = store.features(parts["not an item"], passes, augment, desc="not-an-item features")
        else:
            x, _ = views_of(parts["not an item"], cfg.views, "not-an-item features")
            clean, views = x[:n].numpy(), x[n:].numpy().reshape(cfg.views, n, -1)
        # photo by photo, oldest first (the rule keeps the newest rows): clean, then its views
        negatives = (np.concatenate([clean[:, None], np.moveaxis(views, 0, 1)], axis=1).reshape(-1, clean.shape[1])
                     if views is not None and len(views) else clean)
    if store is not None:
        store.save()
        _log(f"reviewed features: {store.reused} of {len(rev_train) + len(rev_val)} photos read from {store.path.name}")

    head = model.get_classifier()
    with torch.no_grad():
        before_logits = head(x_val)
    before_val = float((before_logits.argmax(1) == y_val).float().mean())
    if new_classes and cfg.imprint_new:
        from wastenet.training.grow import imprint_rows

        n_clean = len(parts["reviewed train"])  # x_rev: the clean features first, then the views
        grown = [classes.index(c) for c in new_classes]
        imprinted = imprint_rows(head, grown, x_rev[:n_clean], y_rev[:n_clean])
        _log(f"new classes started from their reviewed photos: {', '.join(classes[i] for i in imprinted) or 'none'}")
    val_logits = fit_head(head, (x_rev, y_rev), (x_mix, y_mix), (x_val, y_val), cfg).numpy()
    val_acc = float((val_logits.argmax(1) == y_val.numpy()).mean())
    # what the head forgot: accuracy on the rehearsal set's validation rows of the input model's classes
    # (a grown kind is none of them), before (its own classes only) and after
    mix_rows = [i for i in range(n_rev_val, len(y_val)) if classes[int(y_val[i])] in input_classes]
    y_old = [classes[int(y_val[i])] for i in mix_rows]
    rehearsal_before = _accuracy(before_logits[mix_rows, :len(input_classes)], input_classes, y_old)
    rehearsal_after = _accuracy(torch.from_numpy(val_logits)[mix_rows], classes, y_old)

    # the site's items are known now: the unknown-item statistics include them (clean features,
    # computed above; the backbone did not change)
    n_rev = len(parts["reviewed train"])
    n_mix = len(y_mix) // (1 + cfg.views)  # clean rows first, then the views
    # once the site has said what its empty floor looks like, its rows keep up to half of the k-NN bank and
    # half of the ImageNet prior (a few hundred site rows among thousands of rehearsal rows leave its own
    # items unfamiliar); without such examples that lets empty floors through (BENCHMARKS.md "Not an item")
    site = None if negatives is None else np.r_[np.ones(n_rev, bool), np.zeros(n_mix, bool),
                                                np.ones(len(x_rev) - n_rev, bool), np.zeros(len(x_mix) - n_mix, bool)]
    train = SplitData(torch.cat([y_rev[:n_rev], y_mix[:n_mix]]).numpy(),
                      features=torch.cat([x_rev[:n_rev], x_mix[:n_mix]]).numpy(),
                      views=torch.cat([x_rev[n_rev:], x_mix[n_mix:]]).numpy(), site=site, negatives=negatives)
    # predict --search's threshold from the same validation photos (the site's look as they are taken)
    val = SplitData(y_val.numpy(), features=x_val.numpy(), logits=val_logits,
                    photos=[Path(data) / r.path for r in rev_val] + [Path(mix) / r.path for r in mix_val])
    # the backbone did not change, so a pretrained ImageNet head the base model used still fits it
    imagenet = (ckpt.get("ood") or {}).get("imagenet")
    ckpt["state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    temperature = finalise(ckpt, model, train, val, prep=prep, device=device, seed=cfg.seed,
                           imagenet_head=None if imagenet is None else {k: imagenet[k].numpy() for k in ("weight", "bias")},
                           search=search).temperature
    seconds = time.time() - t0
    ckpt["adapted"] = {"from": str(checkpoint_path), "reviewed_train": len(rev_train), "reviewed_val": len(rev_val),
                       "mix_train": len(mix_train), "mix_val": len(mix_val), "not_an_item": len(empty),
                       "seconds": round(seconds, 1),
                       "new_classes": dict(new_classes or {}), "rehearsal_val_accuracy_before": rehearsal_before,
                       "rehearsal_val_accuracy": rehearsal_after,
                       "rehearsal_reference": None if rehearsal_before is None else {
                           "model": str(checkpoint_path), "accuracy": rehearsal_before, "n": len(y_old)}}
    for k in ("optimizer", "scheduler", "history"):
        ckpt.pop(k, None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = checkpoint.save(ckpt, out / "best.pt")
    _log(f"adapted on {len(rev_train)} reviewed (+{len(mix_train)} rehearsal) images in {seconds:.0f}s: "
         f"validation accuracy {before_val:.3f} -> {val_acc:.3f}"
         + (f" (its rehearsal rows {rehearsal_before:.3f} -> {rehearsal_after:.3f})"
            if rehearsal_before is not None else "") + f", temperature {temperature:.3f}; {path}")
    return {"checkpoint": str(path), "val_accuracy_before": before_val, "val_accuracy": val_acc,
            "temperature": float(temperature), "seconds": seconds, **ckpt["adapted"]}


def fit_head(head: "torch.nn.Module", reviewed: tuple, rehearsal: tuple, val: tuple,
             cfg: AdaptConfig | None = None) -> "torch.Tensor":
    """Train ``head`` in place on (features, labels) pairs; returns its logits on ``val`` (eval mode).

    The site's items and the rehearsal set weigh half each in every batch, however many there are
    of each (an empty rehearsal: reviewed items only); the weights with the lowest validation loss
    are kept, with early stopping after ``cfg.patience`` epochs without a gain. ``head`` is any
    module from features to logits (the model's own classifier, or one a benchmark compares)::

        logits = fit_head(model.get_classifier(), (x_rev, y_rev), (x_mix, y_mix), (x_val, y_val))
    """
    import torch

    cfg = cfg or AdaptConfig()
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_early_stopped(head, head, opt, reviewed, rehearsal, val, cfg)
    with torch.no_grad():
        return head(val[0])


def train_early_stopped(module: "torch.nn.Module", forward: Callable, opt: "torch.optim.Optimizer", reviewed: tuple,
                        rehearsal: tuple, val: tuple, cfg: AdaptConfig, *, val_loss: Callable | None = None,
                        after_step: Callable[[], None] | None = None) -> None:
    """:func:`fit_head`'s loop, for whatever ``opt`` moves in ``module``: paired batches
    (:func:`_paired_batches`), label-smoothed cross-entropy, ``module``'s state with the lowest
    ``val_loss(forward(x_val), y_val)`` (default: cross-entropy) loaded at the end; ``after_step`` runs
    after every optimiser step. The benchmarks' variants (``benchmarks/new_class_levers.py``) are
    this loop with another loss, a mask or more of the model::

        opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
        train_early_stopped(head, head, opt, (x_rev, y_rev), (x_mix, y_mix), (x_val, y_val), AdaptConfig())
    """
    import torch
    import torch.nn.functional as F

    (x_rev, y_rev), (x_mix, y_mix), (x_val, y_val) = reviewed, rehearsal, val
    val_loss = val_loss or F.cross_entropy
    gen = torch.Generator().manual_seed(cfg.seed)
    best = (math.inf, {k: v.clone() for k, v in module.state_dict().items()})
    stale = 0
    for epoch in range(cfg.epochs):
        module.train()
        for xs, ys in _paired_batches(x_rev, y_rev, x_mix, y_mix, cfg.batch_size, gen):
            loss = sum(F.cross_entropy(forward(x), y, label_smoothing=0.1) for x, y in zip(xs, ys)) / len(xs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step()
        module.eval()
        with torch.no_grad():
            vl = float(val_loss(forward(x_val), y_val))
        if vl < best[0] - 1e-4:
            best, stale = (vl, {k: v.clone() for k, v in module.state_dict().items()}), 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    module.load_state_dict(best[1])
    module.eval()


def _accuracy(logits: "torch.Tensor", names: list[str], truth: list[str]) -> float | None:
    """Share of rows whose top class (``names[argmax]``) is the true name; None for no rows."""
    if not truth:
        return None
    return sum(names[int(i)] == t for i, t in zip(logits.argmax(1), truth)) / len(truth)


def _paired_batches(xa: "torch.Tensor", ya: "torch.Tensor", xb: "torch.Tensor", yb: "torch.Tensor", batch: int,
                    gen: "torch.Generator") -> Iterator[tuple[list, list]]:
    """Batches holding half reviewed, half rehearsal items (only reviewed ones without a mix)."""
    import torch

    pa = torch.randperm(len(xa), generator=gen)
    pb = torch.randperm(len(xb), generator=gen) if len(xb) else None
    half = max(1, batch // 2)
    steps = max(1, math.ceil(max(len(xa), len(xb)) / half))
    for s in range(steps):
        ia = pa[torch.arange(s * half, (s + 1) * half) % len(xa)]
        if pb is None:
            yield [xa[ia]], [ya[ia]]
        else:
            ib = pb[torch.arange(s * half, (s + 1) * half) % len(xb)]
            yield [xa[ia], xb[ib]], [ya[ia], yb[ib]]
