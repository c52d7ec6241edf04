"""The Python API of ``wastenet eval``: a checkpoint judged on a split of a dataset, report written.

It mirrors the command line as :class:`~wastenet.inference.predictor.Classifier` mirrors
``predict``::

    ev = Evaluator.load("runs/densenet121/best.pt", device="auto")
    report = ev.evaluate("data/trashnet", split="test", target_contamination=0.01)
    results, out = Evaluator.field("runs/x/best.pt", "field-photos", "field.yaml")   # field mode
    ev.evaluate("data/trashnet", target_contamination={"recyclable": 0.02, "landfill": 0.3})  # per bin
    report.metrics["accuracy"], report.decision["coverage"], report.out / "report.md"
    print(report.summary())          # the lines `wastenet eval` prints

    wastenet eval --checkpoint runs/densenet121/best.pt --data data/trashnet --target-contamination 0.01
    wastenet eval --checkpoint runs/densenet121/best.pt --data data/trashnet \
        --target-contamination recyclable=0.02,landfill=0.3
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from wastenet.decision import Threshold, check_threshold, cli_threshold
from wastenet.errors import ConfigError
from wastenet.files import check_output

__all__ = ["EvalReport", "Evaluator", "SPLITS"]

SPLITS = ("train", "val", "test", "all")


@dataclass
class EvalReport:
    """What one evaluation found (``result`` is metrics.json's content) and where its report is."""

    split: str
    out: Path
    threshold: Threshold
    result: dict[str, Any]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable images

    @property
    def metrics(self) -> dict[str, Any]:
        return self.result["metrics"]

    @property
    def calibration(self) -> dict[str, Any]:
        return self.result["calibration"]

    @property
    def decision(self) -> dict[str, Any]:
        return self.result["decision"]

    @property
    def suggestion(self) -> dict[str, Any] | None:
        return self.result.get("suggested_threshold")

    def summary(self) -> str:
        """The lines ``wastenet eval`` prints."""
        m, c, dec, s = self.metrics, self.calibration, self.decision, self.suggestion
        lines = [f"{self.split}: {m['n']} images  accuracy {m['accuracy']:.4f}  macro F1 {m['f1_macro']:.4f}  "
                 f"weighted F1 {m['f1_weighted']:.4f}",
                 f"calibration: T={c['temperature']:.3f}  ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f}",
                 f"threshold {self.threshold}: coverage {dec['coverage']:.4f}  accepted bin accuracy "
                 f"{dec['accepted_bin_accuracy']}"]
        if s and "per_bin" in s:
            from wastenet.evaluation.decisions import bin_suggestion_line

            lines.append(bin_suggestion_line(s))
        elif s:
            lines.append(f"suggested threshold for contamination <= {s['target']}: {s['threshold']:.4f} "
                         f"(val coverage {s['coverage']:.4f}, achievable {s['achievable']})")
        lines.append(f"report: {self.out / 'report.md'}")
        return "\n".join(lines)


class Evaluator:
    """A model file to evaluate: a ``.pt`` checkpoint, or an ``.onnx`` file (fp32 or INT8) as the
    edge runs it; ``predict``, ``serve`` and ``eval`` take the same files. An ONNX file's report
    is the checkpoint's but for the Grad-CAM heatmaps in the mistakes gallery (no gradients),
    and it cannot be ``recalibrate``d (that rewrites a checkpoint)."""

    def __init__(self, ckpt: dict[str, Any], path: Path, device: str = "auto", classifier: Any = None) -> None:
        from wastenet.inference.runtime import resolve_device

        self.ckpt = ckpt  # a checkpoint, or an ONNX file's checked metadata (then ``classifier`` runs it)
        self.path = Path(path)
        self.device = resolve_device(device)
        self.classifier = classifier

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "Evaluator":
        """Read a ``.pt`` checkpoint or an ``.onnx`` file (ConfigError if missing, foreign or malformed)."""
        from wastenet import checkpoint

        if Path(path).suffix.lower() == ".onnx":
            from wastenet.inference.predictor import Classifier

            clf = Classifier.load(path, device="cpu" if device == "auto" else device)
            return cls(clf.backend.metadata(), Path(path), "cpu", classifier=clf)
        return cls(checkpoint.load(path), Path(path), device)

    @staticmethod
    def field(model: str | Path, data: str | Path, class_map: str | Path, **options: Any) -> tuple[dict[str, Any], Path]:
        """``wastenet eval --class-map``: a foreign folder scored as a bin decides it (``.pt`` or ``.onnx``).

            results, out = Evaluator.field("runs/x/best.pt", "../shared/data/field-drinkingwaste",
                                           "benchmarks/field/drinkingwaste.yaml", boxes="labels.csv")
            results["full"]["auto_sorted_class_accuracy"], out / "report.md"

        ``options``: see :func:`wastenet.evaluation.field.field_report_for` (boxes, views, threshold, ...).
        """
        from wastenet.evaluation.field import field_report_for

        return field_report_for(model, data, class_map, **options)

    @property
    def classes(self) -> list[str]:
        return list(self.ckpt["classes"])

    def evaluate(self, data: str | Path, *, split: str = "test", split_file: str | Path | None = None,
                 threshold: Threshold | None = None, bin_thresholds: str | None = None, taxonomy: Any = None,
                 target_contamination: float | str | Mapping[str, float] | None = None, recalibrate: bool = False,
                 tta: bool = False, out: str | Path | None = None, skip_missing: bool = False,
                 log: Callable[[str], None] | None = None) -> EvalReport:
        """Evaluate on ``split`` of ``data`` and write the report into ``out``.

        ``split_file`` defaults to the run's ``split.csv`` beside the checkpoint; without one every
        image is evaluated (split ``all``). ``threshold``/``taxonomy`` override the checkpoint's;
        ``bin_thresholds`` is ``--bin-thresholds`` (``"recyclable=0.97"`` or a YAML file: the named
        bins take these, the others ``threshold`` or else the checkpoint's);
        ``target_contamination`` suggests the lowest threshold whose worst-bin contamination on the
        validation split meets it, or, given per bin (``{"recyclable": 0.02}`` or the command line's
        ``"recyclable=0.02,landfill=0.3"`` / YAML file), a threshold per targeted bin, confirmed on
        ``split`` (:func:`~wastenet.evaluation.decisions.suggest_bin_thresholds`); ``recalibrate``
        refits the temperature on the validation split, with the unknown-item rule's thresholds that depend on
        it, and stores them in the checkpoint (:func:`~wastenet.evaluation.finalise.finalise`); ``tta`` adds
        the mirror image as ``predict --tta`` does. ``out`` defaults to ``CHECKPOINT_DIR/eval-SPLIT`` (checked writable
        before any image is read); ``skip_missing`` leaves out split rows whose file is gone (else refused);
        ``log`` receives progress lines.
        """
        from wastenet.data.datasets import build_cache
        from wastenet.evaluation.decisions import contamination_targets
        from wastenet.evaluation.runner import Subject, evaluate, suggest_for
        from wastenet.models import model_from_checkpoint
        from wastenet.preprocessing import Preprocessing
        from wastenet.taxonomy import resolve_taxonomy

        say = log or (lambda _msg: None)
        if split not in SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, not {split!r}")
        if recalibrate and self.classifier is not None:
            raise ConfigError(f"--recalibrate rewrites a .pt checkpoint; {self.path} is ONNX (re-export after "
                              "recalibrating its checkpoint)")
        ckpt, classes = self.ckpt, self.classes
        tax = resolve_taxonomy(taxonomy or ckpt.get("taxonomy"), classes)
        # per-bin values need the bin names: checked after the taxonomy, still before any work
        if threshold is not None:
            threshold = check_threshold(threshold, tax.bin_names, name="--threshold")
        if bin_thresholds:
            if isinstance(threshold, dict):
                raise ConfigError("per-bin thresholds twice: give threshold={bin: t} or bin_thresholds, not both")
            threshold = cli_threshold(threshold, bin_thresholds, tax.bin_names, ckpt["threshold"])
        if target_contamination is not None:
            target_contamination = contamination_targets(target_contamination, tax.bin_names)
        if not Path(data).is_dir():
            raise ConfigError(f"dataset folder not found: {data}")
        if threshold is None:
            threshold = ckpt["threshold"]
        elif isinstance(threshold, dict):  # bins it does not name keep the checkpoint's threshold
            threshold = {b: threshold.get(b, ckpt["threshold"]) for b in tax.bin_names}
        rows, split = self._rows(data, split, split_file, say, skip_missing)
        out = check_output(Path(out) if out else self.path.parent / f"eval-{split}", folder=True)
        wanted = rows if split == "all" else [r for r in rows if r.split == split]
        if not wanted:
            raise ConfigError(f"no rows in split {split!r}")

        prep = Preprocessing.from_dict(ckpt["preprocessing"])
        model = None if self.classifier is not None else model_from_checkpoint(ckpt).to(self.device)
        subject = Subject(model, prep, classes, tax, temperature=ckpt["temperature"], threshold=threshold,
                          device=self.device, tta=tta, classifier=self.classifier)
        cache = build_cache(data, wanted, classes, prep.cache_size, prep.interpolation)
        for path, reason in cache.skipped:
            say(f"skipped {path}: {reason}")
        suggestion = None
        if target_contamination is not None or recalibrate:
            val_rows = [r for r in rows if r.split == "val"]
            if not val_rows:
                raise ConfigError("--target-contamination and --recalibrate need validation rows in the split file")
            val = build_cache(data, val_rows, classes, prep.cache_size, prep.interpolation)
            val_logits = subject.logits(val.images)
            if recalibrate:  # the model's statistics stay: no training split
                from wastenet.evaluation.finalise import SplitData, finalise

                subject.temperature = finalise(
                    ckpt, subject.model, None, SplitData(val.labels, images=val.images, logits=val_logits,
                                                         photos=[Path(data) / r.path for r in val_rows]),
                    prep=prep, device=self.device, tta=tta, path=self.path).temperature
                msg = f"temperature {ckpt['temperature']:.3f} fitted on {len(val.labels)} validation images"
                if ckpt.get("ood"):
                    msg += ", the unknown-item thresholds of the logit scores refitted at it"
                if (ckpt.get("ood") or {}).get("search_thresholds"):
                    from wastenet.inference.search import CALIBRATION_PHOTOS

                    msg += f", the searched unknown-item threshold on {min(len(val_rows), CALIBRATION_PHOTOS)} of them"
                say(f"{msg}; saved in {self.path}")
            if target_contamination is not None:
                suggestion = suggest_for(subject, val_logits, val.labels, target_contamination)
        result = evaluate(subject, cache, out, title=f"{ckpt['arch']} on {split} ({Path(data).name})", split=split,
                          suggestion=suggestion)
        return EvalReport(split=split, out=out, threshold=threshold, result=result, skipped=list(cache.skipped))

    def _rows(self, data: str | Path, split: str, split_file: str | Path | None,
              say: Callable[[str], None], skip_missing: bool = False) -> tuple[list[Any], str]:
        """The rows to draw splits from, and the split (``all`` when there is no split file)."""
        from wastenet.data.datasets import Row, read_split_file, scan_folder

        path = Path(split_file) if split_file else self.path.parent / "split.csv"
        if path.is_file():
            rows = read_split_file(path, data, skip_missing=skip_missing)
        elif split == "all" or split_file is None:
            rows = [Row(r.path, r.label, "test") for r in scan_folder(data)[0]]
            if split != "all":
                say(f"no split file: evaluating every image in {data}")
            split = "all"
        else:
            raise ConfigError(f"split file not found: {path}")
        unknown = sorted({r.label for r in rows} - set(self.classes))
        if unknown:
            raise ConfigError(f"the dataset has classes the model does not know: {unknown}")
        return rows, split
