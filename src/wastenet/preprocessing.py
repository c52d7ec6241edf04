"""Model input preprocessing, written with PIL and NumPy only (no PyTorch).

One definition serves every path: the training cache, the PyTorch predictor and the
PyTorch-free edge runtime. It reproduces timm's eval transform
(``Resize(shorter side = input_size / crop_pct) -> CenterCrop(input_size) -> Normalize``).

Training caches each image once as a ``resize_size`` square (``fit_square``) so that
augmentation has a margin to work in and evaluation is a centre crop of the cache.

Beside the square crop there is an aspect-preserving mode (``--img-size 256x320``, height x
width): the whole photo is resized to ``input_size`` x ``input_width``, no crop and no
letterbox, so a 384 x 512 TrashNet photo keeps everything in frame at 4:5 instead of losing its
sides to a square crop (a photo of another aspect is stretched to fit). The cache then holds
exactly that image and augmentation works on it with replicated borders::

    prep = Preprocessing.from_data_config({"input_size": (3, 224, 224), "crop_pct": 0.875,
                                           "mean": (0.485, 0.456, 0.406),
                                           "std": (0.229, 0.224, 0.225),
                                           "interpolation": "bicubic"})
    batch = preprocess_images([pil_image], prep)   # float32 [1, 3, 224, 224]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PIL_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input: stored in every checkpoint and ONNX file."""

    input_size: int = 224                 # square side; in the aspect-preserving mode, the height
    resize_size: int = 256
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)
    std: tuple[float, float, float] = field(default=IMAGENET_STD)
    interpolation: str = "bicubic"
    input_width: int | None = None        # set: resize the whole image to input_size x input_width, no crop

    def __post_init__(self) -> None:
        if self.interpolation not in _PIL_INTERPOLATION:
            raise ValueError(f"unknown interpolation {self.interpolation!r}")
        if self.input_width is not None:
            object.__setattr__(self, "resize_size", self.input_size)  # nothing is cropped
        if self.resize_size < self.input_size:
            raise ValueError("resize_size must be at least input_size")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def crop_pct(self) -> float:
        return self.input_size / self.resize_size

    @property
    def hw(self) -> tuple[int, int]:
        """The model input's (height, width)."""
        return (self.input_size, self.input_width or self.input_size)

    @property
    def cache_size(self) -> int | tuple[int, int]:
        """What the training cache holds: a ``resize_size`` square, or the exact (H, W) image."""
        return self.hw if self.input_width else self.resize_size

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        # files written before the aspect-preserving mode have no input_width: square crop
        return cls(**{k: d[k] for k in ("input_size", "resize_size", "mean", "std", "interpolation")},
                   input_width=d.get("input_width"))

    @classmethod
    def from_data_config(cls, cfg: dict[str, Any], input_size: int | tuple[int, int] | None = None) -> "Preprocessing":
        """Build from a timm data config (``timm.data.resolve_model_data_config``); ``input_size``
        overrides the size: a side (square crop) or (height, width) (aspect-preserving resize)."""
        if isinstance(input_size, (tuple, list)):
            h, w = (int(v) for v in input_size)
            return cls(input_size=h, resize_size=h, mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
                       std=tuple(cfg.get("std", IMAGENET_STD)),
                       interpolation=str(cfg.get("interpolation") or "bicubic"), input_width=w)
        size = int(input_size or cfg["input_size"][-1])
        crop_pct = float(cfg.get("crop_pct") or 0.875)
        return cls(
            input_size=size,
            resize_size=int(math.floor(size / crop_pct)),
            mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(cfg.get("std", IMAGENET_STD)),
            interpolation=str(cfg.get("interpolation") or "bicubic"),
        )


def _center_offset(length: int, crop: int) -> int:
    # torchvision's rounding, so that crops match its CenterCrop pixel for pixel
    return int(round((length - crop) / 2.0))


def resize_shorter(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize so the shorter side is ``size``, keeping the aspect ratio (torchvision's rule)."""
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), _PIL_INTERPOLATION[interpolation])


def center_crop(arr: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Centre crop the last-but-one two axes of an ``[..., H, W, C]`` uint8 array to ``size``
    (a side, or (height, width))."""
    ch, cw = (size, size) if isinstance(size, int) else size
    h, w = arr.shape[-3], arr.shape[-2]
    top, left = _center_offset(h, ch), _center_offset(w, cw)
    return arr[..., top : top + ch, left : left + cw, :]


def resize_exact(img: Image.Image, hw: tuple[int, int], interpolation: str = "bicubic") -> np.ndarray:
    """The whole image resized to (height, width), no crop, no letterbox: uint8 ``[H, W, 3]``."""
    h, w = hw
    img = img.convert("RGB")
    if img.size != (w, h):
        img = img.resize((w, h), _PIL_INTERPOLATION[interpolation])
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def cache_image(img: Image.Image, size: int | tuple[int, int], interpolation: str = "bicubic") -> np.ndarray:
    """One training-cache entry: ``fit_square`` for a side, ``resize_exact`` for (height, width)."""
    if isinstance(size, int):
        return fit_square(img, size, interpolation)
    return resize_exact(img, tuple(size), interpolation)


def fit_square(img: Image.Image, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """Shorter side to ``size`` then the centre ``size`` x ``size`` square: uint8 ``[H, W, 3]``."""
    resized = resize_shorter(img.convert("RGB"), size, interpolation)
    return np.ascontiguousarray(center_crop(np.asarray(resized, dtype=np.uint8), size))


def normalize(batch_hwc: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` -> normalised float32 ``[N, 3, H, W]``."""
    x = batch_hwc.astype(np.float32) / 255.0
    x = (x - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def model_input_uint8(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """One image as the model's uint8 ``[H, W, 3]`` view (before normalising)."""
    if prep.input_width:
        return resize_exact(img, prep.hw, prep.interpolation)
    resized = resize_shorter(img.convert("RGB"), prep.resize_size, prep.interpolation)
    return np.ascontiguousarray(center_crop(np.asarray(resized, dtype=np.uint8), prep.input_size))


def preprocess_images(images: Sequence[Image.Image] | Iterable[Image.Image], prep: Preprocessing) -> np.ndarray:
    """PIL images -> the model's float32 ``[N, 3, S, S]`` input, exactly as timm's eval transform."""
    arrays = [model_input_uint8(img, prep) for img in images]
    if not arrays:
        return np.zeros((0, 3, *prep.hw), np.float32)
    return normalize(np.stack(arrays), prep)
