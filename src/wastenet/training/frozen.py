"""Frozen passes: no-grad forwards of a fixed network over a whole split, on the fastest backend.

The head-stage feature cache, the teacher's logits, and the calibration and test passes run a
network whose weights do not change during the pass, over thousands of images. On CPU they go
through onnxruntime fp32 (the network traced to a temporary ONNX file once per pass), which
measured fastest on every CPU tried (``benchmarks/frozen_pass.py``, BENCHMARKS.md "Frozen
passes"): the rule is in ``choose_backend``. Each pass shows a progress bar with ETA (one line
per 10% in a log file)::

    runner = FrozenRunner(FeatureHead(model), device, dtype=None, channels_last=True,
                          backend=choose_backend("auto", device, n_images=len(images)))
    feats = frozen_pass(runner, images_u8, prep, desc="[head] features view 1/5")

fp32 everywhere but the ``torch`` backend under autocast: calibration must run in the
precision that predict/serve/ONNX use (PITFALLS.md), and ONNX fp32 *is* that precision.
"""

from __future__ import annotations

import tempfile
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from wastenet.errors import ConfigError
from wastenet.progress import Progress

BACKENDS = ("auto", "torch", "onnxruntime")
#: Below this many images a pass is over before the ONNX export (5-20 s) has paid for itself.
ORT_MIN_IMAGES = 256


class FeatureHead(nn.Module):
    """A timm-style classifier's pooled pre-logit features (what the head stage trains on)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401 - the TorchScript exporter writes through it
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(requested: str, device: torch.device, n_images: int) -> str:
    """The rule: on CPU, onnxruntime fp32 for a pass of at least ``ORT_MIN_IMAGES`` images when
    onnx and onnxruntime are installed; PyTorch otherwise (GPUs, short passes, no onnxruntime).

    Measured on an AMX Xeon (densenet121 batch 32: ORT fp32 44.9 img/s vs eager channels-last
    fp32 35.9) and on this project's AVX-512/bf16 EPYC (BENCHMARKS.md): ORT fp32 beat every
    eager variant, bf16 autocast included, for densenet121 and mobilenetv2.

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

    def __init__(self, module: nn.Module, device: torch.device, dtype: torch.dtype | None,
                 channels_last: bool, backend: str, input_hw: tuple[int, int] = (224, 224), threads: int | None = None) -> None:
        self.module, self.device, self.dtype = module.eval(), device, dtype
        self.channels_last, self.backend = channels_last, backend
        self._session = None
        if backend == "onnxruntime":
            self._session = self._export(input_hw, threads or torch.get_num_threads())

    def _export(self, input_hw: tuple[int, int], threads: int):
        from wastenet.inference.onnx_runtime import onnx_session

        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            path = Path(tmp) / "frozen.onnx"
            dummy = torch.zeros(2, 3, *input_hw, device=self.device)
            torch.onnx.export(self.module, (dummy,), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
            # idle threads sleep: the cores are shared with the augmentation and other jobs
            return onnx_session(path, threads=threads, spin_wait=False)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._session is not None:
            out = self._session.run(None, {"input": x.float().contiguous().cpu().numpy()})[0]
            return torch.from_numpy(out).to(self.device)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        ctx = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()
        with ctx:
            return self.module(x.contiguous(memory_format=fmt)).float()


def frozen_pass(run: Callable[[torch.Tensor], torch.Tensor], images_u8: np.ndarray, prep, *, device: torch.device,
                desc: str, augment: nn.Module | None = None, tta: bool = False, batch_size: int = 64,
                enabled: bool = True) -> torch.Tensor:
    """``run`` over cached uint8 images ``[N, 3, H, W]`` (optionally augmented; ``tta``: logits of
    the image and its mirror combined as ``inference.tta`` defines) with a progress bar; float32
    ``[N, ...]`` on ``device``."""
    from wastenet.data.augment import to_model_batch
    from wastenet.inference.tta import VIEWS, tta_logits

    out = []
    with Progress(len(images_u8), desc, enabled=enabled) as bar:
        for i in range(0, len(images_u8), batch_size):
            u8 = torch.from_numpy(images_u8[i : i + batch_size])
            views = [run(to_model_batch(u8, prep, augment=augment, device=device, hflip=view == "hflip"))
                     for view in (VIEWS if tta else VIEWS[:1])]
            # TTA as inference.tta defines it for every backend (probabilities of the views averaged)
            out.append(torch.from_numpy(tta_logits(torch.stack(views).cpu().numpy())).to(device) if tta else views[0])
            bar.update(len(u8))
    return torch.cat(out) if out else torch.zeros(0, device=device)


def frozen_logits(model: nn.Module, images_u8: np.ndarray, prep, device: torch.device, *, dtype=None,
                  tta: bool = False, backend: str = "auto", channels_last: bool = False,
                  desc: str = "logits", enabled: bool = True) -> torch.Tensor:
    """The model's logits (float32, CPU) over a split: the calibration and test passes."""
    chosen = choose_backend(backend, device, len(images_u8) * (2 if tta else 1))
    runner = FrozenRunner(model, device, dtype, channels_last, chosen, input_hw=prep_hw(prep))
    return frozen_pass(runner, images_u8, prep, device=device, desc=desc, tta=tta, enabled=enabled).cpu()


def prep_hw(prep) -> tuple[int, int]:
    """The model input's (height, width) under ``prep``."""
    return prep.hw
