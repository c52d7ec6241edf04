"""Safe, torch-free image decoding: every image comes out as the RGB picture a person sees.

``load_image`` is the one place where wastenet turns files, uploaded bytes or file objects
into pixels. It applies the EXIF orientation, composites transparency onto white, converts
greyscale, palette, CMYK and 16-bit images to 8-bit RGB, keeps the first frame of an
animation, refuses absurdly large images *before* decoding them, and turns every failure
(missing, empty, truncated, corrupt, not an image) into one :class:`ImageDecodeError` with
the path and a short reason::

    from wastenet.data.images import ImageDecodeError, iter_image_files, load_image

    for path in iter_image_files("photos/"):
        try:
            img = load_image(path)           # PIL.Image.Image, mode "RGB", fully loaded
        except ImageDecodeError as err:
            print(f"skipped {err.path}: {err.reason}")

    img = load_image(open("bottle.jpg", "rb").read())   # bytes work too (uploads)
"""

from __future__ import annotations

import io
import os
import re
import stat
import threading
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from wastenet.errors import ConfigError, WastenetError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_FORMATS",
    "SERVICE_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageDecodeError",
    "ImageSource",
    "composite_on_white",
    "iter_image_files",
    "load_image",
    "sniff_format",
]

#: Suffixes (lower case) that folder scans pick up.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

#: The formats wastenet decodes (DESIGN.md); Pillow's others (XBM, EPS via Ghostscript, ...) are refused.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")

#: Same default as Pillow's ``Image.MAX_IMAGE_PIXELS`` (about 0.25 GB at 24 bit per pixel).
DEFAULT_MAX_PIXELS = 89_478_485

#: The service's lower default: any client may upload, and a decode costs 3-4 bytes per pixel
#: (40 Mpx covers 8000 x 5000 photos; JPEGs are decoded reduced, see ``draft_size``).
SERVICE_MAX_PIXELS = 40_000_000

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

# Background that transparent pixels are composited onto: a sorting photo on white paper.
_WHITE = (255, 255, 255)


class ImageDecodeError(WastenetError):
    """An image that cannot be read; ``path`` (or None for bytes) and a short ``reason``.

    >>> str(ImageDecodeError("empty file", path="a.jpg"))
    'a.jpg: empty file'
    """

    def __init__(self, reason: str, path: str | None = None) -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               draft_size: int | None = None) -> Image.Image:
    """Decode ``source`` (path, bytes or binary file object) into a loaded RGB image.

    Raises :class:`ImageDecodeError` for anything unreadable, including images with more
    than ``max_pixels`` pixels (checked from the header, before any pixel is decoded), a
    format outside :data:`IMAGE_FORMATS`, and a path that is not a regular file (a FIFO
    would hang, ``/dev/zero`` would fill memory). Pillow's own decompression-bomb error
    (above ``2 * Image.MAX_IMAGE_PIXELS``) is reported the same way, so the effective limit
    is the smaller of the two.

    ``draft_size``: a JPEG at least twice that size on both sides is decoded at a reduced DCT
    scale (1/2, 1/4, 1/8), still at least ``draft_size`` on both sides: an 81 Mpx photo then
    costs ~20 MB instead of ~250 MB. The service uses it; training and ``predict`` decode in full.

    >>> img = load_image("bottle.png")            # doctest: +SKIP
    >>> img.mode                                  # doctest: +SKIP
    'RGB'
    """
    path = _describe(source)
    data = _read_source(source, path)
    if len(data) == 0:
        raise ImageDecodeError("empty file", path)

    fmt = None
    try:
        with _open_quietly(data) as img:
            fmt = img.format
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"too large: {width * height} pixels (limit {max_pixels})", path
                )
            if draft_size and fmt in ("JPEG", "MPO"):  # MPO: phone JPEGs with a second frame
                img.draft("RGB", (int(draft_size), int(draft_size)))
            # Decode now (first frame only) so that truncation and corruption surface
            # here, not later in a training worker.
            img.load()
            return _to_rgb(_apply_orientation(img))
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(_bomb_reason(str(err), max_pixels), path) from None
    except UnidentifiedImageError:
        # A known signature that Pillow still rejects is a damaged header, not a stray file.
        kind = sniff_format(data)
        reason = f"corrupt {kind} header" if kind else "not an image"
        raise ImageDecodeError(reason, path) from None
    except MemoryError:
        raise ImageDecodeError("not enough memory to decode", path) from None
    except Exception as err:  # noqa: BLE001 - Pillow plugins raise many kinds of errors
        reason = _failure_reason(err, fmt or sniff_format(data))
        raise ImageDecodeError(reason, path) from None


def iter_image_files(root: str | os.PathLike, not_regular: list[Path] | None = None) -> list[Path]:
    """All image files under ``root`` (any depth), sorted; hidden files and folders skipped.

    An entry with an image suffix that is not a regular file (a FIFO, a device, a socket, a
    dangling link) is left out, never opened; given a list, ``not_regular`` receives them, so
    that a caller can say how many it skipped.

    Suffixes are matched case-insensitively against :data:`IMAGE_EXTENSIONS`. Only names
    *below* ``root`` are checked for a leading dot, so a root such as ``~/.cache/...`` works.

    >>> iter_image_files("data/trashnet")[:1]    # doctest: +SKIP
    [PosixPath('data/trashnet/cardboard/cardboard1.jpg')]
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"image folder not found: {root}")
    found: list[Path] = []
    seen_dirs: set[str] = set()
    # followlinks lets a dataset be assembled from symlinked folders; seen_dirs stops loops.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                full = Path(dirpath, name)
                if full.is_file():
                    found.append(full)
                elif not_regular is not None:
                    not_regular.append(full)
    return sorted(found)


# --------------------------------------------------------------------------- helpers


def _describe(source: ImageSource) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return None
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else None


def _read_source(source: ImageSource, path: str | None) -> bytes:
    # Read everything first: Pillow then never holds our file handle, and an empty
    # file can be told apart from a file that is not an image.
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        try:
            mode = p.stat().st_mode
            if stat.S_ISDIR(mode):
                raise ImageDecodeError("is a folder, not a file", path)
            if not stat.S_ISREG(mode):  # a FIFO blocks forever, /dev/zero never ends
                raise ImageDecodeError("not a regular file", path)
            return p.read_bytes()
        except FileNotFoundError:
            raise ImageDecodeError("file not found", path) from None
        except PermissionError:
            raise ImageDecodeError("permission denied", path) from None
        except OSError as err:
            raise ImageDecodeError(f"cannot read file: {err.strerror or err}", path) from None
    read = getattr(source, "read", None)
    if read is None:
        raise ImageDecodeError(
            f"unsupported source type {type(source).__name__} (expected path, bytes or file)",
            path,
        )
    try:
        data = read()
    except Exception as err:  # noqa: BLE001 - a broken stream is a read failure
        raise ImageDecodeError(f"cannot read file: {err}", path) from None
    if not isinstance(data, (bytes, bytearray)):
        raise ImageDecodeError("file object must be opened in binary mode", path)
    return bytes(data)


# warnings.catch_warnings swaps process-wide state; decoding threads (dataset caching)
# take turns for the header parse only, so pixel decoding stays parallel.
_WARNINGS_LOCK = threading.Lock()


def _open_quietly(data: bytes) -> Image.Image:
    """``Image.open`` (header only) with Pillow's decompression-bomb *warning* silenced.

    Pillow warns between ``MAX_IMAGE_PIXELS`` and twice that; ``load_image`` applies its
    own limit instead. The filter is scoped, never a change to global Pillow settings.
    """
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)


def _apply_orientation(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001
        # Malformed EXIF must not make an otherwise readable photo unreadable.
        return img.copy()


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in img.info
    ):
        return composite_on_white(img)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_scale_high_depth(img), "L").convert("RGB")
    try:
        return img.convert("RGB")  # "1", "L", "P", "CMYK", "YCbCr", "RGBX", ...
    except ValueError:
        raise ValueError(f"unsupported colour mode {mode}") from None


def composite_on_white(img: Image.Image) -> Image.Image:
    """An image with transparency as a person sees it: composited onto white, as RGB.

    ``.convert("RGB")`` would keep the hidden colour under transparent pixels (often black).
    """
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    background.alpha_composite(rgba)
    return background.convert("RGB")


def _scale_high_depth(img: Image.Image) -> np.ndarray:
    """Map a 16/32-bit integer or float greyscale image onto 0..255 without clipping."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        scaled = arr / 257.0  # 65535 -> 255 exactly
    else:
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = arr * 255.0  # float images in 0..1
        elif lo >= 0.0 and hi <= 255.0:
            scaled = arr  # 8-bit data stored wide
        elif lo >= 0.0 and hi <= 65535.0:
            scaled = arr / 257.0  # 16-bit data stored as "I"
        else:
            scaled = (arr - lo) * (255.0 / (hi - lo))  # anything else: stretch
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def sniff_format(data: bytes) -> str | None:
    r"""The image format named by the first bytes (Pillow's names: PNG, JPEG, GIF, TIFF, BMP, WEBP), or None.

    >>> sniff_format(b"\x89PNG\r\n\x1a\n...")
    'PNG'
    """
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _bomb_reason(message: str, max_pixels: int) -> str:
    pixels = re.search(r"\((\d+) pixels\)", message)
    limit = re.search(r"limit of (\d+)", message)
    effective = min(max_pixels, int(limit.group(1))) if limit else max_pixels
    if pixels:
        return f"too large: {pixels.group(1)} pixels (limit {effective})"
    return f"too large (limit {effective} pixels)"


def _failure_reason(err: Exception, fmt: str | None) -> str:
    kind = fmt or "image"
    message = " ".join(str(err).split()) or type(err).__name__
    if "truncated" in message.lower() or isinstance(err, EOFError):
        return f"truncated {kind}"
    if message.startswith("unsupported colour mode"):
        return message
    if len(message) > 120:
        message = message[:117] + "..."
    return f"corrupt {kind}: {message}"
