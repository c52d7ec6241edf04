"""`wastenet train` and `wastenet eval` end to end on tiny data; bad input fails fast; resume."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wastenet.cli import main

TINY = ["--model", "test_resnet", "--weights", "none", "--img-size", "48", "--batch-size", "8",
        "--head-epochs", "3", "--head-views", "1", "--step-epochs", "1", "--epochs", "1", "--unfreeze-groups", "2",
        "--amp", "off"]


def test_train_writes_the_run_folder_and_eval_reads_it(tmp_path, image_folder, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(image_folder), "--out", str(out), *TINY]) == 0
    for name in ("config.yaml", "split.csv", "best.pt", "last.pt", "history.csv", "metrics.json",
                 "confusion_matrix.png", "curves.png", "report.md", "train.log"):
        assert (out / name).is_file(), name
    log = (out / "train.log").read_text()
    # every frozen pass reports its progress with an ETA, also into the run's log file
    for desc in ("[head] features view 1/2", "[head] features view 2/2", "[head] features val",
                 "calibration pass (val)", "test pass"):
        assert f"{desc}: 100% (" in log and "ETA" in log, desc
    assert "test: accuracy" in log
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["metrics"]["n"] == 9  # 3 per class, never trained on
    assert {"accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted"} <= set(metrics["metrics"])
    assert "test accuracy" in capsys.readouterr().out
    import yaml

    import torch
    import wastenet
    from wastenet.machine import cpu_info

    # how it ran is on record: numbers are only comparable with the same setup
    for run in (yaml.safe_load((out / "config.yaml").read_text())["run"],
                json.loads((out / "summary.json").read_text())["run"]):
        assert run["world_size"] == 1 and run["device"] == "cpu" and run["precision"] == "float32"
        assert run["threads"] >= 1 and run["torch"] == torch.__version__ and run["wastenet"] == wastenet.__version__
        assert run["timm"]
        assert run["cpu"] == cpu_info() and run["cpu"]["model"]  # which CPU: timings differ 2-3x between them
    from wastenet.training.config import TrainConfig

    assert TrainConfig.load(out / "config.yaml").model == "test_resnet"  # the record does not break a reload
    rc = main(["eval", "--checkpoint", str(out / "best.pt"), "--data", str(image_folder), "--out", str(tmp_path / "ev")])
    assert rc == 0
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert again["metrics"]["accuracy"] == pytest.approx(metrics["metrics"]["accuracy"])


def test_eval_recalibrate_refits_the_temperature_on_validation_and_stores_it(tmp_path, image_folder):
    from wastenet import checkpoint

    out = tmp_path / "run"
    assert main(["train", "--data", str(image_folder), "--out", str(out), *TINY]) == 0
    fitted = checkpoint.load(out / "best.pt")["temperature"]
    spoiled = checkpoint.load(out / "best.pt")
    spoiled["temperature"] = 5.0
    checkpoint.save(spoiled, tmp_path / "spoiled.pt")
    rc = main(["eval", "--checkpoint", str(tmp_path / "spoiled.pt"), "--data", str(image_folder),
               "--split-file", str(out / "split.csv"), "--recalibrate", "--out", str(tmp_path / "ev")])
    assert rc == 0
    # the same validation images in the same (full) precision give training's own temperature
    assert checkpoint.load(tmp_path / "spoiled.pt")["temperature"] == pytest.approx(fitted, rel=1e-3)
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["calibration"]["temperature"] == pytest.approx(fitted, rel=1e-3)


@pytest.mark.parametrize("args, message", [
    (["--data", "/no/such/folder"], "dataset folder not found"),
    (["--recipe", "magic"], "invalid choice"),
    (["--model", "not_a_net"], "unknown model"),
    (["--weights", "/no/weights.safetensors"], "weights file not found"),
    (["--epochs", "0"], "at least 1"),
    (["--split-file", "/no/split.csv"], "split file not found"),
])
def test_bad_options_fail_in_one_line_with_status_2_before_any_work(tmp_path, image_folder, args, message):
    base = ["--data", str(image_folder), "--model", "test_resnet", "--weights", "none", "--out", str(tmp_path / "r")]
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "wastenet", "train", *base, *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "split.csv").exists()  # nothing started


def test_interrupted_run_resumes_without_losing_epochs(tmp_path, image_folder):
    out = tmp_path / "run"
    from wastenet import checkpoint

    assert main(["train", "--data", str(image_folder), "--out", str(out), *TINY]) == 0
    full = checkpoint.load(out / "last.pt")
    n_epochs = len(full["history"])
    # simulate a crash after the first backbone epoch: roll last.pt back to that point
    first_backbone = next(i for i, r in enumerate(full["history"]) if r["stage"] != "head")
    stage_names = [r["stage"] for r in full["history"]]
    crashed = dict(full, history=full["history"][: first_backbone + 1], stage_index=1, stage_epoch=1,
                   stage_done=False, global_epoch=first_backbone + 1, optimizer=None, scheduler=None)
    checkpoint.save(crashed, out / "last.pt")
    assert main(["train", "--data", str(image_folder), "--out", str(out), "--resume", *TINY]) == 0
    resumed = checkpoint.load(out / "last.pt")
    assert [r["stage"] for r in resumed["history"]] == stage_names
    assert [r["epoch"] for r in resumed["history"]] == list(range(1, n_epochs + 1))


def test_a_second_run_into_the_same_folder_needs_resume(tmp_path, image_folder):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"x")
    assert main(["train", "--data", str(image_folder), "--out", str(out), *TINY]) == 2


@pytest.mark.slow
def test_smoke_on_real_trashnet_with_real_weights(tmp_path, trashnet_root, weights_dir):
    out = tmp_path / "real"
    rc = main(["train", "--data", str(trashnet_root), "--split-file", str(trashnet_root.parent / "trashnet-split.csv"),
               "--model", "mobilenetv2_100", "--weights", str(weights_dir / "mobilenetv2_100.safetensors"),
               "--recipe", "linear", "--limit-per-class", "10", "--head-views", "1", "--head-epochs", "30",
               "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert m["n"] == 60
    assert m["accuracy"] > 0.5  # ImageNet features separate TrashNet well above chance (1/6) even from 60 images


@pytest.mark.parametrize("changes, message", [
    ({"alpha": "1,x"}, "--alpha must be 'balanced' or comma-separated numbers"),
    ({"fill": "wrap"}, "--fill must be one of nearest, constant, reflect"),
    ({"zoom": "lots"}, "zoom must be float"),
    ({"threshold": 1.5}, "--threshold must be in [0, 1]"),
    ({"taxonomy": "/no/tax.yaml"}, "--taxonomy must be"),
])
def test_config_validate_checks_every_field_before_any_work(image_folder, changes, message):
    from wastenet.errors import ConfigError
    from wastenet.training.config import TrainConfig

    cfg = TrainConfig(data=str(image_folder), model="test_resnet", weights="none", **changes)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        cfg.validate()


def test_alpha_with_the_wrong_count_fails_before_decoding(tmp_path, image_folder):
    proc = subprocess.run([sys.executable, "-m", "wastenet", "train", "--data", str(image_folder), "--model", "test_resnet",
                           "--weights", "none", "--out", str(tmp_path / "r"), "--alpha", "1,2"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--alpha needs 1 or 3 values" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- split files that lie


def _split_rows(image_folder: Path) -> list[list[str]]:
    from wastenet.data.datasets import scan_folder, stratified_split

    rows, _ = scan_folder(image_folder)
    return [[r.path, r.label, r.split] for r in stratified_split(rows, seed=0)]


def _edit_first(rows, split, label=None):
    return next(i for i, r in enumerate(rows) if r[2] == split and (label is None or r[1] == label))


@pytest.mark.parametrize("case, message", [
    ("duplicate", "is listed twice"),
    ("two-splits", "is in two splits"),
    ("two-labels", "has two labels"),
    ("foreign-label", "is not a class folder"),
    ("one-class", "one class only"),
    ("dotdot", "outside the dataset folder"),
    ("absolute", "outside the dataset folder"),
    ("no-val", "has no val image"),
    ("no-train", "has no train image"),
])
def test_a_bad_split_file_fails_in_one_line_with_status_2_before_training(tmp_path, image_folder, case, message, capsys):
    rows = _split_rows(image_folder)
    if case == "duplicate":
        rows.append(list(rows[0]))
    elif case == "two-splits":  # a test image also in train: test accuracy would lie
        t = rows[_edit_first(rows, "test")]
        rows.append([t[0], t[1], "train"])
    elif case == "two-labels":
        rows.append([rows[0][0], "paper" if rows[0][1] != "paper" else "glass", rows[0][2]])
    elif case == "foreign-label":  # would silently turn the bin taxonomy into identity
        rows[0][1] = "plastic"
    elif case == "one-class":
        rows = [r for r in rows if r[1] == "glass"]
    elif case == "dotdot":
        outside = tmp_path / "outside.jpg"
        outside.write_bytes((image_folder / rows[0][0]).read_bytes())
        rows.append([f"../{'../' * rows[0][0].count('/')}{outside.relative_to('/')}", "glass", "train"])
    elif case == "absolute":
        rows.append([str(image_folder / rows[0][0]), rows[0][1], "train"])
    elif case == "no-val":
        rows = [r if not (r[1] == "metal" and r[2] == "val") else [r[0], r[1], "test"] for r in rows]
    elif case == "no-train":
        rows = [r if not (r[1] == "metal" and r[2] == "train") else [r[0], r[1], "test"] for r in rows]
    split = tmp_path / "split.csv"
    split.write_text("path,label,split\n" + "".join(f"{p},{lab},{s}\n" for p, lab, s in rows))
    out = tmp_path / "run"
    rc = main(["train", "--data", str(image_folder), "--split-file", str(split), "--out", str(out), *TINY])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # refused before anything was decoded or written


def test_a_class_with_two_images_gets_a_train_and_a_val_image(tmp_path):
    from conftest import make_dataset
    from wastenet.data.datasets import check_split_coverage, scan_folder, stratified_split

    root = make_dataset(tmp_path / "small", per_class=2)
    rows = stratified_split(scan_folder(root)[0], seed=0)  # round(0.5) == 0 put the second in test
    check_split_coverage(rows)
    one = make_dataset(tmp_path / "one", per_class=1)
    from wastenet.errors import ConfigError

    with pytest.raises(ConfigError, match="has no val image"):
        check_split_coverage(stratified_split(scan_folder(one)[0], seed=0))
