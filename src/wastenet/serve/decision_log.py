"""The decision log: every bin decision the service makes, in one SQLite file.
Long because: one class owns the file (schema, migration, transactions, every query), so that no
other module opens the database or writes SQL against it.

Each decision is committed in its own transaction (WAL journal, ``synchronous=FULL``)
before the HTTP response is sent, so a server killed mid-request loses nothing it has
answered. Photos are kept only for ``manual_sort`` items: those are the ones a person
reviews, and the reviewed photos become new training data. A photo is stored as what a
reviewer needs, a JPEG at most 1024 px on its longest side (:func:`review_jpeg`), and
``max_bytes`` caps the log's files on disk: past it, old photos and rows make room in a fixed
order, and a reviewed photo that was not exported is never deleted (:mod:`wastenet.serve.log_cap`)::

    log = DecisionLog("runs/x/decisions.sqlite", max_bytes=512 * 2**20)
    row_id = log.record(prediction, image_bytes, "bottle.jpg", threshold=0.85,
                        model="densenet121", source="upload")
    for item in log.pending_reviews(limit=20):          # manual_sort, not reviewed yet
        print(item["id"], item["label"], item["confidence"])
    log.review(row_id, "plastic")                         # a person's label
    log.export_dataset("data/reviewed")                   # {'plastic': 1}: class folders
    # then: wastenet train --data data/reviewed ...

Torch-free (stdlib ``sqlite3`` plus Pillow for the rare re-encode on export). What the cap may evict is in
:mod:`~wastenet.serve.log_cap`, the item checks in :mod:`~wastenet.serve.log_items`, the export in
:mod:`~wastenet.serve.log_export`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from wastenet.audit import AUDIT, MANUAL, AuditDraw, audit_draw, audit_kind
from wastenet.errors import ConfigError, WastenetError
from wastenet.ood import NOT_AN_ITEM
from wastenet.serve import log_cap
from wastenet.serve.log_items import (MAX_ID, MAX_LABEL_LENGTH, REVIEW_MAX_SIDE, check_label, image_media_type,
                                      review_copy, review_jpeg, valid_id)

# the item helpers live in log_items; they are re-exported here, where callers have always found them
__all__ = ["DecisionLog", "LOG_FILENAME", "RecordedId", "parse_since", "MAX_ID", "MAX_LABEL_LENGTH", "REVIEW_MAX_SIDE", "check_label",
           "default_log_path", "image_media_type", "review_copy", "review_jpeg", "valid_id"]

LOG_FILENAME = "decisions.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at     TEXT    NOT NULL,          -- ISO 8601, UTC
    source         TEXT,                      -- upload | camera | api | ...
    label          TEXT,
    confidence     REAL,
    bin            TEXT,
    bin_confidence REAL,
    decision       TEXT    NOT NULL,          -- a bin name or manual_sort
    threshold      REAL,
    model          TEXT,
    image          BLOB,                      -- only for manual_sort items
    image_name     TEXT,
    reviewed_label TEXT,
    reviewed_at    TEXT                       -- later columns: _COLUMNS_ADDED
);
CREATE INDEX IF NOT EXISTS decisions_review ON decisions (decision, reviewed_label, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- every relabel, oldest first: decisions.reviewed_label is only the latest one
CREATE TABLE IF NOT EXISTS review_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    decision_id INTEGER NOT NULL,
    at          TEXT    NOT NULL,             -- ISO 8601, UTC
    who         TEXT,                         -- web:<client address> | cli:<user>
    old_label   TEXT,                         -- NULL for the first review
    new_label   TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS review_history_decision ON review_history (decision_id, id);
"""

#: Columns added after the first version, in order: every log, new or old, gains them on open
#: (``_migrate``), so adding a column is one line here.
_COLUMNS_ADDED = (
    ("reason", "TEXT"),        # why manual_sort: low_confidence | unknown
    ("ood_score", "REAL"),     # the unknown-item score, when the model has the rule
    ("exported_at", "TEXT"),   # when `review --export` wrote the reviewed photo (from then on evictable)
    ("kind", "TEXT"),          # auto | manual_sort | audit (wastenet.audit); old rows: from `decision`
    ("model_id", "TEXT"),      # content hash of the model file (wastenet.model_identity)
    ("audit_seed", "INTEGER"), # the seed of this row's audit draw ...
    ("audit_u", "REAL"),       # ... and the draw itself: audit when audit_u < audit_rate
    ("audit_rate", "REAL"),
    ("reviewed_bin", "TEXT"),  # the bin of reviewed_label, fixed when it was given
)

# A manual-sort or audit photo nobody has labelled yet: the review queue.
_PENDING = f"{log_cap.FOR_REVIEW} AND reviewed_label IS NULL AND image IS NOT NULL"

# Columns returned by the listing queries (never the image blob: it can be megabytes).
_ITEM_COLUMNS = ("id, created_at, source, label, confidence, bin, bin_confidence, decision, "
                 "threshold, model, image_name, reviewed_label, reviewed_at, reason, ood_score, exported_at, "
                 "kind, model_id, audit_seed, audit_u, audit_rate, reviewed_bin, image IS NOT NULL AS has_image")


def default_log_path(checkpoint: str | os.PathLike | None) -> Path:
    """``<checkpoint dir>/decisions.sqlite`` when that folder is writable, else the user
    data folder (``$XDG_DATA_HOME/wastenet`` or ``~/.local/share/wastenet``).

    >>> default_log_path("runs/x/best.pt")     # doctest: +SKIP
    PosixPath('runs/x/decisions.sqlite')
    """
    if checkpoint is not None:
        folder = Path(checkpoint).expanduser().resolve().parent
        if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
            return folder / LOG_FILENAME
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "wastenet" / LOG_FILENAME


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def parse_since(since: str) -> str:
    """``since`` (``2026-12-01`` or ``2026-12-01T08:00``, UTC unless it carries an offset) in the form
    ``created_at`` is stored in, so that the two compare as text; ``ValueError`` naming the format.

    >>> parse_since("2026-12-01")
    '2026-12-01T00:00:00.000+00:00'
    """
    try:
        at = datetime.fromisoformat(str(since).strip())
    except ValueError:
        raise ValueError(f"since must be an ISO date or time like 2026-12-01 or 2026-12-01T08:00, got {since!r}") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _field(prediction: Any, name: str) -> Any:
    """Read a Prediction field from the object or, failing that, from its dict form."""
    if isinstance(prediction, Mapping):
        return prediction.get(name)
    return getattr(prediction, name, None)


class DecisionLog:
    """Append-only log of decisions plus the review labels people add later.

    One connection guarded by a lock: writes are tiny and SQLite serialises them anyway;
    other processes (``--workers 2``) share the file safely through WAL.

    >>> log = DecisionLog(":memory:")
    >>> log.pending_reviews()
    []
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = True, max_bytes: int | None = None) -> None:
        if max_bytes is not None and max_bytes <= 0:
            raise ConfigError(f"the decision log cap must be positive, got {max_bytes} bytes")
        self.max_bytes = max_bytes  # None: no cap
        self.path = Path(path) if str(path) != ":memory:" else Path(":memory:")
        self._on_disk = str(path) != ":memory:"
        if self._on_disk:
            if not create and not self.path.is_file():
                raise ConfigError(f"decision log not found: {self.path}")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"cannot create folder for decision log {self.path}: {err}") from None
        self._lock = threading.Lock()
        self._truncate_due = False  # a WAL truncation a reader blocked: tried again after the next write
        try:
            # autocommit mode: every write below opens and commits its own transaction
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                         timeout=30.0)
            self._conn.row_factory = sqlite3.Row
            # new files only (before the first table): freed pages can go back to the file system
            self._conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            if max_bytes is not None:  # a WAL file left larger than its share is cut back after checkpoints
                self._conn.execute(f"PRAGMA journal_size_limit={log_cap.wal_allowance(max_bytes)}")
            if not create and not self._conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'decisions'").fetchone():
                self._conn.close()
                raise ConfigError(f"{self.path} is not a wastenet decision log")
            self._conn.executescript(_SCHEMA)
            _migrate(self._conn, self.path)
        except sqlite3.DatabaseError as err:
            raise ConfigError(f"cannot open decision log {self.path}: {err}") from None
        if max_bytes is not None:
            self.enforce_cap()  # a log reopened under a smaller cap

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> "DecisionLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """The open connection, held under the lock (``WastenetError`` once closed)."""
        with self._lock:
            if self._conn is None:
                raise WastenetError("decision log is closed")
            yield self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed (durable: ``synchronous=FULL``) when the block ends,
        rolled back if it raises; then the files are kept within the cap (:meth:`_keep_wal_small`)."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._keep_wal_small(conn)

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._connection() as conn:
            return conn.execute(sql, tuple(params)).fetchall()

    def _keep_wal_small(self, conn: sqlite3.Connection) -> None:
        """After a write under a cap: truncate the WAL when it outgrew its share or the files
        went over the cap (the main file can sit a few pages above its budget after an insert)."""
        if self.max_bytes is None or not self._on_disk:
            return
        log_cap.shrink_file(conn, log_cap.budget(self.max_bytes))
        try:
            wal = os.stat(f"{self.path}-wal").st_size
        except OSError:
            return
        if (self._truncate_due or wal > log_cap.wal_allowance(self.max_bytes)
                or log_cap.disk_bytes(self.path) > self.max_bytes):
            self._truncate_due = not log_cap.truncate_wal(conn)

    # ---------------------------------------------------------------- metadata
    def set_classes(self, classes: Iterable[str], bins: Mapping[str, str] | None = None,
                    bin_names: Iterable[str] | None = None) -> None:
        """Remember the model's class names (so that ``wastenet review --set`` can check labels), given,
        each class's bin (so that a review records the bin of its label: ``reviewed_bin``) and the
        taxonomy's bins (a new kind may go to any of them, even one no class goes to)."""
        with self._transaction() as conn:
            _set_meta(conn, "classes", list(classes))
            if bins is not None:
                _set_meta(conn, "class_bins", {str(k): str(v) for k, v in bins.items()})
            if bin_names is not None:
                _set_meta(conn, "bins", [str(b) for b in bin_names])

    def class_bins(self) -> dict[str, str]:
        """``{class: bin}`` last stored with :meth:`set_classes` (empty without one)."""
        return dict(self._meta("class_bins") or {})

    def bin_names(self) -> list[str]:
        """The taxonomy's bins last stored with :meth:`set_classes` (else those the classes go to)."""
        return list(self._meta("bins") or dict.fromkeys(self.class_bins().values()))

    def classes(self) -> list[str] | None:
        """The class names last stored with :meth:`set_classes`, or None."""
        return self._meta("classes")

    def audit_seed(self, seed: int | None = None) -> int:
        """The seed of this log's audit draw: ``seed`` when given (stored), else the stored one, else a
        new random one (stored, so that a restart keeps drawing the same way)."""
        with self._transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'audit_seed'").fetchone()
            if seed is None and row is not None:
                return int(json.loads(row["value"]))
            seed = secrets.randbits(31) if seed is None else int(seed)
            _set_meta(conn, "audit_seed", seed)
            return seed

    def _meta(self, key: str) -> Any:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else None

    # ------------------------------------------------------------------ writes
    def record(
        self,
        prediction: Any,
        image: Any,
        image_name: str | None,
        threshold: float | None,
        model: str | None,
        source: str | None = "api",
        *,
        model_id: str | None = None,
        audit: AuditDraw | None = None,
    ) -> "RecordedId":
        """Store one decision (committed before returning) and return its id (an ``int`` whose ``kind``
        says ``auto``, ``manual_sort`` or ``audit``).

        ``prediction`` is a ``Prediction`` or its ``to_dict()``. ``image`` (encoded bytes or a
        PIL image) is kept as :func:`review_jpeg` for a person to review: always for a manual-sort
        decision, and for an automatic one when ``audit`` draws it (``audit.rate``, seeded by
        ``audit.seed`` and the row id: :func:`wastenet.audit.audit_draw`; the row's ``kind`` says
        ``audit`` and the draw is stored with it). An image that cannot be re-encoded is logged
        without its photo. Under ``max_bytes`` older photos and rows make room first
        (:mod:`wastenet.serve.log_cap`, in the same transaction); when only protected photos are
        left, the photo is not stored (:meth:`storage_status` says so).
        """
        decision = _field(prediction, "decision") or "error"
        has_image = image is not None and (not isinstance(image, (bytes, bytearray)) or bool(image))
        stored = self._photo(image) if decision == MANUAL and has_image else None
        with self._transaction() as conn:
            # the row id is known before the insert (AUTOINCREMENT: one above the largest ever given,
            # and this transaction holds the write lock), so the audit draw can decide the photo
            row_id = 1 + int(conn.execute("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'decisions'),"
                                          " (SELECT MAX(id) FROM decisions), 0)").fetchone()[0])
            u = audit_draw(audit.seed, row_id) if audit is not None else None
            kind = audit_kind(decision, u if u is not None else 1.0, audit.rate if audit is not None else 0.0)
            if kind == AUDIT and has_image:  # only the audited few pay for the JPEG, under the lock
                stored = self._photo(image)
            refused = None
            if self.max_bytes is not None:
                stored, refused = self._make_room(conn, stored)
            conn.execute(
                "INSERT INTO decisions (id, created_at, source, label, confidence, bin, bin_confidence, decision,"
                " threshold, model, image, image_name, reason, ood_score, kind, model_id, audit_seed, audit_u,"
                " audit_rate) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    row_id, _now(), source, _field(prediction, "label"),
                    _opt_float(_field(prediction, "confidence")), _field(prediction, "bin"),
                    _opt_float(_field(prediction, "bin_confidence")), decision,
                    _opt_float(threshold), model,
                    sqlite3.Binary(stored) if stored else None,
                    image_name, _field(prediction, "reason") or None, _opt_float(_field(prediction, "ood_score")),
                    kind if decision != "error" else None, model_id,
                    audit.seed if audit is not None else None, u, audit.rate if audit is not None else None,
                ),
            )
            if refused:
                _set_meta(conn, "photos_refused", {"at": _now(), "reason": refused})
            elif stored:
                conn.execute("DELETE FROM meta WHERE key = 'photos_refused'")
        return RecordedId(row_id, kind)

    @staticmethod
    def _photo(image: Any) -> bytes | None:
        try:
            return review_jpeg(image)
        except (WastenetError, OSError, ValueError) as exc:
            logging.getLogger("wastenet.serve").warning("decision log: photo not kept: %s", exc)
            return None

    def _make_room(self, conn: sqlite3.Connection, photo: bytes | None) -> tuple[bytes | None, str | None]:
        """Evict for one new row (and ``photo``) under the cap; ``(photo or None, why it was refused)``."""
        limit = log_cap.budget(self.max_bytes)  # type: ignore[arg-type]
        refused = None
        if photo and log_cap.live_bytes(conn) - log_cap.evictable_bytes(conn) + len(photo) + log_cap.ROW_OVERHEAD > limit:
            # evicting everything allowed would not make room: keep what there is, store no photo
            photo, refused = None, (
                "the log is full of reviewed photos that were not exported yet: new photos are not stored "
                "(decisions still are) until `wastenet review --export DIR` has run")
        self._evict(conn, (len(photo) if photo else 0) + log_cap.ROW_OVERHEAD)
        return photo, refused

    # ---------------------------------------------------------------- retention
    def used_bytes(self) -> int:
        """Bytes of live data in the database (pages in use; freed pages are reused, not counted)."""
        with self._connection() as conn:
            return log_cap.live_bytes(conn)

    def disk_bytes(self) -> int:
        """Bytes the log takes on disk: the database file plus its ``-wal`` and ``-shm`` files."""
        return log_cap.disk_bytes(self.path) if self._on_disk else self.used_bytes()

    def enforce_cap(self) -> int:
        """Evict until the log fits its cap (at open: a log reopened with a smaller cap); how many went.

        A log written before incremental auto-vacuum (its file cannot shrink) is rewritten once
        (``VACUUM``) when it is over the cap.
        """
        if self.max_bytes is None:
            return 0
        with self._transaction() as conn:
            taken = self._evict(conn, 0)
        if self._on_disk and self.disk_bytes() > self.max_bytes:
            with self._connection() as conn:
                if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                    conn.executescript("PRAGMA auto_vacuum=INCREMENTAL; VACUUM;")
                self._truncate_due = not log_cap.truncate_wal(conn)
        return taken

    def _evict(self, conn: sqlite3.Connection, need: int) -> int:
        """Make room for ``need`` bytes under the cap (inside ``conn``'s transaction); how many went."""
        taken = log_cap.make_room(conn, need, log_cap.budget(self.max_bytes))  # type: ignore[arg-type]
        if taken.get("pending photos"):
            conn.execute("INSERT INTO meta (key, value) VALUES ('pruned_pending', ?) ON CONFLICT(key) DO "
                         "UPDATE SET value = CAST(value AS INTEGER) + excluded.value", (str(taken["pending photos"]),))
        return sum(taken.values())

    def pruned_pending(self) -> int:
        """How many pending reviews lost their photo to the cap so far (0 normally)."""
        return int(self._meta("pruned_pending") or 0)

    def storage_status(self) -> dict[str, Any]:
        """``{"photos_stored", "reason", "disk_bytes", "max_bytes"}``: whether new photos are kept
        (False when the cap holds only reviewed photos that were not exported), for ``/api/health``."""
        refused = self._meta("photos_refused")
        return {"photos_stored": refused is None, "reason": refused["reason"] if refused else None,
                "disk_bytes": self.disk_bytes(), "max_bytes": self.max_bytes}

    def retention_note(self) -> str | None:
        """One or two sentences for the review page about the cap, or None without one."""
        if self.max_bytes is None:
            return None
        note = (f"The log keeps at most {self.max_bytes / 2**20:g} MB on disk: photos of automatic decisions go "
                "first, then exported reviewed photos and old decisions, pending photos last; reviewed photos "
                "that were not exported are never deleted.")
        lost = self.pruned_pending()
        if lost:
            note += f" {lost} pending item{'s' if lost != 1 else ''} lost their photo unreviewed to stay under it."
        refused = self._meta("photos_refused")
        if refused:
            note += f" Now {refused['reason']}."
        return note

    def review(self, decision_id: int, label: str, who: str | None = None, bin: str | None = None) -> dict[str, Any]:
        """Set a person's label on a decision; ``KeyError`` if there is no such id.

        ``reviewed_bin`` is ``bin`` when given, else the label's bin from :meth:`set_classes`: it
        is fixed now, so a later model with another taxonomy does not rewrite what the audits found.

        The previous label is kept: each call adds a ``review_history`` row (who, when, old,
        new) in the same transaction, see :meth:`history`. A new label has not been exported
        yet (``exported_at`` is cleared). Labels are checked for shape here (:func:`check_label`)
        but not against the classes (the log does not own the class list): the service and
        ``wastenet review`` do that first.
        """
        label = check_label(label)
        n = valid_id(decision_id)
        if n is None:
            raise KeyError(decision_id)
        with self._transaction() as conn:
            row = conn.execute("SELECT reviewed_label FROM decisions WHERE id = ?", (n,)).fetchone()
            if row is None:
                raise KeyError(decision_id)
            at = _now()
            if bin is None:
                row_bins = conn.execute("SELECT value FROM meta WHERE key = 'class_bins'").fetchone()
                bin = json.loads(row_bins["value"]).get(label) if row_bins else None
            conn.execute("UPDATE decisions SET reviewed_label = ?, reviewed_at = ?, reviewed_bin = ?, exported_at = NULL"
                         " WHERE id = ?", (label, at, bin, n))
            conn.execute("INSERT INTO review_history (decision_id, at, who, old_label, new_label)"
                         " VALUES (?,?,?,?,?)", (n, at, who, row["reviewed_label"], label))
        return self.get(n)  # type: ignore[return-value]

    def history(self, decision_id: int) -> list[dict[str, Any]]:
        """Every relabel of a decision, oldest first: ``{"at", "who", "old_label", "new_label"}``."""
        n = valid_id(decision_id)
        if n is None:
            return []
        return [dict(r) for r in self._read(
            "SELECT at, who, old_label, new_label FROM review_history WHERE decision_id = ? ORDER BY id", (n,))]

    # ------------------------------------------------------------------- reads
    def get(self, decision_id: int) -> dict[str, Any] | None:
        """One decision (without the image bytes), or None."""
        n = valid_id(decision_id)
        rows = self._read(f"SELECT {_ITEM_COLUMNS} FROM decisions WHERE id = ?", (n,)) if n else []
        return _item(rows[0]) if rows else None

    def pending_reviews(self, limit: int | None = 50) -> list[dict[str, Any]]:
        """``manual_sort`` items with a stored photo and no review yet, newest first."""
        sql = f"SELECT {_ITEM_COLUMNS} FROM decisions WHERE {_PENDING} ORDER BY id DESC"
        params: tuple[Any, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (int(limit),)
        return [_item(r) for r in self._read(sql, params)]

    def pending_count(self) -> int:
        """How many items :meth:`pending_reviews` would list without a limit."""
        return int(self._read(f"SELECT COUNT(*) AS n FROM decisions WHERE {_PENDING}")[0]["n"])

    def reviewed(self) -> list[dict[str, Any]]:
        """Every decision a person has labelled, oldest first."""
        return [_item(r) for r in self._read(
            f"SELECT {_ITEM_COLUMNS} FROM decisions WHERE reviewed_label IS NOT NULL ORDER BY id")]

    def stats_rows(self, since: str | None = None) -> list[dict[str, Any]]:
        """The columns :func:`wastenet.audit.site_stats` reads, of every decision at or after ``since``
        (an ISO date or time, UTC unless it says otherwise; :func:`parse_since`), oldest first."""
        cols = "decision, kind, bin, label, reason, reviewed_label, reviewed_bin, model_id, model"
        if since is None:
            rows = self._read(f"SELECT {cols} FROM decisions ORDER BY id")
        else:
            rows = self._read(f"SELECT {cols} FROM decisions WHERE created_at >= ? ORDER BY id", (parse_since(since),))
        return [dict(r) for r in rows]

    def new_kinds(self) -> dict[str, dict[str, Any]]:
        """Reviewed labels that are no model class (:meth:`set_classes`): ``{kind: {"bin", "reviewed"}}``,
        the bin being the one the kind was first given (:class:`~wastenet.serve.review_label.LabelRule`)."""
        classes = set(self.classes() or []) | {NOT_AN_ITEM}  # a photo of no item is no kind
        out: dict[str, dict[str, Any]] = {}
        for r in self._read("SELECT reviewed_label AS label, reviewed_bin AS bin, COUNT(*) AS n, MIN(id) AS first "
                            "FROM decisions WHERE reviewed_label IS NOT NULL GROUP BY reviewed_label, reviewed_bin "
                            "ORDER BY first"):
            if r["label"] in classes:
                continue
            entry = out.setdefault(r["label"], {"bin": r["bin"], "reviewed": 0})
            entry["reviewed"] += int(r["n"])
        return out

    def reviewed_photo_count(self) -> int:
        """How many reviewed decisions have a stored photo (what an adaptation can learn from)."""
        return int(self._read("SELECT COUNT(*) AS n FROM decisions WHERE reviewed_label IS NOT NULL "
                              "AND image IS NOT NULL")[0]["n"])

    def count(self) -> int:
        """Number of decisions logged."""
        return int(self._read("SELECT COUNT(*) AS n FROM decisions")[0]["n"])

    def image(self, decision_id: int) -> bytes | None:
        """The stored photo of a decision (manual_sort items only), or None."""
        n = valid_id(decision_id)
        rows = self._read("SELECT image FROM decisions WHERE id = ?", (n,)) if n else []
        if not rows or rows[0]["image"] is None:
            return None
        return bytes(rows[0]["image"])

    # ------------------------------------------------------------------ export
    def export_dataset(self, out_dir: str | os.PathLike,
                       on_skip: Callable[[int, str], None] | None = None) -> dict[str, int]:
        """Write reviewed photos as ``OUT/<label>/<id>_<name>.jpg|png`` and count them per class.

        The result is a class-folder dataset that ``wastenet train --data OUT`` reads.
        Exporting again overwrites the same files (names carry the decision id). Each written
        row is marked exported (``exported_at``): from then on the cap may drop its photo. A row
        whose label cannot name a folder inside OUT (see :func:`check_label`), whose stored photo
        cannot be read, or whose file cannot be written is skipped and reported to
        ``on_skip(id, reason)`` (default: a warning in the ``wastenet.serve`` log); the other rows
        are still exported, and no folder is made for a skipped row. ``ConfigError`` when OUT is
        not a folder that can be created.

        >>> log.export_dataset("data/reviewed", on_skip=lambda i, why: print(i, why))  # doctest: +SKIP
        """
        from wastenet.serve.log_export import export_reviewed

        return export_reviewed(self, out_dir, on_skip)

    def reviewed_photos(self) -> list[dict[str, Any]]:
        """``{"id", "reviewed_label", "image_name"}`` of every reviewed decision that has a photo, oldest first."""
        return [dict(r) for r in self._read("SELECT id, reviewed_label, image_name FROM decisions "
                                            "WHERE reviewed_label IS NOT NULL AND image IS NOT NULL ORDER BY id")]

    def dropped_after_export(self) -> int:
        """Reviewed rows whose photo the cap dropped after an export (a later export cannot write them again)."""
        return int(self._read("SELECT COUNT(*) FROM decisions WHERE reviewed_label IS NOT NULL AND image IS NULL "
                              "AND exported_at IS NOT NULL")[0][0])

    def mark_exported(self, decision_id: int, label: str) -> None:
        """Record that ``decision_id``'s photo was exported with ``label`` (unless it was relabelled since):
        from then on the cap may drop it."""
        with self._transaction() as conn:
            conn.execute("UPDATE decisions SET exported_at = ? WHERE id = ? AND reviewed_label = ?",
                         (_now(), int(decision_id), label))


class RecordedId(int):
    """A new row's id, which also carries the row's ``kind`` (what :meth:`DecisionLog.record` decided)."""

    kind: str | None

    def __new__(cls, row_id: int, kind: str | None) -> "RecordedId":
        self = super().__new__(cls, row_id)
        self.kind = kind
        return self


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Give a log written by an older version the columns added since (empty for its old rows)."""
    cols = {r["name"] for r in conn.execute("PRAGMA table_info(decisions)")}
    if "reviewed_label" not in cols:
        raise ConfigError(f"{path} is not a wastenet decision log")
    try:
        for name, kind in _COLUMNS_ADDED:
            if name not in cols:
                conn.execute(f"ALTER TABLE decisions ADD COLUMN {name} {kind}")
        if "kind" not in cols:  # rows written before audits: a manual-sort row or an automatic one
            conn.execute("UPDATE decisions SET kind = CASE decision WHEN 'manual_sort' THEN 'manual_sort' "
                         "ELSE 'auto' END WHERE decision != 'error'")
        conn.execute("CREATE INDEX IF NOT EXISTS decisions_kind ON decisions (kind, reviewed_label, id)")
    except sqlite3.DatabaseError as err:
        raise ConfigError(f"cannot upgrade decision log {path}: {err}") from None


def _set_meta(conn: sqlite3.Connection, key: str, value: Any) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))


def _opt_float(x: Any) -> float | None:
    if x is None or x == "":
        return None
    return float(x)


def _item(row: sqlite3.Row) -> dict[str, Any]:
    d = {k: row[k] for k in row.keys()}
    d["has_image"] = bool(d.get("has_image"))
    return d
