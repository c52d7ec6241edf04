"""Staged training: what is frozen stays frozen, each group learns at its own rate, runs resume."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from wastenet.data.datasets import build_cache, scan_folder, stratified_split
from wastenet.models import create_model
from wastenet.taxonomy import identity_taxonomy
from wastenet.training.config import TrainConfig
from wastenet.training.loop import Prepared, Trainer, one_cycle, param_groups, patience_applies
from wastenet.training.recipes import discriminative_lrs, make_plan


def tiny_trainer(image_folder: Path, out: Path, imagenet_head: dict | None = None, initial_state: dict | None = None,
                 **overrides) -> Trainer:
    settings = dict(data=str(image_folder), model="test_resnet", weights="none", img_size=48, batch_size=8,
                    head_epochs=3, head_views=1, step_epochs=1, epochs=2, unfreeze_groups=3, out=str(out), amp="off")
    cfg = TrainConfig(**{**settings, **overrides})
    rows, classes = scan_folder(image_folder)
    rows = stratified_split(rows, seed=0)
    built = create_model(cfg.model, len(classes), weights=None, img_size=cfg.img_size)
    if initial_state is not None:  # stands in for pretrained weights
        built.model.load_state_dict(initial_state)
    cache = build_cache(image_folder, rows, classes, built.preprocessing.resize_size)
    data = Prepared(image_folder, classes, cache.rows, cache.subset("train"), cache.subset("val"), cache.subset("test"))
    out.mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, built, data, out, identity_taxonomy(classes).to_dict(), torch.device("cpu"), None,
                   imagenet_head=imagenet_head)


def test_wastenet_plan_unfreezes_top_down_with_discriminative_rates():
    plan = make_plan("wastenet", n_backbone_groups=3, lr=1e-3, decay=0.5, head_epochs=5, step_epochs=2, epochs=4)
    assert [s.name for s in plan] == ["head", "unfreeze-1", "unfreeze-2", "unfreeze-3"]
    assert plan[0].cached_features and plan[0].trainable_groups == [3]
    assert plan[1].group_lrs == {2: 5e-4, 3: 1e-3}
    assert plan[2].group_lrs == {1: 2.5e-4, 2: 5e-4, 3: 1e-3}
    assert plan[3].trainable_groups == [0, 1, 2, 3] and plan[3].epochs == 4
    assert make_plan("linear", n_backbone_groups=3, lr=1e-3)[0].cached_features
    assert make_plan("finetune", n_backbone_groups=3, lr=1e-3)[0].trainable_groups == [0, 1, 2, 3]


def test_one_cycle_keeps_each_groups_rate_in_proportion_at_every_step():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    groups = [["0.weight", "0.bias"], ["1.weight", "1.bias"], ["2.weight", "2.bias"]]
    lrs = discriminative_lrs(2, 0, lr=1e-3, decay=0.4)
    opt = torch.optim.AdamW(param_groups(model, groups, lrs, 0.01))
    sched = one_cycle(opt, total_steps=20)
    seen_peak = {}
    for _ in range(20):
        by_group = {}
        for g in opt.param_groups:
            by_group.setdefault(g["layer_group"], set()).add(g["lr"])
        assert all(len(v) == 1 for v in by_group.values())  # decay/no-decay halves agree
        r = {k: v.pop() for k, v in by_group.items()}
        assert r[1] / r[2] == pytest.approx(0.4) and r[0] / r[2] == pytest.approx(0.16)
        for k, v in r.items():
            seen_peak[k] = max(seen_peak.get(k, 0), v)
        opt.step()
        sched.step()
    assert seen_peak[2] == pytest.approx(1e-3, rel=0.02) and seen_peak[0] == pytest.approx(1.6e-4, rel=0.02)


def test_early_stopping_waits_until_the_one_cycle_rate_is_below_half_its_peak():
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = one_cycle(opt, total_steps=100)
    peak = 1e-3
    for step in range(1, 101):
        opt.step()
        sched.step()
        rate = opt.param_groups[0]["lr"]
        # patience counts once the rate has annealed to (about) half the peak, never before
        if patience_applies(step, 100):
            assert step > 25 and rate <= 0.51 * peak
        else:
            assert step <= 25 or rate >= 0.48 * peak
    assert not patience_applies(25, 100) and patience_applies(100, 100)


def test_norms_and_biases_get_no_weight_decay():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    pg = param_groups(model, [["0.weight", "0.bias", "1.weight", "1.bias"]], {0: 1e-3}, 0.05)
    decayed = [p for g in pg if g["weight_decay"] > 0 for p in g["params"]]
    assert len(decayed) == 1 and decayed[0].ndim == 4


def test_a_partial_unfreezing_step_leaves_frozen_groups_untouched(tmp_path, image_folder):
    trainer = tiny_trainer(image_folder, tmp_path / "run")
    stage = trainer.plan[1]  # unfreeze-1: head + top backbone group
    assert stage.name == "unfreeze-1"
    frozen = [n for g in sorted(set(range(len(trainer.groups))) - set(stage.trainable_groups)) for n in trainer.groups[g]]
    trained = [n for g in stage.trainable_groups for n in trainer.groups[g]]
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer._begin_stage()
    trainer.run_backbone_stage(stage)
    after = trainer.model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    # BatchNorm running statistics of frozen groups are frozen too
    bn_stats = [k for k in before if k.endswith("running_mean") and k.rsplit(".", 1)[0] + ".weight" in frozen]
    assert bn_stats and all(torch.equal(before[k], after[k]) for k in bn_stats)
    assert any(not torch.equal(before[n], after[n]) for n in trained)


def test_history_records_stage_trainable_count_and_each_groups_rate(tmp_path, image_folder):
    trainer = tiny_trainer(image_folder, tmp_path / "run", lr_decay=0.5)
    trainer.fit()
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    stages = [r["stage"] for r in rows]
    assert stages[0] == "head" and stages[-1] == "unfreeze-3"
    counts = {r["stage"]: int(r["trainable_params"]) for r in rows}
    assert counts["head"] < counts["unfreeze-1"] < counts["unfreeze-2"] < counts["unfreeze-3"]
    first_u2 = next(r for r in rows if r["stage"] == "unfreeze-2")
    lrs = dict(item.split("=") for item in first_u2["group_lrs"].split(";"))
    assert set(lrs) == {"g3", "g2", "g1"}
    assert float(lrs["g2"]) / float(lrs["g3"]) == pytest.approx(0.5, rel=0.01)
    assert float(lrs["g1"]) / float(lrs["g3"]) == pytest.approx(0.25, rel=0.01)
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "last.pt").is_file()


def test_auto_precision_is_bf16_on_a_cpu_with_native_bf16_and_fp32_without(monkeypatch):
    from wastenet.errors import ConfigError
    from wastenet.inference import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    assert runtime.autocast_for(cpu, "auto") is torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)  # no native bf16: stay in fp32
    assert runtime.autocast_for(cpu, "auto") is None
    assert runtime.autocast_for(cpu, "bf16") is torch.bfloat16       # asked for explicitly: honoured
    assert runtime.autocast_for(cpu, "off") is None
    with pytest.raises(ConfigError, match="CUDA"):
        runtime.autocast_for(cpu, "fp16")


def test_channels_last_is_the_default_and_the_model_is_converted_to_it(image_folder, tmp_path):
    assert TrainConfig().channels_last
    trainer = tiny_trainer(image_folder, tmp_path / "run")
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_step_is_not_stopped_early_before_its_rate_has_annealed(tmp_path, image_folder, monkeypatch):
    # Validation loss that only ever rises: with patience 1, a step that counted every epoch
    # would stop after epoch 2, at its peak rate; counting starts once the rate is below half
    # its peak (from 62.5% of the steps), so the first counted epoch, 4 of 6, ends it.
    trainer = tiny_trainer(image_folder, tmp_path / "run", epochs=6, patience=1)
    losses = iter(range(1, 100))
    monkeypatch.setattr(trainer, "validate", lambda: (float(next(losses)), 0.5))
    final = trainer.plan[-1]
    trainer._begin_stage()
    trainer.run_backbone_stage(final)
    assert trainer.state.stage_epoch == 4
    assert [r["stage_epoch"] for r in trainer.state.history] == [1, 2, 3, 4]


def test_the_augmentation_defaults_are_the_train_configs():
    """AugmentConfig (data/, torch-free) holds the defaults; TrainConfig takes its fields from it."""
    from wastenet.data.augment_config import AugmentConfig

    assert AugmentConfig.from_config(TrainConfig()) == AugmentConfig()
