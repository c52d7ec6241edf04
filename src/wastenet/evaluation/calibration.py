"""Calibration: temperature scaling, NLL, ECE and reliability diagrams.

Pure NumPy (no torch), so the same code judges the PyTorch and the ONNX models. What the
bin decisions do on labelled data (coverage, contamination, threshold suggestion) is in
:mod:`wastenet.evaluation.decisions`. Example::

    from wastenet.evaluation.calibration import fit_temperature, softmax, expected_calibration_error
    T = fit_temperature(val_logits, val_labels)
    probs = softmax(test_logits, T)
    print(expected_calibration_error(probs, test_labels))
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from wastenet.evaluation.metrics import check_inputs
from wastenet.probabilities import softmax  # defined once, below every floor; re-exported here

__all__ = [
    "softmax",
    "nll",
    "fit_temperature",
    "expected_calibration_error",
    "reliability_bins",
]

T_MIN, T_MAX = 0.05, 20.0


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``.

    Example::

        print(nll(val_logits, val_labels), nll(val_logits, val_labels, T))
    """
    z, y = check_inputs(logits, labels)
    lp = _log_softmax(z / float(temperature))
    return float(-lp[np.arange(y.size), y].mean())


def fit_temperature(logits: Any, labels: Any) -> float:
    """Temperature scaling (Guo et al., 2017): the ``T`` minimising the NLL of ``softmax(logits / T)``.

    Fit on *validation* logits, then divide test / deployment logits by ``T``. A single
    scalar cannot change the arg-max, so accuracy is untouched; only confidence moves.

    The NLL is convex in ``1/T`` (a log-sum-exp minus a linear term), hence unimodal in
    ``log T``; a golden-section search over ``log T`` in ``[log 0.05, log 20]`` therefore
    finds the global minimum in that range, deterministically and without torch. The result
    is clamped to ``[0.05, 20]`` (it sits at a bound when, e.g., all items are right).

    Example::

        T = fit_temperature(val_logits, val_labels)   # e.g. 1.7 for an over-confident net
        probs = softmax(test_logits, T)
    """
    z, y = check_inputs(logits, labels)
    rows = np.arange(y.size)

    def f(log_t: float) -> float:
        lp = _log_softmax(z / math.exp(log_t))
        return float(-lp[rows, y].mean())

    a, b = math.log(T_MIN), math.log(T_MAX)
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    # ~60 iterations shrink the 6-wide bracket below 1e-11 in log T.
    while b - a > 1e-10:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    t = math.exp((a + b) / 2.0)
    return float(min(max(t, T_MIN), T_MAX))


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, Any]:
    """Top-label reliability diagram data over ``n_bins`` equal-width confidence bins.

    Bins are ``[lo, hi)``, the last one closed (``[lo, 1]``). Returns plain lists::

        {"edges": [n_bins + 1], "confidence": [n_bins], "accuracy": [n_bins],
         "count": [n_bins], "ece": float, "n": int}

    ``confidence`` / ``accuracy`` are the bin means (0.0 for an empty bin, whose count is 0).
    ``ece`` is the count-weighted mean of ``|accuracy - confidence|``.

    Example::

        rb = reliability_bins(probs, labels)
        plot_reliability(rb_before, rb, "reliability.png")
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    p, y = check_inputs(probs, labels)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # [lo, hi) bins; clip puts conf == 1.0 (and float noise above it) into the last bin.
    idx = np.clip(np.floor(conf * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    safe = np.maximum(count, 1.0)
    mean_conf = np.where(count > 0, conf_sum / safe, 0.0)
    mean_acc = np.where(count > 0, acc_sum / safe, 0.0)
    ece = float(np.sum(count / count.sum() * np.abs(mean_acc - mean_conf)))
    return {
        "edges": [float(e) for e in edges],
        "confidence": [float(v) for v in mean_conf],
        "accuracy": [float(v) for v in mean_acc],
        "count": [int(v) for v in count],
        "ece": ece,
        "n": int(y.size),
    }


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width bins (Guo et al., 2017).

    ``ECE = sum_b (n_b / N) * |acc_b - conf_b|`` over the confidence of the arg-max class.
    Matches ``torchmetrics.functional.classification.multiclass_calibration_error(norm="l1")``
    except when a confidence is exactly 1.0: torchmetrics gives those an extra bin of
    their own, here they join the last bin.

    Example::

        before = expected_calibration_error(softmax(logits), labels)
        after = expected_calibration_error(softmax(logits, T), labels)
    """
    return reliability_bins(probs, labels, n_bins)["ece"]
