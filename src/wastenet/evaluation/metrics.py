"""Classification metrics from NumPy arrays: accuracy, precision/recall/F1, confusion matrix.

Every function takes class probabilities ``probs`` (float ``[N, C]``, rows sum to 1) and
integer ``labels`` (``[N]``), so the PyTorch and the ONNX paths share one evaluation.
The maths is delegated to ``torchmetrics`` (imported lazily, so that importing this module
stays torch-free); results are plain Python numbers, ready for ``json.dump``.

Example::

    from wastenet.evaluation.metrics import classification_metrics, worst_mistakes
    m = classification_metrics(probs, labels, ["glass", "paper", "trash"])
    print(m["accuracy"], m["f1_macro"])
    for row in worst_mistakes(probs, labels, k=4):
        print(row["index"], row["predicted"], row["true"], row["loss"])
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["check_inputs", "classification_metrics", "worst_mistakes"]

# Floor for p_true inside the log, so a probability that underflowed to 0 gives a large
# but finite loss (JSON has no Infinity).
_EPS = 1e-12


def check_inputs(probs: Any, labels: Any, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``probs`` ``[N, C]`` and ``labels`` ``[N]`` to NumPy arrays.

    Returns ``(probs as float64, labels as int64)``. Raises ``ValueError`` on a shape
    mismatch, an empty set, or a label outside ``[0, C)``.

    Example::

        probs, labels = check_inputs(probs, labels, num_classes=len(classes))
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D [N, C], got shape {p.shape}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"labels must be 1-D with N={p.shape[0]} items, got shape {y.shape}")
    if p.shape[0] == 0:
        raise ValueError("cannot evaluate an empty set (N=0)")
    if num_classes is not None and p.shape[1] != num_classes:
        raise ValueError(f"probs has {p.shape[1]} columns but there are {num_classes} classes")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("labels must be integer class indices")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must lie in [0, {p.shape[1]}), got [{y.min()}, {y.max()}]")
    return p, y


def classification_metrics(probs: Any, labels: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro/weighted precision, recall and F1, a per-class table and the confusion matrix.

    The prediction for each item is the arg-max class of ``probs`` (first one on ties).

    Returns a JSON-serialisable dict::

        {"n", "classes", "accuracy",
         "precision_macro", "recall_macro", "f1_macro",
         "precision_weighted", "recall_weighted", "f1_weighted",
         "per_class": [{"class", "precision", "recall", "f1", "support"}, ...],
         "confusion_matrix": [[...], ...]}   # rows = true class, columns = predicted

    Zero division: a class that is never predicted has precision 0.0; a class absent from
    ``labels`` has recall 0.0 (torchmetrics' ``zero_division=0``). A class that is both
    absent from the labels *and* never predicted (no true or false positives, no false
    negatives) is left out of the macro average, so it neither helps nor hurts; its
    per-class row reads 0.0 with ``support`` 0. Weighted averages weight by support, so
    such a class has weight 0 there too.

    Example::

        m = classification_metrics(probs, labels, classes)
        print(f"{m['accuracy']:.3f}", m["per_class"][0])
    """
    import torch
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    classes = list(classes)
    p, y = check_inputs(probs, labels, num_classes=len(classes))
    c = len(classes)
    # Hard predictions, so every metric (and worst_mistakes) uses the same arg-max.
    preds = torch.from_numpy(p.argmax(axis=1))
    target = torch.from_numpy(y)
    kw = {"num_classes": c, "validate_args": False}

    out: dict[str, Any] = {
        "n": int(p.shape[0]),
        "classes": classes,
        "accuracy": float(multiclass_accuracy(preds, target, average="micro", **kw)),
    }
    fns = {"precision": multiclass_precision, "recall": multiclass_recall, "f1": multiclass_f1_score}
    per_class: dict[str, list[float]] = {}
    for name, fn in fns.items():
        out[f"{name}_macro"] = float(fn(preds, target, average="macro", zero_division=0, **kw))
        out[f"{name}_weighted"] = float(fn(preds, target, average="weighted", zero_division=0, **kw))
        per_class[name] = [float(v) for v in fn(preds, target, average="none", zero_division=0, **kw)]

    support = np.bincount(y, minlength=c)
    out["per_class"] = [
        {
            "class": classes[i],
            "precision": per_class["precision"][i],
            "recall": per_class["recall"][i],
            "f1": per_class["f1"][i],
            "support": int(support[i]),
        }
        for i in range(c)
    ]
    cm = multiclass_confusion_matrix(preds, target, **kw)
    out["confusion_matrix"] = [[int(v) for v in row] for row in cm.tolist()]
    return out


def worst_mistakes(probs: Any, labels: Any, k: int = 8) -> list[dict[str, Any]]:
    """The ``k`` misclassified items with the highest loss ``-log p(true class)``, worst first.

    Each entry: ``{"index", "predicted", "true", "loss", "p_true", "p_pred"}`` where
    ``index`` is the row in ``probs`` and ``predicted`` / ``true`` are class indices
    (map them through your ``classes`` list for names). Ties keep input order.

    Example::

        for m in worst_mistakes(probs, labels, k=8):
            print(paths[m["index"]], classes[m["predicted"]], "instead of", classes[m["true"]])
    """
    p, y = check_inputs(probs, labels)
    pred = p.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    if k <= 0 or wrong.size == 0:
        return []
    p_true = p[wrong, y[wrong]]
    loss = -np.log(np.clip(p_true, _EPS, None))
    # Stable sort on -loss: highest loss first, input order among equals.
    order = np.argsort(-loss, kind="stable")[:k]
    return [
        {
            "index": int(wrong[j]),
            "predicted": int(pred[wrong[j]]),
            "true": int(y[wrong[j]]),
            "loss": float(loss[j]),
            "p_true": float(p_true[j]),
            "p_pred": float(p[wrong[j], pred[wrong[j]]]),
        }
        for j in order
    ]
