"""Adaptation inside the service: one background run at a time, a candidate that must earn its place, a hot swap.

``serve --adapt-every N`` starts a run after N new reviewed items; ``POST /api/models/adapt`` starts
one now. A run is its own process, ``wastenet adapt --from-log`` (:mod:`wastenet.site.learn`), at
lower priority than the predictions: ``nice 10`` and one PyTorch/OpenMP thread, so on a 2-core bin
the service keeps a core; the process dies with the server (``PR_SET_PDEATHSIG``), so a server
killed in the middle of a run leaves no candidate and the active version unchanged. When the run
has added its candidate as a version (:class:`~wastenet.site.versions.VersionStore`, active if
promoted), the service swaps the promoted model in between batches (:meth:`Service.use_model`).

With a rehearsal set (``--adapt-mix``), the server first computes that set's features in the same kind of
process (``wastenet adapt --prepare-rehearsal``; state ``preparing``), while it already answers: they are
the same for every run from a version of one model, and computing them made the first adaptation take
minutes instead of seconds. A run asked for meanwhile waits for it and starts right after.

With ``serve --workers N`` every worker is one of these: a lock file in the versions folder lets one run
(or preparation) go at a time across them, every worker follows the folder's ``active`` pointer, so
a version promoted or rolled back through one worker is served by all of them within a second or so, and
``--adapt-every N`` counts from the last run any of them started (a file in the same folder, which also
keeps the count across a restart)::

    runs = Adaptation(service)                # create_app does this
    runs.prepare()                            # the server's start does this (with --adapt-mix)
    runs.start("api")                         # or after N reviews: runs.after_review()
    runs.status()                             # {"state": "running", "started_at": ..., ...} for /api/health
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wastenet.files import write_atomic
from wastenet.site.versions import VersionStore, models_dir_for

__all__ = ["Adaptation", "startup_model"]

logger = logging.getLogger("wastenet.serve")

_PR_SET_PDEATHSIG = 1
_LOG_TAIL = 4000  # bytes of the run's log kept in the status
_FOLLOW_SECONDS = 1.0  # how often a worker looks whether another one changed the active version
_RUN_COUNT_FILE = ".reviewed-at-last-run"  # --adapt-every's count, shared by the workers of one server
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


class _FolderLock:
    """Held by one process at a time (the workers of one server): ``flock`` on a file, released by the
    OS if its holder dies. Two opens in one process exclude each other too."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    def acquire(self) -> bool:
        """Take it if it is free (never waits)."""
        if self._file is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        self._file = f
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the lock
            self._file = None


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
        self._queued: str | None = None  # a run asked for while the rehearsal features are prepared
        self._rehearsal: dict[str, Any] | None = None  # how their preparation went
        self._one_at_a_time = _FolderLock(self.folder / ".adaptation.lock")  # across the server's workers
        self._closed = threading.Event()
        # one thread that lives as long as the service starts every run (see _spawn)
        self._launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wastenet-launcher")
        # only a server that adapts by count needs the count (one COUNT query, not a listing)
        # (the count before any run on this log; _due reads the last run's from the versions folder)
        self._reviewed_at_start = self._reviewed() if self.every else 0
        self.refusal = None if str(service.model_path).endswith(".pt") else (
            f"this server runs {service.model_path}, not a .pt checkpoint: it cannot adapt (serve a .pt "
            "checkpoint on a bin with torch, or adapt on a machine that holds this log and export the version)")
        if self.refusal is None:
            threading.Thread(target=self._follow, daemon=True, name="wastenet-follow-active").start()

    def store(self) -> VersionStore:
        store = VersionStore(self.folder)
        if not (self.folder / "0000.json").is_file() and self.service.settings.checkpoint:
            store.set_base(self.service.settings.checkpoint)
        return store

    def _reviewed(self) -> int:
        return self.service.log.reviewed_photo_count()

    def _last_run_count(self, reviewed_now: int) -> int | None:
        """The log's reviewed items when the last run started, through any worker of this server or before a
        restart (``_RUN_COUNT_FILE``); None when no run started on this log."""
        try:
            count = int((self.folder / _RUN_COUNT_FILE).read_text())
        except (OSError, ValueError):
            return None
        return count if count <= reviewed_now else None  # more than the log holds: another log's count

    def _record_run_count(self, count: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.folder / _RUN_COUNT_FILE, str(count))  # a worker reading it never sees half a number

    # ------------------------------------------------------------------ background processes
    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        """``wastenet adapt ARGS`` in the background: niced, one thread, dying with the server.

        Started from the service's own launcher thread, never from the caller's: ``PR_SET_PDEATHSIG`` fires when
        the *thread* that forked the child ends, and the caller may be a request's worker thread (anyio stops
        those after 10 s idle) or a watcher that is about to return; either would kill the run mid-way."""
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / log_name, "w") as run_log:
            return self._launcher.submit(
                subprocess.Popen, [sys.executable, "-m", "wastenet", "adapt", *args, "--threads", "1"],
                stdout=run_log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent).result()

    def _last_line(self, log_name: str, code: int) -> str:
        """Why a background process failed: the last line of its log (else its exit status)."""
        try:
            tail = (self.folder / log_name).read_text(errors="replace")[-_LOG_TAIL:].strip().splitlines()
        except OSError:  # no log to read: the watcher must still end the state it watches
            tail = []
        return tail[-1] if tail else f"exit status {code}"

    def _mix_args(self) -> list[str]:
        s = self.service.settings
        args = ["--data-mix", s.adapt_mix, "--mix-split-file", s.adapt_mix_split]
        if s.adapt_mix_per_class is not None:
            args += ["--mix-per-class", str(s.adapt_mix_per_class)]
        return args

    def prepare(self) -> None:
        """With a rehearsal set: compute its features now, in the background (nothing when they are stored)."""
        if self.refusal or not self.service.settings.adapt_mix:
            return
        with self._lock:
            if self._proc is not None:
                return
            if not self._one_at_a_time.acquire():
                logger.info("rehearsal features: another worker of this server prepares them")
                return
            store = self.store()
            self._proc = self._spawn(["--checkpoint", str(store.file_of(0)), "--prepare-rehearsal",
                                      "--versions", str(self.folder), *self._mix_args()], "prepare.log")
            self._status = {"state": "preparing", "started_at": _now(), "last": self._status.get("last")}
            threading.Thread(target=self._watch_prepare, args=(self._proc, time.monotonic()), daemon=True,
                             name="wastenet-rehearsal").start()

    def _watch_prepare(self, proc: subprocess.Popen, t0: float) -> None:
        code = proc.wait()
        done: dict[str, Any] = {"exit_status": code, "seconds": round(time.monotonic() - t0, 1), "finished_at": _now()}
        if code != 0:  # not fatal: the first run computes them itself (and says why, in its own log)
            done["error"] = self._last_line("prepare.log", code)
        logger.info("rehearsal features: %s", done.get("error") or f"ready in {done['seconds']} s")
        with self._lock:
            self._proc, self._rehearsal = None, done
            self._one_at_a_time.release()
            queued, self._queued = self._queued, None
            self._status = {"state": "idle", "last": self._status.get("last")}
            queued = queued or self._due()  # reviewed items that came in while it prepared
            if queued is not None:
                try:
                    self._start_locked(queued)
                except RuntimeError as exc:  # another worker's run: this one is not started
                    self._status = {"state": "idle", "last": {"error": str(exc)}}
                except Exception as exc:  # noqa: BLE001 - reported in the status, never fatal to the service
                    self._status = {"state": "failed", "last": {"error": f"{type(exc).__name__}: {exc}"}}

    # ------------------------------------------------------------------ runs
    def start(self, trigger: str) -> dict[str, Any]:
        """Start a run now (or, while the rehearsal features are prepared, right after: ``queued``);
        ``RuntimeError(reason)`` when one is running or this server cannot adapt."""
        if self.refusal:
            raise RuntimeError(self.refusal)
        with self._lock:
            if self._status["state"] == "preparing":
                self._queued = self._queued or trigger
                return {**self._status, "queued": self._queued}
            if self._proc is not None:
                raise RuntimeError(f"an adaptation is running since {self._status.get('started_at')}")
            return self._start_locked(trigger)

    def _start_locked(self, trigger: str) -> dict[str, Any]:
        if not self._one_at_a_time.acquire():
            raise RuntimeError("an adaptation (or the rehearsal features' preparation) runs in another worker "
                               "of this server: one at a time")
        try:
            return self._launch_run(trigger)
        except BaseException:
            self._one_at_a_time.release()
            raise

    def _launch_run(self, trigger: str) -> dict[str, Any]:
        store = self.store()
        parent = store.active_id()
        work = self.folder / f".candidate-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        s = self.service.settings
        args = ["--checkpoint", str(store.file_of(parent)), "--from-log", str(self.service.log.path), "--out",
                str(work), "--versions", str(self.folder), "--parent", str(parent), "--new-class-min",
                str(s.new_class_min)]
        if not s.search:
            args.append("--skip-search-threshold")
        if s.adapt_holdout_max is not None:
            args += ["--holdout-max", str(s.adapt_holdout_max)]
        if s.adapt_compare != "class":
            args += ["--compare", s.adapt_compare]
        if s.adapt_mix:
            args += self._mix_args()
            if s.adapt_max_forgetting is not None:
                args += ["--max-forgetting", repr(s.adapt_max_forgetting)]
        self._reviewed_at_start = self._reviewed()
        self._record_run_count(self._reviewed_at_start)  # before the run: a failed write must not leave one unwatched
        self._proc = self._spawn(args, "adapt.log")
        self._status = {"state": "running", "trigger": trigger, "started_at": _now(), "parent": parent,
                        "reviewed_items": self._reviewed_at_start, "last": self._status.get("last")}
        threading.Thread(target=self._watch, args=(self._proc, work, time.monotonic()), daemon=True,
                         name="wastenet-adaptation").start()
        return dict(self._status)

    def after_review(self) -> None:
        """``--adapt-every N``: start a run once N reviewed items came in since the last one started (while
        the rehearsal features are prepared: when they are ready)."""
        if self.refusal or self._proc is not None:
            return
        trigger = self._due()
        if trigger:
            try:
                self.start(trigger)
            except RuntimeError:
                pass  # one started meanwhile

    def _due(self) -> str | None:
        """``--adapt-every N``: the trigger of a run when N reviewed items came in since the last one started
        (in this worker or another)."""
        if not self.every:
            return None
        now = self._reviewed()
        last = self._last_run_count(now)
        if now - (self._reviewed_at_start if last is None else last) >= self.every:
            return f"{self.every} new reviewed items"
        return None

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
                result["error"] = self._last_line("adapt.log", code)
        except Exception as exc:  # noqa: BLE001 - a failed run is reported, never fatal to the service
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(work, ignore_errors=True)
        logger.info("adaptation finished: %s", result.get("reason") or result.get("error"))
        with self._lock:
            self._proc = None
            self._one_at_a_time.release()
            self._status = {"state": "idle" if "error" not in result else "failed", "last": result}

    def _follow(self) -> None:
        """Serve the folder's active version whenever it changes under this worker (another worker promoted or
        rolled back one, or its run's candidate was promoted before the watcher swapped it in)."""
        seen: tuple[int, int] | None = None
        while not self._closed.wait(_FOLLOW_SECONDS):
            try:
                st = (self.folder / "active").stat()
                now: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
            except OSError:
                now = None
            if now == seen or now is None:
                continue
            seen = now
            try:
                store = VersionStore(self.folder)
                active = store.active_id()
                if active != self.service.version:
                    self.service.use_model(store.file_of(active), active)
            except Exception as exc:  # noqa: BLE001 - the worker keeps its model and says why
                logger.warning("could not follow the active version: %s: %s", type(exc).__name__, exc)

    def status(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self._status)
            queued, rehearsal = self._queued, self._rehearsal
        if out["state"] in ("running", "preparing"):
            out["elapsed_s"] = round((datetime.now(timezone.utc) - datetime.fromisoformat(out["started_at"]))
                                     .total_seconds())
        out.update(every=self.every, compare=self.service.settings.adapt_compare, can_adapt=self.refusal is None,
                   reason=self.refusal, queued=queued, rehearsal=rehearsal)
        return out

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            proc.kill()
        self._launcher.shutdown(wait=False)
