"""The one bin decision rule (wastenet.decision) and everything that must agree with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wastenet.evaluation.decisions import coverage_curve, decision_analysis, suggest_threshold
from wastenet.taxonomy import Taxonomy

CLASSES = ["newspaper", "office_paper", "straw"]
ONE_BIN = Taxonomy("one", {"recyclable": list(CLASSES), "landfill": []})
# sums to 0.9999999999999999: a full bin a hair below 1.0
BOUNDARY = np.array([[0.20381898702851367, 0.7463113329614236, 0.049869680010062596]])


def test_eval_counts_what_predict_decides_at_the_threshold_boundary():
    from wastenet.decision import decide

    assert decide(ONE_BIN.bin_probabilities(BOUNDARY, CLASSES), ONE_BIN.bin_names, 1.0).decision[0] == "recyclable"
    d = decision_analysis(BOUNDARY, np.array([0]), CLASSES, ONE_BIN, threshold=1.0)
    assert d["accepted"] == 1 and d["coverage"] == 1.0
    curve = coverage_curve(BOUNDARY, np.array([0]), ONE_BIN, CLASSES, thresholds=[1.0])
    assert curve["coverage"][0] == 1.0
    s = suggest_threshold(BOUNDARY, np.array([0]), CLASSES, ONE_BIN, 0.0)
    assert s["coverage"] == 1.0


def test_decide_is_vectorised_with_per_bin_thresholds_and_an_unknown_mask():
    from wastenet.decision import decide

    bp = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.99, 0.01]])
    d = decide(bp, ["recyclable", "landfill"], {"landfill": 0.5}, unknown=[False, False, False, True], default=0.8)
    assert d.bin.tolist() == ["recyclable", "recyclable", "landfill", "recyclable"]
    assert d.decision.tolist() == ["recyclable", "manual_sort", "landfill", "manual_sort"]
    assert d.reason.tolist() == ["", "low_confidence", "", "unknown"]
    assert d.accepted.tolist() == [True, False, True, False] and len(d) == 4
    assert decide(np.zeros((0, 2)), ["a", "b"], 0.5).decision.tolist() == []


def test_check_threshold_takes_a_float_or_a_per_bin_mapping():
    from wastenet.decision import check_threshold
    from wastenet.errors import ConfigError

    assert check_threshold("0.85") == 0.85
    assert check_threshold({"recyclable": 0.95}, ["recyclable", "landfill"]) == {"recyclable": 0.95}
    for bad in (1.5, float("nan"), "x", {"recyclable": 2.0}):
        with pytest.raises(ConfigError):
            check_threshold(bad)
    with pytest.raises(ConfigError, match="unknown bin"):
        check_threshold({"hazardous": 0.5}, ["recyclable"])


def test_predictions_say_why_they_went_to_manual_sort(tiny_checkpoint, image_folder):
    from wastenet.inference.predictor import Classifier

    clf = Classifier.load(tiny_checkpoint)
    img = next((image_folder / "glass").rglob("*.jpg"))
    split = {"bins": {"recyclable": ["glass", "metal"], "compostable": ["paper"], "landfill": []}}
    low = clf.predict([img], threshold=1.0, taxonomy=split)[0]
    assert low.decision == "manual_sort" and low.reason == "low_confidence"
    assert low.to_row()["reason"] == "low_confidence" and low.to_dict()["reason"] == "low_confidence"
    ok = clf.predict([img], threshold=0.0)[0]
    assert ok.decision == "recyclable" and ok.reason == ""


def test_eval_and_predict_apply_the_same_tta(tiny_checkpoint, image_folder):
    """runtime.predict_logits(tta=True) (eval, train) and Classifier.probabilities(tta=True) (predict,
    serve) combine the image and its mirror the same way, at any temperature."""
    from wastenet import checkpoint
    from wastenet.data.augment import to_model_batch
    from wastenet.data.datasets import build_cache, scan_folder
    from wastenet.evaluation.calibration import softmax
    from wastenet.inference.predictor import Classifier
    from wastenet.inference.runtime import predict_logits
    from wastenet.models import model_from_checkpoint
    from wastenet.preprocessing import Preprocessing

    ckpt = checkpoint.load(tiny_checkpoint)
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    cache = build_cache(image_folder, scan_folder(image_folder)[0][:4], ckpt["classes"], prep.resize_size,
                        prep.interpolation)
    clf = Classifier.load(tiny_checkpoint)
    clf.temperature = 0.05  # sharp: logit- and probability-averaging differ clearly here
    x = to_model_batch(torch.from_numpy(cache.images), prep).numpy()
    logits = predict_logits(model_from_checkpoint(ckpt), cache.images, prep, "cpu", None, tta=True).numpy()
    assert softmax(logits, 0.05) == pytest.approx(clf.probabilities(x, tta=True), abs=1e-5)


def test_classifier_takes_per_bin_thresholds_and_keeps_its_own_for_the_rest(tiny_checkpoint, image_folder):
    from wastenet.errors import ConfigError
    from wastenet.inference.predictor import Classifier

    clf = Classifier.load(tiny_checkpoint)
    img = next((image_folder / "paper").rglob("*.jpg"))
    split = {"bins": {"recyclable": ["glass", "metal"], "compostable": ["paper"], "landfill": []}}
    p = clf.predict([img], taxonomy=split, threshold={"landfill": 0.0})[0]  # its bin keeps 0.9: ~1/3 fails
    assert p.decision == "manual_sort" and p.reason == "low_confidence"
    p = clf.predict([img], taxonomy=split, threshold={p.bin: 0.0})[0]
    assert p.decision == p.bin and p.reason == ""
    with pytest.raises(ConfigError, match="unknown bin"):
        clf.predict([img], threshold={"hazardous": 0.5})
