"""The field report: tables, confidence of right vs wrong, reliability, confident mistakes.

    write_field_report("runs/x/field/report.md", results, title="mobilenetv2 on field", root=data_dir)

``results`` maps a view (``full``, ``crop``, ``floor``) to :func:`wastenet.evaluation.field.score`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from wastenet.evaluation.figures import figure, save
from wastenet.evaluation.markdown import image, num, pct, table
from wastenet.files import write_atomic

GALLERY = 8


def plot_confidence_split(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Histograms of the bin confidence of right and wrong bin calls (the overlap is the trouble)."""
    fig, axs = figure(figsize=(5.5, 3.2))
    ax = axs[0][0]
    right = [r["bin_confidence"] for r in rows if r["bin_ok"]]
    wrong = [r["bin_confidence"] for r in rows if not r["bin_ok"]]
    edges = np.linspace(0, 1, 21)
    ax.hist([right, wrong], bins=edges, label=[f"right bin ({len(right)})", f"wrong bin or no bin ({len(wrong)})"],
            color=["tab:green", "tab:red"], alpha=0.8)
    ax.set_xlabel("bin confidence")
    ax.set_ylabel("items")
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_reliability_rows(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], n_bins: int = 10) -> Path:
    """Reliability of the class confidence on class-mapped items: accuracy per confidence bin."""
    fig, axs = figure(figsize=(4, 4))
    ax = axs[0][0]
    conf = np.array([r["confidence"] for r in rows], dtype=float)
    ok = np.array([r["class_ok"] for r in rows], dtype=float)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(conf, edges) - 1, 0, n_bins - 1)
    mids, accs, counts = [], [], []
    for b in range(n_bins):
        m = which == b
        if m.any():
            mids.append((edges[b] + edges[b + 1]) / 2)
            accs.append(ok[m].mean())
            counts.append(int(m.sum()))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.bar(mids, accs, width=1 / n_bins * 0.9, color="tab:blue", alpha=0.8)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    return save(fig, path)


def _gallery(rows: Sequence[Mapping[str, Any]], view: str, out: Path, root: str | Path | None) -> list[str]:
    """Markdown lines for the most confident wrong automatic decisions, with thumbnails."""
    wrong = sorted((r for r in rows if r["accepted"] and not r["decision_ok"]),
                   key=lambda r: -float(r["bin_confidence"]))[:GALLERY]
    if not wrong:
        return ["No confident mistakes: every automatic decision was right.", ""]
    lines = []
    if root is not None and view == "full":
        from wastenet.data.images import ImageDecodeError, load_image

        folder = out / "mistakes"
        folder.mkdir(exist_ok=True)
        for n, r in enumerate(wrong):
            try:
                img = load_image(Path(root) / r["path"])
            except ImageDecodeError:
                continue
            img.thumbnail((240, 240))
            name = f"{view}-{n:02d}.jpg"
            img.save(folder / name, quality=85)
            lines.append(image(f"{r['path']}: {r['label']} {r['confidence']:.2f}", f"mistakes/{name}"))
        lines.append("")
    lines.append(table(["path", "target", "said", "confidence", "decision", "bin confidence"],
                        [[r["path"], r["target"], r["label"], num(r["confidence"], 3), r["decision"],
                          num(r["bin_confidence"], 3)] for r in wrong]))
    return lines + [""]


def write_field_report(path: str | os.PathLike[str], results: Mapping[str, Mapping[str, Any]], *, title: str,
                       root: str | Path | None = None) -> Path:
    """One section per view: headline figures, per-class and per-bin tables, figures, mistakes."""
    out_path = Path(path)
    out = out_path.parent
    lines = [f"# {title}", "",
             "Field evaluation (`wastenet eval --class-map`): every figure is what `predict` would do.", ""]
    for view, r in results.items():
        lines += [f"## View: {view} ({r['n']} images, {r['errors']} unreadable)", ""]
        if r.get("unknown_threshold") is not None:
            lines += [f"Unknown-item threshold {r['unknown_threshold']:.4g}"
                      + (" (item search: fitted on searched validation photos where the model has one)."
                         if r.get("search") else " (whole photos)."), ""]
        lines.append(table(["figure", "value"], [
            ["class accuracy", num(r["class_accuracy"], 3)],
            ["bin accuracy", num(r["bin_accuracy"], 3)],
            ["coverage (auto-sorted)", pct(r["coverage"])],
            ["manual-sort rate", pct(r["manual_sort_rate"])],
            ["... of which unknown-item rule", pct(r.get("manual_sort_unknown"))],
            ["... of which low confidence", pct(r.get("manual_sort_low_confidence"))],
            ["auto-sorted items in the right class", num(r["auto_sorted_class_accuracy"], 3)],
            ["auto-sorted items in the right bin", num(r["auto_sorted_bin_accuracy"], 3)],
            ["unknown items sent to manual sort", num(r["unknown_rejected"], 3)],
            ["worst bin contamination", pct(r["max_contamination"])],
        ]))
        lines += ["", "### Per class", ""]
        lines.append(table(["foreign class", "target", "n", "class acc", "bin acc", "manual sort", "auto right", "called"],
                            [[c["foreign"], c["target"], c["n"], num(c["class_accuracy"], 3), num(c["bin_accuracy"], 3),
                              pct(c["manual_sort"]), num(c["auto_sorted_right"], 3),
                              ", ".join(f"{k} {v}" for k, v in list(c["called"].items())[:4])]
                             for c in r["per_class"]]))
        lines += ["", "### Per bin (automatic decisions)", ""]
        lines.append(table(["bin", "items put in", "wrong", "contamination"],
                            [[b["bin"], b["count"], b["contaminated"], pct(b["contamination"])] for b in r["per_bin"]]))
        lines.append("")
        class_rows = [x for x in r["rows"] if x["target"] != "unknown" and not x["target"].startswith("bin:")]
        rel = plot_reliability_rows(class_rows, out / f"reliability-{view}.png")
        for name in (r.get("figures") or {}).values():
            lines += [image(name, name), ""]
        lines += [image("reliability", rel.name), ""]
        lines += ["### Most confident wrong decisions", ""]
        lines += _gallery(r["rows"], view, out, root)
    write_atomic(out_path, "\n".join(lines) + "\n")
    return out_path
