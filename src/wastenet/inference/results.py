"""What a prediction gives back: one :class:`Prediction` row per input, as the CSV, the JSON and
the one-line text of ``wastenet predict`` show it::

    p = Prediction("a.jpg", "glass", 0.97, "recyclable", 0.99, "recyclable")
    p.to_row()["decision"]          # 'recyclable'
    Prediction.failed("b.jpg", "not an image").ok     # False: an error row, decision "error"

Torch-free; :class:`wastenet.inference.predictor.Classifier` fills it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wastenet.decision import MANUAL_SORT

__all__ = ["ERROR", "Prediction"]

#: the decision of a row whose input could not be read
ERROR = "error"


@dataclass
class Prediction:
    """One input's result. Error rows have ``decision == "error"`` and empty class fields.

    >>> p = Prediction("a.jpg", "glass", 0.97, "recyclable", 0.99, "recyclable")
    >>> p.to_row()["decision"]
    'recyclable'
    """

    path: str
    label: str | None = None
    confidence: float | None = None
    bin: str | None = None
    bin_confidence: float | None = None
    decision: str = ERROR
    error: str | None = None
    topk: list[tuple[str, float]] = field(default_factory=list)
    bin_probs: dict[str, float] = field(default_factory=dict)
    reason: str = ""                     # why manual_sort: low_confidence | unknown ("" otherwise)
    ood_score: float | None = None       # unknown-item score (higher = less like the training data)

    @property
    def ok(self) -> bool:
        return self.decision != ERROR

    @property
    def sorted(self) -> bool:
        """Decided into a bin: neither sent to manual sort nor an error (what "refused" means everywhere).

        >>> Prediction("a.jpg", "glass", 0.4, "recyclable", 0.5, "manual_sort").sorted
        False
        """
        return self.decision not in (MANUAL_SORT, ERROR)

    @classmethod
    def failed(cls, path: str, reason: str) -> "Prediction":
        return cls(path=path, decision=ERROR, error=reason)

    def to_row(self) -> dict[str, Any]:
        """The CSV row: ``path,label,confidence,bin,decision,error,bin_confidence,reason,ood_score`` (in order)."""
        return {
            "path": self.path,
            "label": self.label or "",
            "confidence": _fmt(self.confidence),
            "bin": self.bin or "",
            "decision": self.decision,
            "error": self.error or "",
            "bin_confidence": _fmt(self.bin_confidence),
            "reason": self.reason,
            "ood_score": _fmt(self.ood_score),
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the row's fields (``null`` when empty) plus ``topk`` and ``bin_probs``."""
        return {
            "path": self.path,
            "label": self.label,
            "confidence": _round(self.confidence),
            "bin": self.bin,
            "decision": self.decision,
            "error": self.error,
            "bin_confidence": _round(self.bin_confidence),
            "reason": self.reason,
            "ood_score": _round(self.ood_score),
            "topk": [{"label": label, "probability": _round(p)} for label, p in self.topk],
            "bin_probs": {b: _round(p) for b, p in self.bin_probs.items()},
        }

    def __str__(self) -> str:
        if not self.ok:
            return f"{self.path}: error: {self.error}"
        verdict = self.bin if self.decision == self.bin else f"{MANUAL_SORT}: {self.reason or 'low_confidence'} (best bin {self.bin})"
        return f"{self.path}: {self.label} {self.confidence:.2f} -> {verdict} ({self.bin_confidence:.2f})"


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{float(x):.6f}"
