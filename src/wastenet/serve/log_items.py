"""What the decision log stores about one item, checked: its photo (a bounded JPEG), its id, its label.

::

    review_jpeg(upload_bytes)      # the stored photo: a JPEG, longest side <= 1024 px
    valid_id("17"), check_label(" plastic ")     # (17, 'plastic'); None / ValueError when unusable
    as_jpeg_or_png(stored)         # (bytes, ".jpg" | ".png") for an exported dataset

Torch-free (Pillow).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

__all__ = ["MAX_ID", "MAX_LABEL_LENGTH", "REVIEW_MAX_SIDE", "as_jpeg_or_png", "check_label", "image_media_type",
           "review_copy", "review_jpeg", "safe_stem", "valid_id"]


def image_media_type(data: bytes) -> str:
    """The MIME type of encoded image bytes, from their signature (for HTTP responses)."""
    from wastenet.data.images import sniff_format

    kind = sniff_format(data)
    return f"image/{kind.lower()}" if kind else "application/octet-stream"


#: Longest side of a stored review photo: enough to tell a yoghurt pot from a cup.
REVIEW_MAX_SIDE = 1024
_REVIEW_QUALITY = 85


def review_copy(image: Any) -> Any:
    """``image`` (PIL) shrunk to at most :data:`REVIEW_MAX_SIDE` px on its longest side (itself if small)."""
    if max(image.size) <= REVIEW_MAX_SIDE:
        return image
    copy = image.copy()
    copy.thumbnail((REVIEW_MAX_SIDE, REVIEW_MAX_SIDE))  # keeps the aspect ratio; reduce() first: fast
    return copy


def review_jpeg(image: Any) -> bytes:
    """The photo a reviewer sees, as stored: a JPEG, longest side <= 1024 px.

    ``image`` is a PIL image or encoded bytes (any format ``load_image`` reads); whatever a
    client uploaded (a 10 MB noise PNG, say), the log keeps ~100-300 kB.
    """
    from PIL import Image

    if not isinstance(image, Image.Image):
        from wastenet.data.images import load_image

        image = load_image(bytes(image))
    buf = io.BytesIO()
    review_copy(image).convert("RGB").save(buf, format="JPEG", quality=_REVIEW_QUALITY)
    return buf.getvalue()


#: Largest id SQLite can store (signed 64 bit); a larger one cannot name a row.
MAX_ID = 2**63 - 1


def valid_id(decision_id: Any) -> int | None:
    """``decision_id`` as an int when it can name a row (1 .. 2**63 - 1), else None.

    >>> valid_id("17"), valid_id(2**63), valid_id(0)
    (17, None, None)
    """
    try:
        n = int(decision_id)
    except (TypeError, ValueError):
        return None
    return n if 1 <= n <= MAX_ID else None


#: Longest reviewed label (it names a folder on export; file systems allow 255 bytes).
MAX_LABEL_LENGTH = 100


def check_label(label: Any) -> str:
    """A reviewed label that can safely name one folder, stripped; ``ValueError`` otherwise.

    Applied when a label is written and again when one is read back for export: a log file
    edited by hand, or written by an older version, must not steer files out of the folder.

    >>> check_label(" plastic ")
    'plastic'
    """
    text = str(label).strip()
    if (not text or text in (".", "..") or text.startswith(".") or any(c in text for c in "/\\:")
            or any(ord(c) < 32 or ord(c) == 127 for c in text)):
        raise ValueError(f"invalid label {text[:40]!r}: it must be usable as a folder name")
    if len(text) > MAX_LABEL_LENGTH:
        raise ValueError(f"label too long ({len(text)} characters, at most {MAX_LABEL_LENGTH})")
    return text


def safe_stem(name: str | None) -> str:
    stem = Path(name or "image").stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    return (stem or "image")[:60]


def as_jpeg_or_png(data: bytes) -> tuple[bytes, str]:
    """Keep JPEG and PNG bytes as they are; re-encode anything else (WebP, BMP, ...) as PNG."""
    kind = image_media_type(data)
    if kind == "image/jpeg":
        return data, ".jpg"
    if kind == "image/png":
        return data, ".png"
    from wastenet.data.images import load_image

    buf = io.BytesIO()
    load_image(data).save(buf, format="PNG")
    return buf.getvalue(), ".png"
