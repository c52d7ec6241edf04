"""The inputs a classifier takes: paths, PIL images, uint8 ``H x W x 3`` arrays or encoded bytes,
mixed, and how each becomes an RGB image and a display name::

    items = as_list("bottle.jpg")              # ["bottle.jpg"]: one input or many
    to_pil(items[0])                           # RGB PIL image; unreadable data: ImageDecodeError
    display_name(np.zeros((4, 4, 3), np.uint8), 2)   # '<array 2>'

Used by :class:`~wastenet.inference.predictor.Classifier` and :mod:`wastenet.inference.explain`.
"""

from __future__ import annotations

import os
from typing import Any, Union

import numpy as np
from PIL import Image

from wastenet.data.images import ImageDecodeError, composite_on_white, load_image

__all__ = ["ImageInput", "as_list", "display_name", "to_pil"]

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, bytes]


def as_list(images: Any) -> list[ImageInput]:
    """One input or an iterable (or an ``N x H x W x 3`` stack) of them -> a list of inputs."""
    if isinstance(images, (str, os.PathLike, Image.Image, bytes, bytearray)):
        return [images]
    if isinstance(images, np.ndarray):
        # one H x W x 3 image, or a stack N x H x W x 3
        return [images] if images.ndim == 3 else list(images)
    return list(images)


def display_name(item: ImageInput, index: int) -> str:
    """The name a result row shows: the path, a PIL image's filename, else ``<kind index>``."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, Image.Image):
        return getattr(item, "filename", "") or f"<image {index}>"
    if isinstance(item, np.ndarray):
        return f"<array {index}>"
    return f"<bytes {index}>"


def to_pil(item: ImageInput) -> Image.Image:
    """Any supported input -> RGB PIL image; unreadable data raises ImageDecodeError."""
    if isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)):
        return load_image(item)
    if isinstance(item, Image.Image):
        if item.mode == "RGB":
            return item
        if item.mode in ("RGBA", "LA", "PA", "P"):
            return composite_on_white(item)  # like load_image does (not the hidden colour)
        return item.convert("RGB")
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise ImageDecodeError(f"expected a uint8 H x W x 3 array, got {item.dtype} {tuple(item.shape)}")
        return Image.fromarray(np.ascontiguousarray(item), "RGB")
    raise ImageDecodeError(f"unsupported input type {type(item).__name__}")
