"""The two runtimes behind :class:`~wastenet.inference.predictor.Classifier`: normalised float32
``[N,3,S,S]`` in, raw logits ``[N,C]`` out; ``predict_scored`` adds the unknown-item score of a
model with a fitted rule (``None`` otherwise).

``TorchBackend`` wraps a PyTorch network (torch imported when one is built); ``OnnxBackend`` an
onnxruntime session over a wastenet ONNX file (torch-free, for the edge install)::

    backend = OnnxBackend("model.onnx", spin_wait=False)
    logits = backend.predict_arrays(x)
    meta = backend.metadata()          # classes, preprocessing, temperature, ...

``FrozenPassBackend`` runs a network and its rule inside training, through the frozen passes'
fastest runtime (``inference.runner.choose_backend``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from wastenet.inference.onnx_runtime import INPUT_NAME, OOD_OUTPUT, OUTPUT_NAME, onnx_session, read_metadata

__all__ = ["FrozenPassBackend", "OnnxBackend", "TorchBackend"]


class TorchBackend:
    """A PyTorch network in eval mode: normalised float32 ``[N,3,S,S]`` -> logits ``[N,C]``."""

    name = "torch"

    def __init__(self, model: Any, device: str = "cpu", channels_last: bool = False,
                 ood_rule: Mapping[str, Any] | None = None) -> None:
        import torch

        from wastenet.inference.runtime import resolve_device

        self._torch = torch
        self.device = resolve_device(device)
        self.channels_last = channels_last
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.scored = None
        if ood_rule:  # the same module `wastenet export` writes to ONNX
            from wastenet.inference.ood_model import ScoredNet

            self.scored = ScoredNet(self.model, ood_rule).to(self.device).eval()

    def _tensor(self, x: np.ndarray) -> Any:
        torch = self._torch
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def predict_arrays(self, x: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.model(self._tensor(x)).float().cpu().numpy()

    def predict_scored(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and the feature-space unknown-item score (None without fitted statistics)."""
        if self.scored is None:
            return self.predict_arrays(x), None
        with self._torch.inference_mode():
            logits, score = self.scored(self._tensor(x))
        return logits.float().cpu().numpy(), score.float().cpu().numpy()


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
        self.ood_output = OOD_OUTPUT if OOD_OUTPUT in outputs else None

    def metadata(self) -> dict[str, Any]:
        """The file's ``wastenet`` metadata (ConfigError if it has none)."""
        return read_metadata(self.session, self.path)

    def predict_arrays(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.asarray(self.session.run([self.output_name], {self.input_name: x})[0], dtype=np.float32)

    def predict_scored(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and the graph's unknown-item output (None for a file exported without one)."""
        if self.ood_output is None:
            return self.predict_arrays(x), None
        x = np.ascontiguousarray(x, dtype=np.float32)
        logits, score = self.session.run([self.output_name, self.ood_output], {self.input_name: x})
        return np.asarray(logits, dtype=np.float32), np.asarray(score, dtype=np.float32)


class FrozenPassBackend:
    """A PyTorch network with its unknown-item rule run like training's frozen passes (onnxruntime
    fp32 on a CPU where installed, else eager): for the passes at the end of training that go
    through :class:`~wastenet.inference.predictor.Classifier`, e.g. fitting the searched threshold::

        backend = FrozenPassBackend(model, ckpt["ood"], input_hw=(224, 224), n_inputs=5000)
    """

    name = "torch"

    def __init__(self, model: Any, ood_rule: Mapping[str, Any], input_hw: tuple[int, int], device: str = "cpu",
                 n_inputs: int = 0) -> None:
        import torch

        from wastenet.inference.ood_model import ScoredSideBySide
        from wastenet.inference.runner import FrozenRunner, choose_backend

        self._torch = torch
        dev = torch.device(device)
        self.model = model
        self.runner = FrozenRunner(ScoredSideBySide(model, ood_rule).to(dev), dev, None, False,
                                   choose_backend("auto", dev, n_inputs), input_hw=input_hw)

    def predict_arrays(self, x: np.ndarray) -> np.ndarray:
        return self.predict_scored(x)[0]

    def predict_scored(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self.runner(self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).cpu().numpy()
        return out[:, :-1], out[:, -1]
