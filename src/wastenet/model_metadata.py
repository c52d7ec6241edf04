"""What every model file says about itself, checked once, when it is loaded (torch-free).

A ``.pt`` checkpoint (:func:`wastenet.checkpoint.load`) and an ONNX file's ``wastenet``
metadata (:func:`wastenet.inference.onnx_runtime.read_metadata`) carry the same record:
classes, preprocessing, temperature, threshold, taxonomy, architecture. Both loaders call
:func:`check_metadata`, so a malformed record is one ``ConfigError`` line (exit 2) in every
mode, before any image is read or any file written, instead of a ``KeyError`` deep inside
``predict``, ``eval``, ``export`` or ``serve`` (or, worse, an export that copies a temperature
of 0 into a deployed file)::

    meta = check_metadata(meta, "runs/x/best.onnx")    # defaults filled in, or ConfigError
"""

from __future__ import annotations

import math
from typing import Any

from wastenet.decision import DEFAULT_THRESHOLD, check_threshold
from wastenet.errors import ConfigError

__all__ = ["check_metadata"]

_PREPROCESSING_KEYS = ("input_size", "resize_size", "mean", "std", "interpolation")


def check_metadata(meta: dict[str, Any], source: str) -> dict[str, Any]:
    """Check a model file's record in place and return it; ``source`` names the file in the error.

    Missing ``temperature``/``threshold`` take their defaults (1.0 and the default threshold:
    files written before they were stored); present ones must be usable: a temperature above 0,
    a threshold as :func:`wastenet.decision.check_threshold` takes it (in [0, 1], or {bin: such}).
    """
    def bad(what: str) -> ConfigError:
        return ConfigError(f"{source}: {what}; re-export or retrain it")

    classes = meta.get("classes")
    if (not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes)
            or len(set(classes)) != len(classes)):
        raise bad(f"classes must be a non-empty list of distinct names, got {_short(classes)}")
    _check_preprocessing(meta.get("preprocessing"), bad)
    if meta.get("temperature") is None:
        meta["temperature"] = 1.0
    t = meta["temperature"]
    if not _number(t) or not math.isfinite(t) or t <= 0:
        raise bad(f"temperature must be a number above 0, got {_short(t)}")
    if meta.get("threshold") is None:
        meta["threshold"] = DEFAULT_THRESHOLD
    try:  # the rule every --threshold is checked with: a number in [0, 1] or {bin: number}
        meta["threshold"] = check_threshold(meta["threshold"])
    except ConfigError as exc:
        raise bad(str(exc)) from None
    if not isinstance(meta.get("taxonomy"), (dict, str, type(None))):
        raise bad(f"taxonomy must be a mapping or a name, got {_short(meta.get('taxonomy'))}")
    if not isinstance(meta.get("arch", ""), str):
        raise bad(f"arch must be a name, got {_short(meta.get('arch'))}")
    return meta


def _check_preprocessing(prep: Any, bad: Any) -> None:
    from wastenet.preprocessing import Preprocessing

    if not isinstance(prep, dict):
        raise bad(f"preprocessing must be a mapping, got {_short(prep)}")
    missing = [k for k in _PREPROCESSING_KEYS if k not in prep]
    if missing:
        raise bad(f"preprocessing lacks {', '.join(missing)}")
    sizes = [prep["input_size"], prep["resize_size"]] + ([prep["input_width"]] if prep.get("input_width") else [])
    if not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 16384 for s in sizes):
        raise bad(f"preprocessing sizes must be whole numbers of pixels, got {_short(sizes)}")
    for key in ("mean", "std"):
        v = prep[key]
        if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(_number(x) and math.isfinite(x) for x in v):
            raise bad(f"preprocessing {key} must be three numbers, got {_short(v)}")
    if not all(s > 0 for s in prep["std"]):
        raise bad(f"preprocessing std must be above 0, got {_short(prep['std'])}")
    try:
        Preprocessing.from_dict(prep)
    except (ValueError, TypeError) as exc:  # an unknown interpolation, resize smaller than input
        raise bad(f"malformed preprocessing ({exc})") from None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
