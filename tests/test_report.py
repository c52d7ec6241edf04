"""Specification of wastenet.evaluation.report: PNGs that show something, a readable report.md."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wastenet.evaluation import report
from wastenet.evaluation.calibration import reliability_bins, softmax
from wastenet.evaluation.decisions import coverage_curve, decision_analysis
from wastenet.evaluation.metrics import classification_metrics, worst_mistakes

CLASSES = ["cardboard", "glass", "food", "trash"]


class FakeTaxonomy:
    bin_names = ["recyclable", "compostable", "landfill"]
    _bin = {"cardboard": 0, "glass": 0, "food": 1, "trash": 2}

    def class_to_bin_index(self, classes):
        return np.array([self._bin[c] for c in classes])

    def bin_probabilities(self, probs, classes):
        onehot = np.eye(3)[self.class_to_bin_index(classes)]
        return probs @ onehot


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=60)
    logits = rng.normal(0, 1, size=(60, 4))
    logits[np.arange(60), labels] += 2.5  # mostly right
    return softmax(logits * 2), labels


def assert_png_shows_something(path):
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100
        grey = np.asarray(im.convert("L"), dtype=np.float64)
    assert grey.std() > 5  # not a blank canvas
    assert len(np.unique(grey)) > 10


def test_plots_are_written_and_not_blank(tmp_path, data):
    probs, labels = data
    m = classification_metrics(probs, labels, CLASSES)
    paths = [
        report.plot_confusion_matrix(m["confusion_matrix"], CLASSES, tmp_path / "cm.png"),
        report.plot_reliability(reliability_bins(probs, labels), reliability_bins(probs ** 0.5 / (probs ** 0.5).sum(1, keepdims=True), labels), tmp_path / "rel.png"),
        report.plot_reliability(reliability_bins(probs, labels), None, tmp_path / "rel_single.png"),
        report.plot_coverage(coverage_curve(probs, labels, FakeTaxonomy(), CLASSES), tmp_path / "sub" / "cov.png", threshold=0.8),
    ]
    for p in paths:
        assert_png_shows_something(p)


def test_confusion_matrix_shape_must_match_classes(tmp_path):
    with pytest.raises(ValueError):
        report.plot_confusion_matrix([[1, 0], [0, 1]], CLASSES, tmp_path / "cm.png")


def test_curves_accept_csv_strings_missing_train_acc_and_stages(tmp_path):
    # As read back from history.csv: strings, an empty train_acc, a stage change.
    history = [
        {"epoch": str(e), "stage": "head" if e <= 3 else "finetune", "lr": f"{1e-3 / e:g}",
         "train_loss": f"{2.0 / e:.3f}", "val_loss": f"{2.2 / e:.3f}", "val_acc": f"{0.5 + e / 20:.3f}",
         "train_acc": "", "seconds": "1.0"}
        for e in range(1, 7)
    ]
    out = report.plot_curves(history, tmp_path / "curves.png")
    assert_png_shows_something(out)
    # Numbers (not strings) and no lr column work too.
    rows = [{"epoch": e, "stage": "unfreeze-1", "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_acc": 0.6} for e in (1, 2)]
    assert_png_shows_something(report.plot_curves(rows, tmp_path / "curves2.png"))


def test_report_has_headline_numbers_sections_and_gallery(tmp_path, data):
    probs, labels = data
    m = classification_metrics(probs, labels, CLASSES)
    d = decision_analysis(probs, labels, CLASSES, FakeTaxonomy(), threshold=0.9)
    worst = worst_mistakes(probs, labels, k=3)
    gallery = [dict(w, image=f"images/item{w['index']}.jpg", heatmap=f"heatmaps/item{w['index']}.png") for w in worst]
    path = report.write_report(
        tmp_path / "report.md",
        title="tiny model on tiny data",
        metrics=m,
        calibration={"temperature": 1.734, "ece_before": 0.1234, "ece_after": 0.0321},
        decision=d,
        figures={"confusion_matrix": "confusion_matrix.png", "curves": "curves.png",
                 "reliability": "reliability.png", "coverage": "coverage.png", "extra": "extra.png"},
        gallery=gallery,
        extra_sections={"Notes": "Trained on CPU."},
    )
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# tiny model on tiny data")
    # Headline numbers, as written with 4 decimals.
    for key in ["accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_weighted", "f1_weighted"]:
        assert f"{m[key]:.4f}" in text
    for c in CLASSES:
        assert f"| {c} |" in text  # per-class table
    for fig in ["confusion_matrix.png", "curves.png", "reliability.png", "coverage.png", "extra.png"]:
        assert f"]({fig})" in text
    assert "1.734" in text and "0.1234" in text and "0.0321" in text
    # Decision section: threshold, coverage, contamination per bin and the bin confusion table.
    assert "0.9" in text and f"{d['coverage']:.1%}" in text
    for b in d["bin_names"]:
        assert f"| {b} |" in text
    assert "| true bin / decided bin | recyclable | compostable | landfill |" in text
    # Gallery: names instead of indices, relative image and heatmap paths.
    w = worst[0]
    assert f"predicted **{CLASSES[w['predicted']]}**" in text and f"true **{CLASSES[w['true']]}**" in text
    assert f"](images/item{w['index']}.jpg)" in text and f"](heatmaps/item{w['index']}.png)" in text
    assert "## Notes" in text and "Trained on CPU." in text
    assert "<" not in text.replace("<br>", "")  # plain markdown, no HTML


def test_minimal_report(tmp_path, data):
    probs, labels = data
    m = classification_metrics(probs, labels, CLASSES)
    text = report.write_report(tmp_path / "r.md", title="t", metrics=m).read_text()
    assert f"{m['accuracy']:.4f}" in text
    assert "Calibration" not in text and "Worst mistakes" not in text


def test_runner_report_files_the_confusion_matrix_in_its_own_section(tmp_path, tiny_checkpoint, image_folder):
    """The runner -> report path: every figure the runner draws lands in its section, none under Figures."""
    from wastenet import checkpoint
    from wastenet.data.datasets import build_cache, scan_folder
    from wastenet.evaluation.runner import Subject, evaluate
    from wastenet.models import model_from_checkpoint
    from wastenet.preprocessing import Preprocessing
    from wastenet.taxonomy import load_taxonomy

    ckpt = checkpoint.load(tiny_checkpoint)
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    rows = scan_folder(image_folder)[0][:9]
    cache = build_cache(image_folder, rows, ckpt["classes"], prep.resize_size, prep.interpolation)
    subject = Subject(model_from_checkpoint(ckpt), prep, ckpt["classes"], load_taxonomy(ckpt["taxonomy"], ckpt["classes"]))
    evaluate(subject, cache, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "## Confusion matrix" in text and "](confusion_matrix.png)" in text
    assert "## Figures" not in text
