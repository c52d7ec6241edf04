"""Evaluate a model on a split and write the report files (metrics.json, PNGs, report.md).

The shared engine of ``wastenet eval`` (through :class:`~wastenet.evaluation.evaluator.Evaluator`)
and of the end of ``wastenet train`` (``training.finish``: the checkpoint finalised on the validation
split by :mod:`wastenet.evaluation.finalise`, then the test report)::

    subject = Subject(model, prep, classes, taxonomy, temperature=1.3, threshold=0.85)
    result = evaluate(subject, test_cache, "runs/x", title="densenet121 on trashnet")
    result["metrics"]["accuracy"]

The test split is only ever evaluated here, never used to choose anything. Everything runs in
full precision, the numerics of ``predict`` and ``export``: a temperature fitted on bf16 logits
is off for the deployed model (measured: test ECE 0.026 in bf16 vs 0.019 in fp32 for the same
densenet121 and temperature).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from wastenet.decision import DEFAULT_THRESHOLD, Threshold
from wastenet.evaluation import calibration as cal
from wastenet.evaluation import decisions as dec
from wastenet.evaluation import metrics as M
from wastenet.evaluation import report as R
from wastenet.files import write_atomic

GALLERY_SIZE = 8


def _log(msg: str) -> None:
    from wastenet.progress import emit

    emit(msg)


def _gallery(model, prep, classes, images_u8: np.ndarray, probs: np.ndarray, labels: np.ndarray,
             rows: list | None, out_dir: Path) -> list[dict[str, Any]]:
    """The worst test mistakes, each saved with its Grad-CAM heatmap (the paper's Figure 9)."""
    from PIL import Image

    from wastenet.data.augment import center_crop_tensor

    worst = M.worst_mistakes(probs, labels, k=GALLERY_SIZE)
    if not worst:
        return []
    folder = out_dir / "mistakes"
    folder.mkdir(exist_ok=True)
    idx = [w["index"] for w in worst]
    crops = center_crop_tensor(torch.from_numpy(images_u8[idx]), prep.hw).permute(0, 2, 3, 1).numpy()
    heatmaps = None
    try:
        if model is None:
            raise RuntimeError("an ONNX model has no gradients for Grad-CAM")
        from wastenet.data.augment import to_model_batch
        from wastenet.inference.explain import explain_batch, overlay_heatmap

        x = to_model_batch(torch.from_numpy(images_u8[idx]), prep, device=next(model.parameters()).device)
        heatmaps = explain_batch(model, x, [w["predicted"] for w in worst])
    except Exception as exc:  # noqa: BLE001 - the gallery is a bonus; never lose the report over it
        _log(f"gallery heatmaps skipped: {exc}")
    for n, (w, crop) in enumerate(zip(worst, crops)):
        name = f"{n:02d}-{classes[w['predicted']]}-as-{classes[w['true']]}"
        _save_jpeg(Image.fromarray(crop), folder / f"{name}.jpg")
        w["image"] = f"mistakes/{name}.jpg"
        if rows is not None:
            w["source"] = rows[w["index"]].path
        if heatmaps is not None:
            _save_jpeg(overlay_heatmap(crop, heatmaps[n]), folder / f"{name}-gradcam.jpg")
            w["heatmap"] = f"mistakes/{name}-gradcam.jpg"
    return worst


def _save_jpeg(img: Any, path: Path) -> None:
    write_atomic(path, lambda f: img.save(f, format="JPEG", quality=90))


@dataclass
class Subject:
    """The model under evaluation and the decision rule it is judged with.

    ``model`` is a PyTorch network, or None for an ONNX file: ``classifier`` (an ONNX
    :class:`~wastenet.inference.predictor.Classifier`, fp32 or INT8) then gives the logits, as
    the edge runs it, and the mistakes gallery has no Grad-CAM (it needs gradients).
    """

    model: torch.nn.Module | None
    prep: Any
    classes: list[str]
    taxonomy: Any
    temperature: float = 1.0
    threshold: Threshold = DEFAULT_THRESHOLD
    device: torch.device | str = "cpu"
    tta: bool = False
    frozen_backend: str = "auto"   # inference.runner.choose_backend's rule; onnxruntime fp32 is fp32 as deployed
    classifier: Any = None         # an ONNX Classifier when ``model`` is None

    def logits(self, images_u8: np.ndarray, desc: str = "logits") -> np.ndarray:
        """Raw logits ``[N, C]`` of cached uint8 images, in full precision (``tta`` as predict does it),
        on the fastest frozen-pass backend (or the ONNX file's own session), with a progress bar."""
        from wastenet.inference.runner import frozen_logits
        from wastenet.inference.runtime import map_cached

        if self.model is None:  # the same crop and normalisation, then the file's graph
            def run(x: torch.Tensor) -> torch.Tensor:
                return torch.from_numpy(self.classifier.predict_arrays(x.numpy()))

            return map_cached(run, images_u8, self.prep, "cpu", tta=self.tta).numpy()
        return frozen_logits(self.model, images_u8, self.prep, torch.device(self.device), dtype=None, tta=self.tta,
                             backend=self.frozen_backend, desc=desc).numpy()


def evaluate(
    subject: Subject,
    data: Any,
    out_dir: str | Path,
    *,
    title: str = "wastenet evaluation",
    split: str = "test",
    history: list[dict] | None = None,
    extra: dict[str, Any] | None = None,
    suggestion: dict[str, Any] | None = None,
    logits: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics, calibration and decision analysis of ``subject`` on ``data`` (an ImageCache: images,
    labels, rows); writes metrics.json, the PNGs and report.md into ``out_dir``. ``suggestion`` is a
    :func:`suggest_for` result for the report (a per-bin one is confirmed on ``data`` first, as its
    ``confirmed`` entry); ``logits`` skips the forward pass when they are already known."""
    s = subject
    classes, taxonomy, temperature, threshold = s.classes, s.taxonomy, s.temperature, s.threshold
    labels = data.labels
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if logits is None:
        logits = s.logits(data.images, desc=f"{split} pass")
    probs_raw = cal.softmax(logits, 1.0)
    probs = cal.softmax(logits, temperature)
    metrics = M.classification_metrics(probs, labels, classes)
    bins_before = cal.reliability_bins(probs_raw, labels)
    bins_after = cal.reliability_bins(probs, labels)
    calibration = {
        "temperature": float(temperature),
        "ece_before": cal.expected_calibration_error(probs_raw, labels),
        "ece_after": cal.expected_calibration_error(probs, labels),
        "nll_before": cal.nll(logits, labels, 1.0),
        "nll_after": cal.nll(logits, labels, temperature),
    }
    decision = dec.decision_analysis(probs, labels, classes, taxonomy, threshold)
    if suggestion and "per_bin" in suggestion:  # per-bin thresholds: do they hold on this split?
        suggestion = {**suggestion, "confirmed": {
            "split": split, **dec.confirm_bin_thresholds(probs, labels, classes, taxonomy, suggestion["threshold"])}}
    curve = dec.coverage_curve(probs, labels, taxonomy, classes)
    figures = {
        "confusion_matrix": R.plot_confusion_matrix(metrics["confusion_matrix"], classes, out_dir / "confusion_matrix.png").name,
        "reliability": R.plot_reliability(bins_before, bins_after, out_dir / "reliability.png").name,
        "coverage": R.plot_coverage(curve, out_dir / "coverage.png", threshold).name,
    }
    if history:
        figures["curves"] = R.plot_curves(history, out_dir / "curves.png").name
    gallery = _gallery(s.model, s.prep, classes, data.images, probs, labels, data.rows, out_dir)
    result = {
        "split": split,
        "metrics": metrics,
        "calibration": calibration,
        "decision": decision,
        "suggested_threshold": suggestion,
        "worst_mistakes": gallery,
        **(extra or {}),
    }
    write_atomic(out_dir / "metrics.json", json.dumps(result, indent=2, default=_json_default))
    extra_sections = {}
    if suggestion and "per_bin" in suggestion:
        extra_sections["Suggested per-bin thresholds"] = R.bin_suggestion_section(suggestion)
    elif suggestion:
        t = suggestion
        extra_sections["Suggested threshold"] = (
            f"Lowest threshold meeting contamination <= {t['target']:.3f} on the validation split: "
            f"**{t['threshold']:.3f}** (validation coverage {t['coverage']:.3f}, contamination "
            f"{t['contamination']:.4f}, achievable: {t['achievable']})."
        )
    if extra:
        extra_sections["Run"] = "\n".join(f"- {k}: {v}" for k, v in extra.items())
    R.write_report(out_dir / "report.md", title=title, metrics=metrics, calibration=calibration, decision=decision,
                   figures=figures, gallery=gallery, extra_sections=extra_sections or None)
    return result


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


#: The worst-bin contamination the end of training suggests a threshold for (on validation data).
SUGGESTION_TARGET = 0.01


def suggest_for(subject: Subject, val_logits: np.ndarray, val_labels: np.ndarray,
                target: float | Mapping[str, float]) -> dict[str, Any]:
    """The suggestion for ``target`` on validation logits, with its target: one threshold for a float
    (the lowest meeting it in the worst bin), per-bin thresholds for ``{bin: target}`` (the other
    bins keep the subject's threshold)::

        suggest_for(subject, val_logits, val_labels, {"recyclable": 0.02})["threshold"]   # {bin: t}
    """
    probs = cal.softmax(val_logits, subject.temperature)
    if isinstance(target, Mapping):
        suggestion = dec.suggest_bin_thresholds(probs, val_labels, subject.classes, subject.taxonomy, target,
                                                base=subject.threshold)
        suggestion["target"] = dict(target)
    else:
        suggestion = dec.suggest_threshold(probs, val_labels, subject.classes, subject.taxonomy, target)
        suggestion["target"] = target
    return suggestion
