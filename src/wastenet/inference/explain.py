"""Grad-CAM: where in the photo the model looked when it chose a class.

Built on ``pytorch-grad-cam``. Works on frozen backbones too (all ``requires_grad`` False,
as after linear probing): the input tensor is made to require grad, so gradients still
reach the target layer (without it pytorch-grad-cam fails with ``'NoneType' object has no
attribute 'shape'``). The heat map is drawn over the model's own input
crop (resize + centre crop), so what you see is exactly what the network saw::

    overlay, heatmap, pred = explain("runs/x/best.pt", "bottle.jpg")
    save_overlay(overlay, "bottle_gradcam.png")     # PNG, input_size x input_size
    print(pred, heatmap.shape)                      # heatmap: float32 [S, S] in [0, 1]

``explain_batch(model, x, targets)`` gives the raw maps for a batch (the evaluation report's
gallery of worst mistakes uses it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from wastenet.errors import ConfigError
from wastenet.files import write_atomic
from wastenet.inference.inputs import ImageInput, display_name, to_pil
from wastenet.inference.predictor import Classifier
from wastenet.inference.results import Prediction
from wastenet.preprocessing import model_input_uint8, normalize

__all__ = ["class_index", "explain", "explain_batch", "find_target_layer", "overlay_heatmap", "save_overlay"]


def find_target_layer(model: nn.Module) -> nn.Module:
    """The layer whose activations Grad-CAM weighs: the last spatial feature map.

    timm densenet -> ``features.norm5``; resnet -> ``layer4[-1]``; efficientnet / mobilenet
    -> ``bn2`` (else ``conv_head``); torchvision AlexNet / SqueezeNet -> the last module of
    ``features``; anything else -> the last module with a 4-D (N, C, H>1 or W>1) output in
    a forward pass on a dummy input.

    >>> find_target_layer(timm.create_model("resnet50"))   # doctest: +SKIP
    Bottleneck(...)
    """
    from wastenet.models import TorchvisionClassifier

    if isinstance(model, TorchvisionClassifier):
        return list(model.features.children())[-1]
    features = getattr(model, "features", None)
    if isinstance(features, nn.Module) and isinstance(getattr(features, "norm5", None), nn.Module):
        return features.norm5
    layer4 = getattr(model, "layer4", None)
    if isinstance(layer4, nn.Sequential) and len(layer4) > 0:
        return layer4[-1]
    for name in ("bn2", "conv_head"):
        # bn2 is BatchNormAct (norm + activation): the map the head actually pools
        module = getattr(model, name, None)
        if isinstance(module, nn.Module) and not isinstance(module, nn.Identity):
            return module
    return _last_spatial_module(model)


def _last_spatial_module(model: nn.Module) -> nn.Module:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = int((cfg.get("input_size") or (3, 224, 224))[-1])
    try:
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    last: list[nn.Module] = []

    def hook(module: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
            last.append(module)

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not last:
        raise ConfigError(f"cannot find a convolutional feature map in {type(model).__name__} for Grad-CAM")
    return last[-1]


def class_index(classes: Sequence[str], target: str | int | None) -> int | None:
    """A class name or index -> index (None stays None); unknown names are a ConfigError."""
    if target is None:
        return None
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if not 0 <= int(target) < len(classes):
            raise ConfigError(f"class index {target} out of range (0..{len(classes) - 1})")
        return int(target)
    if str(target) not in classes:
        raise ConfigError(f"unknown class {target!r}; the model's classes are: {', '.join(classes)}")
    return list(classes).index(str(target))


def explain_batch(model: nn.Module, x: np.ndarray | torch.Tensor, targets: Sequence[int] | None = None,
                  target_layer: nn.Module | None = None, batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps for a normalised batch ``x`` [N,3,H,W]: float32 ``[N,H,W]`` in [0, 1].

    ``targets`` are class indices (None: each image's predicted class). The model's
    train/eval mode and its parameters' ``requires_grad`` are left as they were.

        maps = explain_batch(model, x, targets=[2, 0])   # x from preprocess_images(...)
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = target_layer if target_layer is not None else find_target_layer(model)
    device = next(model.parameters()).device
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
    n = xt.shape[0]
    if targets is not None:
        targets = [int(t) for t in targets]
        if len(targets) != n:
            raise ValueError(f"{len(targets)} targets for {n} images")
    if n == 0:
        return np.zeros((0, xt.shape[-2], xt.shape[-1]), np.float32)
    was_training = model.training
    maps: list[np.ndarray] = []
    try:
        for start in range(0, n, batch_size):
            chunk_targets = None
            if targets is not None:
                chunk_targets = [ClassifierOutputTarget(t) for t in targets[start:start + batch_size]]
            result = None
            # works even when called under inference_mode / no_grad (e.g. from an eval loop)
            with torch.inference_mode(False), torch.enable_grad():
                chunk = xt[start:start + batch_size].to(device).detach().clone()
                # frozen backbones: without an input that needs grad, no gradient reaches the layer
                chunk.requires_grad_(True)
                with GradCAM(model=model, target_layers=[layer]) as cam:  # context: releases the hooks
                    result = cam(input_tensor=chunk, targets=chunk_targets)
            if result is None:  # GradCAM.__exit__ swallows IndexError (e.g. a class out of range)
                raise RuntimeError("Grad-CAM failed on this batch")
            maps.append(np.asarray(result, dtype=np.float32))
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return np.clip(np.concatenate(maps), 0.0, 1.0)


def overlay_heatmap(crop: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Blend a [0, 1] heat map (matplotlib "jet") over a uint8 ``[H,W,3]`` image; no caption."""
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3]  # RGBA floats -> RGB
    base = crop.astype(np.float32) / 255.0
    blended = (1.0 - alpha) * base + alpha * colours
    return Image.fromarray(np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")


def explain(source: str | os.PathLike | Classifier, image: ImageInput, target_class: str | int | None = None,
            device: str = "cpu") -> tuple[Image.Image, np.ndarray, Prediction]:
    """Grad-CAM for one image: ``(overlay, heatmap [S,S] in [0,1], prediction)``.

    ``source`` is a ``.pt`` checkpoint path or a loaded torch-backend Classifier;
    ``target_class`` (name or index) defaults to the predicted class. A bad checkpoint or
    class name is a ConfigError; an unreadable image raises ImageDecodeError.
    """
    clf = source if isinstance(source, Classifier) else Classifier.load(source, device=device)
    model = clf.model  # ConfigError for an ONNX file: Grad-CAM needs gradients
    target = class_index(clf.classes, target_class)
    pil = to_pil(image)
    pred = clf.predict([pil])[0]
    pred.path = display_name(image, 0)
    if target is None:
        target = clf.classes.index(pred.label)
    crop = model_input_uint8(pil, clf.preprocessing)
    x = normalize(crop[None], clf.preprocessing)
    heatmap = explain_batch(model, x, [target])[0]
    return overlay_heatmap(crop, heatmap), heatmap, pred


def save_overlay(overlay: Image.Image, path: str | os.PathLike) -> Path:
    """Write the overlay as PNG (or the format the suffix names), atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    fmt = Image.registered_extensions().get(ext, "PNG") if ext else "PNG"
    return write_atomic(path, lambda f: overlay.save(f, format=fmt))
