"""onnxruntime sessions over wastenet ONNX files, and their ``wastenet`` metadata (torch-free).

One way to open a model file for every user: ``predict``/``serve`` (through
:class:`~wastenet.inference.predictor.OnnxBackend`), the export parity checks and INT8
calibration::

    sess = onnx_session("best.int8.onnx", threads=1)
    logits = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]       # x: float32 [N, 3, S, S]
    meta = read_metadata(sess, "best.int8.onnx")               # classes, preprocessing, ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from wastenet.errors import ConfigError
from wastenet.model_metadata import check_metadata

__all__ = ["INPUT_NAME", "METADATA_KEY", "OUTPUT_NAME", "onnx_session", "read_metadata"]

METADATA_KEY = "wastenet"  # metadata_props key holding the JSON record
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OOD_OUTPUT = "ood"  # the unknown-item score, in files exported from a checkpoint with a fitted rule


def onnx_session(path: str | os.PathLike, threads: int | None = None, device: str = "cpu",
                 spin_wait: bool = True) -> Any:
    """An onnxruntime session with every graph optimisation.

    ``threads``: intra-op threads (None: onnxruntime's choice, one per core); ``device``: ``cpu``,
    ``cuda`` (ConfigError without the CUDA provider) or ``auto``; ``spin_wait=False`` lets idle
    intra-op threads sleep instead of spinning, leaving the CPU to other threads (a server
    decoding requests on a few cores). A missing or unreadable file is a ConfigError.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ConfigError("onnxruntime is not installed: pip install 'wastenet[edge]'") from exc
    if not Path(path).is_file():
        raise ConfigError(f"ONNX model not found: {path}")
    providers = ["CPUExecutionProvider"]
    if device in ("cuda", "auto") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    elif device == "cuda":
        raise ConfigError("device cuda requested but onnxruntime has no CUDA provider")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1  # one sequential graph: extra inter-op threads only spin
    if not spin_wait:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3  # keep onnxruntime's own warnings off the user's terminal
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as exc:  # noqa: BLE001 - any unreadable model is the user's input problem
        raise ConfigError(f"cannot read ONNX model {path}: {' '.join(str(exc).split())[:200]}") from exc


def read_metadata(source: Any, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``wastenet`` metadata of a model file (a path) or of an open session (``path`` names it in errors).

    ConfigError when the file has none (not made by ``wastenet export``), it is not JSON, or the
    record is malformed (:func:`wastenet.model_metadata.check_metadata`, the check ``.pt`` files get too).
    """
    if isinstance(source, (str, os.PathLike)):
        path, source = source, onnx_session(source, threads=1)
    raw = source.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise ConfigError(f"{path} has no wastenet metadata: export it with `wastenet export`")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{path}: unreadable wastenet metadata ({exc})") from exc
    if not isinstance(meta, dict):
        raise ConfigError(f"{path}: unreadable wastenet metadata (not a JSON object)")
    return check_metadata(meta, str(path))
