"""Audits: a seeded random share of automatic decisions kept for review, and what they estimate.

A bin operator pays for one number: how much of what went into a bin belongs elsewhere. Manual-sort
photos cannot tell (a person sorted those); an automatic decision is never looked at again unless it
is audited. So the service keeps a random share of the automatic decisions (``--audit-rate``), a
reviewer labels them like manual-sort items, and the labelled audits estimate each bin's
contamination with a 95% Wilson interval.

The draw is provably random: ``audit_draw(seed, row_id)`` is a hash of the log's audit seed and the
decision's row id, so anyone holding the log can recompute every draw and see that the sample never
depended on confidence::

    u = audit_draw(seed=1234, row_id=17)          # in [0, 1)
    kind = "audit" if u < rate else "auto"
    low, high = wilson_interval(3, 40)            # 3 of 40 audited items were in the wrong bin
    stats = site_stats(rows)                      # rows from DecisionLog.stats_rows()

Torch-free and NumPy-free (stdlib only): ``wastenet review --stats`` runs on a bin computer.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

__all__ = ["ESTIMATE_NOTE", "format_estimate", "stats_table", "AUTO", "AUDIT", "MANUAL", "KINDS", "DEFAULT_AUDIT_RATE", "AuditDraw", "MIN_AUDITS_FOR_PERCENT",
           "audit_draw", "audit_kind", "check_audit_rate", "wilson_interval", "estimate", "site_stats"]

#: The ``kind`` of a decision row: sorted automatically, kept for review by the audit draw, or manual sort.
AUTO, AUDIT, MANUAL = "auto", "audit", "manual_sort"
KINDS = (AUTO, AUDIT, MANUAL)

#: Share of automatic decisions kept for review by default: 2 in 100.
DEFAULT_AUDIT_RATE = 0.02

#: Below this many labelled audits an estimate is shown as its interval, never as a bare percentage.
MIN_AUDITS_FOR_PERCENT = 30

#: What the estimates mean and what they do not: shown beside them (page, API, ``review --stats``).
ESTIMATE_NOTE = ("Contamination and class accuracy are estimated from labelled audits: a random share of the "
                 "automatically sorted items, drawn by a seeded hash of the row id, never by confidence. They "
                 "describe the automatically sorted stream only (manual-sort items are sorted by a person) and say "
                 "nothing of items nobody photographed. Intervals are 95% Wilson intervals; with fewer than "
                 f"{MIN_AUDITS_FOR_PERCENT} labelled audits only the interval is shown.")

_Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class AuditDraw:
    """How a log draws its audits: ``rate`` (share of automatic decisions kept) and the ``seed`` of the draw.

    >>> AuditDraw(rate=0.02, seed=1234).rate
    0.02
    """

    rate: float
    seed: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", check_audit_rate(self.rate))
        object.__setattr__(self, "seed", int(self.seed))


def check_audit_rate(rate: Any) -> float:
    """``rate`` as a float in [0, 1]; ``ValueError`` otherwise (0 turns audits off).

    >>> check_audit_rate("0.05")
    0.05
    """
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"the audit rate must be a number in [0, 1], got {rate!r}") from None
    if not (0.0 <= r <= 1.0) or math.isnan(r):
        raise ValueError(f"the audit rate must be in [0, 1], got {rate!r}")
    return r


def audit_draw(seed: int, row_id: int) -> float:
    """The audit draw of one decision: a uniform number in [0, 1) fixed by the seed and the row id.

    A hash rather than a running generator, so that several server processes sharing one log draw
    independently without coordination, and anyone can check every draw afterwards.

    >>> audit_draw(0, 1) == audit_draw(0, 1), 0.0 <= audit_draw(0, 1) < 1.0
    (True, True)
    """
    digest = hashlib.sha256(f"wastenet-audit:{int(seed)}:{int(row_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def audit_kind(decision: str, u: float, rate: float) -> str:
    """The row's ``kind``: manual sort stays manual sort; an automatic decision is an audit when ``u < rate``.

    >>> audit_kind("recyclable", 0.01, 0.02), audit_kind("recyclable", 0.5, 0.02), audit_kind("manual_sort", 0.0, 1.0)
    ('audit', 'auto', 'manual_sort')
    """
    if decision == MANUAL:
        return MANUAL
    return AUDIT if u < rate else AUTO


def wilson_interval(k: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (95% by default); ``(0, 1)`` for n = 0.

    Unlike the normal approximation it stays inside [0, 1] and keeps its coverage for small n and
    proportions near 0, which is where contamination lives.

    >>> [round(x, 3) for x in wilson_interval(0, 20)]
    [0.0, 0.161]
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n], got k={k}, n={n}")
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact at the ends: rounding leaves centre - half ~1e-18 at k = 0, and a true rate of 0 would fall outside
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def estimate(k: int, n: int) -> dict[str, Any]:
    """A proportion with its interval and the count behind it: ``{"value", "low", "high", "n", "k"}``.

    ``value`` is None when nothing was counted. Callers show ``value`` as a percentage only when
    ``n >= MIN_AUDITS_FOR_PERCENT`` (``"show_value"``), else the interval.
    """
    low, high = wilson_interval(k, n)
    return {"value": (k / n) if n else None, "low": low, "high": high, "n": n, "k": k,
            "show_value": n >= MIN_AUDITS_FOR_PERCENT}


def _new_group() -> dict[str, int]:
    return {"decisions": 0, "auto": 0, "audits": 0, "audits_labelled": 0, "audit_wrong_bin": 0,
            "audit_right_class": 0, "manual_sort": 0, "manual_reviewed": 0, "manual_model_right": 0,
            "manual_model_right_bin": 0}


def _count(group: dict[str, Any], row: Mapping[str, Any]) -> None:
    kind = row.get("kind") or (MANUAL if row.get("decision") == MANUAL else AUTO)
    if row.get("decision") == "error":
        return
    group["decisions"] += 1
    reviewed = row.get("reviewed_label")
    if kind == MANUAL:
        group["manual_sort"] += 1
        reason = row.get("reason") or "low_confidence"
        group.setdefault("manual_reasons", {})
        group["manual_reasons"][reason] = group["manual_reasons"].get(reason, 0) + 1
        if reviewed is not None:
            group["manual_reviewed"] += 1
            group["manual_model_right"] += int(reviewed == row.get("label"))
            group["manual_model_right_bin"] += int(row.get("reviewed_bin") == row.get("bin"))
        return
    group["auto"] += 1
    if kind == AUDIT:
        group["audits"] += 1
        if reviewed is not None:
            group["audits_labelled"] += 1
            group["audit_wrong_bin"] += int(row.get("reviewed_bin") != row.get("decision"))
            group["audit_right_class"] += int(reviewed == row.get("label"))


def _finish(group: dict[str, Any]) -> dict[str, Any]:
    n = group["decisions"]
    reasons = group.pop("manual_reasons", {})
    return {
        "decisions": n,
        "auto_share": group["auto"] / n if n else None,
        "manual_sort_share": group["manual_sort"] / n if n else None,
        "manual_sort_by_reason": {r: c / n for r, c in sorted(reasons.items())} if n else {},
        "audits_drawn": group["audits"],
        "audits_labelled": group["audits_labelled"],
        # share of labelled audits in this bin whose reviewed label belongs to another bin
        "contamination": estimate(group["audit_wrong_bin"], group["audits_labelled"]),
        # share of labelled audits whose reviewed label is the model's class
        "auto_class_accuracy": estimate(group["audit_right_class"], group["audits_labelled"]),
        # reviewed manual-sort items the model had right: what the threshold costs
        "manual_sort_model_right": estimate(group["manual_model_right"], group["manual_reviewed"]),
        "manual_sort_model_right_bin": estimate(group["manual_model_right_bin"], group["manual_reviewed"]),
    }


def site_stats(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Live figures per model version and per bin, from decision rows.

    Each row needs ``decision`` (a bin or ``manual_sort``; ``error`` rows are ignored), ``kind``,
    ``bin`` (the model's best bin), ``label``, ``reason``, ``reviewed_label``, ``reviewed_bin`` (the bin
    of the reviewed label) and ``model_id`` / ``model``. A decision counts in the bin it was put in, a
    manual-sort one in the bin the model would have chosen.

    Returns ``{"models": [{"model_id", "model", "all": {...}, "bins": {bin: {...}}}]}``, each figure
    group as :func:`_finish` builds it. Contamination estimates the automatically sorted stream only
    (manual-sort items are sorted by a person) and says nothing of items nobody photographed.
    """
    models: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("decision") == "error":
            continue
        key = row.get("model_id") or ""
        entry = models.setdefault(key, {"model_id": row.get("model_id"), "model": row.get("model"),
                                        "all": _new_group(), "bins": {}})
        if row.get("model"):
            entry["model"] = row.get("model")
        _count(entry["all"], row)
        put_in = row.get("decision") if row.get("decision") != MANUAL else row.get("bin")
        if put_in:
            _count(entry["bins"].setdefault(put_in, _new_group()), row)
    return {"models": [{"model_id": m["model_id"], "model": m["model"], "all": _finish(m["all"]),
                        "bins": {b: _finish(g) for b, g in sorted(m["bins"].items())}}
                       for m in models.values()]}


def format_estimate(est: Mapping[str, Any]) -> str:
    """An estimate as people should read it: ``'4.0% (1.1-13.5%, n=50)'``, or only its interval
    under :data:`MIN_AUDITS_FOR_PERCENT` items (``'0.0-16.1% (n=20)'``), ``'-'`` with none.

    >>> format_estimate(estimate(0, 20))
    '0.0-16.1% (n=20)'
    """
    if not est.get("n"):
        return "-"
    span = f"{100 * est['low']:.1f}-{100 * est['high']:.1f}%"
    if est.get("show_value"):
        return f"{100 * est['value']:.1f}% ({span}, n={est['n']})"
    return f"{span} (n={est['n']})"


def stats_table(stats: Mapping[str, Any]) -> str:
    """:func:`site_stats` as a plain-text table, one line per model version and bin (``review --stats``)."""
    header = ("model", "bin", "decisions", "auto", "manual", "audits", "labelled", "contamination",
              "auto class accuracy", "manual: model right")
    rows = []
    for m in stats.get("models", []):
        name = (m.get("model_id") or "?") + (f" {m['model']}" if m.get("model") else "")
        for bin_name, g in [("(all)", m["all"]), *m["bins"].items()]:
            rows.append((name, bin_name, str(g["decisions"]), _share(g["auto_share"]), _share(g["manual_sort_share"]),
                         str(g["audits_drawn"]), str(g["audits_labelled"]), format_estimate(g["contamination"]),
                         format_estimate(g["auto_class_accuracy"]), format_estimate(g["manual_sort_model_right"])))
    if not rows:
        return "no decisions logged"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _share(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"
