"""Atomic file writes, one way for every output (checkpoints, ONNX files, reports, CSV, images).

A write goes to a temp file beside the target and is renamed over it only once complete, so a
crash or a failed check never leaves a truncated file; every file ends up mode 0644 (readable by
all, whatever the umask or ``mkstemp``'s 0600), since models and reports are meant to be shared::

    write_atomic("runs/x/predictions.csv", text)
    write_atomic("runs/x/best.pt", lambda f: torch.save(ckpt, f))
    with atomic_path("runs/x/best.onnx") as tmp:    # for libraries that write to a path
        onnx.save_model(proto, str(tmp))            # renamed over the target if the block succeeds
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Union

__all__ = ["FILE_MODE", "atomic_path", "write_atomic"]

FILE_MODE = 0o644

Content = Union[bytes, str, Callable[[BinaryIO], object]]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside ``path`` (same file system, so the rename is atomic): renamed over
    ``path`` with mode 0644 when the block succeeds, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, content: Content, encoding: str = "utf-8") -> Path:
    """Write ``content`` (bytes, text, or a function writing to a binary file) atomically; returns the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode(encoding) if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)
