"""The bin decision rule, in one place: bin probabilities in, a bin or ``manual_sort`` out.

Every caller decides through :func:`decide` (predict, serve, eval, coverage curves and threshold
suggestion), so what ``wastenet eval`` reports is what ``predict`` and ``serve`` do. NumPy only:
the torch-free edge install predicts with it too.

The rule: an item's bin is the bin with the highest *total* probability (ties: the first bin in
taxonomy order); it is accepted into that bin when that total reaches the bin's threshold,
otherwise it goes to ``manual_sort`` with reason ``low_confidence``. An item flagged ``unknown``
(out of distribution) goes to ``manual_sort`` with reason ``unknown`` whatever its confidence::

    d = decide(np.array([[0.85, 0.15], [0.6, 0.4]]), ["recyclable", "landfill"], 0.8)
    d.decision.tolist()     # ['recyclable', 'manual_sort']
    d.reason.tolist()       # ['', 'low_confidence']
    decide(bp, names, {"recyclable": 0.95}, default=0.8)   # per-bin thresholds
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import numpy as np

from wastenet.errors import ConfigError

__all__ = [
    "DEFAULT_THRESHOLD",
    "MANUAL_SORT",
    "LOW_CONFIDENCE",
    "UNKNOWN",
    "Decisions",
    "Threshold",
    "accepts",
    "bin_thresholds",
    "check_threshold",
    "decide",
    "format_bin_thresholds",
    "parse_bin_thresholds",
]

#: The decision threshold a model gets when nothing else says otherwise.
DEFAULT_THRESHOLD = 0.9
MANUAL_SORT = "manual_sort"
LOW_CONFIDENCE = "low_confidence"
UNKNOWN = "unknown"
# A bin holding every class sums to a hair below 1.0 in floating point; it must still pass 1.0.
TOLERANCE = 1e-9

#: One threshold for every bin, or ``{bin: threshold}`` (bins not named use the default).
Threshold = Union[float, Mapping[str, float]]


def _one(value: Any, what: str) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number in [0, 1], got {value!r}") from None
    if math.isnan(t) or not 0.0 <= t <= 1.0:
        raise ConfigError(f"{what} must be in [0, 1], got {value}")
    return t


def check_threshold(threshold: Any, bin_names: Sequence[str] | None = None, name: str = "threshold") -> Threshold:
    """A checked threshold: a float in ``[0, 1]``, or a ``{bin: float}`` mapping of them.

    ``bin_names``, when given, must contain every bin the mapping names; ``name`` is what the
    one-line ConfigError (exit 2) calls the value (``--threshold`` on the command line)::

        check_threshold("0.85")                       # 0.85
        check_threshold({"recyclable": 0.95}, ["recyclable", "landfill"])
    """
    if isinstance(threshold, Mapping):
        checked = {str(b): _one(t, f"{name} for bin {b!r}") for b, t in threshold.items()}
        if bin_names is not None:
            unknown = sorted(set(checked) - set(bin_names))
            if unknown:
                raise ConfigError(f"{name} for unknown bin {', '.join(unknown)}; "
                                  f"the bins are {', '.join(bin_names)}")
        return checked
    return _one(threshold, name)


def bin_thresholds(threshold: Threshold, bin_names: Sequence[str],
                   default: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """The threshold of each bin, float64 ``[B]`` in ``bin_names`` order.

    >>> bin_thresholds({"landfill": 0.5}, ["recyclable", "landfill"], default=0.8).tolist()
    [0.8, 0.5]
    """
    t = check_threshold(threshold, bin_names)
    if isinstance(t, dict):
        base = _one(default, "default threshold")
        return np.array([t.get(b, base) for b in bin_names], dtype=np.float64)
    return np.full(len(bin_names), t, dtype=np.float64)


def accepts(confidence: Any, threshold: Any) -> np.ndarray:
    """The one comparison: ``confidence`` reaches ``threshold`` (broadcasting, within float noise)."""
    return np.asarray(confidence, dtype=np.float64) + TOLERANCE >= np.asarray(threshold, dtype=np.float64)


@dataclass(frozen=True)
class Decisions:
    """The decisions for ``N`` items (arrays of length ``N``).

    ``bin_index``/``bin``: the most probable bin; ``confidence``: its total probability (at most
    1.0); ``decision``: the bin, or ``manual_sort``; ``reason``: ``""``, ``"low_confidence"`` or
    ``"unknown"``; ``accepted``: ``decision != manual_sort``.
    """

    bin_index: np.ndarray
    bin: np.ndarray
    confidence: np.ndarray
    decision: np.ndarray
    reason: np.ndarray
    accepted: np.ndarray

    def __len__(self) -> int:
        return int(self.bin_index.size)


def decide(bin_probs: Any, bin_names: Sequence[str], threshold: Threshold = DEFAULT_THRESHOLD,
           unknown: Any = None, default: float = DEFAULT_THRESHOLD) -> Decisions:
    """Decide ``N`` items from their bin probabilities ``[N, B]`` (columns in ``bin_names`` order).

    ``threshold`` is one float or ``{bin: threshold}`` (other bins use ``default``); ``unknown``
    is an optional boolean ``[N]`` mask of items to send to manual sort as unlike anything seen
    in training. Example::

        d = decide(taxonomy.bin_probabilities(probs, classes), taxonomy.bin_names, DEFAULT_THRESHOLD)
        d.decision[0], d.confidence[0], d.reason[0]
    """
    bp = np.asarray(bin_probs, dtype=np.float64)
    names = [str(b) for b in bin_names]
    if bp.ndim != 2 or bp.shape[1] != len(names):
        raise ValueError(f"bin probabilities must be [N, {len(names)}], got shape {bp.shape}")
    n = bp.shape[0]
    idx = bp.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)  # ties: the first bin
    conf = np.minimum(bp[np.arange(n), idx], 1.0) if n else np.zeros(0)
    per_bin = bin_thresholds(threshold, names, default)
    ok = accepts(conf, per_bin[idx]) if n else np.zeros(0, dtype=bool)
    reason = np.where(ok, "", LOW_CONFIDENCE).astype(object)
    if unknown is not None:
        flag = np.asarray(unknown, dtype=bool).reshape(-1)
        if flag.size != n:
            raise ValueError(f"unknown mask has {flag.size} items, expected {n}")
        ok = ok & ~flag
        reason[flag] = UNKNOWN
    bins = np.asarray(names, dtype=object)[idx] if n else np.zeros(0, dtype=object)
    decision = np.where(ok, bins, MANUAL_SORT).astype(object)
    return Decisions(bin_index=idx.astype(np.int64), bin=bins, confidence=conf, decision=decision,
                     reason=reason, accepted=ok)


def parse_bin_thresholds(spec: str, bin_names: Sequence[str] | None = None,
                         name: str = "--bin-thresholds") -> dict[str, float]:
    """``"recyclable=0.97,landfill=0.6"`` or a YAML file ``{bin: threshold}`` -> a checked mapping.

    Errors cost differently: a landfill item in the recycling bin can spoil the load, a
    recyclable item in landfill loses one item, so the recycling bin may ask for more::

        parse_bin_thresholds("recyclable=0.97,landfill=0.6")   # {'recyclable': 0.97, 'landfill': 0.6}
    """
    from pathlib import Path

    text = str(spec).strip()
    if text.endswith((".yaml", ".yml")) or (Path(text).is_file() and "=" not in text):
        import yaml

        try:
            doc = yaml.safe_load(Path(text).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{name}: cannot read {text} ({' '.join(str(exc).split())[:100]})") from None
        if not isinstance(doc, Mapping) or not doc:
            raise ConfigError(f"{name}: {text} must hold a mapping {{bin: threshold}}")
        pairs = [(str(k), v) for k, v in doc.items()]
    else:
        pairs = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "=" not in part:
                raise ConfigError(f"{name}: expected BIN=THRESHOLD, got {part!r}")
            b, v = part.split("=", 1)
            pairs.append((b.strip(), v.strip()))
        if not pairs:
            raise ConfigError(f"{name}: no BIN=THRESHOLD pairs in {spec!r}")
    return check_threshold(dict(pairs), bin_names, name=name)  # type: ignore[return-value]


def format_bin_thresholds(thresholds: Mapping[str, float]) -> str:
    """The ``--bin-thresholds`` spelling of a mapping, the inverse of :func:`parse_bin_thresholds`::

        format_bin_thresholds({"recyclable": 0.97, "landfill": 0.6})   # 'recyclable=0.97,landfill=0.6'
    """
    return ",".join(f"{b}={float(t)!r}" for b, t in thresholds.items())  # repr: round-trips exactly


def combine_thresholds(base: float, per_bin: Mapping[str, float] | None, bin_names: Sequence[str]) -> Threshold:
    """One threshold per bin: ``per_bin`` where given, ``base`` elsewhere (``base`` alone when none)."""
    if not per_bin:
        return base
    check_threshold(dict(per_bin), bin_names)
    return {b: float(per_bin.get(b, base)) for b in bin_names}


def cli_threshold(threshold: float | None, bin_spec: str | None, bin_names: Sequence[str],
                  model_threshold: Threshold) -> Threshold | None:
    """``--threshold`` and ``--bin-thresholds`` as the one threshold to decide with.

    ``None`` (no option given) keeps the model's own; named bins take ``bin_spec``'s values, the
    others ``threshold`` or else the model's threshold.
    """
    if not bin_spec:
        return threshold
    base = model_threshold if threshold is None else threshold
    return combine_thresholds(base, parse_bin_thresholds(bin_spec, bin_names), bin_names)
