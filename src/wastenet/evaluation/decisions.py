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
    s = suggest_bin_thresholds(val_probs, val_labels, classes, taxonomy, {"recyclable": 0.02, "landfill": 0.3})
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from wastenet.decision import (
    DEFAULT_THRESHOLD,
    TOLERANCE,
    Threshold,
    accepts,
    bin_thresholds,
    check_threshold,
    decide,
    format_bin_thresholds,
    parse_bin_thresholds,
)
from wastenet.errors import ConfigError
from wastenet.evaluation.metrics import check_inputs

__all__ = [
    "bin_suggestion_line",
    "confirm_bin_thresholds",
    "contamination_targets",
    "coverage_curve",
    "decision_analysis",
    "suggest_bin_thresholds",
    "suggest_threshold",
]


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


def _sweep(v: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every candidate threshold at once: ``(candidates [K], accepted [K], put [K, B], contamination [K, B])``.

    Candidates are the sorted unique top-bin confidences plus 1.0; ``accepted[k]`` counts the items
    accepted at ``candidates[k]``, ``put[k, b]`` those of them put into bin ``b``.
    """
    conf, nb = v["bin_conf"], len(v["names"])
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
    return candidates, n_acc, put, contam


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
    names = v["names"]
    if bin_name is not None and bin_name not in names:
        raise ConfigError(f"unknown bin {bin_name!r}; the taxonomy has {', '.join(names)}")

    candidates, n_acc, _, contam = _sweep(v)
    score = contam[:, names.index(bin_name)] if bin_name is not None else contam.max(axis=1)

    ok = np.flatnonzero(score <= target_contamination)
    achievable = ok.size > 0
    k = int(ok[0]) if achievable else int(np.argmin(score))  # argmin: first of ties
    return {
        "threshold": float(candidates[k]),
        "coverage": float(n_acc[k] / v["bin_conf"].size),
        "contamination": float(score[k]),
        "achievable": bool(achievable),
    }


def contamination_targets(spec: Any, bin_names: Sequence[str] | None = None,
                          name: str = "--target-contamination") -> float | dict[str, float]:
    """A contamination target: one float (the worst bin) or per-bin targets ``{bin: target}``.

    ``spec`` is a number, a ``--bin-thresholds``-style string or YAML file (read by
    :func:`wastenet.decision.parse_bin_thresholds`), or a mapping; every target must be in
    ``[0, 1)`` and every bin one of ``bin_names``, else a one-line ConfigError (exit 2)::

        contamination_targets("0.01")                                   # 0.01
        contamination_targets("recyclable=0.02,landfill=0.3", names)    # {'recyclable': 0.02, 'landfill': 0.3}
    """
    if isinstance(spec, Mapping):
        targets: float | dict[str, float] = check_threshold(dict(spec), bin_names, name)  # type: ignore[assignment]
        if not targets:
            raise ConfigError(f"{name}: no bin targets given")
    else:
        try:
            targets = float(spec)
        except (TypeError, ValueError):
            targets = parse_bin_thresholds(str(spec), bin_names, name=name)
    if isinstance(targets, dict):
        for b, t in targets.items():
            if t >= 1.0:  # 1.0 would accept any bin content: not a target
                raise ConfigError(f"{name} for bin {b!r} must be in [0, 1), got {t}")
    elif not 0 <= targets < 1:
        raise ConfigError(f"{name} must be in [0, 1)")
    return targets


def _short_threshold(rejected: float, accepted: float) -> float:
    """The shortest decimal (2 places or more) that still accepts ``accepted`` and rejects
    ``rejected``: any threshold between the two decides the data alike, and a short one
    survives being printed and pasted as ``--bin-thresholds``."""
    for places in range(2, 16):
        t = math.floor(accepted * 10**places) / 10**places
        if not accepts(rejected, t):
            return t
    return accepted


def suggest_bin_thresholds(
    probs: Any,
    labels: Any,
    classes: Sequence[str],
    taxonomy: Any,
    targets: Mapping[str, float],
    base: Threshold = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """Per-bin thresholds: for each bin in ``targets``, the lowest threshold keeping that bin's
    contamination at or below its target (on these data); the other bins keep ``base``.

    An item predicted into bin ``b`` is accepted iff its bin confidence reaches ``t_b``, so bin
    ``b``'s contamination depends on ``t_b`` alone and each bin is chosen on its own, from the
    confidences of the items predicted into it (plus 1.0). The threshold reported is the shortest
    decimal deciding those items alike. A bin whose target no candidate meets reports
    ``achievable: False`` at its lowest contamination; a bin nothing was predicted into keeps
    ``base`` (``items: 0``, ``achievable: False``: the data show nothing). Returns::

        {"threshold": {bin: t},           # every bin, taxonomy order: decide/predict with it
         "coverage",                      # share of all items accepted at that mapping
         "achievable",                    # every targeted bin met its target
         "per_bin": [{"bin", "target", "threshold", "items", "coverage", "contamination",
                      "achievable"}, ...]}   # targeted bins; coverage = share of *its* items

    Use validation data, then confirm on test data with :func:`confirm_bin_thresholds`::

        s = suggest_bin_thresholds(val_probs, val_labels, classes, taxonomy, {"recyclable": 0.02})
        decide(bin_probs, taxonomy.bin_names, s["threshold"])
    """
    v = _bin_view(probs, labels, classes, taxonomy)
    names = v["names"]
    targets = contamination_targets(dict(targets), names)  # type: ignore[assignment]
    chosen = dict(zip(names, bin_thresholds(base, names).tolist()))
    candidates, _, put, contam = _sweep(v)
    rows = []
    for b, target in targets.items():  # type: ignore[union-attr]
        j = names.index(b)
        mine = v["bin_conf"][v["bin_pred"] == j]
        row: dict[str, Any] = {"bin": b, "target": float(target), "threshold": chosen[b], "items": int(mine.size),
                               "coverage": 0.0, "contamination": 0.0, "achievable": False}
        if mine.size:
            # bin b's decisions only change at its own items' confidences
            score = np.where(np.isin(candidates, mine) | (candidates == 1.0), contam[:, j], np.inf)
            ok = np.flatnonzero(score <= target)
            k = int(ok[0]) if ok.size else int(np.argmin(score))  # argmin: first of ties
            below = mine[~accepts(mine, candidates[k])]
            chosen[b] = _short_threshold(float(below.max()) if below.size else -math.inf, float(candidates[k]))
            row.update(threshold=chosen[b], coverage=float(put[k, j] / mine.size),
                       contamination=float(contam[k, j]), achievable=bool(ok.size))
        rows.append(row)
    accepted = decide(v["bin_probs"], names, chosen).accepted
    return {
        "threshold": chosen,
        "coverage": float(accepted.mean()) if accepted.size else 0.0,
        "achievable": all(r["achievable"] for r in rows),
        "per_bin": rows,
    }


def confirm_bin_thresholds(probs: Any, labels: Any, classes: Sequence[str], taxonomy: Any,
                           threshold: Mapping[str, float]) -> dict[str, Any]:
    """What a suggested per-bin mapping does on other (test) data, through :func:`decision_analysis`.

    Returns ``{"coverage", "max_contamination", "per_bin": [{"bin", "items", "count", "coverage",
    "contamination"}]}``: ``items`` were predicted into the bin, ``count`` of them accepted::

        s["confirmed"] = confirm_bin_thresholds(test_probs, test_labels, classes, taxonomy, s["threshold"])
    """
    at = decision_analysis(probs, labels, classes, taxonomy, threshold)
    predicted = decision_analysis(probs, labels, classes, taxonomy, 0.0)["per_bin"]  # t = 0 accepts every item
    return {
        "coverage": at["coverage"],
        "max_contamination": at["max_contamination"],
        "per_bin": [{"bin": r["bin"], "items": p["count"], "count": r["count"],
                     "coverage": r["count"] / p["count"] if p["count"] else 0.0, "contamination": r["contamination"]}
                    for r, p in zip(at["per_bin"], predicted)],
    }


def bin_suggestion_line(s: Mapping[str, Any]) -> str:
    """The one line ``wastenet eval`` prints for a :func:`suggest_bin_thresholds` result, ready to paste::

        suggested: --bin-thresholds recyclable=0.97,compostable=0.9,landfill=0.61 (validation: recyclable 1.8%
        contamination at 74% of its items, landfill 25.0% at 90%; test: recyclable 2.1% at 71%, landfill 22.0% at 88%)

    Only the targeted bins are described; with a ``confirmed`` entry its split follows.
    """
    def part(r: Mapping[str, Any], first: bool) -> str:
        if r.get("items") == 0:
            return f"{r['bin']} had no items"
        text = f"{r['bin']} {r['contamination']:.1%}" + (" contamination" if first else "")
        text += f" at {r['coverage']:.0%}" + (" of its items" if first else "")
        if r.get("achievable") is False:
            text += f" (target {r['target']:.1%} not met)"
        return text

    targeted = [r["bin"] for r in s["per_bin"]]
    line = f"suggested: --bin-thresholds {format_bin_thresholds(s['threshold'])} (validation: "
    line += ", ".join(part(r, i == 0) for i, r in enumerate(s["per_bin"]))
    confirmed = s.get("confirmed")
    if confirmed:
        rows = [r for r in confirmed["per_bin"] if r["bin"] in targeted]
        line += f"; {confirmed.get('split', 'evaluated split')}: " + ", ".join(part(r, False) for r in rows)
    return line + ")"
