"""A bin's model versions: files in ``<log dir>/models/`` beside its decision log (torch-free).

Version 0 is the model ``wastenet serve`` was started with; every adaptation adds one, promoted or
not: ``NNNN.pt`` (the checkpoint) and ``NNNN.json`` (what it was made from and how it scored),
both written atomically, the checkpoint first, so a killed run leaves nothing that looks like a
version. ``active`` names the version that sorts; it survives a restart::

    store = VersionStore("runs/x/models")
    store.set_base("runs/x/best.pt")   # version 0; another model than last time: active goes back to 0
    vid = store.add("/tmp/candidate.pt", parent=0, inputs={...}, scores={...}, promoted=True, reason="...")
    store.activate(vid)             # what POST /api/models/ID/activate does (a rollback too)
    store.active_id(), store.file_of(store.active_id()), store.list()
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wastenet.errors import ConfigError
from wastenet.files import write_atomic
from wastenet.model_identity import model_id

__all__ = ["MODELS_DIR", "VersionStore", "models_dir_for"]

MODELS_DIR = "models"
_VERSION_RE = re.compile(r"^(\d{4,})\.json$")


def models_dir_for(log_path: str | os.PathLike) -> Path:
    """``<log dir>/models``: where the versions of the bin that keeps this log live."""
    return Path(log_path).expanduser().resolve().parent / MODELS_DIR


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class VersionStore:
    """The folder of versions; one process writes it (the server), others may read it."""

    def __init__(self, folder: str | os.PathLike, base: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the model versions folder {self.folder}: {exc}") from None
        self._lock = threading.Lock()
        if base is not None:
            self.set_base(base)

    def set_base(self, base: str | os.PathLike) -> bool:
        """Record version 0, the model the service was started with. When it is another model than the
        one recorded (by content), the versions made from the old one no longer apply: the active
        pointer goes back to 0. Returns whether that happened."""
        base = Path(base).expanduser().resolve()
        ident = model_id(base)
        with self._lock:
            try:
                changed = self.get(0)["model_id"] != ident
            except KeyError:
                changed = False
            write_atomic(self.folder / "0000.json", json.dumps({
                "id": 0, "file": str(base), "model_id": ident, "created_at": _now(), "parent": None,
                "inputs": {"started_with": str(base)}, "scores": None, "promoted": True,
                "reason": "the model the service was started with"}, indent=2))
            if changed:
                self._point_at(0)
            return changed

    # ------------------------------------------------------------------ reads
    def ids(self) -> list[int]:
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _VERSION_RE.match(p.name)))

    def get(self, vid: int) -> dict[str, Any]:
        path = self.folder / f"{int(vid):04d}.json"
        if not path.is_file():
            raise KeyError(vid)
        return json.loads(path.read_text())

    def file_of(self, vid: int) -> Path:
        return Path(self.get(vid)["file"])

    def active_id(self) -> int:
        """The active version (0 when none was ever activated, or the pointer names a missing one)."""
        try:
            vid = int(json.loads((self.folder / "active").read_text())["id"])
            self.get(vid)
            return vid
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def list(self) -> list[dict[str, Any]]:
        """``[{id, file, model_id, created_at, active, parent, inputs, scores, promoted, reason, timing}]``, oldest first."""
        active = self.active_id()
        return [{**self.get(v), "active": v == active} for v in self.ids()]

    # ------------------------------------------------------------------ writes
    def add(self, checkpoint: str | os.PathLike, *, parent: int, inputs: dict[str, Any], scores: dict[str, Any],
            promoted: bool, reason: str, timing: dict[str, float] | None = None) -> int:
        """Copy a finished candidate in as the next version (and make it active when ``promoted``);
        ``timing`` ({"adapt_seconds", "seconds"}) says how long it took to make."""
        with self._lock:
            vid = (self.ids() or [0])[-1] + 1
            target = self.folder / f"{vid:04d}.pt"
            def copy(f: Any) -> None:
                with open(checkpoint, "rb") as src:
                    shutil.copyfileobj(src, f)

            write_atomic(target, copy)
            write_atomic(self.folder / f"{vid:04d}.json", json.dumps({
                "id": vid, "file": str(target.resolve()), "model_id": model_id(target), "created_at": _now(),
                "parent": parent, "inputs": inputs, "scores": scores, "promoted": bool(promoted),
                "reason": reason, "timing": timing}, indent=2))
            if promoted:
                self._point_at(vid)
            return vid

    def activate(self, vid: int) -> dict[str, Any]:
        """Make ``vid`` the active version (``KeyError`` if there is none)."""
        with self._lock:
            version = self.get(vid)
            if not Path(version["file"]).is_file():
                raise KeyError(vid)
            self._point_at(int(vid))
            return version

    def _point_at(self, vid: int) -> None:
        write_atomic(self.folder / "active", json.dumps({"id": int(vid), "at": _now()}))
