"""The PNG figures of a run (matplotlib, Agg canvas, no pyplot): confusion matrix, training curves,
reliability, coverage. Inputs are the dicts of :mod:`wastenet.evaluation.metrics`,
:mod:`~wastenet.evaluation.calibration` and :mod:`~wastenet.evaluation.decisions`::

    from wastenet.evaluation import figures
    figures.plot_confusion_matrix(m["confusion_matrix"], m["classes"], run / "confusion_matrix.png")
    figures.plot_curves(history_rows, run / "curves.png")

``figure()`` and ``save()`` are the canvas and the atomic write every figure uses (the field
report's too); :mod:`wastenet.evaluation.report` writes the ``report.md`` that shows them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from wastenet.decision import DEFAULT_THRESHOLD
from wastenet.files import write_atomic

__all__ = ["figure", "plot_confusion_matrix", "plot_coverage", "plot_curves", "plot_reliability", "save",
           "threshold_label"]


def figure(nrows: int = 1, ncols: int = 1, **kw: Any) -> tuple[Any, Any]:
    """A figure on an explicit Agg canvas, without pyplot.

    No pyplot means no global backend switch and no figure registry to leak or to race on
    (the service and notebooks may draw concurrently); runs stay headless.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def save(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write the figure to ``path`` (format from the suffix, PNG by default), atomically."""
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
    fig, axs = figure(figsize=(size, size - size / 10))  # a tenth less tall than wide
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
    return save(fig, path)


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
    fig, axs = figure(1, panels, figsize=(5.0 * panels, 3.8))
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
    return save(fig, path)


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
    fig, axes = figure(1, len(panels), figsize=(4.6 * len(panels), 4.6))
    for ax, (bins, label, color) in zip(axes[0], panels):
        _reliability_panel(ax, bins, label, color)
        ax.set_title(f"Reliability, {label}")
    fig.tight_layout()
    return save(fig, path)


def plot_coverage(curve: Mapping[str, Any], path: str | os.PathLike[str], threshold: Any = DEFAULT_THRESHOLD) -> Path:
    """Save coverage and accepted accuracy against the decision threshold (bin and class level).

    ``curve`` is :func:`wastenet.evaluation.decisions.coverage_curve`'s result.

    Example::

        plot_coverage(coverage_curve(probs, labels, taxonomy, classes), "coverage.png", 0.85)
    """
    t = np.asarray(curve["thresholds"], dtype=np.float64)
    fig, axs = figure(figsize=(6.0, 4.2))
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
                   label=f"threshold {threshold_label(threshold)}" if k == 0 else None)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Decision threshold")
    ax.set_ylabel("Share")
    ax.set_title("Coverage vs accuracy of automatic decisions")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def threshold_label(t: Any) -> str:
    """One threshold (``0.85``) or a per-bin mapping (``landfill 0.5, recyclable 0.95``)."""
    if isinstance(t, Mapping):
        return ", ".join(f"{b} {float(v):g}" for b, v in sorted(t.items()))
    return f"{float(t):g}"
