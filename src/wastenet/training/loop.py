"""The training run: data -> model -> stages -> checkpoints -> honest test evaluation.
Long because: a run is one state machine (stage, epoch, best score, patience, resume position in
``RunState``) that reads top to bottom; the device, precision and model runner it uses live in
:mod:`wastenet.inference.runtime` and :mod:`wastenet.inference.runner`.

Read it top to bottom: ``train(cfg)`` prepares everything (failing fast on bad input), then
runs the recipe's stages. A head-only stage trains on cached backbone features (the frozen
backbone runs once per augmented view, not once per epoch); a backbone stage is a one-cycle
run with one peak learning rate per layer group. Every epoch writes ``last.pt`` (atomically),
so ``--resume`` continues where an interrupted run stopped; ``best.pt`` holds the best
validation weights. The test split is used once, at the end (:mod:`wastenet.training.finish`).

Under ``torchrun --nproc_per_node=N`` the same code runs data-parallel (docs/distributed.md):
every call into ``distributed`` below is a no-op in a single process.

    from wastenet.training.config import TrainConfig
    from wastenet.training.loop import train
    result = train(TrainConfig(data="photos/", model="mobilenetv2_100", weights="mnv2.safetensors",
                               out="runs/mnv2"))
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from wastenet import checkpoint
from wastenet.data.augment import AugmentConfig, build_augment, field_augment_on, to_model_batch
from wastenet.data.composite import is_studio_like
from wastenet.data.datasets import ImageCache, Row, build_cache, check_inside, check_split_coverage, read_split_file, scan_folder, stratified_split, write_split_file
from wastenet.errors import ConfigError
from wastenet.files import check_output, write_atomic, write_csv_atomic
from wastenet.inference.runner import FrozenRunner, choose_backend, frozen_pass
from wastenet.inference.runtime import autocast, autocast_for, predict_logits, resolve_device
from wastenet.models import BuiltModel, FeatureHead, count_parameters, create_model, group_modules, merge_groups, resolve_weights_arg, safe_name
from wastenet.progress import Progress, emit, set_log_file
from wastenet.training import distributed
from wastenet.training.config import TrainConfig, parse_img_size
from wastenet.training.distill import Teacher, distillation_loss
from wastenet.training.lwf import check_lwf_head, imagenet_head_for, lwf_weight
from wastenet.training.losses import build_loss
from wastenet.training.recipes import Stage, plan_for

HISTORY_FIELDS = ["epoch", "stage", "stage_epoch", "trainable_params", "lr", "group_lrs",
                  "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]


def log(msg: str) -> None:
    """A line on stderr and in the run's ``train.log`` (rank 0 only: one log, not one per rank)."""
    if distributed.is_main():
        emit(msg)


# ---------------------------------------------------------------- prepared data
@dataclass
class Prepared:
    root: Path
    classes: list[str]
    rows: list[Row]
    train: ImageCache
    val: ImageCache
    test: ImageCache


def _limit(rows: list[Row], n: int | None) -> list[Row]:
    if not n:
        return rows
    seen: dict[tuple[str, str], int] = {}
    out = []
    for r in rows:
        key = (r.split, r.label)
        if seen.get(key, 0) < n:
            seen[key] = seen.get(key, 0) + 1
            out.append(r)
    return out


def prepare_rows(cfg: TrainConfig, root: Path, out: Path) -> tuple[list[Row], list[str]]:
    """The split: the given file, the run's saved one (on resume), or a new stratified 50/25/25."""
    saved = out / "split.csv"
    if cfg.split_file:
        rows = read_split_file(cfg.split_file, root, skip_missing=cfg.skip_missing)
    elif cfg.resume and saved.is_file():
        rows = read_split_file(saved, root, skip_missing=cfg.skip_missing)
    else:
        scanned, _ = scan_folder(root)
        check_inside(root, scanned, f"--data {root}")  # as a split file's rows are: the saved split.csv must read back
        rows = stratified_split(scanned, seed=cfg.seed)
    classes = sorted({r.label for r in rows})
    # every class needs a train and a val image, and a one-class "classifier" says 1.000 always
    check_split_coverage(rows, f"split file {cfg.split_file}" if cfg.split_file else "the split")
    return _limit(rows, cfg.limit_per_class), classes


def prepare_data(cfg: TrainConfig, root: Path, rows: list[Row], classes: list[str], size: int | tuple[int, int],
                 interpolation: str) -> Prepared:
    t0 = time.time()
    def bar(it):
        with Progress(len(rows), "decode", enabled=distributed.is_main()) as p:
            for item in it:
                yield item
                p.update(1)

    cache = build_cache(root, rows, classes, size, interpolation, workers=cfg.workers, progress=bar)
    for path, reason in cache.skipped:
        log(f"skipped {path}: {reason}")
    train_cache = cache.subset("train")
    for extra in cfg.extra_data:  # e.g. reviewed manual-sort items exported by `wastenet review`
        extra_rows, _ = scan_folder(extra)
        extra_rows = [Row(r.path, r.label, "train") for r in extra_rows if r.label in classes]
        more = build_cache(extra, extra_rows, classes, size, interpolation, workers=cfg.workers)
        for path, reason in more.skipped:
            log(f"skipped {extra}/{path}: {reason}")
        train_cache = ImageCache(np.concatenate([train_cache.images, more.images]),
                                 np.concatenate([train_cache.labels, more.labels]),
                                 train_cache.rows + more.rows)
    log(f"decoded {len(cache)} images ({len(cache.skipped)} skipped) in {time.time() - t0:.1f}s")
    return Prepared(root, classes, cache.rows, train_cache, cache.subset("val"), cache.subset("test"))


# ---------------------------------------------------------------- freezing and optimiser
def set_trainable(model: nn.Module, groups: list[list[str]], trainable: list[int]) -> None:
    names = {n for g in trainable for n in groups[g]}
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)


def train_mode(model: nn.Module, groups: list[list[str]], trainable: list[int]) -> None:
    """Train mode, except frozen groups: their BatchNorm statistics and dropout stay fixed."""
    model.train()
    for g in range(len(groups)):
        if g not in trainable:
            for m in group_modules(model, groups[g]):
                m.eval()


def param_groups(model: nn.Module, groups: list[list[str]], group_lrs: dict[int, float], weight_decay: float) -> list[dict]:
    """One optimiser group per (layer group, decay/no-decay); norms and biases get no weight decay."""
    params = dict(model.named_parameters())
    out = []
    for g, lr in sorted(group_lrs.items()):
        decay = [params[n] for n in groups[g] if params[n].ndim > 1]
        no_decay = [params[n] for n in groups[g] if params[n].ndim <= 1]
        for ps, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if ps:
                out.append({"params": ps, "lr": lr, "weight_decay": wd, "layer_group": g})
    return out


ONE_CYCLE_WARMUP = 0.25  # share of a step spent rising to the peak rate


def one_cycle(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    # A list of per-group peaks: a scalar max_lr would set every group to the same rate.
    max_lrs = [g["lr"] for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=max(1, total_steps),
                                               pct_start=ONE_CYCLE_WARMUP, div_factor=20.0, final_div_factor=200.0)


def patience_applies(step: int, total_steps: int) -> bool:
    """Whether an epoch ending at optimizer ``step`` of a one-cycle run may count toward early stopping.

    Validation loss rises around the peak rate and falls as it anneals, so an epoch counts
    only once the rate is below half its peak (cosine anneal half done): before that, a
    stage would stop at the peak, before it had annealed (measured: mobilenetv2's last
    wastenet step stopped at 4 of 10 epochs, val loss at its worst).

    >>> patience_applies(40, 100), patience_applies(70, 100)
    (False, True)
    """
    return step >= total_steps * (ONE_CYCLE_WARMUP + (1 - ONE_CYCLE_WARMUP) / 2)


def group_lr_summary(optimizer: torch.optim.Optimizer) -> dict[int, float]:
    return {g["layer_group"]: g["lr"] for g in optimizer.param_groups}


def loss_and_acc(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    if len(labels) == 0:
        return float("nan"), float("nan")
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


# ---------------------------------------------------------------- the run
@dataclass
class RunState:
    stage_index: int = 0
    stage_epoch: int = 0          # epochs completed in the current stage
    stage_done: bool = False
    global_epoch: int = 0
    best_score: tuple[float, float] = (-1.0, -math.inf)   # (val acc, -val loss)
    stale: int = 0
    stage_best_loss: float = math.inf
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0           # global epoch whose weights best.pt holds


class Trainer:
    def __init__(self, cfg: TrainConfig, built: BuiltModel, data: Prepared, out: Path, taxonomy: dict | None,
                 device: torch.device, dtype, teacher: Teacher | None = None,
                 imagenet_head: dict[str, Any] | None = None) -> None:
        self.cfg, self.built, self.data, self.out = cfg, built, data, out
        self.model = built.model.to(device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.prep = built.preprocessing
        self.device, self.dtype = device, dtype
        self.taxonomy = taxonomy
        self.groups = merge_groups(built.groups, cfg.unfreeze_groups)
        counts = np.bincount(data.train.labels, minlength=len(data.classes))
        self.criterion = build_loss(cfg.loss, len(data.classes), label_smoothing=cfg.label_smoothing,
                                    gamma=cfg.focal_gamma, alpha=cfg.alpha_weights(),
                                    class_counts=counts.tolist()).to(device)
        studio = is_studio_like(torch.from_numpy(data.train.images[:: max(1, len(data.train) // 256)]))
        aug_cfg = AugmentConfig.from_config(cfg)
        self.augment = build_augment(aug_cfg, studio_like=studio)
        log(f"training photos {'look' if studio else 'do not look'} studio-like: field augmentation "
            f"{'on' if field_augment_on(aug_cfg, studio) else 'off'} (--composite {aug_cfg.composite})")
        self.plan = plan_for(cfg, n_backbone_groups=len(self.groups) - 1)
        self.state = RunState()
        self.best_state: dict[str, torch.Tensor] | None = None
        self._best_unsaved = False  # best_state is newer than best.pt
        self.val_labels = torch.from_numpy(data.val.labels)
        self.tty = sys.stderr.isatty() and distributed.is_main()
        if teacher is None and cfg.teacher:
            teacher = Teacher.load(cfg.teacher, data.classes)
        self.teacher = teacher
        self._teacher_run = None  # built on first use: one ONNX export serves the whole run
        # the pretrained ImageNet head where it still fits the backbone (training.lwf.imagenet_head_for,
        # read once by _train); with --lwf the pretrained network, frozen now (before any step),
        # answers ImageNet for every batch
        self.imagenet_head = imagenet_head
        self._anchor = None
        check_lwf_head(cfg, imagenet_head)
        self.lwf_weight = lwf_weight(cfg, imagenet_head)
        if cfg.recipe != "linear":
            log(f"learning without forgetting (--lwf {cfg.lwf}): " + (f"weight {self.lwf_weight:g}" if self.lwf_weight
                else "off" + (" (the weights carry no ImageNet head)" if cfg.lwf == "auto" else "")))
        if self.lwf_weight > 0:
            from wastenet.training.lwf import ImagenetAnswers

            self._anchor = ImagenetAnswers(copy.deepcopy(self.model), self.imagenet_head).eval()
        self._anchor_run = None

    # -------------------------------------------------- the loss, with or without a teacher
    def loss(self, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        """The label loss, mixed with the teacher's soft targets when there is a teacher."""
        label_loss = self.criterion(logits.float(), labels)
        if teacher_logits is None:
            return label_loss
        return distillation_loss(logits, teacher_logits, label_loss, alpha=self.cfg.distill_alpha,
                                 tau=self.cfg.distill_temperature, teacher_temperature=self.teacher.temperature)

    def anchor_logits(self, x: torch.Tensor) -> torch.Tensor | None:
        """The pretrained network's ImageNet logits for the batch ``x`` (None without ``--lwf``)."""
        if self._anchor is None:
            return None
        if self._anchor_run is None:
            self._anchor.to(self.device)
            self._anchor_run = self.frozen_runner(self._anchor, len(self.data.train) * self.cfg.epochs,
                                                  what="ImageNet anchor (--lwf)")
        return self._anchor_run(x)

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor | None:
        """The teacher's logits for the student's input batch ``x`` (None without a teacher)."""
        if self.teacher is None:
            return None
        if self._teacher_run is None:
            t = self.teacher
            t.model.to(self.device)
            if self.cfg.channels_last:
                t.model.to(memory_format=torch.channels_last)
            adapt = t.adapter(self.prep).to(self.device)
            # frozen for the whole run: backend chosen as for a pass over every training view
            runner = self.frozen_runner(t.model, len(self.data.train) * (1 + self.cfg.head_views), what="teacher",
                                        input_hw=t.prep.hw)
            self._teacher_run = lambda batch: runner(adapt(batch))
        return self._teacher_run(x)

    # -------------------------------------------------- checkpoints
    def _ckpt(self, state_dict=None, **extra) -> dict[str, Any]:
        ck = checkpoint.make_checkpoint(self.built, classes=self.data.classes, taxonomy=self.taxonomy,
                                        threshold=self.cfg.threshold, config=self.cfg.to_dict(), **extra)
        if state_dict is not None:
            ck["state_dict"] = state_dict
        return ck

    def save_last(self, optimizer=None, scheduler=None) -> None:
        """Write ``last.pt``; new best weights go to ``best.pt`` first, so whatever best score
        ``last.pt`` records, ``best.pt`` holds its weights (a kill between the two writes
        leaves a best.pt newer than last.pt, which :meth:`restore` accepts)."""
        if not distributed.is_main():  # only rank 0 writes files
            return
        if self._best_unsaved:
            self.save_best()
        s = self.state
        checkpoint.save(self._ckpt(
            stage_index=s.stage_index, stage_epoch=s.stage_epoch, stage_done=s.stage_done,
            global_epoch=s.global_epoch, best_score=list(s.best_score), stale=s.stale,
            stage_best_loss=s.stage_best_loss, history=s.history, best_epoch=s.best_epoch,
            optimizer=optimizer.state_dict() if optimizer else None,
            scheduler=scheduler.state_dict() if scheduler else None,
        ), self.out / "last.pt")

    def save_best(self) -> None:
        if not distributed.is_main():
            return
        checkpoint.save(self._ckpt(self.best_state, best_score=list(self.state.best_score),
                                   epoch=self.state.best_epoch), self.out / "best.pt")
        self._best_unsaved = False

    def restore(self, last: dict[str, Any]) -> tuple[dict | None, dict | None]:
        self.model.load_state_dict(last["state_dict"])
        s = self.state
        s.stage_index, s.stage_epoch, s.stage_done = last["stage_index"], last["stage_epoch"], last["stage_done"]
        s.global_epoch, s.stale, s.stage_best_loss = last["global_epoch"], last["stale"], last["stage_best_loss"]
        s.best_score, s.history = tuple(last["best_score"]), list(last["history"])
        s.best_epoch = int(last.get("best_epoch", 0))
        best_path = self.out / "best.pt"
        best = checkpoint.load(best_path) if best_path.is_file() else None
        on_disk = tuple(best["best_score"]) if best is not None and "best_score" in best else RunState().best_score
        if best is not None:
            self.best_state = best["state_dict"]
        if on_disk > s.best_score:  # killed after writing best.pt, before last.pt: best.pt is newer
            s.best_score, s.best_epoch = on_disk, int(best.get("epoch", s.best_epoch))
        elif on_disk < s.best_score:
            # a run written before best.pt was saved with last.pt: those weights are gone;
            # carry on with what best.pt holds (nothing: the next epoch becomes the best)
            log(f"warning: {best_path} does not hold the best epoch last.pt records; "
                "continuing from the best weights on disk")
            s.best_score = on_disk
        return last.get("optimizer"), last.get("scheduler")

    # -------------------------------------------------- bookkeeping per epoch
    def record(self, stage: Stage, train_loss: float, train_acc: float, val_loss: float, val_acc: float,
               group_lrs: dict[int, float], seconds: float, may_stop: bool = True) -> bool:
        """Append to history; update best weights; return True when the stage should stop early.

        ``may_stop=False``: an epoch without improvement does not count toward the patience.
        """
        s = self.state
        s.global_epoch += 1
        s.stage_epoch += 1
        head = len(self.groups) - 1
        row = {
            "epoch": s.global_epoch, "stage": stage.name, "stage_epoch": s.stage_epoch,
            "trainable_params": count_parameters(self.model, trainable_only=True),
            "lr": group_lrs.get(head, float("nan")),
            "group_lrs": ";".join(f"g{g}={lr:.3g}" for g, lr in sorted(group_lrs.items(), reverse=True)),
            "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc,
            "seconds": round(seconds, 2),
        }
        s.history.append(row)
        self.write_history()
        score = (val_acc, -val_loss)
        improved_best = score > s.best_score
        if improved_best:
            s.best_score, s.best_epoch = score, s.global_epoch
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            self._best_unsaved = True  # written before the next last.pt
        if val_loss < s.stage_best_loss - 1e-4 or improved_best:
            s.stage_best_loss = min(s.stage_best_loss, val_loss)
            s.stale = 0
        elif may_stop:
            s.stale += 1
        if not stage.cached_features or self.tty:
            log(f"[{stage.name} {s.stage_epoch}/{stage.epochs}] train loss {train_loss:.4f} acc {train_acc:.4f} | "
                f"val loss {val_loss:.4f} acc {val_acc:.4f} | {seconds:.1f}s")
        return s.stale >= stage.patience

    def write_history(self) -> None:
        if not distributed.is_main():
            return
        write_csv_atomic(self.out / "history.csv", self.state.history, HISTORY_FIELDS, restval="",
                         extrasaction="ignore")

    def _begin_stage(self) -> None:
        s = self.state
        s.stage_epoch, s.stale, s.stage_best_loss, s.stage_done = 0, 0, math.inf, False

    def _end_stage(self) -> None:
        # each step continues from the best weights found so far
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            self.save_best()
        self.state.stage_done = True
        self.save_last()

    # -------------------------------------------------- stage 1: head on cached features
    def frozen_runner(self, module: nn.Module, n_images: int, what: str = "frozen backbone",
                      input_hw: tuple[int, int] | None = None) -> FrozenRunner:
        """``module`` (frozen for the whole pass) on the backend ``choose_backend`` picks."""
        backend = choose_backend(self.cfg.frozen_backend, self.device, n_images)
        t0 = time.time()
        runner = FrozenRunner(module, self.device, self.dtype, self.cfg.channels_last, backend,
                              input_hw=input_hw or self.prep.hw, threads=self.cfg.threads)
        precision = "fp32" if backend == "onnxruntime" or self.dtype is None else str(self.dtype).replace("torch.", "")
        log(f"{what} on {backend} {precision}" + (f" (export {time.time() - t0:.1f}s)" if backend == "onnxruntime" else ""))
        return runner

    @torch.no_grad()
    def cached_features(self, images: np.ndarray, augment: bool, runner: FrozenRunner | None = None,
                        desc: str = "features", with_teacher: bool = False) -> torch.Tensor:
        """Pre-logit features of ``images``; each rank computes its shard, every rank gets them all.

        ``with_teacher``: the teacher's logits for the same views follow the features (columns
        ``num_features:``), computed once per cached view."""
        self.model.eval()
        images = images[distributed.shard_range(len(images))]
        runner = runner or self.frozen_runner(FeatureHead(self.model), len(images))
        run = runner
        if with_teacher and self.teacher is not None:  # the teacher sees the same augmented view
            run = lambda x: torch.cat([runner(x), self.teacher_logits(x)], 1)  # noqa: E731
        feats = frozen_pass(run, images, self.prep, device=self.device, desc=desc,
                            augment=self.augment if augment else None, enabled=distributed.is_main())
        return distributed.all_gather_tensor(feats)

    def run_head_stage(self, stage: Stage) -> None:
        cfg, d = self.cfg, self.data
        t0 = time.time()
        torch.manual_seed(cfg.seed)
        distributed.reseed_per_rank(cfg.seed)  # ranks augment different images: different draws
        n_views = 1 + cfg.head_views
        # one runner (one ONNX export) for every view: the backbone is frozen throughout
        runner = self.frozen_runner(FeatureHead(self.model), n_views * len(d.train) + len(d.val))
        views = [self.cached_features(d.train.images, augment=v > 0, runner=runner, with_teacher=True,
                                      desc=f"[head] features view {v + 1}/{n_views}") for v in range(n_views)]
        x_train = torch.cat(views)
        n_feat = x_train.shape[1] - (len(d.classes) if self.teacher is not None else 0)
        t_train = x_train[:, n_feat:] if self.teacher is not None else None
        x_train = x_train[:, :n_feat]
        y_train = torch.from_numpy(d.train.labels).to(self.device).repeat(len(views))
        x_val = self.cached_features(d.val.images, augment=False, runner=runner, desc="[head] features val")
        del runner
        y_val = self.val_labels.to(self.device)
        # Every rank now holds all features and trains the same head from the same seed: the
        # result is identical on every rank (fit() still broadcasts rank 0's to be sure).
        log(f"[head] cached features of {len(views)} view(s) x {len(d.train)} train + {len(d.val)} val "
            f"images in {time.time() - t0:.1f}s")
        head_group = len(self.groups) - 1
        set_trainable(self.model, self.groups, [head_group])
        head = self.model.get_classifier()
        optimizer = torch.optim.AdamW(param_groups(self.model, self.groups, stage.group_lrs, cfg.weight_decay))
        batch = cfg.batch_size  # head steps on cached features cost microseconds: take many
        steps = math.ceil(len(x_train) / batch)
        # cosine from the peak, no warm-up: the zero-initialised head needs none, and early
        # stopping during a warm-up would judge the head at a rate it never settles at
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps * stage.epochs))
        gen = torch.Generator().manual_seed(cfg.seed)
        for _ in range(stage.epochs):
            t1 = time.time()
            head.train()
            perm = torch.randperm(len(x_train), generator=gen).to(self.device)
            total, correct, seen = 0.0, 0, 0
            for i in range(0, len(perm), batch):
                idx = perm[i : i + batch]
                logits = head(x_train[idx])
                loss = self.loss(logits, y_train[idx], None if t_train is None else t_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(idx)
                correct += (logits.argmax(1) == y_train[idx]).sum().item()
                seen += len(idx)
            head.eval()
            with torch.no_grad():
                val_logits = head(x_val).float()
            vl, va = loss_and_acc(val_logits.cpu(), y_val.cpu())
            stop = self.record(stage, total / seen, correct / seen, vl, va, group_lr_summary(optimizer), time.time() - t1)
            if stop:
                break
        h = self.state.history[-1]
        log(f"[head] {self.state.stage_epoch} epochs, val loss {h['val_loss']:.4f} acc {h['val_acc']:.4f}, "
            f"{time.time() - t0:.1f}s in all")

    # -------------------------------------------------- stage 2: backbone steps
    def run_backbone_stage(self, stage: Stage, opt_state=None, sched_state=None) -> None:
        cfg, d = self.cfg, self.data
        set_trainable(self.model, self.groups, stage.trainable_groups)
        lwf = self._anchor is not None
        if lwf:
            from wastenet.training.lwf import WithImagenetAnswers, lwf_loss
        # DDP all-reduces only what requires grad when it is built: a fresh wrapper per stage
        net = distributed.wrap(WithImagenetAnswers(self.model, self.imagenet_head).to(self.device) if lwf
                               else self.model, self.device)
        optimizer = torch.optim.AdamW(param_groups(self.model, self.groups, stage.group_lrs, cfg.weight_decay))
        steps_per_epoch = math.ceil(len(d.train) / cfg.batch_size)
        scheduler = one_cycle(optimizer, steps_per_epoch * stage.epochs)
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
            scheduler.load_state_dict(sched_state)
        scaler = torch.amp.GradScaler("cuda") if self.dtype is torch.float16 else None
        labels_all = torch.from_numpy(d.train.labels)
        log(f"[{stage.name}] training groups {stage.trainable_groups} "
            f"({count_parameters(self.model, trainable_only=True):,} parameters), peak lrs "
            + ", ".join(f"g{g}={lr:.2g}" for g, lr in sorted(stage.group_lrs.items(), reverse=True)))
        while self.state.stage_epoch < stage.epochs:
            t0 = time.time()
            # seeding per epoch makes a resumed run draw the same batches and augmentations
            torch.manual_seed(cfg.seed * 100_003 + self.state.global_epoch)
            train_mode(self.model, self.groups, stage.trainable_groups)
            perm = torch.randperm(len(d.train))  # the same on every rank
            distributed.reseed_per_rank(cfg.seed * 100_003 + self.state.global_epoch)
            total, correct, seen = 0.0, 0, 0
            # this rank's share of each global batch; batches BatchNorm cannot train on are skipped
            batches = distributed.local_batches(perm, cfg.batch_size)
            bar = Progress(len(batches), f"[{stage.name} {self.state.stage_epoch + 1}/{stage.epochs}]", unit="batch",
                           enabled=distributed.is_main())
            lrs_at_start = group_lr_summary(optimizer)
            for idx, n_global in batches:
                x = to_model_batch(torch.from_numpy(d.train.images[idx.numpy()]), self.prep,
                                   augment=self.augment, device=self.device, channels_last=cfg.channels_last)
                y = labels_all[idx].to(self.device)
                t_logits = self.teacher_logits(x)
                a_logits = self.anchor_logits(x)
                with autocast(self.device, self.dtype):
                    logits = net(x)
                if lwf:  # the class logits and the ImageNet answers of the same features
                    logits, im_logits = logits
                loss = self.loss(logits, y, t_logits)
                if lwf:
                    loss = loss + self.lwf_weight * lwf_loss(im_logits, a_logits)
                optimizer.zero_grad(set_to_none=True)
                weighted = loss * distributed.loss_weight(len(idx), n_global)  # 1.0 unless slices differ
                if scaler is not None:
                    scaler.scale(weighted).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    weighted.backward()
                    optimizer.step()
                scheduler.step()
                total += loss.item() * len(idx)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(idx)
                bar.set_postfix(loss=f"{total / seen:.3f}")
                bar.update(1)
            bar.close()
            total, correct, seen = distributed.all_reduce_sums([total, correct, seen])
            vl, va = self.validate()
            stop = self.record(stage, total / max(seen, 1), correct / max(seen, 1), vl, va, lrs_at_start, time.time() - t0,
                               may_stop=patience_applies(scheduler.last_epoch, scheduler.total_steps))
            self.save_last(optimizer, scheduler)
            if stop and self.state.stage_epoch < stage.epochs:
                log(f"[{stage.name}] early stop: no validation improvement in {stage.patience} epochs")
                break
        distributed.release(net)

    def validate(self) -> tuple[float, float]:
        """Validation loss and accuracy of the model rank 0 would save: each rank predicts its
        shard of the validation split and the logits are gathered, so every rank computes the
        same numbers (and takes the same early-stopping decision)."""
        distributed.broadcast_module(self.model, buffers_only=True)  # rank 0's BatchNorm statistics
        part = distributed.shard_range(len(self.data.val))
        logits = predict_logits(self.model, self.data.val.images[part], self.prep, self.device, self.dtype,
                                channels_last=self.cfg.channels_last)
        return loss_and_acc(distributed.all_gather_tensor(logits), self.val_labels)

    # -------------------------------------------------- all stages
    def fit(self, last: dict[str, Any] | None = None) -> None:
        opt_state = sched_state = None
        if last is None:
            self.save_last()  # a run killed in its first stage can be resumed too
        else:
            opt_state, sched_state = self.restore(last)
            log(f"resuming at stage {self.state.stage_index} ({self.plan[self.state.stage_index].name}), "
                f"epoch {self.state.stage_epoch} of that stage")
        start = self.state.stage_index + (1 if self.state.stage_done else 0)
        for si in range(start, len(self.plan)):
            stage = self.plan[si]
            resuming_this = last is not None and si == self.state.stage_index and not self.state.stage_done
            if not resuming_this or stage.cached_features:
                self._begin_stage()
                opt_state = sched_state = None
            self.state.stage_index = si
            if stage.cached_features:
                self.run_head_stage(stage)
            else:
                self.run_backbone_stage(stage, opt_state, sched_state)
            opt_state = sched_state = None
            self._end_stage()
            # Ranks end a stage in the same state by construction; rank 0's copy (the one it
            # saved) is made everyone's anyway, in case a GPU kernel was not bit-reproducible.
            self.state = distributed.broadcast_object(self.state)
            distributed.broadcast_module(self.model)


# ---------------------------------------------------------------- entry point
def run_info(device: torch.device, dtype) -> dict[str, Any]:
    """How this run ran, for config.yaml and summary.json: numbers are only comparable with it.

    >>> run_info(torch.device("cpu"), None)["precision"]
    'float32'
    """
    import platform

    import timm

    from wastenet import __version__
    from wastenet.machine import cpu_info

    return {"world_size": distributed.world_size(), "device": str(device),
            "precision": str(dtype or torch.float32).replace("torch.", ""), "threads": torch.get_num_threads(),
            "torch": str(torch.__version__), "timm": str(timm.__version__), "wastenet": str(__version__),
            "python": platform.python_version(), "machine": platform.machine(),
            "cpu": cpu_info()}  # model name and ISA flags: timings differ 2-3x between CPUs


def default_out(cfg: TrainConfig) -> Path:
    return Path("runs") / safe_name(f"{cfg.model}-{cfg.recipe}")


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run a whole training job; returns the test metrics. Raises ConfigError before any work."""
    cfg.validate()
    out = check_output(Path(cfg.out) if cfg.out else default_out(cfg), folder=True)  # before any work
    last_path = out / "last.pt"
    last = None
    if cfg.resume:
        if not last_path.is_file():
            raise ConfigError(f"--resume: no {last_path} to resume from")
        last = checkpoint.load(last_path)
        saved = TrainConfig.from_dict({**last["config"], "resume": True})
        if (saved.model, saved.recipe) != (cfg.model, cfg.recipe):
            raise ConfigError(f"--resume: {out} was trained with {saved.model}/{saved.recipe}")
        cfg = saved
    elif last_path.exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    # Under torchrun: join the process group (NCCL on cuda:LOCAL_RANK, gloo on CPU). Every rank
    # has done the checks above before any rank can get past this rendezvous and write.
    device = distributed.setup(resolve_device(cfg.device))
    try:
        return _train(cfg, out, last, device)
    finally:
        set_log_file(None)
        distributed.teardown()


def _train(cfg: TrainConfig, out: Path, last: dict[str, Any] | None, device: torch.device) -> dict[str, Any]:
    from wastenet.data.download import resolve_dataset
    from wastenet.taxonomy import resolve_taxonomy

    if distributed.is_distributed() and cfg.batch_size < 2 * distributed.world_size():
        raise ConfigError(f"--batch-size is the global batch: at least 2 per process "
                          f"({2 * distributed.world_size()} for {distributed.world_size()} processes)")
    with distributed.main_first():  # a download happens once
        root = resolve_dataset(cfg.data)
    rows, classes = prepare_rows(cfg, root, out)
    alpha = cfg.alpha_weights()
    if isinstance(alpha, list) and len(alpha) not in (1, len(classes)):  # before decoding a pixel
        raise ConfigError(f"--alpha needs 1 or {len(classes)} values (one per class), got {len(alpha)}")
    taxonomy = resolve_taxonomy(cfg.taxonomy, classes)
    weights = resolve_weights_arg(cfg.weights, pretrained=True)
    dtype = None  # chosen once the model is built
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    teacher = Teacher.load(cfg.teacher, classes) if cfg.teacher else None  # wrong classes: fail before decoding
    built = create_model(cfg.model, len(classes), weights=weights, img_size=parse_img_size(cfg.img_size))
    imagenet_head = imagenet_head_for(cfg, built.model)
    check_lwf_head(cfg, imagenet_head)  # before decoding a pixel
    dtype = autocast_for(device, cfg.amp)
    log(f"device {device}, precision {dtype or torch.float32}".replace("torch.", ""))
    distributed.barrier()  # every rank has read a resumed run's split.csv before rank 0 rewrites it
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        set_log_file(out / "train.log")  # every log and progress line of this run, also when on a terminal
        log(f"wastenet train -> {out}: {cfg.model} / {cfg.recipe}, weights {cfg.weights}")
        write_split_file(rows, out / "split.csv")
        cfg.save(out / "config.yaml", run=run_info(device, dtype))

    data = prepare_data(cfg, root, rows, classes, built.preprocessing.cache_size, built.preprocessing.interpolation)
    if len(data.train) == 0 or len(data.val) == 0:
        raise ConfigError("no readable training or validation images")
    trainer = Trainer(cfg, built, data, out, taxonomy.to_dict(), device, dtype, teacher=teacher,
                      imagenet_head=imagenet_head)
    t0 = time.time()
    trainer.fit(last)
    train_seconds = time.time() - t0
    if last is not None:  # a resumed run also counts the epochs it had already trained
        train_seconds += sum(float(r.get("seconds", 0)) for r in last.get("history", []))

    from wastenet.training.finish import finish

    metrics: dict[str, Any] = {}
    if distributed.is_main():  # the test report is rank 0's; the others wait at the barrier
        metrics = finish(trainer, train_seconds=train_seconds)
        write_atomic(out / "summary.json", json.dumps({"train_seconds": round(train_seconds, 1),
                                                       "test_accuracy": metrics.get("accuracy"),
                                                       "run": run_info(device, dtype)}, indent=2))
    distributed.barrier()
    return metrics
