"""Which model made a decision: a content hash of its file, so figures split by version (torch-free).

Every decision row stores ``model`` (the path it was loaded from) and ``model_id`` (this hash), so
the live figures stay right across restarts with another model, and two copies of one file are
one version::

    model_id("runs/mnv2/best.pt")     # 'sha256:3f1c9a0b7d2e4f51'
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["model_id"]

_CHUNK = 1 << 20
_HEX = 16  # 64 bits: no two versions of one bin collide, and the id stays readable in a table


def model_id(path: str | os.PathLike) -> str:
    """``sha256:<16 hex>`` of the file's bytes (read in 1 MB chunks: memory stays flat)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return f"sha256:{h.hexdigest()[:_HEX]}"
