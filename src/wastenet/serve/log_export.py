"""``review --export``: the reviewed photos of a decision log as a class-folder dataset.

::

    export_reviewed(log, "data/reviewed", on_skip=lambda i, why: print(i, why))   # {'plastic': 3, ...}
    # then: wastenet train --data data/reviewed ...

(:meth:`DecisionLog.export_dataset` calls this.) Torch-free.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from wastenet.errors import ConfigError, WastenetError
from wastenet.files import write_atomic
from wastenet.serve.log_items import as_jpeg_or_png, check_label, safe_stem

if TYPE_CHECKING:
    from wastenet.serve.decision_log import DecisionLog

__all__ = ["export_reviewed"]


def export_reviewed(log: "DecisionLog", out_dir: str | os.PathLike,
                    on_skip: Callable[[int, str], None] | None = None) -> dict[str, int]:
    """See :meth:`wastenet.serve.decision_log.DecisionLog.export_dataset`."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export target {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create export folder {out}: {err.strerror or err}") from None
    if on_skip is None:
        on_skip = lambda i, why: logging.getLogger("wastenet.serve").warning("export: skipped #%d: %s", i, why)  # noqa: E731
    counts: dict[str, int] = {}
    rows = log.reviewed_photos()
    for row in rows:
        decision_id = int(row["id"])
        try:
            label = check_label(row["reviewed_label"])  # validated on read as on write
        except ValueError as exc:
            on_skip(decision_id, str(exc))
            continue
        data = log.image(decision_id)
        if data is None:  # its photo went since the listing
            continue
        try:
            data, ext = as_jpeg_or_png(data)
        except (WastenetError, OSError, ValueError) as exc:
            on_skip(decision_id, f"its stored photo cannot be read ({exc})")
            continue
        folder = out / label
        target = folder / f"{decision_id}_{safe_stem(row['image_name'])}{ext}"
        made = not folder.exists()
        try:
            folder.mkdir(exist_ok=True)
            write_atomic(target, data)  # never a half-written image in the dataset
        except (OSError, WastenetError) as exc:
            if made:  # no empty class folder for a photo that was not written (training would see the class)
                try:
                    folder.rmdir()
                except OSError:
                    pass
            on_skip(decision_id, f"cannot write {target}: {getattr(exc, 'strerror', None) or exc}")
            continue
        log.mark_exported(decision_id, row["reviewed_label"])  # one at a time: what was written is marked
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))
