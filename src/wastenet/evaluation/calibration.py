"""Calibration and bin decisions: temperature scaling, ECE, coverage and bin contamination.

Pure NumPy (no torch), so the same code judges the PyTorch and the ONNX models.

The decision contract (DESIGN.md): an item's *bin* is the bin with the highest total
probability (the sum of its classes' probabilities); the item is *accepted* into that bin
when that total is at least the threshold, otherwise it goes to ``manual_sort``.

A taxonomy is any object with ``bin_names`` (a list, or a method returning one),
``class_to_bin_index(classes) -> int array [C]`` and
``bin_probabilities(probs, classes) -> [N, B]`` (a ``(probs, bin_names)`` tuple is accepted
too). Example::

    from wastenet.evaluation.calibration import (
        fit_temperature, softmax, expected_calibration_error, decision_analysis)
    T = fit_temperature(val_logits, val_labels)
    probs = softmax(test_logits, T)
    print(expected_calibration_error(probs, test_labels))
    d = decision_analysis(probs, test_labels, classes, taxonomy, threshold=0.9)
    print(d["coverage"], d["per_bin"])
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from wastenet.decision import TOLERANCE, accepts, decide
from wastenet.evaluation.metrics import check_inputs

__all__ = [
    "softmax",
    "nll",
    "fit_temperature",
    "expected_calibration_error",
    "reliability_bins",
    "coverage_curve",
    "decision_analysis",
    "suggest_threshold",
]

T_MIN, T_MAX = 0.05, 20.0


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax of ``logits / temperature`` over the last axis (float64).

    Example::

        probs = softmax(np.array([[2.0, 0.0, -1.0]]), temperature=1.5)
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    # Subtracting the row max keeps exp() from overflowing; the result is unchanged.
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


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


# --------------------------------------------------------------------------- bins


def _bin_names(taxonomy: Any) -> list[str]:
    names = taxonomy.bin_names
    return list(names() if callable(names) else names)


def _bin_index(taxonomy: Any, classes: Sequence[str]) -> np.ndarray:
    classes = list(classes)
    if hasattr(taxonomy, "class_to_bin_index"):
        return np.asarray(taxonomy.class_to_bin_index(classes), dtype=np.int64)
    names = _bin_names(taxonomy)  # fall back on Taxonomy.bin_of(cls)
    return np.asarray([names.index(taxonomy.bin_of(c)) for c in classes], dtype=np.int64)


def _bin_probs(taxonomy: Any, p: np.ndarray, classes: Sequence[str], bin_index: np.ndarray, n_bins: int) -> np.ndarray:
    if hasattr(taxonomy, "bin_probabilities"):
        bp = taxonomy.bin_probabilities(p, list(classes))
        if isinstance(bp, tuple):  # (probs, bin_names) form
            bp = bp[0]
        bp = np.asarray(bp, dtype=np.float64)
    else:
        # Sum of the class probabilities per bin, as a [N,C] @ [C,B] one-hot product.
        onehot = np.zeros((p.shape[1], n_bins))
        onehot[np.arange(p.shape[1]), bin_index] = 1.0
        bp = p @ onehot
    if bp.shape != (p.shape[0], n_bins):
        raise ValueError(f"bin probabilities have shape {bp.shape}, expected {(p.shape[0], n_bins)}")
    return bp


def _bin_view(probs: Any, labels: Any, classes: Sequence[str], taxonomy: Any) -> dict[str, Any]:
    """Everything the bin-level functions need, computed once."""
    classes = list(classes)
    p, y = check_inputs(probs, labels, num_classes=len(classes))
    names = _bin_names(taxonomy)
    bidx = _bin_index(taxonomy, classes)
    bp = _bin_probs(taxonomy, p, classes, bidx, len(names))
    d = decide(bp, names, 0.0)  # the bin and its confidence do not depend on the threshold
    return {
        "p": p,
        "y": y,
        "names": names,
        "bin_probs": bp,
        "true_bin": bidx[y],
        "bin_pred": d.bin_index,
        "bin_conf": d.confidence,
        "class_pred": p.argmax(axis=1),
        "class_conf": p.max(axis=1),
    }


def _accepted_accuracy(correct: np.ndarray, accepted: np.ndarray) -> float | None:
    n = int(accepted.sum())
    return float(correct[accepted].mean()) if n else None


def coverage_curve(
    probs: Any,
    labels: Any,
    taxonomy: Any,
    classes: Sequence[str],
    thresholds: Any = None,
) -> dict[str, np.ndarray]:
    """Coverage and accepted accuracy as the decision threshold sweeps ``[0, 1]``.

    Returns NumPy arrays over ``thresholds`` (default ``np.linspace(0, 1, 101)``)::

        {"thresholds",
         "coverage":        share of items whose top *bin* probability >= t,
         "bin_accuracy":    share of those accepted items whose decided bin is their true bin,
         "class_coverage":  share of items whose top *class* probability >= t,
         "class_accuracy":  share of those items whose arg-max class is right}

    An accuracy is NaN where nothing is accepted (matplotlib leaves a gap there).

    Example::

        curve = coverage_curve(probs, labels, taxonomy, classes)
        plot_coverage(curve, "coverage.png", threshold=0.9)
    """
    v = _bin_view(probs, labels, classes, taxonomy)
    t = np.linspace(0.0, 1.0, 101) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    bin_ok = (v["bin_pred"] == v["true_bin"]).astype(np.float64)
    cls_ok = (v["class_pred"] == v["y"]).astype(np.float64)

    def sweep(conf: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        acc_mask = accepts(conf[None, :], t[:, None])  # [T, N]; fine for evaluation-sized N
        n_acc = acc_mask.sum(axis=1)
        n_ok = (acc_mask * ok[None, :]).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(n_acc > 0, n_ok / np.maximum(n_acc, 1), np.nan)
        return n_acc / conf.size, acc

    cov, bacc = sweep(v["bin_conf"], bin_ok)
    ccov, cacc = sweep(v["class_conf"], cls_ok)
    return {"thresholds": t, "coverage": cov, "bin_accuracy": bacc, "class_coverage": ccov, "class_accuracy": cacc}


def _per_bin(true_bin: np.ndarray, bin_pred: np.ndarray, accepted: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts put into each bin and, of those, how many belong to another bin."""
    put = np.bincount(bin_pred[accepted], minlength=n_bins)
    bad = np.bincount(bin_pred[accepted & (bin_pred != true_bin)], minlength=n_bins)
    return put, bad


def decision_analysis(
    probs: Any,
    labels: Any,
    classes: Sequence[str],
    taxonomy: Any,
    threshold: float = 0.9,
) -> dict[str, Any]:
    """What the bin decisions would do at ``threshold``: coverage, accuracy, contamination.

    An item is accepted into its bin (arg-max of the bin probabilities) when that bin's
    probability is ``>= threshold``; otherwise it goes to manual sort. Returns (JSON-ready)::

        {"threshold", "n", "accepted", "manual_sort", "coverage",
         "accepted_bin_accuracy", "accepted_class_accuracy",   # None if nothing accepted
         "bin_names",
         "bin_confusion_matrix": [[...]],   # accepted items; rows true bin, cols decided bin
         "manual_sort_by_true_bin": {bin: count},
         "per_bin": [{"bin", "count", "contaminated", "contamination"}, ...],
         "max_contamination"}

    ``contamination`` of a bin = share of the items put into it whose true bin is another;
    a bin that received nothing reports 0.0 with ``count`` 0.

    Example::

        d = decision_analysis(probs, labels, classes, taxonomy, threshold=0.9)
        print(f"{d['coverage']:.1%} sorted automatically, {d['manual_sort']} to manual sort")
    """
    v = _bin_view(probs, labels, classes, taxonomy)
    names, true_bin, bin_pred = v["names"], v["true_bin"], v["bin_pred"]
    nb = len(names)
    accepted = decide(v["bin_probs"], names, threshold).accepted
    n = int(v["y"].size)
    n_acc = int(accepted.sum())

    cm = np.zeros((nb, nb), dtype=np.int64)
    np.add.at(cm, (true_bin[accepted], bin_pred[accepted]), 1)
    put, bad = _per_bin(true_bin, bin_pred, accepted, nb)
    per_bin = [
        {
            "bin": names[b],
            "count": int(put[b]),
            "contaminated": int(bad[b]),
            "contamination": float(bad[b] / put[b]) if put[b] else 0.0,
        }
        for b in range(nb)
    ]
    manual = np.bincount(true_bin[~accepted], minlength=nb)
    return {
        "threshold": float(threshold),
        "n": n,
        "accepted": n_acc,
        "manual_sort": n - n_acc,
        "coverage": n_acc / n,
        "accepted_bin_accuracy": _accepted_accuracy(bin_pred == true_bin, accepted),
        "accepted_class_accuracy": _accepted_accuracy(v["class_pred"] == v["y"], accepted),
        "bin_names": names,
        "bin_confusion_matrix": cm.tolist(),
        "manual_sort_by_true_bin": {names[b]: int(manual[b]) for b in range(nb)},
        "per_bin": per_bin,
        "max_contamination": max((r["contamination"] for r in per_bin), default=0.0),
    }


def suggest_threshold(
    probs: Any,
    labels: Any,
    classes: Sequence[str],
    taxonomy: Any,
    target_contamination: float,
    bin_name: str | None = None,
) -> dict[str, Any]:
    """The lowest threshold keeping a bin's contamination at or below a target (on these data).

    Candidates are the sorted unique top-bin confidences plus 1.0; contamination is not
    monotone in the threshold, so every candidate is checked, lowest first. ``bin_name``
    picks one bin (e.g. ``"recyclable"``); ``None`` means the worst bin must meet the target.
    Use validation data, then confirm on test data with :func:`decision_analysis`.

    Returns ``{"threshold", "coverage", "contamination", "achievable"}``. When no candidate
    meets the target, ``achievable`` is False and the candidate with the lowest
    contamination (lowest threshold among ties) is returned.

    Example::

        s = suggest_threshold(val_probs, val_labels, classes, taxonomy, 0.02, "recyclable")
        if s["achievable"]:
            threshold = s["threshold"]
    """
    from wastenet.errors import ConfigError

    if not 0.0 <= target_contamination <= 1.0:
        raise ValueError(f"target_contamination must be in [0, 1], got {target_contamination}")
    v = _bin_view(probs, labels, classes, taxonomy)
    names, nb = v["names"], len(v["names"])
    if bin_name is not None and bin_name not in names:
        raise ConfigError(f"unknown bin {bin_name!r}; the taxonomy has {', '.join(names)}")

    conf = v["bin_conf"]
    n = conf.size
    # `decide` accepts an item at threshold t exactly when conf + TOLERANCE >= t (`accepts`), so
    # the items accepted at t are a prefix of the items sorted by that key, most confident
    # first: cumulative counts along it give every candidate at once.
    key = conf + TOLERANCE
    order = np.argsort(-key, kind="stable")
    onehot_put = np.zeros((n, nb))
    onehot_put[np.arange(n), v["bin_pred"][order]] = 1.0
    wrong = (v["bin_pred"] != v["true_bin"])[order].astype(np.float64)
    cum_put = np.vstack([np.zeros(nb), np.cumsum(onehot_put, axis=0)])  # [n+1, B]
    cum_bad = np.vstack([np.zeros(nb), np.cumsum(onehot_put * wrong[:, None], axis=0)])

    candidates = np.unique(np.append(conf, 1.0))  # sorted ascending
    n_acc = n - np.searchsorted(np.sort(key), candidates, side="left")  # count of key >= t
    put, bad = cum_put[n_acc], cum_bad[n_acc]  # [K, B]
    contam = np.where(put > 0, bad / np.maximum(put, 1.0), 0.0)
    score = contam[:, names.index(bin_name)] if bin_name is not None else contam.max(axis=1)

    ok = np.flatnonzero(score <= target_contamination)
    achievable = ok.size > 0
    k = int(ok[0]) if achievable else int(np.argmin(score))  # argmin: first of ties
    return {
        "threshold": float(candidates[k]),
        "coverage": float(n_acc[k] / n),
        "contamination": float(score[k]),
        "achievable": bool(achievable),
    }
