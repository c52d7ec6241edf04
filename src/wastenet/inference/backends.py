"""The two runtimes behind :class:`~wastenet.inference.predictor.Classifier`: normalised float32
``[N,3,S,S]`` in, raw logits ``[N,C]`` out.

``TorchBackend`` wraps a PyTorch network (torch imported when one is built); ``OnnxBackend`` an
onnxruntime session over a wastenet ONNX file (torch-free, for the edge install)::

    backend = OnnxBackend("model.onnx", spin_wait=False)
    logits = backend.predict_arrays(x)
    meta = backend.metadata()          # classes, preprocessing, temperature, ...
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from wastenet.inference.onnx_runtime import INPUT_NAME, OUTPUT_NAME, onnx_session, read_metadata

__all__ = ["OnnxBackend", "TorchBackend"]


class TorchBackend:
    """A PyTorch network in eval mode: normalised float32 ``[N,3,S,S]`` -> logits ``[N,C]``."""

    name = "torch"

    def __init__(self, model: Any, device: str = "cpu", channels_last: bool = False) -> None:
        import torch

        from wastenet.inference.runtime import resolve_device

        self._torch = torch
        self.device = resolve_device(device)
        self.channels_last = channels_last
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def predict_arrays(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        if self.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.model(t).float().cpu().numpy()


class OnnxBackend:
    """An onnxruntime session over a wastenet ONNX file (input ``input``, output ``logits``)."""

    name = "onnx"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", spin_wait: bool = True) -> None:
        self.path = Path(path)
        self.session = onnx_session(path, device=device, spin_wait=spin_wait)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        self.input_name = INPUT_NAME if INPUT_NAME in inputs else inputs[0]
        self.output_name = OUTPUT_NAME if OUTPUT_NAME in outputs else outputs[0]

    def metadata(self) -> dict[str, Any]:
        """The file's ``wastenet`` metadata (ConfigError if it has none)."""
        return read_metadata(self.session, self.path)

    def predict_arrays(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.asarray(self.session.run([self.output_name], {self.input_name: x})[0], dtype=np.float32)
