"""Running a PyTorch network: the device, the precision, and logits for cached images.

Training, evaluation and the PyTorch backend of :class:`~wastenet.inference.predictor.Classifier`
all run the model through these helpers, so ``--device`` and ``--amp`` mean the same in every
mode::

    device = resolve_device("auto")                     # cuda if there is one, else cpu
    dtype = autocast_for(device, "auto")                # bf16 on a CPU with native bf16, else None
    logits = predict_logits(model, cache.images, prep, device, dtype, tta=True)   # [N, C] float32

Imports torch: the torch-free edge install never imports this module.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager

import numpy as np
import torch
import torch.nn as nn

from wastenet.data.augment import to_model_batch
from wastenet.errors import ConfigError
from wastenet.inference.tta import VIEWS, tta_logits

__all__ = ["autocast", "autocast_for", "cpu_has_fast_bf16", "map_cached", "predict_logits", "resolve_device"]


# ---------------------------------------------------------------- devices and precision
def resolve_device(name: str | None) -> torch.device:
    """``auto`` (or empty) -> cuda when available, else cpu; ``cpu``, ``cuda``, ``cuda:1`` as asked.

    An unknown name, or cuda without a GPU, is a ConfigError (exit 2).
    """
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (use cpu, cuda or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but no CUDA GPU is available")
    return device


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels here (AVX512-BF16 / AMX); without them bf16 is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_for(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` (None = full fp32).

    On a CPU with native bf16 (AMX here), bf16 with channels-last trains DenseNet121 2.4x and
    MobileNetV2 1.3x faster than fp32 NCHW, and runs their inference 2.8x / 1.9x faster
    (BENCHMARKS.md, "Precision and memory layout"); without native bf16, ``auto`` stays in
    fp32. fp16 needs a GradScaler and CUDA.
    """
    if amp == "off":
        return None
    if amp == "auto":
        if device.type == "cpu":
            if not cpu_has_fast_bf16():
                return None
            amp = "bf16"
        else:
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if dtype is torch.float16 and device.type != "cuda":
        raise ConfigError("--amp fp16 needs a CUDA device; use bf16 on CPU")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager[Any]:
    """``torch.autocast`` in ``dtype``, or nothing for full precision (``dtype`` None)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


# ---------------------------------------------------------------- logits
@torch.no_grad()
def map_cached(run: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray, prep: Any, device: torch.device | str,
               *, augment: nn.Module | None = None, tta: bool = False, batch_size: int = 64,
               channels_last: bool = False, progress: Any = None) -> torch.Tensor:
    """``run`` over cached uint8 squares ``[N, 3, R, R]``, batch by batch: float32 ``[N, ...]`` on ``device``.

    The one batching loop of every pass over cached images (``predict_logits`` here, the model
    runner's passes in :mod:`wastenet.inference.runner`): each batch becomes the model input
    (``augment``-ed first when given), ``tta`` looks at the image and its mirror and combines
    them as :mod:`wastenet.inference.tta` defines; ``progress.update(n)`` after each batch.
    """
    device = torch.device(device)
    out = []
    for i in range(0, len(images), batch_size):
        u8 = torch.from_numpy(images[i : i + batch_size])
        views = [run(to_model_batch(u8, prep, augment=augment, device=device, hflip=view == "hflip",
                                    channels_last=channels_last))
                 for view in (VIEWS if tta else VIEWS[:1])]
        out.append(torch.from_numpy(tta_logits(torch.stack(views).cpu().numpy())).to(device) if tta else views[0])
        if progress is not None:
            progress.update(len(u8))
    return torch.cat(out) if out else torch.zeros(0, device=device)


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, prep: Any, device: torch.device | str,
                   dtype: torch.dtype | None, batch_size: int = 64, tta: bool = False,
                   channels_last: bool = False) -> torch.Tensor:
    """Logits (float32, CPU) ``[N, C]`` for cached uint8 squares ``[N, 3, R, R]``.

    ``tta`` looks at the image and its mirror and combines them as :mod:`wastenet.inference.tta`
    defines (the same rule ``predict --tta`` applies).
    """
    model.eval()
    device = torch.device(device)

    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, dtype):
            return model(x).float()

    return map_cached(run, images, prep, device, tta=tta, batch_size=batch_size, channels_last=channels_last).cpu()
