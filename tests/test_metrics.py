"""Specification of wastenet.evaluation.metrics: hand-computed numbers on a tiny confusion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wastenet.evaluation.metrics import classification_metrics, worst_mistakes

CLASSES = ["glass", "paper", "trash"]
# 10 items, supports 5 / 3 / 2.
LABELS = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])
PREDS = np.array([0, 0, 0, 0, 1, 1, 1, 0, 2, 1])
# Confusion (rows true, cols predicted):
#   glass  [4, 1, 0]
#   paper  [1, 2, 0]
#   trash  [0, 1, 1]
CM = [[4, 1, 0], [1, 2, 0], [0, 1, 1]]
PRECISION = [4 / 5, 2 / 4, 1 / 1]
RECALL = [4 / 5, 2 / 3, 1 / 2]
F1 = [2 * p * r / (p + r) for p, r in zip(PRECISION, RECALL)]  # 0.8, 4/7, 2/3
SUPPORT = [5, 3, 2]


def probs_for(preds: np.ndarray, n_classes: int, top: float = 0.7) -> np.ndarray:
    """Probabilities whose arg-max is `preds`, the rest spread evenly."""
    p = np.full((len(preds), n_classes), (1 - top) / (n_classes - 1))
    p[np.arange(len(preds)), preds] = top
    return p


def test_hand_computed_metrics_macro_and_weighted():
    m = classification_metrics(probs_for(PREDS, 3), LABELS, CLASSES)
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["confusion_matrix"] == CM
    # Macro: plain mean over classes; weighted: mean weighted by support.
    assert m["precision_macro"] == pytest.approx(np.mean(PRECISION))  # 0.7667
    assert m["precision_weighted"] == pytest.approx(0.75)  # (4 + 1.5 + 2) / 10
    assert m["recall_macro"] == pytest.approx(np.mean(RECALL))  # 0.6556
    assert m["recall_weighted"] == pytest.approx(0.7)  # weighted recall == accuracy
    assert m["f1_macro"] == pytest.approx((0.8 + 4 / 7 + 2 / 3) / 3)
    assert m["f1_weighted"] == pytest.approx((0.8 * 5 + 4 / 7 * 3 + 2 / 3 * 2) / 10)
    assert m["precision_macro"] != pytest.approx(m["precision_weighted"])


def test_per_class_rows():
    m = classification_metrics(probs_for(PREDS, 3), LABELS, CLASSES)
    assert [r["class"] for r in m["per_class"]] == CLASSES
    for i, row in enumerate(m["per_class"]):
        assert row["precision"] == pytest.approx(PRECISION[i])
        assert row["recall"] == pytest.approx(RECALL[i])
        assert row["f1"] == pytest.approx(F1[i])
        assert row["support"] == SUPPORT[i]


def test_result_is_plain_json():
    m = classification_metrics(probs_for(PREDS, 3), LABELS, CLASSES)
    assert json.loads(json.dumps(m)) == m  # no numpy / torch scalars left
    assert isinstance(m["accuracy"], float) and isinstance(m["confusion_matrix"][0][0], int)


def test_class_absent_and_never_predicted_is_harmless():
    # A 4th class nobody has and nobody predicts: zeros in its row, no effect on averages.
    m = classification_metrics(probs_for(PREDS, 4), LABELS, CLASSES + ["textile"])
    row = m["per_class"][3]
    assert row == {"class": "textile", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["precision_macro"] == pytest.approx(np.mean(PRECISION))
    assert m["f1_macro"] == pytest.approx(np.mean(F1))
    assert m["f1_weighted"] == pytest.approx(np.dot(F1, SUPPORT) / 10)
    assert m["confusion_matrix"][3] == [0, 0, 0, 0]
    assert all(np.isfinite(v) for k, v in m.items() if isinstance(v, float))


def test_class_never_predicted_counts_as_zero_precision():
    # Nothing is predicted as trash: precision 0 by convention (zero_division=0).
    labels = np.array([0, 1, 2])
    m = classification_metrics(probs_for(np.array([0, 1, 1]), 3), labels, CLASSES)
    assert m["per_class"][2]["precision"] == 0.0
    assert m["per_class"][2]["recall"] == 0.0
    assert m["precision_macro"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError):
        classification_metrics(probs_for(PREDS, 3), LABELS[:5], CLASSES)
    with pytest.raises(ValueError):
        classification_metrics(probs_for(PREDS, 3), LABELS, CLASSES + ["extra"])
    with pytest.raises(ValueError):
        classification_metrics(probs_for(PREDS, 3), np.array([0] * 9 + [3]), CLASSES)


def test_worst_mistakes_ranks_misclassified_by_loss():
    probs = np.array(
        [
            [0.9, 0.05, 0.05],  # right
            [0.2, 0.7, 0.1],  # true 0: p_true 0.2
            [0.05, 0.9, 0.05],  # true 0: p_true 0.05 -> worst
            [0.1, 0.3, 0.6],  # true 1: p_true 0.3
            [0.3, 0.1, 0.6],  # right
        ]
    )
    labels = np.array([0, 0, 0, 1, 2])
    worst = worst_mistakes(probs, labels, k=8)
    assert [w["index"] for w in worst] == [2, 1, 3]
    assert worst[0] == pytest.approx(
        {"index": 2, "predicted": 1, "true": 0, "loss": -np.log(0.05), "p_true": 0.05, "p_pred": 0.9}
    )
    assert [w["index"] for w in worst_mistakes(probs, labels, k=2)] == [2, 1]
    assert worst_mistakes(probs[[0, 4]], labels[[0, 4]]) == []


def test_worst_mistakes_survives_zero_probability():
    worst = worst_mistakes(np.array([[0.0, 1.0]]), np.array([0]))
    assert np.isfinite(worst[0]["loss"]) and worst[0]["loss"] > 20
