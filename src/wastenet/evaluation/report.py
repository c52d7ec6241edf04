"""PNG plots (matplotlib, Agg canvas, no pyplot) and a plain-markdown ``report.md`` for a run.

One module (~470 lines) on purpose: the figures and the markdown sections that show them are
named side by side here, so a figure cannot drift into the wrong section (one did, when the
runner spelled a figure's key differently).

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

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from wastenet.decision import DEFAULT_THRESHOLD
from wastenet.files import write_atomic

__all__ = ["plot_confusion_matrix", "plot_curves", "plot_reliability", "plot_coverage", "write_report"]


def _figure(nrows: int = 1, ncols: int = 1, **kw: Any) -> tuple[Any, Any]:
    """A figure on an explicit Agg canvas, without pyplot.

    No pyplot means no global backend switch and no figure registry to leak or to race on
    (the service and notebooks may draw concurrently); runs stay headless.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return write_atomic(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=110,
                                                    bbox_inches="tight"))


def _num(value: Any) -> float:
    """A float from a history cell (history.csv gives strings, maybe empty): NaN if absent."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# --------------------------------------------------------------------------- plots


def plot_confusion_matrix(
    cm: Any,
    classes: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "Confusion matrix (rows: true, columns: predicted)",
) -> Path:
    """Save an annotated confusion matrix (counts; colour = share of the true class's row).

    Colouring by row share keeps rare classes readable next to frequent ones.

    Example::

        plot_confusion_matrix(m["confusion_matrix"], m["classes"], "runs/x/confusion_matrix.png")
    """
    cm = np.asarray(cm, dtype=np.int64)
    c = len(classes)
    if cm.shape != (c, c):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {c} classes")
    row = cm.sum(axis=1, keepdims=True)
    share = np.where(row > 0, cm / np.maximum(row, 1), 0.0)
    size = max(4.5, 0.45 * c + 2.5)  # grows with the class count (30 for the household set)
    fig, axs = _figure(figsize=(size, size - size / 10))  # a tenth less tall than wide
    ax = axs[0, 0]
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    font = 9 if c <= 10 else (7 if c <= 20 else 5.5)
    for i in range(c):
        for j in range(c):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=font,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(classes, rotation=45 if c <= 10 else 90, ha="right" if c <= 10 else "center", fontsize=font + 1)
    ax.set_yticklabels(classes, fontsize=font + 1)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def _stage_spans(epochs: list[float], stages: list[str]) -> list[tuple[str, float, float]]:
    """Contiguous runs of the same stage as (stage, first epoch, last epoch)."""
    spans: list[tuple[str, float, float]] = []
    for e, s in zip(epochs, stages):
        if spans and spans[-1][0] == s:
            spans[-1] = (s, spans[-1][1], e)
        else:
            spans.append((s, e, e))
    return spans


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Save loss, accuracy and learning-rate curves per epoch, with training stages shaded.

    ``history`` rows have ``epoch, stage, lr, train_loss, val_loss, val_acc`` (strings from
    history.csv are fine); ``train_acc`` and other columns are optional, empty cells are gaps.

    Example::

        rows = list(csv.DictReader(open("runs/x/history.csv")))
        plot_curves(rows, "runs/x/curves.png")
    """
    rows = list(history)
    epochs = [_num(r.get("epoch")) for r in rows]
    # Fall back on the row number where the epoch is missing.
    epochs = [float(i + 1) if math.isnan(e) else e for i, e in enumerate(epochs)]
    stages = [str(r.get("stage") or "") for r in rows]

    def col(name: str) -> np.ndarray:
        return np.array([_num(r.get(name)) for r in rows], dtype=np.float64)

    def has(a: np.ndarray) -> bool:
        return bool(np.isfinite(a).any())

    lr = col("lr")
    panels = 3 if has(lr) else 2
    fig, axs = _figure(1, panels, figsize=(5.0 * panels, 3.8))
    axes = list(axs[0])
    x = np.asarray(epochs)
    series = [
        (axes[0], "Loss", [("train_loss", "train"), ("val_loss", "val")]),
        (axes[1], "Accuracy", [("train_acc", "train"), ("val_acc", "val")]),
    ]
    for ax, ylabel, cols in series:
        for name, label in cols:
            y = col(name)
            if has(y):
                ax.plot(x, y, marker="o", markersize=3, label=label)
        ax.set_ylabel(ylabel)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    if panels == 3:
        ax = axes[2]
        ax.plot(x, lr, marker="o", markersize=3, color="tab:purple")
        if np.nanmin(lr) > 0:
            ax.set_yscale("log")
        ax.set_ylabel("Learning rate")

    spans = _stage_spans(epochs, stages)
    shades = ["#f2f2f2", "#dde8f5"]
    for ax in axes:
        ax.set_xlabel("Epoch")
        ax.grid(True, alpha=0.3)
        if len(spans) > 1 or (spans and spans[0][0]):
            for k, (stage, lo, hi) in enumerate(spans):
                ax.axvspan(lo - 0.5, hi + 0.5, color=shades[k % 2], zorder=0)
                if k:
                    ax.axvline(lo - 0.5, color="grey", linestyle="--", linewidth=0.8)
    if spans and spans[0][0]:
        # Stage names once, on the first panel, at the top of each span.
        for stage, lo, hi in spans:
            axes[0].text((lo + hi) / 2, 1.01, stage, transform=axes[0].get_xaxis_transform(),
                         ha="center", va="bottom", fontsize=7, color="dimgrey")
    fig.tight_layout()
    return _save(fig, path)


def _reliability_panel(ax: Any, bins: Mapping[str, Any], label: str, color: str) -> None:
    edges = np.asarray(bins["edges"], dtype=np.float64)
    acc = np.asarray(bins["accuracy"], dtype=np.float64)
    conf = np.asarray(bins["confidence"], dtype=np.float64)
    count = np.asarray(bins["count"])
    width = np.diff(edges)
    filled = count > 0
    ax.bar(edges[:-1][filled], acc[filled], width=width[filled], align="edge", color=color,
           edgecolor="black", linewidth=0.5, alpha=0.8, label=f"{label} (ECE {bins['ece']:.3f})")
    # Red gap between the bin's mean confidence and its accuracy.
    ax.bar(edges[:-1][filled], conf[filled] - acc[filled], bottom=acc[filled], width=width[filled],
           align="edge", color="tab:red", alpha=0.25, edgecolor="tab:red", linewidth=0.5, label="gap")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("Confidence")
    ax.set_ylabel("Accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_aspect("equal")


def plot_reliability(
    bins_before: Mapping[str, Any],
    bins_after: Mapping[str, Any] | None,
    path: str | os.PathLike[str],
) -> Path:
    """Save a reliability diagram before (and after) temperature scaling, ECE in the legends.

    ``bins_*`` are :func:`wastenet.evaluation.calibration.reliability_bins` results.

    Example::

        plot_reliability(reliability_bins(softmax(z), y), reliability_bins(softmax(z, T), y), "rel.png")
    """
    panels = [(bins_before, "before scaling", "tab:blue")]
    if bins_after is not None:
        panels.append((bins_after, "after scaling", "tab:green"))
    fig, axes = _figure(1, len(panels), figsize=(4.6 * len(panels), 4.6))
    for ax, (bins, label, color) in zip(axes[0], panels):
        _reliability_panel(ax, bins, label, color)
        ax.set_title(f"Reliability, {label}")
    fig.tight_layout()
    return _save(fig, path)


def plot_coverage(curve: Mapping[str, Any], path: str | os.PathLike[str], threshold: Any = DEFAULT_THRESHOLD) -> Path:
    """Save coverage and accepted accuracy against the decision threshold (bin and class level).

    ``curve`` is :func:`wastenet.evaluation.decisions.coverage_curve`'s result.

    Example::

        plot_coverage(coverage_curve(probs, labels, taxonomy, classes), "coverage.png", 0.85)
    """
    t = np.asarray(curve["thresholds"], dtype=np.float64)
    fig, axs = _figure(figsize=(6.0, 4.2))
    ax = axs[0, 0]
    lines = [
        ("coverage", "coverage (bin)", "tab:blue", "-"),
        ("bin_accuracy", "accepted accuracy (bin)", "tab:green", "-"),
        ("class_coverage", "coverage (class)", "tab:blue", ":"),
        ("class_accuracy", "accepted accuracy (class)", "tab:green", ":"),
    ]
    for key, label, color, style in lines:
        if key in curve:
            ax.plot(t, np.asarray(curve[key], dtype=np.float64), color=color, linestyle=style, label=label)
    # one line per distinct threshold (per-bin thresholds may differ)
    values = sorted(set(threshold.values())) if isinstance(threshold, Mapping) else [threshold]
    for k, t in enumerate(values):
        ax.axvline(float(t), color="tab:red", linestyle="--", linewidth=1,
                   label=f"threshold {_threshold(threshold)}" if k == 0 else None)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Decision threshold")
    ax.set_ylabel("Share")
    ax.set_title("Coverage vs accuracy of automatic decisions")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- markdown


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _f(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.1%}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _threshold(t: Any) -> str:
    """One threshold (``0.85``) or a per-bin mapping (``landfill 0.5, recyclable 0.95``)."""
    if isinstance(t, Mapping):
        return ", ".join(f"{b} {float(v):g}" for b, v in sorted(t.items()))
    return f"{float(t):g}"


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


def _image(alt: str, rel: str) -> str:
    return f"![{alt}]({Path(rel).as_posix()})"


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
