"""The plain-markdown ``report.md`` of a run: metrics, calibration, the decision section, the figures.

The figures themselves are drawn in :mod:`wastenet.evaluation.figures` (re-exported here); the
sections that show them are named in ``_FIGURE_TITLES`` below, by the same keys the runner uses,
so a figure cannot drift into the wrong section (one did, when the runner spelled a key differently).

Inputs are the dicts produced by :mod:`wastenet.evaluation.metrics` and
:mod:`wastenet.evaluation.calibration` and
:mod:`wastenet.evaluation.decisions`, so the report reads the same for PyTorch and ONNX.

Example::

    from wastenet.evaluation import report
    report.plot_confusion_matrix(m["confusion_matrix"], m["classes"], run / "confusion_matrix.png")
    report.plot_curves(history_rows, run / "curves.png")
    report.write_report(run / "report.md", title="densenet121 on trashnet", metrics=m,
                        figures={"confusion_matrix": "confusion_matrix.png", "curves": "curves.png"})
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from wastenet.evaluation.figures import plot_confusion_matrix, plot_coverage, plot_curves, plot_reliability
from wastenet.evaluation.figures import threshold_label as _threshold
from wastenet.evaluation.markdown import cell as _cell
from wastenet.evaluation.markdown import image as _image
from wastenet.evaluation.markdown import num as _f
from wastenet.evaluation.markdown import pct as _pct
from wastenet.evaluation.markdown import table as _table
from wastenet.files import write_atomic

__all__ = ["plot_confusion_matrix", "plot_curves", "plot_reliability", "plot_coverage", "write_report"]


# --------------------------------------------------------------------------- markdown


def bin_suggestion_section(s: Mapping[str, Any]) -> str:
    """The report.md section of a per-bin threshold suggestion (``suggest_bin_thresholds`` + ``confirmed``)."""
    from wastenet.evaluation.decisions import bin_suggestion_line

    confirmed = {r["bin"]: r for r in (s.get("confirmed") or {}).get("per_bin", [])}
    split = (s.get("confirmed") or {}).get("split", "evaluated split")
    rows = []
    for r in s["per_bin"]:
        c = confirmed.get(r["bin"], {})
        rows.append([r["bin"], _pct(r["target"]), f"{r['threshold']!r}", r["items"], _pct(r["coverage"]),
                     _pct(r["contamination"]), "yes" if r["achievable"] else "no",
                     _pct(c.get("coverage")), _pct(c.get("contamination"))])
    return "\n".join([
        "For each bin with a target, the lowest threshold keeping its contamination at or below the target on "
        "the validation split, chosen on its own (a bin's contamination depends on its own threshold only); "
        "the other bins keep theirs. Coverage is the share of the items predicted into that bin that it accepts.",
        "",
        f"`{bin_suggestion_line(s)}`",
        "",
        _table(["bin", "target", "threshold", "validation items", "validation coverage", "validation contamination",
                "achievable", f"{split} coverage", f"{split} contamination"], rows),
    ])


def _class_name(value: Any, classes: Sequence[str]) -> str:
    if isinstance(value, (int, np.integer)) and 0 <= int(value) < len(classes):
        return classes[int(value)]
    return str(value)


_FIGURE_TITLES = {
    "confusion_matrix": "Confusion matrix",
    "curves": "Training curves",
    "reliability": "Reliability diagram",
    "coverage": "Coverage vs threshold",
}


def write_report(
    path: str | os.PathLike[str],
    *,
    title: str,
    metrics: Mapping[str, Any],
    calibration: Mapping[str, Any] | None = None,
    decision: Mapping[str, Any] | None = None,
    figures: Mapping[str, str] | None = None,
    gallery: Sequence[Mapping[str, Any]] | None = None,
    extra_sections: Mapping[str, str] | None = None,
) -> Path:
    """Write a plain-markdown report and return its path.

    - ``metrics``: :func:`~wastenet.evaluation.metrics.classification_metrics` output.
    - ``calibration``: ``{"temperature", "ece_before", "ece_after"}`` (+ optional
      ``"nll_before"``, ``"nll_after"``, ``"n_bins"``).
    - ``decision``: :func:`~wastenet.evaluation.decisions.decision_analysis` output.
    - ``figures``: name -> PNG path relative to the report; ``confusion_matrix``,
      ``curves``, ``reliability`` and ``coverage`` go into their sections, others at the end.
    - ``gallery``: worst mistakes, each ``{"image", "predicted", "true", "loss"}`` plus
      optional ``"p_pred"`` (or ``"probability"``), ``"p_true"``, ``"heatmap"``; class
      indices are turned into names via ``metrics["classes"]``.
    - ``extra_sections``: heading -> markdown body, appended as is.

    Example::

        write_report("runs/x/report.md", title="densenet121 / trashnet", metrics=m,
                     calibration={"temperature": T, "ece_before": e0, "ece_after": e1},
                     decision=d, figures={"confusion_matrix": "confusion_matrix.png"})
    """
    figures = dict(figures or {})
    classes = list(metrics.get("classes") or [r["class"] for r in metrics.get("per_class", [])])
    used: set[str] = set()
    out: list[str] = [f"# {title}", ""]

    def figure(name: str) -> None:
        if name in figures:
            out.extend([_image(_FIGURE_TITLES.get(name, name), figures[name]), ""])
            used.add(name)

    # Headline
    out += ["## Summary", ""]
    if "n" in metrics:
        out += [f"Evaluated on {metrics['n']} images, {len(classes)} classes.", ""]
    out.append(_table(
        ["metric", "macro", "weighted"],
        [
            ["precision", _f(metrics.get("precision_macro")), _f(metrics.get("precision_weighted"))],
            ["recall", _f(metrics.get("recall_macro")), _f(metrics.get("recall_weighted"))],
            ["F1", _f(metrics.get("f1_macro")), _f(metrics.get("f1_weighted"))],
        ],
    ))
    out += ["", f"**Accuracy: {_f(metrics.get('accuracy'))}**", ""]

    # Per class
    if metrics.get("per_class"):
        out += ["## Per class", ""]
        out.append(_table(
            ["class", "precision", "recall", "F1", "support"],
            [[r["class"], _f(r["precision"]), _f(r["recall"]), _f(r["f1"]), r["support"]] for r in metrics["per_class"]],
        ))
        out.append("")
    if "confusion_matrix" in figures:
        out += ["## Confusion matrix", "", "Rows are the true class, columns the prediction.", ""]
        figure("confusion_matrix")
    if "curves" in figures:
        out += ["## Training curves", ""]
        figure("curves")

    # Calibration
    if calibration is not None or "reliability" in figures:
        out += ["## Calibration", ""]
        if calibration is not None:
            rows = [["temperature", _f(calibration.get("temperature"), 3)]]
            for key, label in [("ece_before", "ECE before scaling"), ("ece_after", "ECE after scaling"),
                               ("nll_before", "NLL before scaling"), ("nll_after", "NLL after scaling")]:
                if key in calibration:
                    rows.append([label, _f(calibration[key])])
            out.append(_table(["quantity", "value"], rows))
            out += ["", "Probabilities are `softmax(logits / temperature)`; the temperature was fitted "
                        "on the validation split (Guo et al., 2017).", ""]
        figure("reliability")

    # Decisions
    if decision is not None:
        names = list(decision["bin_names"])
        out += ["## Bin decisions", ""]
        out += [
            f"An item goes to the bin with the highest total probability when that total is at least "
            f"**{_threshold(decision['threshold'])}**; otherwise it goes to manual sort.",
            "",
            _table(["quantity", "value"], [
                ["threshold", _threshold(decision["threshold"])],
                ["coverage (sorted automatically)", f"{_pct(decision['coverage'])} ({decision['accepted']} of {decision['n']})"],
                ["accepted bin accuracy", _pct(decision.get("accepted_bin_accuracy"))],
                ["accepted class accuracy", _pct(decision.get("accepted_class_accuracy"))],
                ["manual sort", decision["manual_sort"]],
            ]),
            "",
            "Contamination = share of the items put into a bin that belong in another bin.",
            "",
            _table(["bin", "items put in", "wrong bin", "contamination", "manual sort (true bin)"], [
                [r["bin"], r["count"], r["contaminated"], _pct(r["contamination"]),
                 decision.get("manual_sort_by_true_bin", {}).get(r["bin"], "")]
                for r in decision["per_bin"]
            ]),
            "",
            "Accepted items, rows true bin, columns decided bin:",
            "",
            _table(["true bin / decided bin"] + names, [[names[i]] + list(row) for i, row in enumerate(decision["bin_confusion_matrix"])]),
            "",
        ]
    if "coverage" in figures:
        if decision is None:
            out += ["## Bin decisions", ""]
        figure("coverage")

    # Gallery
    if gallery:
        out += ["## Worst mistakes", "", "Misclassified test images with the highest loss (−log p(true class)).", ""]
        for k, g in enumerate(gallery, 1):
            pred = _class_name(g.get("predicted"), classes)
            true = _class_name(g.get("true"), classes)
            p_pred = g.get("p_pred", g.get("probability"))
            line = f"{k}. predicted **{_cell(pred)}**"
            if p_pred is not None:
                line += f" ({_pct(p_pred)})"
            line += f", true **{_cell(true)}**"
            if g.get("p_true") is not None:
                line += f" ({_pct(g['p_true'])})"
            line += f", loss {_f(g.get('loss'), 3)}"
            if g.get("image"):
                line += f" — `{Path(str(g['image'])).as_posix()}`"
            out += [line, ""]
            imgs = []
            if g.get("image"):
                imgs.append(_image(f"{true} predicted as {pred}", str(g["image"])))
            if g.get("heatmap"):
                imgs.append(_image("Grad-CAM", str(g["heatmap"])))
            if imgs:
                out += ["   " + " ".join(imgs), ""]

    # Anything else
    rest = [n for n in figures if n not in used]
    if rest:
        out += ["## Figures", ""]
        for name in rest:
            figure(name)
    for heading, body in (extra_sections or {}).items():
        out += [f"## {heading}", "", body.rstrip(), ""]

    return write_atomic(path, "\n".join(out).rstrip() + "\n")  # a half-written report never replaces a good one
