"""The model runner: a network whose weights do not change, run over a whole split of cached images
on the fastest backend. Training (head features, teacher, ImageNet anchor), the end of training
(calibration, unknown-item fit, test pass), ``eval`` and ``adapt`` all run through it.

On CPU a long pass goes through onnxruntime fp32 (the network traced to a temporary ONNX file
once per runner), which measured fastest on every CPU tried (``benchmarks/frozen_pass.py``,
BENCHMARKS.md "Frozen passes"): the rule is in :func:`choose_backend`, its choices in
:data:`BACKENDS`. Each pass shows a progress bar with ETA (one line per 10% in a log file)::

    runner = FrozenRunner(FeatureHead(model), device, dtype=None, channels_last=True,
                          backend=choose_backend("auto", device, n_images=len(images)))
    feats = frozen_pass(runner, images_u8, prep, device=device, desc="[head] features view 1/5")
    logits = frozen_logits(model, images_u8, prep, device, tta=True)      # calibration, test
    feats, logits = FeaturePasses(model, prep, "cpu", n_images=3000)(images_u8, desc="train")

fp32 everywhere but the ``torch`` backend under autocast: calibration must run in the
precision that predict/serve/ONNX use (PITFALLS.md), and ONNX fp32 *is* that precision. The
batching, views and TTA are :func:`wastenet.inference.runtime.map_cached`'s, the ones
``predict_logits`` uses.

Imports torch only when a runner is built: ``BACKENDS`` is read by the command line's parser,
also on the torch-free edge install.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from wastenet.errors import ConfigError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

__all__ = ["BACKENDS", "ORT_MIN_IMAGES", "FeaturePasses", "FrozenRunner", "choose_backend", "frozen_logits",
           "frozen_pass", "onnxruntime_available"]

#: ``--frozen-backend``'s choices (TrainConfig and the command line take them from here)
BACKENDS = ("auto", "torch", "onnxruntime")
#: Below this many images a pass is over before the ONNX export (5-20 s) has paid for itself.
ORT_MIN_IMAGES = 256


def onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401 - the TorchScript exporter writes through it
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(requested: str, device: "torch.device", n_images: int) -> str:
    """The rule: on CPU, onnxruntime fp32 for a pass of at least ``ORT_MIN_IMAGES`` images when
    onnx and onnxruntime are installed; PyTorch otherwise (GPUs, short passes, no onnxruntime).

    Measured on an AMX Xeon (densenet121 batch 32: ORT fp32 44.9 img/s vs eager channels-last
    fp32 35.9) and on this project's AVX-512/bf16 EPYC (BENCHMARKS.md): ORT fp32 beat every
    eager variant, bf16 autocast included, for densenet121 and mobilenetv2.

    >>> import torch
    >>> choose_backend("auto", torch.device("cpu"), 10)
    'torch'
    """
    if requested not in BACKENDS:
        raise ConfigError(f"--frozen-backend must be one of {', '.join(BACKENDS)}, not {requested!r}")
    if requested == "onnxruntime":
        if device.type != "cpu":
            raise ConfigError("--frozen-backend onnxruntime runs on the CPU; use torch with a GPU")
        if not onnxruntime_available():
            raise ConfigError("--frozen-backend onnxruntime needs onnx and onnxruntime: pip install 'wastenet[export]'")
        return requested
    if requested == "torch" or device.type != "cpu" or n_images < ORT_MIN_IMAGES:
        return "torch"
    return "onnxruntime" if onnxruntime_available() else "torch"


class FrozenRunner:
    """``module`` (eval mode, no grad) as a batch function on one backend; outputs float32 on ``device``."""

    def __init__(self, module: "nn.Module", device: "torch.device", dtype: "torch.dtype | None",
                 channels_last: bool, backend: str, input_hw: tuple[int, int] = (224, 224), threads: int | None = None) -> None:
        import torch

        from wastenet.inference.runtime import autocast

        self._torch, self._autocast = torch, autocast
        self.module, self.device, self.dtype = module.eval(), device, dtype
        self.channels_last, self.backend = channels_last, backend
        self._session = None
        if backend == "onnxruntime":
            self._session = self._export(input_hw, threads or torch.get_num_threads())

    def _export(self, input_hw: tuple[int, int], threads: int) -> Any:
        from wastenet.inference.onnx_runtime import onnx_session

        torch = self._torch
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            path = Path(tmp) / "frozen.onnx"
            dummy = torch.zeros(2, 3, *input_hw, device=self.device)
            torch.onnx.export(self.module, (dummy,), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
            # idle threads sleep: the cores are shared with the augmentation and other jobs
            return onnx_session(path, threads=threads, spin_wait=False)

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        torch = self._torch
        with torch.no_grad():
            if self._session is not None:
                out = self._session.run(None, {"input": x.float().contiguous().cpu().numpy()})[0]
                return torch.from_numpy(out).to(self.device)
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            with self._autocast(self.device, self.dtype):
                return self.module(x.contiguous(memory_format=fmt)).float()


def frozen_pass(run: Callable[["torch.Tensor"], "torch.Tensor"], images_u8: np.ndarray, prep: Any, *,
                device: "torch.device", desc: str, augment: "nn.Module | None" = None, tta: bool = False,
                batch_size: int = 64, enabled: bool = True) -> "torch.Tensor":
    """``run`` over cached uint8 images ``[N, 3, H, W]`` (optionally augmented; ``tta``: logits of
    the image and its mirror combined as ``inference.tta`` defines) with a progress bar; float32
    ``[N, ...]`` on ``device``."""
    from wastenet.inference.runtime import map_cached
    from wastenet.progress import Progress

    with Progress(len(images_u8), desc, enabled=enabled) as bar:
        return map_cached(run, images_u8, prep, device, augment=augment, tta=tta, batch_size=batch_size,
                          progress=bar)


def frozen_logits(model: "nn.Module", images_u8: np.ndarray, prep: Any, device: "torch.device", *,
                  dtype: "torch.dtype | None" = None, tta: bool = False, backend: str = "auto",
                  channels_last: bool = False, desc: str = "logits", enabled: bool = True) -> "torch.Tensor":
    """The model's logits (float32, CPU) over a split: the calibration and test passes."""
    chosen = choose_backend(backend, device, len(images_u8) * (2 if tta else 1))
    runner = FrozenRunner(model, device, dtype, channels_last, chosen, input_hw=prep.hw)
    return frozen_pass(runner, images_u8, prep, device=device, desc=desc, tta=tta, enabled=enabled).cpu()


class FeaturePasses:
    """Pooled fp32 features ``[N, D]`` and logits ``[N, C]`` of cached uint8 squares, pass after
    pass through one runner (its backend rule and progress; one ONNX export however many passes)::

        passes = FeaturePasses(model, prep, "cpu", n_images=len(train) * 3)
        feats, logits = passes(train_u8, desc="train")
        views, _ = passes(train_u8, augment=aug, desc="train, augmented")
    """

    def __init__(self, model: "nn.Module", prep: Any, device: Any = "cpu", n_images: int = 0) -> None:
        import torch

        from wastenet.models import FeatureHead

        model.eval()
        self.prep, self.device = prep, torch.device(device)
        with torch.no_grad():
            self.n_logits = int(model.forward_head(model.forward_features(
                torch.zeros(1, 3, *prep.hw, device=self.device))).shape[1])
        self.runner = FrozenRunner(FeatureHead(model, with_logits=True).eval(), self.device, None, False,
                                   choose_backend("auto", self.device, n_images), input_hw=prep.hw)

    def __call__(self, images_u8: np.ndarray, desc: str = "features", augment: "nn.Module | None" = None,
                 batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        if len(images_u8) == 0:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        out = frozen_pass(self.runner, images_u8, self.prep, device=self.device, desc=desc, batch_size=batch_size,
                          augment=augment).float().cpu().numpy()
        return out[:, :-self.n_logits], out[:, -self.n_logits:]
