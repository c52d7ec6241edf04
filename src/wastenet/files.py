"""Atomic file writes, one way for every output (checkpoints, ONNX files, reports, CSV, images).

A write goes to a temp file beside the target and is renamed over it only once complete, so a
crash or a failed check never leaves a truncated file; every file ends up mode 0644 (readable by
all, whatever the umask or ``mkstemp``'s 0600), since models and reports are meant to be shared::

    write_atomic("runs/x/predictions.csv", text)
    write_csv_atomic("runs/x/history.csv", rows, ["epoch", "loss"])   # dict rows, a header first
    write_atomic("runs/x/best.pt", lambda f: torch.save(ckpt, f))
    with atomic_path("runs/x/best.onnx") as tmp:    # for libraries that write to a path
        onnx.save_model(proto, str(tmp))            # renamed over the target if the block succeeds

Every mode checks its outputs *before* the work starts, so that an output that cannot be
written is one line and exit 2, not a traceback after an hour of training::

    check_output("preds.csv", option="--out")                 # a file
    check_output("runs/x", folder=True, option="--out")       # a folder (made later, by the work)
"""

from __future__ import annotations

import csv
import errno
import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Sequence, Union

__all__ = ["FILE_MODE", "atomic_path", "check_output", "write_atomic", "write_csv_atomic"]

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


def write_csv_atomic(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str],
                     **dict_writer: Any) -> Path:
    """Dict ``rows`` as CSV (a header of ``fieldnames`` first), written atomically; ``dict_writer``
    goes to :class:`csv.DictWriter` (e.g. ``restval=""``, ``extrasaction="ignore"``)."""
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(fieldnames), **dict_writer)
    w.writeheader()
    w.writerows(rows)
    return write_atomic(path, text.getvalue())


def check_output(path: str | os.PathLike, *, folder: bool = False, option: str = "--out") -> Path:
    """Refuse an output that cannot be written, before any work: a ``ConfigError`` (exit 2) line.

    A file output must not be a folder or an existing non-regular file (``/dev/null``, a FIFO);
    a folder output must not be an existing file. Either way the folder that will hold it, or
    its nearest existing ancestor (missing folders are made by the work, not here), must take a
    new file: that is probed by creating and removing a hidden temp file, which is what
    :func:`write_atomic` does and answers for permissions, read-only mounts and ``/proc`` alike.
    Nothing is left behind; returns ``Path(path)``.
    """
    from wastenet.errors import ConfigError

    path = Path(path)
    label = f"{option} {path}" if option else str(path)
    try:
        exists = path.exists() or path.is_symlink()
        if folder and exists and not path.is_dir():
            raise ConfigError(f"{label} is not a folder (a report/run folder is written there)")
        if not folder and path.is_dir():
            raise ConfigError(f"{label} is a folder; give a file name")
        if not folder and exists and not path.is_file():
            raise ConfigError(f"cannot write {label}: it exists and is not a regular file")
        holder = path if folder and exists else path.parent
        while not holder.exists():  # the first existing ancestor decides whether the rest can be made
            if holder.parent == holder:
                break
            holder = holder.parent
        if not holder.is_dir():
            raise ConfigError(f"cannot write {label}: {holder} is not a folder")
        fd, probe = tempfile.mkstemp(prefix=".wastenet-probe-", dir=holder)
        os.close(fd)
        os.unlink(probe)
    except ConfigError:
        raise
    except ValueError as exc:  # an embedded NUL byte
        raise ConfigError(f"cannot write {label}: {exc}") from None
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno == errno.ENOENT:  # /proc and the like: no new entries at all
            why = "that file system takes no new files"
        raise ConfigError(f"cannot write {label}: {why}") from None
    return path
