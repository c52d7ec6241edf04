"""What the bin decisions do on labelled data: coverage, contamination, threshold suggestion.

Every number here comes from :func:`wastenet.decision.decide`, the rule ``predict`` and
``serve`` apply, so a report's coverage is what the deployed model does. Pure NumPy.

A taxonomy is any object with ``bin_names`` (a list), ``class_to_bin_index(classes) -> int
array [C]`` and ``bin_probabilities(probs, classes) -> [N, B]`` (a :class:`~wastenet.taxonomy.Taxonomy`).
Example::

    from wastenet.evaluation.decisions import decision_analysis, suggest_threshold
    d = decision_analysis(probs, test_labels, classes, taxonomy, threshold=0.85)
    print(d["coverage"], d["per_bin"])
    s = suggest_threshold(val_probs, val_labels, classes, taxonomy, target_contamination=0.01)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from wastenet.decision import DEFAULT_THRESHOLD, TOLERANCE, Threshold, accepts, decide
from wastenet.errors import ConfigError
from wastenet.evaluation.metrics import check_inputs

__all__ = ["coverage_curve", "decision_analysis", "suggest_threshold"]


def _bin_view(probs: Any, labels: Any, classes: Sequence[str], taxonomy: Any) -> dict[str, Any]:
    """Everything the bin-level functions need, computed once."""
    classes = list(classes)
    p, y = check_inputs(probs, labels, num_classes=len(classes))
    names = list(taxonomy.bin_names)
    bidx = np.asarray(taxonomy.class_to_bin_index(classes), dtype=np.int64)
    bp = np.asarray(taxonomy.bin_probabilities(p, classes), dtype=np.float64)
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
        plot_coverage(curve, "coverage.png", threshold=DEFAULT_THRESHOLD)
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
    threshold: Threshold = DEFAULT_THRESHOLD,
    unknown: Any = None,
) -> dict[str, Any]:
    """What the bin decisions would do at ``threshold``: coverage, accuracy, contamination.

    Items are decided by :func:`wastenet.decision.decide` (``threshold``: one float or
    ``{bin: threshold}``; ``unknown``: optional boolean mask of items sent to manual sort as
    out of distribution). Returns (JSON-ready)::

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

        d = decision_analysis(probs, labels, classes, taxonomy, threshold=0.85)
        print(f"{d['coverage']:.1%} sorted automatically, {d['manual_sort']} to manual sort")
    """
    v = _bin_view(probs, labels, classes, taxonomy)
    names, true_bin, bin_pred = v["names"], v["true_bin"], v["bin_pred"]
    nb = len(names)
    accepted = decide(v["bin_probs"], names, threshold, unknown).accepted
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
        "threshold": threshold if isinstance(threshold, Mapping) else float(threshold),
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
