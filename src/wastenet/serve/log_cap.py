"""The decision log's size cap: what may be evicted, in which order, and the size of its files on disk.

The cap is a promise about files: the database plus its ``-wal`` and ``-shm`` files stay under
``max_bytes`` after every write. SQLite's page count measures the main file's live pages only, so
the cap is split: the live pages get ``max_bytes`` minus an allowance for the WAL and its index
(:func:`budget`); the WAL is truncated (``wal_checkpoint(TRUNCATE)``) once it outgrows its allowance;
freed pages are reused (and, on logs created with incremental auto-vacuum, handed back when the
file is over its budget, e.g. after a restart with a smaller cap).

What goes, oldest first within each step, to make room (:data:`EVICTION_STEPS`):

1. the photos of unreviewed automatic decisions that are no audits (the row stays);
2. the photos of reviewed items already exported (they are in the exported dataset);
3. unreviewed decision rows without a photo (automatic decisions, or pending ones whose photo went);
4. the photos of pending reviews (manual-sort or audit, unreviewed; the row stays, counted as lost).

Never: a reviewed photo that has not been exported (:data:`PROTECTED`; the site's training data),
a reviewed row, or a ``review_history`` row. When only protected photos are left, a new photo is
not stored (the decision is) and the log says so (:meth:`DecisionLog.storage_status`).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

__all__ = ["FOR_REVIEW", "PROTECTED", "EVICTION_STEPS", "ROW_OVERHEAD", "budget", "disk_bytes", "evictable_bytes", "live_bytes",
           "make_room", "shrink_file", "truncate_wal", "wal_allowance"]

# bytes a decision row costs besides its photo (columns, index entry): used to size an eviction
ROW_OVERHEAD = 200
# A reviewed photo that has not left the log yet: never evicted. Issue 22 adds "or used by an
# adaptation" here (one more column: ``AND used_at IS NULL``).
PROTECTED = "reviewed_label IS NOT NULL AND exported_at IS NULL"
#: Rows whose photo is kept for a person: manual-sort items and audits (``kind``, wastenet.audit).
FOR_REVIEW = "kind IN ('manual_sort', 'audit')"
_PENDING = f"{FOR_REVIEW} AND reviewed_label IS NULL"

#: ``(name, rows it may touch, action)``: "photo" drops the blob, "row" deletes the row.
EVICTION_STEPS: tuple[tuple[str, str, str], ...] = tuple((name, f"({where}) AND NOT ({PROTECTED})", action) for
                                                         name, where, action in (
    ("automatic photos", f"image IS NOT NULL AND reviewed_label IS NULL AND NOT ({_PENDING})", "photo"),
    ("exported reviewed photos", "image IS NOT NULL AND reviewed_label IS NOT NULL AND exported_at IS NOT NULL",
     "photo"),
    ("unreviewed rows without a photo", "image IS NULL AND reviewed_label IS NULL", "row"),
    ("pending photos", f"image IS NOT NULL AND {_PENDING}", "photo"),
))
_SIDE_FILES = ("-wal", "-shm")


def wal_allowance(max_bytes: int) -> int:
    """Bytes of the cap kept for the WAL and its index: an eighth, between 64 kB and 16 MB."""
    return max(64 * 1024, min(max_bytes // 8, 16 * 2**20))


def budget(max_bytes: int) -> int:
    """Bytes the main file's live pages may take under a cap of ``max_bytes`` on disk."""
    return max(0, max_bytes - wal_allowance(max_bytes) - 32 * 1024)  # -shm: 32 kB per 4096 WAL frames


def disk_bytes(path: Path) -> int:
    """Size on disk of the log: the database file plus its ``-wal`` and ``-shm`` files."""
    total = 0
    for suffix in ("", *_SIDE_FILES):
        try:
            total += os.stat(f"{path}{suffix}").st_size
        except OSError:
            pass
    return total


def live_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of live pages (in use; freed pages are reused, not counted), as this transaction sees them."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def evictable_bytes(conn: sqlite3.Connection) -> int:
    """About how many bytes :func:`make_room` could free at most (photos and rows it may take)."""
    total = 0
    for _name, where, action in EVICTION_STEPS:
        size = "COALESCE(length(image), 0)" if action == "photo" else str(ROW_OVERHEAD)
        total += int(conn.execute(f"SELECT COALESCE(SUM({size}), 0) FROM decisions WHERE {where}").fetchone()[0])
    return total


def make_room(conn: sqlite3.Connection, need: int, limit: int) -> dict[str, int]:
    """Evict (inside the caller's write transaction) until ``need`` more bytes fit under ``limit``.

    Returns how many photos/rows each step took (``{"pending photos": 2, ...}``); the caller
    compares :func:`live_bytes` with ``limit`` afterwards to see whether the room was found.
    """
    taken: dict[str, int] = {}
    for name, where, action in EVICTION_STEPS:
        while (excess := live_bytes(conn) + need - limit) > 0:
            n = _evict_oldest(conn, where, action, excess)
            if n == 0:
                break
            taken[name] = taken.get(name, 0) + n
    return taken


def _evict_oldest(conn: sqlite3.Connection, where: str, action: str, excess: int) -> int:
    # the oldest candidates whose photos (or rows) add up to the excess: one statement
    last, freed, n = None, 0, 0
    size = "COALESCE(length(image), 0)" if action == "photo" else "0"
    for row in conn.execute(f"SELECT id, {size} AS size FROM decisions WHERE {where} ORDER BY id LIMIT 10000"):
        last, freed, n = row[0], freed + row[1] + (ROW_OVERHEAD if action == "row" else 0), n + 1
        if freed >= excess:
            break
    if last is None:
        return 0
    if action == "photo":
        conn.execute(f"UPDATE decisions SET image = NULL WHERE {where} AND id <= ?", (last,))
    else:
        conn.execute(f"DELETE FROM decisions WHERE {where} AND id <= ?", (last,))
    return n


def shrink_file(conn: sqlite3.Connection, limit: int) -> None:
    """Hand freed pages back to the file system when the file is over ``limit`` (incremental
    auto-vacuum logs only). Outside any transaction: Python's ``execute`` would step the pragma
    once, freeing one page, so it runs as a script (its own transaction)."""
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        return
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    if pages * size > limit and conn.execute("PRAGMA freelist_count").fetchone()[0] > 0:
        conn.executescript("PRAGMA incremental_vacuum;")


def truncate_wal(conn: sqlite3.Connection, wait_ms: int = 100) -> bool:
    """``wal_checkpoint(TRUNCATE)``, waiting at most ``wait_ms`` for readers; False when one still
    holds an old snapshot (then the caller tries again after its next write: no spinning)."""
    old = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute(f"PRAGMA busy_timeout={int(wait_ms)}")
    try:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    except sqlite3.OperationalError:
        busy = 1
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(old)}")
    return busy == 0
