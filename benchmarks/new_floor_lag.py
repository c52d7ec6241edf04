"""How long a new floor waits: per floor surface of a finished floors stream, when the stream first shows it,
when a served version first learned from one of its items, and the manual-sort rate of its items before and
after. Reads a ``site_stream.py`` result (its ``order`` CSV needs a ``surface`` column; its log and versions
folder must still be there)::

    python benchmarks/new_floor_lag.py --result benchmarks/results/site-stream-field-floors-densenet121-probe.json \\
        --out benchmarks/results/new-floor-lag-densenet121-probe.json

A version learns only from items older than the newest held-out share of reviewed items (20%), so an item
reviewed when the log holds N reviewed items is trained on only after about N/4 more came in; on a stream
that is about a quarter of the rows streamed so far, however many of them are reviewed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from wastenet.model_identity import model_id
from wastenet.ood import NOT_AN_ITEM


def floor_lag(result: dict[str, Any]) -> list[dict[str, Any]]:
    with open(result["order"], newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "surface" not in rows[0]:
        raise SystemExit(f"new_floor_lag: {result['order']} has no surface column")
    with sqlite3.connect(result["log_db"]) as conn:
        log = list(conn.execute("SELECT id, kind, model_id, reviewed_label FROM decisions ORDER BY id"))
    if len(log) != len(rows):
        raise SystemExit(f"new_floor_lag: the log holds {len(log)} decisions, the order {len(rows)} rows")
    row_of = {d[0]: i for i, d in enumerate(log)}
    first_served: dict[str, int] = {}
    for i, d in enumerate(log):
        first_served.setdefault(d[2], i)
    models = Path(result["log_db"]).parent / "models"
    versions = [json.loads(p.read_text()) for p in sorted(models.glob("[0-9][0-9][0-9][0-9].json"))]
    out = []
    for surface in dict.fromkeys(r["surface"] for r in rows):  # in order of appearance
        first = next(i for i, r in enumerate(rows) if r["surface"] == surface)
        items = [i for i, r in enumerate(rows) if r["surface"] == surface and not r["path"].startswith(NOT_AN_ITEM)]
        learned = None
        for v in versions:
            ids = (v.get("inputs") or {}).get("trained_on", [])
            if v["id"] and v.get("promoted") and any(rows[row_of[j]]["surface"] == surface for j in ids if j in row_of):
                learned = {"version": v["id"], "served_from_row": first_served.get(model_id(models / f"{v['id']:04d}.pt"))}
                break
        cut = learned["served_from_row"] if learned and learned["served_from_row"] is not None else len(rows)
        before, after = [i for i in items if i < cut], [i for i in items if i >= cut]
        manual = lambda sel: round(sum(log[i][1] == "manual_sort" for i in sel) / len(sel), 3) if sel else None  # noqa: E731
        out.append({"surface": surface, "first_row": first, "last_row": max(items) if items else None,
                    "reviewed_before": sum(d[3] is not None for d in log[:first]), "learned": learned,
                    "rows_until_learned": None if cut == len(rows) else cut - first,
                    "items": len(items), "items_before": len(before), "manual_sort_before": manual(before),
                    "manual_sort_after": manual(after)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--result", required=True, help="a site_stream.py result of a floors stream")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    result = json.loads(Path(args.result).read_text())
    floors = floor_lag(result)
    for f in floors:
        learned = (f"learned by version {f['learned']['version']}, served {f['rows_until_learned']} rows after its first"
                   if f["rows_until_learned"] is not None else "not learned while streamed")
        print(f"surface {f['surface']}: rows {f['first_row']}-{f['last_row']}, {f['reviewed_before']} reviewed before it; "
              f"{learned}; manual sort {f['manual_sort_before']} before ({f['items_before']} items), "
              f"{f['manual_sort_after']} after", file=sys.stderr)
    Path(args.out).write_text(json.dumps({"result": args.result, "surfaces": floors}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
