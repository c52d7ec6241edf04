"""Adaptation inside the service: one background run at a time, a candidate that must earn its place, a hot swap.

``serve --adapt-every N`` starts a run after N new reviewed items; ``POST /api/models/adapt`` starts
one now. A run is its own process, ``wastenet adapt --from-log`` (:mod:`wastenet.site.learn`), at
lower priority than the predictions: ``nice 10`` and one PyTorch/OpenMP thread, so on a 2-core bin
the service keeps a core; the process dies with the server (``PR_SET_PDEATHSIG``), so a server
killed in the middle of a run leaves no candidate and the active version unchanged. When the run
has added its candidate as a version (:class:`~wastenet.site.versions.VersionStore`, active if
promoted), the service swaps the promoted model in between batches (:meth:`Service.use_model`)::

    runs = Adaptation(service)                # create_app does this
    runs.start("api")                         # or after N reviews: runs.after_review()
    runs.status()                             # {"state": "running", "started_at": ..., ...} for /api/health
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wastenet.site.versions import VersionStore, models_dir_for

__all__ = ["Adaptation", "startup_model"]

logger = logging.getLogger("wastenet.serve")

_PR_SET_PDEATHSIG = 1
_LOG_TAIL = 4000  # bytes of the run's log kept in the status
try:  # loaded here, not in the child: between fork and exec only async-signal-safe calls belong
    _LIBC: Any = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.nice(10)
    if _LIBC is not None and sys.platform.startswith("linux"):
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def startup_model(checkpoint: str, log_path: str | os.PathLike) -> tuple[str, int, str | None]:
    """``(file, version, note)``: the active version beside the log when there is one made from this
    checkpoint, else the checkpoint itself (version 0); the note says which (None: the checkpoint)."""
    folder = models_dir_for(log_path)
    if not (folder / "0000.json").is_file() or not checkpoint.endswith(".pt"):
        return checkpoint, 0, None
    store = VersionStore(folder)
    if store.set_base(checkpoint):
        return checkpoint, 0, f"the versions in {folder} were made from another model: serving {checkpoint} (version 0)"
    active = store.active_id()
    if active == 0:
        return checkpoint, 0, None
    return (str(store.file_of(active)), active,
            f"serving version {active} ({store.file_of(active)}), the active one in {folder}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Adaptation:
    """The service's adaptation runs and its versions (``<log dir>/models``)."""

    def __init__(self, service: Any) -> None:
        self.service = service
        s = service.settings
        self.every = s.adapt_every
        self.folder = models_dir_for(service.log.path)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._status: dict[str, Any] = {"state": "idle", "last": None}
        # only a server that adapts by count needs the count (one COUNT query, not a listing)
        self._reviewed_at_start = self._reviewed() if self.every else 0
        self.refusal = None if str(service.model_path).endswith(".pt") else (
            f"this server runs {service.model_path}, not a .pt checkpoint: it cannot adapt (serve a .pt "
            "checkpoint on a bin with torch, or adapt on a machine that holds this log and export the version)")

    def store(self) -> VersionStore:
        store = VersionStore(self.folder)
        if not (self.folder / "0000.json").is_file() and self.service.settings.checkpoint:
            store.set_base(self.service.settings.checkpoint)
        return store

    def _reviewed(self) -> int:
        return self.service.log.reviewed_photo_count()

    # ------------------------------------------------------------------ runs
    def start(self, trigger: str) -> dict[str, Any]:
        """Start a run now; ``RuntimeError(reason)`` when one is running or this server cannot adapt."""
        if self.refusal:
            raise RuntimeError(self.refusal)
        with self._lock:
            if self._proc is not None:
                raise RuntimeError(f"an adaptation is running since {self._status.get('started_at')}")
            store = self.store()
            parent = store.active_id()
            work = self.folder / f".candidate-{os.getpid()}"
            shutil.rmtree(work, ignore_errors=True)
            s = self.service.settings
            cmd = [sys.executable, "-m", "wastenet", "adapt", "--checkpoint", str(store.file_of(parent)),
                   "--from-log", str(self.service.log.path), "--out", str(work), "--versions", str(self.folder),
                   "--parent", str(parent), "--new-class-min", str(s.new_class_min), "--threads", "1"]
            if not s.search:
                cmd.append("--skip-search-threshold")
            if s.adapt_mix:
                cmd += ["--data-mix", s.adapt_mix, "--mix-split-file", s.adapt_mix_split]
                if s.adapt_mix_per_class is not None:
                    cmd += ["--mix-per-class", str(s.adapt_mix_per_class)]
                if s.adapt_max_forgetting is not None:
                    cmd += ["--max-forgetting", repr(s.adapt_max_forgetting)]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            run_log = open(self.folder / "adapt.log", "w")
            self._proc = subprocess.Popen(cmd, stdout=run_log, stderr=subprocess.STDOUT, env=env,
                                          preexec_fn=_die_with_parent)
            run_log.close()
            self._reviewed_at_start = self._reviewed()
            self._status = {"state": "running", "trigger": trigger, "started_at": _now(), "parent": parent,
                            "reviewed_items": self._reviewed_at_start, "last": self._status.get("last")}
            t0 = time.monotonic()
            threading.Thread(target=self._watch, args=(self._proc, work, t0), daemon=True,
                             name="wastenet-adaptation").start()
            return dict(self._status)

    def after_review(self) -> None:
        """``--adapt-every N``: start a run once N reviewed items came in since the last one started."""
        if not self.every or self.refusal or self._proc is not None:
            return
        if self._reviewed() - self._reviewed_at_start >= self.every:
            try:
                self.start(f"{self.every} new reviewed items")
            except RuntimeError:
                pass  # one started meanwhile

    def _watch(self, proc: subprocess.Popen, work: Path, t0: float) -> None:
        code = proc.wait()
        seconds = round(time.monotonic() - t0, 1)
        result: dict[str, Any] = {"exit_status": code, "seconds": seconds, "finished_at": _now()}
        try:
            if code == 0:
                done = json.loads((work / "adapt.json").read_text())
                result.update(version=done.get("version"), promoted=done["promoted"], reason=done["reason"],
                              scores=done["scores"], adapt_seconds=done.get("adapt_seconds"))
                if done["promoted"] and done.get("version") is not None:
                    self.service.use_model(self.store().file_of(done["version"]), done["version"])
            else:
                tail = (self.folder / "adapt.log").read_text(errors="replace")[-_LOG_TAIL:].strip().splitlines()
                result["error"] = tail[-1] if tail else f"exit status {code}"
        except Exception as exc:  # noqa: BLE001 - a failed run is reported, never fatal to the service
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(work, ignore_errors=True)
        logger.info("adaptation finished: %s", result.get("reason") or result.get("error"))
        with self._lock:
            self._proc = None
            self._status = {"state": "idle" if "error" not in result else "failed", "last": result}

    def status(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self._status)
        if out["state"] == "running":
            out["elapsed_s"] = round((datetime.now(timezone.utc) - datetime.fromisoformat(out["started_at"]))
                                     .total_seconds())
        out.update(every=self.every, can_adapt=self.refusal is None, reason=self.refusal)
        return out

    def close(self) -> None:
        with self._lock:
            proc = self._proc
        if proc is not None:
            proc.kill()
