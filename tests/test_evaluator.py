"""The Python API of `wastenet eval` (Evaluator), mirroring the command line."""

from __future__ import annotations

import json

import pytest

from wastenet.errors import ConfigError
from wastenet.evaluation.evaluator import Evaluator


def test_evaluator_writes_the_report_and_says_what_eval_prints(tiny_checkpoint, image_folder, tmp_path):
    logged: list[str] = []
    report = Evaluator.load(tiny_checkpoint, device="cpu").evaluate(
        image_folder, threshold={"recyclable": 0.5}, out=tmp_path / "ev", log=logged.append)
    assert report.split == "all" and any("no split file" in m for m in logged)  # no split.csv beside it
    assert report.metrics["n"] == 36 and report.decision["threshold"]["recyclable"] == 0.5
    assert (tmp_path / "ev" / "report.md").is_file()
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]["n"] == 36
    assert report.summary().splitlines()[0].startswith("all: 36 images")


def test_evaluator_checks_its_options(tiny_checkpoint, image_folder, tmp_path):
    ev = Evaluator.load(tiny_checkpoint, device="cpu")
    for kwargs, message in (({"threshold": 2.0}, "--threshold"), ({"target_contamination": 1.0}, "contamination"),
                            ({"split": "dev"}, "--split")):
        with pytest.raises(ConfigError, match=message):
            ev.evaluate(image_folder, out=tmp_path, **kwargs)
    with pytest.raises(ConfigError, match="dataset folder not found"):
        ev.evaluate(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="--threshold for unknown bin hazardous"):  # not silently dropped
        ev.evaluate(image_folder, threshold={"hazardous": 0.5}, out=tmp_path)
    with pytest.raises(ConfigError, match="--bin-thresholds for unknown bin hazardous"):
        ev.evaluate(image_folder, bin_thresholds="hazardous=0.5", out=tmp_path)


# --target-contamination on the command line: one float (today's single threshold) or per-bin targets.
SPLIT_BINS = "bins: {recyclable: [glass, metal], compostable: [paper], landfill: []}\n"


@pytest.fixture
def eval_args(tiny_checkpoint, image_folder, tmp_path):
    """`wastenet eval` arguments with a val/test split file and a taxonomy whose bins can be wrong."""
    from wastenet.data.datasets import Row, scan_folder, write_split_file

    rows = [Row(r.path, r.label, ("val", "test")[i % 2]) for i, r in enumerate(scan_folder(image_folder)[0])]
    (tmp_path / "bins.yaml").write_text(SPLIT_BINS)
    return ["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(image_folder), "--split-file",
            str(write_split_file(rows, tmp_path / "split.csv")), "--taxonomy", str(tmp_path / "bins.yaml")]


def test_eval_per_bin_targets_print_a_line_to_paste_and_confirm_it_on_the_split(eval_args, tmp_path, capsys):
    from wastenet.cli import main
    from wastenet.decision import parse_bin_thresholds

    out = tmp_path / "ev"
    assert main([*eval_args, "--split", "val", "--target-contamination", "recyclable=0.3,compostable=0.5",
                 "--out", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("suggested: --bin-thresholds "))
    s = json.loads((out / "metrics.json").read_text())["suggested_threshold"]
    assert s["target"] == {"recyclable": 0.3, "compostable": 0.5}
    assert parse_bin_thresholds(line.split()[2]) == s["threshold"]  # pasted, it is exactly what was suggested
    assert list(s["threshold"]) == ["recyclable", "compostable", "landfill"] and s["threshold"]["landfill"] == 0.9
    # Confirmed on the evaluated split, here the validation split itself: the same numbers.
    assert s["confirmed"]["split"] == "val"
    confirmed = {r["bin"]: r for r in s["confirmed"]["per_bin"]}
    for row in s["per_bin"]:
        assert confirmed[row["bin"]]["contamination"] == pytest.approx(row["contamination"])
        assert confirmed[row["bin"]]["coverage"] == pytest.approx(row["coverage"])
        assert not row["achievable"] or row["contamination"] <= row["target"]
    report = (out / "report.md").read_text()
    assert "## Suggested per-bin thresholds" in report and line in report
    # Pasted into eval itself, the line decides as confirmed.
    assert main([*eval_args, "--split", "val", *line.split()[1:3], "--out", str(tmp_path / "pasted")]) == 0
    decision = json.loads((tmp_path / "pasted" / "metrics.json").read_text())["decision"]
    assert decision["threshold"] == s["threshold"]
    assert [r["count"] for r in decision["per_bin"]] == [r["count"] for r in s["confirmed"]["per_bin"]]


def test_eval_float_target_suggests_one_threshold_as_before(eval_args, tmp_path, capsys):
    from wastenet.cli import main

    assert main([*eval_args, "--target-contamination", "0.5", "--out", str(tmp_path / "ev")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("suggested"))
    assert line.startswith("suggested threshold for contamination <= 0.5: ")
    s = json.loads((tmp_path / "ev" / "metrics.json").read_text())["suggested_threshold"]
    assert set(s) == {"threshold", "coverage", "contamination", "achievable", "target"}
    assert isinstance(s["threshold"], float) and s["target"] == 0.5
    assert "## Suggested threshold\n" in (tmp_path / "ev" / "report.md").read_text()


@pytest.mark.parametrize("spec, message", [
    ("1.5", "--target-contamination must be in [0, 1)"),
    ("recyclable=1.0", "--target-contamination for bin 'recyclable' must be in [0, 1)"),
    ("hazardous=0.1", "--target-contamination for unknown bin hazardous"),
    ("recyclable:0.1", "--target-contamination: expected BIN=THRESHOLD"),
])
def test_eval_bad_targets_fail_in_one_line_before_any_work(eval_args, tmp_path, capsys, spec, message):
    from wastenet.cli import main

    assert main([*eval_args, "--target-contamination", spec, "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ev").exists()  # nothing evaluated


@pytest.fixture
def fitted_rule_checkpoint(tmp_path, image_folder):
    """A checkpoint whose unknown-item rule was fitted at temperature 5 (a head with non-zero logits),
    and a val/test split file of the same images."""
    import torch

    from wastenet import checkpoint
    from wastenet.data.datasets import Row, build_cache, scan_folder, write_split_file
    from wastenet.inference.ood_model import fit_unknown_detector
    from wastenet.models import create_model
    from wastenet.taxonomy import load_taxonomy

    rows, classes = scan_folder(image_folder)
    split = [Row(r.path, r.label, ("val", "test")[i % 2]) for i, r in enumerate(rows)]
    torch.manual_seed(0)  # the whole tiny network, not only its head: the fitted temperature depends on it
    built = create_model("test_resnet", len(classes), weights=None, img_size=64)
    torch.nn.init.normal_(built.model.get_classifier().weight, std=0.5)
    prep, model = built.preprocessing, built.model.eval()
    val = build_cache(image_folder, [r for r in split if r.split == "val"], classes, prep.cache_size, prep.interpolation)
    ckpt = checkpoint.make_checkpoint(built, classes=classes, temperature=5.0, taxonomy=load_taxonomy(
        {"bins": {"recyclable": ["glass", "metal", "paper"]}}, classes).to_dict())
    ckpt["ood"] = fit_unknown_detector(model, prep, (val.images, val.labels), val.images, len(classes), 5.0)
    return checkpoint.save(ckpt, tmp_path / "rule.pt"), write_split_file(split, tmp_path / "split.csv"), val


def test_recalibrate_refits_the_logit_thresholds_at_the_new_temperature(fitted_rule_checkpoint, image_folder, tmp_path):
    """msp and energy depend on the temperature: a threshold fitted at the old one does not keep 95%
    of the validation items at the new one. The feature-space scores do not, and keep theirs."""
    from wastenet import checkpoint, ood
    from wastenet.inference.runtime import predict_logits
    from wastenet.models import model_from_checkpoint
    from wastenet.preprocessing import Preprocessing

    path, split_file, val = fitted_rule_checkpoint
    before = checkpoint.load(path)
    Evaluator.load(path, device="cpu").evaluate(image_folder, split="test", split_file=split_file, recalibrate=True,
                                                out=tmp_path / "ev")
    after = checkpoint.load(path)
    assert after["temperature"] != pytest.approx(5.0, rel=1e-2)
    logits = predict_logits(model_from_checkpoint(before), val.images, Preprocessing.from_dict(before["preprocessing"]),
                            "cpu", None).numpy()
    rule = after["ood"]
    for method in ("msp", "energy"):
        want = ood.threshold_for_coverage(ood.scores(method, logits, after["temperature"]), rule["keep"])
        assert rule["thresholds"][method] == pytest.approx(want, rel=1e-5), method
        assert before["ood"]["thresholds"][method] != pytest.approx(want, rel=1e-3), method  # the test can fail
    for method in ("mahalanobis", "knn"):
        assert rule["thresholds"][method] == before["ood"]["thresholds"][method]
    assert rule["search_thresholds"] == {}  # refitted as before: {} from fewer than 20 validation photos




def test_finalise_fits_the_searched_threshold_only_when_asked(fitted_rule_checkpoint, image_folder):
    """``search=False`` (a service that does not search) skips the expensive step, and drops a searched
    threshold that was fitted at another temperature; ``search=True`` fits it from the val photos."""
    from wastenet import checkpoint
    from wastenet.data.datasets import build_cache, scan_folder
    from wastenet.evaluation.finalise import SplitData, finalise
    from wastenet.models import model_from_checkpoint
    from wastenet.preprocessing import Preprocessing

    path, _, _ = fitted_rule_checkpoint
    ckpt = checkpoint.load(path)
    prep, model = Preprocessing.from_dict(ckpt["preprocessing"]), model_from_checkpoint(ckpt)
    rows, classes = scan_folder(image_folder)
    every = build_cache(image_folder, rows, classes, prep.cache_size, prep.interpolation)
    val = SplitData(every.labels, images=every.images, photos=[image_folder / r.path for r in rows])
    done = finalise(ckpt, model, None, val, prep=prep)
    assert set(ckpt["ood"]["search_thresholds"]) == {"knn"} and done.temperature == ckpt["temperature"]  # its method
    assert done.val_logits.shape == (36, 3)
    finalise(ckpt, model, None, val, prep=prep, search=False)
    assert "search_thresholds" not in ckpt["ood"]
    assert checkpoint.load(path)["temperature"] == 5.0  # saved only when given a path
