"""ONNX export and the parity check: a checkpoint as one self-contained, deployable file.

The exported file is self-contained (no ``.onnx.data`` side file) and carries everything
``wastenet predict`` needs in ``metadata_props["wastenet"]`` (JSON: arch, classes, taxonomy,
preprocessing, temperature, threshold, opset, exported_from). Input ``input`` float32
``[N,3,S,S]`` (normalised, dynamic batch), output ``logits`` ``[N,C]``; softmax and argmax
stay outside the graph, so TensorRT engines and the Python runtime share one file::

    from wastenet.export.onnx import export_onnx
    from wastenet.export.int8 import quantize_int8

    fp32 = export_onnx("runs/x/best.pt", "runs/x/best.onnx", opset=13,
                       check_images=["bottle.jpg"])        # raises if ORT != PyTorch
    print(fp32.size_bytes, fp32.max_abs_diff)
    int8 = quantize_int8(fp32.path, "runs/x/best.int8.onnx", calib_images=train_paths)

Sessions and metadata reading live in :mod:`wastenet.inference.onnx_runtime` (torch-free);
torch and onnx are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from wastenet import __version__
from wastenet.errors import ConfigError, WastenetError
from wastenet.files import atomic_path
from wastenet.inference.onnx_runtime import INPUT_NAME, METADATA_KEY, OOD_OUTPUT, OUTPUT_NAME, onnx_session, read_metadata
from wastenet.preprocessing import Preprocessing, preprocess_images

__all__ = [
    "ExportResult",
    "MAX_OPSET",
    "MIN_OPSET",
    "export_onnx",
    "generated_images",
    "onnx_session",
    "read_metadata",
    "spread",
]

MIN_OPSET = 13  # per-channel QDQ and TensorRT 8.2 (Jetson Nano) both want >= 13
MAX_OPSET = 20  # the TorchScript exporter's limit


@dataclass
class ExportResult:
    """What an export wrote, and how close it is to its reference.

    ``max_abs_diff`` is the largest |logit difference| against the reference over
    ``n_images`` images: PyTorch for an fp32 export, the fp32 ONNX file for an INT8 one
    (where ``agreement`` is the share of images with the same top-1 class).
    """

    path: Path
    size_bytes: int
    opset: int
    max_abs_diff: float
    n_images: int
    precision: str = "fp32"
    agreement: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6

    def summary(self) -> str:
        """One line for the command line."""
        ref = "PyTorch" if self.precision == "fp32" else "fp32 ONNX"
        text = (f"{self.path}  {self.precision}  {self.size_mb:.2f} MB  opset {self.opset}  "
                f"vs {ref}: max |Δlogit| = {self.max_abs_diff:.2e} over {self.n_images} images")
        if self.agreement is not None:
            text += f", top-1 agreement {self.agreement:.1%}"
        return text


# --------------------------------------------------------------------------- helpers
def run_session(sess: Any, x: np.ndarray, batch_size: int = 8, output: str = OUTPUT_NAME) -> np.ndarray:
    """One output (the logits by default) of ``x`` through an onnxruntime session, ``batch_size`` images at a time."""
    outs = [sess.run([output], {INPUT_NAME: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


# --------------------------------------------------------------------------- images
def generated_images(n: int = 4, seed: int = 0) -> list[Image.Image]:
    """``n`` synthetic RGB images of assorted sizes (a parity check when no photos are given)."""
    rng = np.random.default_rng(seed)
    sizes = [(384, 512), (300, 200), (97, 131), (640, 480)]
    images = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        # smooth colour gradients plus noise: natural-ish statistics, not pure noise
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * rng.uniform(80, 255, 3)
        arr = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(arr, "RGB"))
    return images


def load_images(paths: Iterable[str | os.PathLike]) -> tuple[list[Image.Image], list[str]]:
    """Decode ``paths``; unreadable files are skipped and reported in the second list."""
    from wastenet.data.images import ImageDecodeError, load_image

    images, skipped = [], []
    for p in paths:
        try:
            images.append(load_image(p))
        except ImageDecodeError as err:
            skipped.append(str(err))
    return images, skipped


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items evenly spaced over ``items`` (all if fewer): a sorted class-folder list
    stays class-balanced, and the choice is deterministic.

    >>> spread(list(range(10)), 3)
    [0, 3, 6]
    """
    items = list(items)
    if n <= 0 or len(items) <= n:
        return items
    return [items[i * len(items) // n] for i in range(n)]


# --------------------------------------------------------------------------- fp32 export
def _static_same_padding(model: Any, input_size: int | tuple[int, int]) -> Any:
    """A copy of ``model`` whose TF-style 'same' padding is fixed for ``input_size`` inputs.

    timm's ``Conv2dSame`` / ``MaxPool2dSame`` / ``AvgPool2dSame`` (mobilenetv2_100 with
    ``pad_type="same"``) compute their padding from the input shape at run time; traced,
    that becomes Shape/Gather/Ceil/Pad chains (mobilenetv2_100: 610 nodes instead of 106)
    which TensorRT 8.2 and the quantiser handle badly. The spatial size is fixed by the
    preprocessing, so the pads are constants: record each layer's input size once and
    replace the layer by pad + plain op.
    """
    import copy

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    model = copy.deepcopy(model).eval()  # never touch the caller's network (the parity reference)
    try:
        from timm.layers.conv2d_same import Conv2dSame
        from timm.layers.padding import pad_same_arg
        from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame
    except ImportError:  # torchvision-only install: nothing dynamic to fix
        return model
    same_types = (Conv2dSame, MaxPool2dSame, AvgPool2dSame)
    targets = {name: m for name, m in model.named_modules() if isinstance(m, same_types)}
    if not targets:
        return model
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=name: sizes.__setitem__(n, tuple(args[0].shape[-2:])))
             for name, m in targets.items()]
    with torch.no_grad():
        model(torch.zeros(1, 3, *_hw(input_size)))
    for h in hooks:
        h.remove()

    class _StaticPad(nn.Module):
        def __init__(self, inner: nn.Module, pad: list[int], value: float, base: type) -> None:
            super().__init__()
            self.inner, self.pad, self.value, self._base = inner, pad, value, base

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # the base class's forward (plain Conv2d / pooling with zero padding) on the padded input
            return self._base.forward(self.inner, F.pad(x, self.pad, value=self.value))

    for name, mod in targets.items():
        if name not in sizes:
            continue  # layer not on the forward path
        if isinstance(mod, Conv2dSame):
            pad = pad_same_arg(list(sizes[name]), list(mod.weight.shape[-2:]), list(mod.stride), list(mod.dilation))
            new = _StaticPad(mod, pad, 0.0, nn.Conv2d)
        else:
            k = _pair(mod.kernel_size)
            s = _pair(mod.stride)
            d = _pair(getattr(mod, "dilation", 1))
            pad = pad_same_arg(list(sizes[name]), k, s, d)
            if isinstance(mod, MaxPool2dSame):
                new = _StaticPad(mod, pad, float("-inf"), nn.MaxPool2d)
            else:
                new = _StaticPad(mod, pad, 0.0, nn.AvgPool2d)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


def _pair(v: Any) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _torch_export(model: Any, path: Path, input_size: int | tuple[int, int], opset: int,
                  outputs: Sequence[str] = (OUTPUT_NAME,)) -> None:
    """Trace ``model`` to ``path`` (one self-contained file, dynamic batch; (H, W) fixed)."""
    import torch

    outputs = list(outputs)
    dummy = torch.zeros(2, 3, *_hw(input_size))  # (H, W) fixed by the preprocessing; batch dynamic
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated but is the one that writes opset 13 in one file
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), str(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=outputs,
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
            do_constant_folding=True,
        )


def half_score_tables(model: Any, min_bytes: int = 1 << 20) -> Any:
    """Store the unknown-item rule's large tables (the k-NN bank, the ImageNet head) in float16
    behind a Cast: half their size in the file, the same values (the fit rounded them already).

    The exporter's constant folding turns the module's half-precision buffers back into float32
    initializers; this undoes it for initializers of at least ``min_bytes`` read only by the
    score's nodes (``/score/*``, which INT8 also leaves in float).
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    casts = []
    for init in list(graph.initializer):
        users = readers.get(init.name, [])
        if (init.data_type != onnx.TensorProto.FLOAT or not users
                or not all(u.name.startswith("/score/") for u in users)):
            continue
        table = numpy_helper.to_array(init)
        if table.nbytes < min_bytes:
            continue
        half = numpy_helper.from_array(table.astype(np.float16), f"{init.name}_fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT,
                                      name=f"/score/half_table_{len(casts)}"))
    for i, node in enumerate(casts):
        graph.node.insert(i, node)
    return model


def _fold_constants(model: Any) -> Any:
    """Evaluate every node whose inputs are all constants and store its outputs as initializers.

    The TorchScript exporter leaves the pad amounts of ``F.pad`` as a small
    ConstantOfShape/Concat/Reshape/Slice/Transpose chain; TensorRT 8.2 needs a Pad's
    ``pads`` to be an initializer, and onnxruntime can only fuse Pad into Conv when it is.
    """
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    opsets = {o.domain: o.version for o in model.opset_import}
    known: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    folded: set[str] = set()
    keep = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:
            known[node.output[0]] = numpy_helper.to_array(value)
            folded.add(node.output[0])
            continue
        inputs = [i for i in node.input if i]
        # a Cast of a stored half-precision table (the unknown-item bank) stays a Cast: folding it
        # would store the table in float32, twice the file
        widening = node.op_type == "Cast" and inputs and inputs[0] in known and known[inputs[0]].dtype == np.float16
        if (node.domain in ("", "ai.onnx") and inputs and all(i in known for i in inputs) and not widening
                and not any(a.type == onnx.AttributeProto.GRAPH for a in node.attribute)):
            try:
                outs = ReferenceEvaluator(node, opsets=opsets).run(None, {i: known[i] for i in inputs})
            except Exception:  # noqa: BLE001 - whatever the reference cannot evaluate stays in the graph
                keep.append(node)
                continue
            for name, out in zip(node.output, outs):
                known[name] = np.asarray(out)
                folded.add(name)
            continue
        keep.append(node)
    used = {i for n in keep for i in n.input} | {o.name for o in graph.output}
    init_names = {init.name for init in graph.initializer}
    new_inits = [numpy_helper.from_array(known[name], name) for name in sorted(folded & used)
                 if name not in init_names]
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(new_inits)
    # drop initializers nothing reads any more (the folded chains' own inputs)
    still = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(still)
    stale = [vi for vi in graph.value_info if vi.name in folded]
    for vi in stale:
        graph.value_info.remove(vi)
    return model


def set_metadata(model: Any, meta: dict[str, Any]) -> None:
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, sort_keys=True)


def model_opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def save_checked(model: Any, path: Path) -> None:
    """Check, then write ``model`` as one file (never external data)."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise WastenetError(f"exported model failed onnx.checker: {' '.join(str(exc).split())[:300]}") from exc
    onnx.save_model(model, str(path), save_as_external_data=False)


def export_onnx(
    checkpoint_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    opset: int = 17,
    check_images: Sequence[str | os.PathLike] | None = None,
    tolerance: float = 1e-3,
) -> ExportResult:
    """Export a wastenet checkpoint to one ONNX file and prove it matches PyTorch.

    The parity check runs PyTorch and onnxruntime on ``check_images`` (paths; a few
    generated images when ``None``) preprocessed exactly as ``predict`` does, and raises
    ``WastenetError`` when the largest |logit difference| exceeds ``tolerance``; the file
    is only written (atomically) once it passed::

        r = export_onnx("runs/x/best.pt", "runs/x/wastenet13.onnx", opset=13)
        r.max_abs_diff      # e.g. 3e-06
    """
    import onnx
    import torch

    from wastenet import checkpoint
    from wastenet.models import model_from_checkpoint

    opset = int(opset)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")
    out_path = Path(out_path)
    ckpt = checkpoint.load(checkpoint_path)
    model = model_from_checkpoint(ckpt)
    prep = Preprocessing.from_dict(ckpt["preprocessing"])

    images, skipped = (load_images(check_images) if check_images is not None else (generated_images(), []))
    if not images:
        raise ConfigError("parity check: none of the check images could be read"
                          + (f" ({skipped[0]})" if skipped else ""))

    ood = ckpt.get("ood")
    graph_model = _static_same_padding(model, prep.hw)
    outputs = [OUTPUT_NAME]
    if ood:  # the unknown-item score becomes a second graph output (torch-free at the edge)
        from wastenet.inference.ood_model import ScoredNet

        graph_model = ScoredNet(graph_model, ood).eval()
        outputs.append(OOD_OUTPUT)
    with atomic_path(out_path) as tmp:  # renamed over out_path only if every check passes
        try:
            _torch_export(graph_model, tmp, prep.hw, opset, outputs)
        except WastenetError:
            raise
        except Exception as exc:  # noqa: BLE001 - exporter failures are reported as one line
            raise WastenetError(f"ONNX export of {ckpt['arch']} failed: {' '.join(str(exc).split())[:300]}") from exc
        proto = half_score_tables(_fold_constants(onnx.load(str(tmp))))
        meta = {
            "format": "wastenet-onnx",
            "version": 1,
            "arch": ckpt["arch"],
            "classes": list(ckpt["classes"]),
            "taxonomy": ckpt.get("taxonomy"),
            "preprocessing": prep.to_dict(),
            "temperature": float(ckpt.get("temperature", 1.0)),
            "threshold": ckpt["threshold"],  # checkpoint.load fills in the default
            "opset": opset,
            "precision": "fp32",
            "exported_from": str(Path(checkpoint_path).resolve()),
            "wastenet_version": __version__,
        }
        if ood:
            from wastenet.inference.ood_model import graph_method

            meta["ood"] = {"method": ood["method"], "thresholds": dict(ood["thresholds"]),
                           "search_thresholds": dict(ood.get("search_thresholds") or {}), "keep": ood.get("keep"),
                           "graph_method": graph_method(ood), "output": OOD_OUTPUT}
        set_metadata(proto, meta)
        proto.producer_name, proto.producer_version = "wastenet", __version__
        proto.doc_string = f"wastenet {ckpt['arch']} classifier ({len(ckpt['classes'])} classes)"
        save_checked(proto, tmp)

        # parity: the same preprocessed batch through both runtimes
        x = preprocess_images(images, prep)
        with torch.no_grad():
            ref = np.concatenate([model(torch.from_numpy(x[i : i + 8])).numpy() for i in range(0, len(x), 8)])
        sess = onnx_session(tmp)
        got = run_session(sess, x)
        diff = float(np.max(np.abs(ref - got)))
        if ood and diff <= tolerance:  # the score must agree too, relative to its own scale
            with torch.no_grad():
                ref_s = np.concatenate([graph_model(torch.from_numpy(x[i : i + 8]))[1].numpy() for i in range(0, len(x), 8)])
            got_s = run_session(sess, x, output=OOD_OUTPUT)
            rel = float(np.max(np.abs(ref_s - got_s) / (np.abs(ref_s) + 1.0)))
            if not rel <= tolerance:
                raise WastenetError(f"parity check failed: unknown-item score differs by {rel:.3g} (relative) "
                                    f"> tolerance {tolerance:g} (file not written)")
        if not diff <= tolerance:  # also catches NaN
            raise WastenetError(f"parity check failed: max |Δlogit| = {diff:.3g} > tolerance {tolerance:g} "
                                f"over {len(x)} images (ONNX disagrees with PyTorch; file not written)")
    return ExportResult(path=out_path, size_bytes=out_path.stat().st_size, opset=opset, max_abs_diff=diff,
                        n_images=len(x), precision="fp32",
                        details={"skipped_check_images": skipped, "generated_check_images": check_images is None})
