"""Specification of wastenet.evaluation.calibration: temperature, ECE, coverage, bin decisions."""

from __future__ import annotations

import numpy as np
import pytest

from wastenet.evaluation.calibration import (
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_bins,
    softmax,
)
from wastenet.evaluation.decisions import (
    bin_suggestion_line,
    contamination_targets,
    coverage_curve,
    decision_analysis,
    suggest_bin_thresholds,
    suggest_threshold,
)
from wastenet.errors import ConfigError


class FakeTaxonomy:
    """The three members the evaluation code relies on, nothing else."""

    def __init__(self, bins: dict[str, list[str]]):
        self.bins = bins
        self.bin_names = list(bins)

    def class_to_bin_index(self, classes):
        where = {c: i for i, members in enumerate(self.bins.values()) for c in members}
        return np.array([where[c] for c in classes])

    def bin_probabilities(self, probs, classes):
        idx = self.class_to_bin_index(classes)
        out = np.zeros((probs.shape[0], len(self.bin_names)))
        for c, b in enumerate(idx):
            out[:, b] += probs[:, c]
        return out


CLASSES = ["newspaper", "office_paper", "glass", "food", "trash"]
TAX = FakeTaxonomy({"recyclable": ["newspaper", "office_paper", "glass"], "compostable": ["food"], "landfill": ["trash"]})
#                      news  office glass food  trash     bins (rec, comp, land)
PROBS = np.array(
    [
        [0.48, 0.47, 0.01, 0.02, 0.02],  # 0 true newspaper: torn, but recyclable 0.96
        [0.50, 0.46, 0.02, 0.01, 0.01],  # 1 true office_paper: wrong class, right bin 0.98
        [0.01, 0.01, 0.01, 0.95, 0.02],  # 2 true food: compostable 0.95
        [0.30, 0.30, 0.345, 0.0, 0.055],  # 3 true trash: recyclable 0.945 -> contamination
        [0.10, 0.10, 0.10, 0.10, 0.60],  # 4 true trash: best bin 0.6 -> manual sort
        [0.00, 0.00, 0.97, 0.00, 0.03],  # 5 true glass: recyclable 0.97
        [0.20, 0.20, 0.20, 0.30, 0.10],  # 6 true food: recyclable 0.6 -> manual sort
    ]
)
LABELS = np.array([0, 1, 3, 4, 4, 2, 3])


def synthetic(n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True logits and labels drawn from softmax(true logits): calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(n, c))
    p = softmax(logits)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, labels


# ------------------------------------------------------------------ softmax and temperature


def test_softmax_is_stable_and_tempered():
    p = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    assert np.all(np.isfinite(p)) and p[0, 0] == pytest.approx(1.0) and p[1, 0] == 0.5
    assert softmax(np.array([[2.0, 0.0]]), 2.0) == pytest.approx(softmax(np.array([[1.0, 0.0]])))
    with pytest.raises(ValueError):
        softmax(np.zeros((1, 2)), 0.0)


def test_temperature_recovers_known_overconfidence():
    true_logits, labels = synthetic(3000, 5, seed=0)
    overconfident = true_logits * 3.0
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.10)
    assert nll(overconfident, labels, t) < nll(overconfident, labels)
    before = expected_calibration_error(softmax(overconfident), labels)
    after = expected_calibration_error(softmax(overconfident, t), labels)
    assert after < before / 2
    # Deterministic: same data, same answer.
    assert fit_temperature(overconfident, labels) == t


def test_temperature_is_clamped():
    # Everything right and separable: NLL keeps falling as T -> 0, so T hits the floor.
    logits = np.array([[5.0, 0.0], [0.0, 5.0]])
    assert fit_temperature(logits, np.array([0, 1])) == pytest.approx(0.05, rel=1e-6)
    # Everything wrong: NLL falls as T grows, so T hits the ceiling.
    assert fit_temperature(logits, np.array([1, 0])) == pytest.approx(20.0, rel=1e-6)


# ------------------------------------------------------------------ ECE and reliability


def test_ece_small_when_calibrated_large_when_overconfident():
    logits, labels = synthetic(4000, 5, seed=1)
    assert expected_calibration_error(softmax(logits), labels) < 0.03
    assert expected_calibration_error(softmax(logits * 3.0), labels) > 0.10


def test_ece_hand_computed():
    # Confidences 0.95, 0.95 (1 right) and 0.55, 0.55 (both right), 10 bins:
    # bin [0.9,1): acc 0.5 conf 0.95 -> 0.45; bin [0.5,0.6): acc 1 conf 0.55 -> 0.45.
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.45)
    rb = reliability_bins(probs, labels, n_bins=10)
    assert rb["edges"] == pytest.approx(np.linspace(0, 1, 11))
    assert rb["count"] == [0, 0, 0, 0, 0, 2, 0, 0, 0, 2]
    assert rb["accuracy"][5] == 1.0 and rb["confidence"][9] == pytest.approx(0.95)
    assert rb["ece"] == pytest.approx(0.45)


def test_ece_matches_torchmetrics():
    torch = pytest.importorskip("torch")
    from torchmetrics.functional.classification import multiclass_calibration_error

    logits, labels = synthetic(500, 4, seed=2)
    probs = softmax(logits * 2.0)
    ours = expected_calibration_error(probs, labels)
    theirs = float(multiclass_calibration_error(torch.tensor(probs), torch.tensor(labels), num_classes=4, n_bins=15))
    assert ours == pytest.approx(theirs, abs=1e-5)


# ------------------------------------------------------------------ bin decisions


def test_decision_analysis_hand_made():
    d = decision_analysis(PROBS, LABELS, CLASSES, TAX, threshold=0.9)
    assert d["bin_names"] == ["recyclable", "compostable", "landfill"]
    assert (d["n"], d["accepted"], d["manual_sort"]) == (7, 5, 2)
    assert d["coverage"] == pytest.approx(5 / 7)
    # Accepted: 0, 1, 2, 3, 5. Bins right for all but 3; classes right for 0, 2, 5.
    assert d["accepted_bin_accuracy"] == pytest.approx(4 / 5)
    assert d["accepted_class_accuracy"] == pytest.approx(3 / 5)
    assert d["bin_confusion_matrix"] == [[3, 0, 0], [0, 1, 0], [1, 0, 0]]
    per_bin = {r["bin"]: r for r in d["per_bin"]}
    # Recyclable got 0, 1, 3, 5; item 3 (trash) belongs elsewhere.
    assert per_bin["recyclable"] == {"bin": "recyclable", "count": 4, "contaminated": 1, "contamination": 0.25}
    assert per_bin["compostable"]["contamination"] == 0.0 and per_bin["compostable"]["count"] == 1
    # Landfill received nothing: 0.0 with count 0, not NaN.
    assert per_bin["landfill"] == {"bin": "landfill", "count": 0, "contaminated": 0, "contamination": 0.0}
    assert d["max_contamination"] == 0.25
    assert d["manual_sort_by_true_bin"] == {"recyclable": 0, "compostable": 1, "landfill": 1}


def test_torn_between_recyclables_still_goes_to_recyclable():
    d = decision_analysis(PROBS[:1], LABELS[:1], CLASSES, TAX, threshold=0.9)
    assert PROBS[0].max() < 0.5  # no class is confident...
    assert d["accepted"] == 1 and d["bin_confusion_matrix"][0][0] == 1  # ...but the bin is


def test_nothing_accepted_is_safe():
    d = decision_analysis(PROBS, LABELS, CLASSES, TAX, threshold=1.0)
    assert d["accepted"] == 0 and d["coverage"] == 0.0 and d["manual_sort"] == 7
    assert d["accepted_bin_accuracy"] is None and d["accepted_class_accuracy"] is None
    assert all(r["contamination"] == 0.0 and r["count"] == 0 for r in d["per_bin"])


def test_coverage_curve_matches_decision_analysis():
    curve = coverage_curve(PROBS, LABELS, TAX, CLASSES, thresholds=[0.0, 0.9, 1.0])
    assert curve["coverage"] == pytest.approx([1.0, 5 / 7, 0.0])
    assert curve["bin_accuracy"][1] == pytest.approx(4 / 5)
    assert np.isnan(curve["bin_accuracy"][2])
    # Class level: only items 2, 5 have a class probability >= 0.9, both right.
    assert curve["class_coverage"] == pytest.approx([1.0, 2 / 7, 0.0])
    assert curve["class_accuracy"][1] == pytest.approx(1.0)
    assert curve["class_accuracy"][0] == pytest.approx(5 / 7)  # all but items 1 and 3
    default = coverage_curve(PROBS, LABELS, TAX, CLASSES)
    assert default["thresholds"][0] == 0.0 and default["thresholds"][-1] == 1.0
    assert np.all(np.diff(default["coverage"]) <= 0)  # coverage never grows with t


def test_suggest_threshold_hand_made():
    # Candidates 0.6, 0.945, 0.95, ...: recyclable gets 2 wrong of 5 at 0.6 (items 3, 6),
    # 1 of 4 at 0.945 (item 3), none from 0.95 on (items 0, 1, 5; item 2 goes to compost).
    s = suggest_threshold(PROBS, LABELS, CLASSES, TAX, 0.0, bin_name="recyclable")
    assert s == pytest.approx({"threshold": 0.95, "coverage": 4 / 7, "contamination": 0.0, "achievable": True})
    s = suggest_threshold(PROBS, LABELS, CLASSES, TAX, 0.25)  # worst bin
    assert s["threshold"] == pytest.approx(0.945) and s["coverage"] == pytest.approx(5 / 7)
    assert s["contamination"] == 0.25
    s = suggest_threshold(PROBS, LABELS, CLASSES, TAX, 0.5)
    assert s["threshold"] == pytest.approx(0.6) and s["coverage"] == 1.0


def test_suggest_threshold_is_the_lowest_that_meets_target():
    logits, labels = synthetic(300, 5, seed=3)
    probs = softmax(logits * 1.5)
    target = 0.05
    s = suggest_threshold(probs, labels, CLASSES, TAX, target)
    assert s["achievable"]
    at = decision_analysis(probs, labels, CLASSES, TAX, threshold=s["threshold"])
    assert at["max_contamination"] <= target
    assert at["coverage"] == pytest.approx(s["coverage"])
    # Every lower candidate threshold misses the target.
    bin_conf = TAX.bin_probabilities(probs, CLASSES).max(axis=1)
    lower = np.unique(bin_conf[bin_conf < s["threshold"]])
    assert lower.size > 0
    for t in lower:
        assert decision_analysis(probs, labels, CLASSES, TAX, threshold=t)["max_contamination"] > target


def test_suggest_threshold_unachievable_and_unknown_bin():
    # One item, certain and wrong: even t=1.0 accepts it.
    probs = np.array([[1.0, 0.0, 0.0, 0.0, 0.0]])
    s = suggest_threshold(probs, np.array([4]), CLASSES, TAX, 0.1)
    assert s["achievable"] is False and s["contamination"] == 1.0
    from wastenet.errors import ConfigError

    with pytest.raises(ConfigError):
        suggest_threshold(PROBS, LABELS, CLASSES, TAX, 0.1, bin_name="hazardous")


# Per-bin targets: a bin's contamination depends on its own threshold only, so each is chosen alone.


def test_per_bin_suggestion_meets_each_target_on_the_data_it_was_chosen_on():
    logits, labels = synthetic(300, 5, seed=3)
    probs = softmax(logits * 1.5)
    targets = {"recyclable": 0.05, "compostable": 0.2, "landfill": 0.01}
    s = suggest_bin_thresholds(probs, labels, CLASSES, TAX, targets)
    assert s["achievable"] and list(s["threshold"]) == TAX.bin_names  # every bin, taxonomy order
    at = decision_analysis(probs, labels, CLASSES, TAX, threshold=s["threshold"])
    assert at["coverage"] == pytest.approx(s["coverage"])
    for row, got in zip(s["per_bin"], at["per_bin"]):
        assert got["contamination"] <= targets[row["bin"]]
        assert got["contamination"] == pytest.approx(row["contamination"])
        assert got["count"] == pytest.approx(row["coverage"] * row["items"])
    # The lowest: any lower confidence of a bin's items as its threshold (the others kept) misses its target.
    bp = TAX.bin_probabilities(probs, CLASSES)
    conf, pred = bp.max(axis=1), bp.argmax(axis=1)
    for j, b in enumerate(TAX.bin_names):
        lower = np.unique(conf[(pred == j) & (conf < s["threshold"][b])])
        assert lower.size > 0
        for t in lower:
            lowered = {**s["threshold"], b: float(t)}
            at_lower = decision_analysis(probs, labels, CLASSES, TAX, threshold=lowered)
            assert at_lower["per_bin"][j]["contamination"] > targets[b]


def test_per_bin_suggestion_hand_made_and_other_bins_keep_their_threshold():
    # Recyclable holds 0.6 (food), 0.945 (trash), 0.96, 0.97, 0.98: clean from 0.96 on; the short
    # decimal 0.96 lies between the last rejected (0.945) and the first accepted confidence.
    s = suggest_bin_thresholds(PROBS, LABELS, CLASSES, TAX, {"recyclable": 0.0}, base=0.8)
    assert s["threshold"] == {"recyclable": 0.96, "compostable": 0.8, "landfill": 0.8}
    assert s["per_bin"] == [{"bin": "recyclable", "target": 0.0, "threshold": 0.96, "items": 5, "coverage": 0.6,
                             "contamination": 0.0, "achievable": True}]
    line = bin_suggestion_line(s)
    assert line == ("suggested: --bin-thresholds recyclable=0.96,compostable=0.8,landfill=0.8 "
                    "(validation: recyclable 0.0% contamination at 60% of its items)")
    # Bins are independent: adding a landfill target leaves recyclable's threshold alone.
    both = suggest_bin_thresholds(PROBS, LABELS, CLASSES, TAX, {"recyclable": 0.0, "landfill": 0.5}, base=0.8)
    assert both["threshold"]["recyclable"] == 0.96 and both["threshold"]["landfill"] == 0.6


def test_per_bin_suggestion_says_when_a_target_cannot_be_met():
    # One item, certain and wrong: even t = 1.0 accepts it into recyclable.
    probs = np.array([[1.0, 0.0, 0.0, 0.0, 0.0]])
    s = suggest_bin_thresholds(probs, np.array([4]), CLASSES, TAX, {"recyclable": 0.1, "landfill": 0.1}, base=0.9)
    rec, land = s["per_bin"]
    assert rec["achievable"] is False and rec["contamination"] == 1.0 and s["achievable"] is False
    assert "recyclable 100.0% contamination at 100% of its items (target 10.0% not met)" in bin_suggestion_line(s)
    # Nothing went to landfill: the data show nothing, so it keeps its threshold and says so.
    assert land == {"bin": "landfill", "target": 0.1, "threshold": 0.9, "items": 0, "coverage": 0.0,
                    "contamination": 0.0, "achievable": False}


def test_contamination_targets_are_one_float_or_per_bin(tmp_path):
    names = TAX.bin_names
    assert contamination_targets("0.01", names) == 0.01 and contamination_targets(0.02) == 0.02
    assert contamination_targets("recyclable=0.02, landfill=0.3", names) == {"recyclable": 0.02, "landfill": 0.3}
    (tmp_path / "targets.yaml").write_text("recyclable: 0.02\n")
    assert contamination_targets(str(tmp_path / "targets.yaml"), names) == {"recyclable": 0.02}
    assert contamination_targets({"landfill": 0.1}, names) == {"landfill": 0.1}


@pytest.mark.parametrize("spec, message", [
    ("1.0", r"must be in \[0, 1\)"),
    ("nan", r"must be in \[0, 1\)"),
    ("recyclable=1", r"for bin 'recyclable' must be in \[0, 1\)"),
    ("recyclable=-0.1", "for bin 'recyclable' must be in"),
    ("hazardous=0.1", "unknown bin hazardous"),
    ("recyclable", "expected BIN=THRESHOLD"),
    ("recyclable=lots", "must be a number"),
    ("missing.yaml", "cannot read missing.yaml"),
    ({}, "no bin targets"),
])
def test_bad_contamination_targets_fail_in_one_line(spec, message):
    with pytest.raises(ConfigError, match=message) as err:
        contamination_targets(spec, TAX.bin_names)
    assert "--target-contamination" in str(err.value) and "\n" not in str(err.value)
