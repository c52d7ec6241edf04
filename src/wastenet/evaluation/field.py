"""Field evaluation: a trained model on someone else's photos, scored as a bin would be.

A foreign data set has its own class names. A class map says what each one means for our
model (``classes: {foreign: model_class | bin:NAME | unknown}``): a model class (right if the
model says that class), a bin only (right if the item goes to that bin), or ``unknown``
(right only if the item goes to manual sort). Items go through ``Classifier.predict``, the
same code as ``wastenet predict`` and ``serve``, so the figures describe what a bin would do::

    cmap = load_class_map("field.yaml", clf.classes, clf.taxonomy)
    items = field_items("../shared/data/field-drinkingwaste", cmap, boxes="labels.csv")
    result = evaluate_field(clf, items, "runs/x/field", view="full")      # or view="crop"

or, from the paths alone (``wastenet eval --class-map``, ``Evaluator.field``)::

    results = field_report_for("runs/x/best.pt", "../shared/data/field-drinkingwaste", "field.yaml",
                               boxes="labels.csv")

``--boxes CSV`` (``path,label,bbox`` with ``bbox = "xmin,ymin,xmax,ymax"``) also scores the
item crop, as a bin camera looking at a drop tray would see it, and "floor only" crops that
hold no item at all: those must go to manual sort (the unknown-item rule).
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import yaml
from PIL import Image

from wastenet.decision import UNKNOWN  # the decision rule's word for "not a kind it knows"
from wastenet.errors import ConfigError
from wastenet.files import check_output, write_atomic, write_csv_atomic
from wastenet.ood import NOT_AN_ITEM

# An item crop is the item's box grown by this share of its size on each side, then made
# square: a little context, as a drop-tray camera would frame it.
CROP_MARGIN = 0.15
VIEWS = ("full", "crop", "floor")


@dataclass(frozen=True)
class Target:
    """What a foreign class means: ``kind`` is ``class``, ``bin``, ``unknown``, ``new`` (a kind the
    model has no class for; ``name`` is its bin) or ``not_an_item`` (photos of no item, e.g. an empty
    floor: refused, as ``unknown``, and the site stream's reviewer says so)."""

    kind: str
    name: str = ""

    def __str__(self) -> str:
        return {"class": self.name, "bin": f"bin:{self.name}", "new": f"new:{self.name}",
                NOT_AN_ITEM: NOT_AN_ITEM}.get(self.kind, UNKNOWN)


def parse_target(value: str, classes: Sequence[str], bins: Sequence[str], allow_new: bool = False) -> Target:
    """``metal`` -> class, ``bin:landfill`` -> bin, ``unknown`` -> manual sort (``not_an_item`` too: a
    photo of no item, which the site stream's reviewer labels so); with ``allow_new``
    also ``new:landfill`` -> a kind the model has no class for, going to that bin (the site stream's
    reviewer teaches it; a field report has no use for it); ConfigError otherwise."""
    v = str(value).strip()
    if v == UNKNOWN:
        return Target(UNKNOWN)
    if v == NOT_AN_ITEM:
        return Target(NOT_AN_ITEM)
    if v.startswith("new:"):
        if not allow_new:
            raise ConfigError(f"class map: {v!r}: new:BIN (a kind the model has no class for) is for "
                              "benchmarks/site_stream.py, not a field report")
        return Target("new", v[4:].strip())
    if v.startswith("bin:"):
        b = v[4:]
        if b not in bins:
            raise ConfigError(f"class map: unknown bin {b!r}; the model's bins are {', '.join(bins)}")
        return Target("bin", b)
    if v not in classes:
        raise ConfigError(f"class map: {v!r} is not a class of the model ({', '.join(classes)}), "
                          f"nor bin:NAME nor unknown nor {NOT_AN_ITEM}")
    return Target("class", v)


def load_class_map(path: str | Path, classes: Sequence[str], bins: Sequence[str],
                   allow_new: bool = False) -> dict[str, Target]:
    """Read ``classes: {foreign: target}`` YAML; every target is checked against the model
    (``allow_new``: ``new:BIN`` targets too, see :func:`parse_target`)."""
    return {k: parse_target(v, classes, bins, allow_new) for k, v in read_class_map(path).items()}


def read_class_map(path: str | Path) -> dict[str, str]:
    """The ``classes: {foreign: target}`` mapping of a class map file, as written (not yet checked
    against a model); ConfigError when the file is missing, not YAML, or has no such mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"class map not found: {p}")
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse class map {p}: {' '.join(str(exc).split())[:120]}") from None
    mapping = doc.get("classes") if isinstance(doc, dict) else None
    if not isinstance(mapping, dict) or not mapping:
        raise ConfigError(f"class map {p} needs a non-empty 'classes: {{foreign: target}}' mapping")
    return {str(k): str(v) for k, v in mapping.items()}


def read_boxes(path: str | Path) -> dict[str, tuple[int, int, int, int]]:
    """``path,label,bbox`` CSV -> {relative path: (xmin, ymin, xmax, ymax)}."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"boxes file not found: {p}")
    boxes: dict[str, tuple[int, int, int, int]] = {}
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "bbox"} <= set(reader.fieldnames):
            raise ConfigError(f"{p}: a boxes file needs the columns path and bbox")
        for line, row in enumerate(reader, start=2):
            try:
                x0, y0, x1, y1 = (int(round(float(v))) for v in row["bbox"].split(","))
            except ValueError:
                raise ConfigError(f"{p}:{line}: bbox must be 'xmin,ymin,xmax,ymax', got {row['bbox']!r}") from None
            if x1 <= x0 or y1 <= y0:
                raise ConfigError(f"{p}:{line}: empty box {row['bbox']!r}")
            boxes[row["path"]] = (x0, y0, x1, y1)
    return boxes


@dataclass
class FieldItem:
    path: str            # relative to the data folder
    foreign: str         # the data set's own class name
    target: Target
    box: tuple[int, int, int, int] | None = None


def field_items(root: str | Path, class_map: Mapping[str, Target], boxes: str | Path | None = None) -> list[FieldItem]:
    """Every image of the class folders named in the class map (other folders: ConfigError)."""
    from wastenet.data.datasets import scan_folder

    rows, found = scan_folder(root, min_classes=1)
    unmapped = sorted(set(found) - set(class_map))
    if unmapped:
        raise ConfigError(f"the class map does not say what these classes mean: {', '.join(unmapped)}")
    box_of = read_boxes(boxes) if boxes else {}
    return [FieldItem(r.path, r.label, class_map[r.label], box_of.get(r.path)) for r in rows]


def item_crop(img: Image.Image, box: tuple[int, int, int, int], margin: float = CROP_MARGIN) -> Image.Image:
    """The square around the item's box, grown by ``margin`` of its size on each side."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = side / 2
    return img.crop((int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half))))


def floor_crop(img: Image.Image, box: tuple[int, int, int, int]) -> Image.Image | None:
    """The largest square of the photo that does not touch the item's box (None if too small).

    Looks left, right, above and below the box; a square under 64 px is no test of anything.
    """
    w, h = img.size
    x0, y0, x1, y1 = box
    candidates = [
        (0, 0, x0, h), (x1, 0, w, h), (0, 0, w, y0), (0, y1, w, h),  # strips beside the box
    ]
    best = None
    for l, t, r, b in candidates:
        side = min(r - l, b - t)
        if side >= 64 and (best is None or side > best[0]):
            cx, cy = (l + r) / 2, (t + b) / 2
            best = (side, (int(cx - side / 2), int(cy - side / 2), int(cx - side / 2) + side, int(cy - side / 2) + side))
    return None if best is None else img.crop(best[1])


def view_images(root: str | Path, items: Sequence[FieldItem], view: str) -> Iterator[tuple[FieldItem, Any]]:
    """(item, image or path) for one view; items without a box (crop/floor views) are skipped."""
    from wastenet.data.images import ImageDecodeError, load_image

    if view not in VIEWS:
        raise ConfigError(f"view must be one of {', '.join(VIEWS)}")
    root = Path(root)
    for it in items:
        if view == "full":
            yield it, str(root / it.path)
            continue
        if it.box is None:
            continue
        try:
            img = load_image(root / it.path)
        except ImageDecodeError as err:
            yield it, err  # reported as an error row, like predict does
            continue
        crop = item_crop(img, it.box) if view == "crop" else floor_crop(img, it.box)
        if crop is not None:
            yield it, crop


# --------------------------------------------------------------------------- scoring
def score(predictions: Sequence[Any], items: Sequence[FieldItem], classes: Sequence[str], taxonomy: Any,
          view: str) -> dict[str, Any]:
    """Class and bin accuracy, coverage, contamination per bin, manual-sort rate, as a bin would see them.

    On the floor view every target is ``unknown``: nothing is in view, so manual sort is right.
    """
    ok = [(p, it) for p, it in zip(predictions, items) if p.ok]
    n = len(ok)
    bins = list(taxonomy.bin_names)
    rows = []
    for p, it in ok:
        target = Target(UNKNOWN) if view == "floor" else it.target
        true_bin = (taxonomy.bin_of(target.name) if target.kind == "class"
                    else target.name if target.kind == "bin" else None)
        accepted = p.sorted
        rows.append({
            "path": it.path, "foreign": it.foreign, "target": str(target), "label": p.label,
            "confidence": p.confidence, "bin": p.bin, "bin_confidence": p.bin_confidence,
            "decision": p.decision, "reason": getattr(p, "reason", "") or "",
            "ood_score": getattr(p, "ood_score", None),  # re-threshold without a new pass
            "class_ok": target.kind == "class" and p.label == target.name,
            "bin_ok": true_bin is not None and p.bin == true_bin,
            "true_bin": true_bin, "accepted": accepted,
            "decision_ok": (not accepted) if true_bin is None else (accepted and p.bin == true_bin),
        })
    class_rows = [r for r in rows if r["target"] in classes]
    bin_rows = [r for r in rows if r["true_bin"] is not None]
    acc = [r for r in rows if r["accepted"]]
    per_bin = []
    for b in bins:
        put = [r for r in acc if r["decision"] == b]
        bad = [r for r in put if r["true_bin"] != b]
        per_bin.append({"bin": b, "count": len(put), "contaminated": len(bad),
                        "contamination": len(bad) / len(put) if put else 0.0})
    per_class = []
    for name in sorted({r["foreign"] for r in rows}):
        rs = [r for r in rows if r["foreign"] == name]
        per_class.append({
            "foreign": name, "target": rs[0]["target"], "n": len(rs),
            "class_accuracy": _mean(r["class_ok"] for r in rs) if rs[0]["target"] in classes else None,
            "bin_accuracy": _mean(r["bin_ok"] for r in rs) if rs[0]["true_bin"] is not None else None,
            "manual_sort": _mean(not r["accepted"] for r in rs),
            "auto_sorted_right": _mean(r["decision_ok"] for r in rs if r["accepted"]),
            "called": _counts(r["label"] for r in rs),
        })
    return {
        "view": view,
        "n": n,
        "errors": len(predictions) - n,
        "class_accuracy": _mean(r["class_ok"] for r in class_rows),
        "bin_accuracy": _mean(r["bin_ok"] for r in bin_rows),
        "coverage": len(acc) / n if n else None,
        "manual_sort_rate": 1 - len(acc) / n if n else None,
        # of the items the bin sorted by itself, the share that went to the right class / bin
        "auto_sorted_class_accuracy": _mean(r["class_ok"] for r in acc if r["target"] in classes),
        "auto_sorted_bin_accuracy": _mean(r["bin_ok"] for r in acc if r["true_bin"] is not None),
        "decision_accuracy": _mean(r["decision_ok"] for r in rows),
        "unknown_rejected": _mean(not r["accepted"] for r in rows if r["true_bin"] is None),
        # why items went to manual sort: the confidence threshold, or the unknown-item rule
        "manual_sort_low_confidence": _mean(r["reason"] == "low_confidence" for r in rows),
        "manual_sort_unknown": _mean(r["reason"] == "unknown" for r in rows),
        "per_bin": per_bin,
        "max_contamination": max((b["contamination"] for b in per_bin), default=0.0),
        "per_class": per_class,
        "rows": rows,
    }


def _mean(values: Any) -> float | None:
    v = [float(x) for x in values]
    return sum(v) / len(v) if v else None


def _counts(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# --------------------------------------------------------------------------- the mode
def evaluate_field(clf: Any, root: str | Path, items: Sequence[FieldItem], out_dir: str | Path,
                   views: Sequence[str] = ("full",), threshold: Any = None, batch_size: int = 32,
                   progress: bool = True, ood_threshold: float | None = None, search: bool = False) -> dict[str, Any]:
    """Score every view, write ``field.json``, ``field-VIEW.csv`` and ``report.md`` (with figures)."""
    from wastenet.evaluation import field_report as R

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for view in views:
        pairs = list(view_images(root, items, view))
        if not pairs:
            continue
        images = [img for _, img in pairs]
        its = [it for it, _ in pairs]
        good = [i for i, img in enumerate(images) if not isinstance(img, Exception)]
        preds = clf.predict([images[i] for i in good], threshold=threshold, batch_size=batch_size,
                            topk=len(clf.classes), progress=progress, ood_threshold=ood_threshold, search=search)
        result = score(preds, [its[i] for i in good], clf.classes, clf.taxonomy, view)
        result["skipped"] = [(its[i].path, str(img)) for i, img in enumerate(images) if isinstance(img, Exception)]
        # which unknown-item threshold decided (searched photos have their own: inference.search)
        result["unknown_threshold"] = clf.unknown_threshold(ood_threshold, search=search)
        result["search"] = bool(search)
        _write_rows(out / f"field-{view}.csv", result["rows"])
        result["figures"] = {
            "confidence": R.plot_confidence_split(result["rows"], out / f"confidence-{view}.png").name,
        }
        results[view] = result
        _log(summary_line(result))
    write_atomic(out / "field.json", json.dumps(
        {v: {k: x for k, x in r.items() if k != "rows"} for v, r in results.items()}, indent=2, default=str))
    R.write_field_report(out / "report.md", results, title=f"{clf.arch} on {Path(root).name}", root=root)
    return results


def field_report_for(model: str | Path, data: str | Path, class_map: str | Path, *, boxes: str | Path | None = None,
                     views: Sequence[str] | None = None, threshold: float | None = None,
                     bin_thresholds: str | None = None, ood_threshold: float | None = None, search: bool = False,
                     out: str | Path | None = None, device: str = "cpu") -> tuple[dict[str, Any], Path]:
    """The field mode from paths: check the options, load ``model`` (``.pt`` or ``.onnx``), score, report.

    ``views`` defaults to ``full``, plus ``crop`` and ``floor`` when ``boxes`` is given; ``out``
    to ``MODEL_DIR/eval-DATA``. Returns the per-view results and the report folder.
    """
    from wastenet.decision import cli_threshold
    from wastenet.inference.predictor import Classifier

    if not Path(data).is_dir():
        raise ConfigError(f"dataset folder not found: {data}")
    views = list(views) if views else ["full"] + (["crop", "floor"] if boxes else [])
    bad = [v for v in views if v not in VIEWS]
    if bad:
        raise ConfigError(f"--views: unknown view(s) {', '.join(bad)}; choose from {', '.join(VIEWS)}")
    if any(v != "full" for v in views) and not boxes:
        raise ConfigError("the crop and floor views need --boxes")
    out_dir = check_output(Path(out) if out else Path(model).parent / f"eval-{Path(data).name}", folder=True)
    clf = Classifier.load(model, device=device if device != "auto" else "cpu")
    cmap = load_class_map(class_map, clf.classes, clf.taxonomy.bin_names)
    items = field_items(data, cmap, boxes)
    thr = cli_threshold(threshold, bin_thresholds, clf.taxonomy.bin_names, clf.threshold)
    results = evaluate_field(clf, data, items, out_dir, views=views, threshold=thr,
                             ood_threshold=ood_threshold, search=search)
    return results, out_dir


def summary_line(r: Mapping[str, Any]) -> str:
    def f(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    return (f"[{r['view']}] {r['n']} images: class accuracy {f(r['class_accuracy'])}, bin accuracy "
            f"{f(r['bin_accuracy'])}, manual sort {f(r['manual_sort_rate'])}, auto-sorted right "
            f"{f(r['auto_sorted_class_accuracy'])} (class) / {f(r['auto_sorted_bin_accuracy'])} (bin), "
            f"manual sort as unknown {f(r['manual_sort_unknown'])}, "
            f"unknown rejected {f(r['unknown_rejected'])}, worst bin contamination {f(r['max_contamination'])}")


def _write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        return
    write_csv_atomic(path, rows, list(rows[0]))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
