"""``wastenet review``: the manual-sort review loop from the command line.

Usage::

    wastenet review --log-db runs/x/decisions.sqlite                 # list pending items
    wastenet review --log-db runs/x/decisions.sqlite --set 17 plastic
    wastenet review --log-db runs/x/decisions.sqlite --export data/reviewed
    wastenet review --log-db runs/x/decisions.sqlite --stats [--since 2026-12-01] [--format json]
    wastenet train --data data/reviewed ...                          # learn from them

The queue holds manual-sort items and audits (a random share of the automatic decisions, kept so
that their labels estimate each bin's real contamination: ``--stats``, :mod:`wastenet.audit`).
The service's ``/review`` page does the same in a browser. ``--export`` marks each photo it wrote
as exported: from then on the log's cap may drop it (reviewed photos that were not exported are
never dropped). Exit status: 0 success, 1 an unknown decision id or an export that skipped rows
(each one named on stderr, with why), 2 a usage error (missing log file, unknown class label).
Torch-free.
"""

from __future__ import annotations

import argparse
import sys

HELP = ("List manual-sort items and audits awaiting review, label them, export them as a dataset, "
        "and show the bin's live figures (--stats).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-db", required=True, metavar="PATH",
                        help="the service's SQLite decision log (decisions.sqlite)")
    parser.add_argument("--list", action="store_true",
                        help="list manual-sort items awaiting a label, newest first (the default action)")
    parser.add_argument("--limit", type=int, default=50, help="most items listed")
    parser.add_argument("--set", nargs=2, metavar=("ID", "LABEL"), default=None,
                        help="record the correct class LABEL for decision ID")
    parser.add_argument("--bin", default=None, metavar="BIN",
                        help="with --set: the bin of a new kind of item (a LABEL that is no model class)")
    parser.add_argument("--allow-new-bins", action="store_true",
                        help="with --set --bin: BIN may be a bin the taxonomy lacks")
    parser.add_argument("--force", action="store_true",
                        help="with --set: accept a label that is not one of the model's classes, without a bin")
    parser.add_argument("--export", default=None, metavar="DIR",
                        help="write every reviewed photo to DIR/<label>/<id>_<name>.jpg|png "
                             "(a dataset for `wastenet train --data DIR`)")
    parser.add_argument("--stats", action="store_true",
                        help="per model version and bin: decisions, auto and manual-sort shares, audits, estimated "
                             "contamination and class accuracy with 95%% intervals")
    parser.add_argument("--since", default=None, metavar="ISO",
                        help="with --stats: only decisions at or after this date/time (UTC unless it says otherwise)")
    parser.add_argument("--format", default="table", choices=("table", "json"), help="--stats output format")


def run(args: argparse.Namespace) -> int:
    from wastenet.errors import ConfigError, WastenetError
    from wastenet.serve.decision_log import MAX_ID, DecisionLog, parse_since, valid_id
    from wastenet.serve.review_label import LabelRule

    if args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    set_id = None
    if args.set is not None:
        set_id = valid_id(args.set[0])
        if set_id is None:
            raise ConfigError(f"--set: ID must be a whole number from 1 to {MAX_ID}, got {args.set[0]!r}")

    if args.since is not None and not args.stats:
        raise ConfigError("--since goes with --stats")
    if args.since is not None:
        try:
            parse_since(args.since)
        except ValueError as exc:
            raise ConfigError(f"--since: {exc}") from None

    with DecisionLog(args.log_db, create=False) as log:
        if args.stats:
            _print_stats(log, args.since, args.format)
            return 0
        if set_id is not None:
            label, bin_name = args.set[1].strip(), args.bin
            classes = log.classes()
            if classes and not (args.force and args.bin is None):
                try:  # the service's rule: a class, or a new kind with its bin
                    label, bin_name = LabelRule.from_log(log, args.allow_new_bins).check(label, args.bin)
                except ValueError as exc:
                    raise ConfigError(f"--set: {exc} (--force accepts any label without a bin)") from None
            try:
                item = log.review(set_id, label, who=f"cli:{_user()}", bin=bin_name)
            except ValueError as exc:
                raise ConfigError(f"--set: {exc}") from None
            except KeyError:
                raise WastenetError(f"no decision with id {set_id} in {args.log_db}") from None
            print(f"#{item['id']}: {item['label'] or '?'} -> {item['reviewed_label']}")
        skips: list[int] = []
        if args.export:
            def skipped(decision_id: int, reason: str) -> None:
                skips.append(decision_id)
                print(f"skipped #{decision_id}: {reason}", file=sys.stderr)

            counts = log.export_dataset(args.export, on_skip=skipped)
            total = sum(counts.values())
            for cls, n in counts.items():
                print(f"{cls}\t{n}")
            gone = log.dropped_after_export()  # exported before, then dropped by the cap: not an error
            print(f"exported {total} reviewed image{'s' if total != 1 else ''} to {args.export}"
                  + (f"; {len(skips)} skipped" if skips else "")
                  + (f"; {gone} reviewed photo{'s' if gone != 1 else ''} exported earlier and since dropped by the "
                     f"log's cap (not written again)" if gone else ""), file=sys.stderr)
        if args.list or (set_id is None and not args.export):
            _print_pending(log, args.limit)
    return 1 if skips else 0  # README: 1 = some inputs failed


def _print_stats(log: object, since: str | None, fmt: str) -> None:
    import json

    from wastenet.audit import ESTIMATE_NOTE, site_stats, stats_table

    stats = site_stats(log.stats_rows(since))  # type: ignore[attr-defined]
    if fmt == "json":
        print(json.dumps({"since": since, **stats, "note": ESTIMATE_NOTE}, indent=2))
        return
    print(stats_table(stats))
    print(ESTIMATE_NOTE, file=sys.stderr)


def _print_pending(log: object, limit: int) -> None:
    items = log.pending_reviews(limit)  # type: ignore[attr-defined]
    total = log.pending_count()  # type: ignore[attr-defined]
    if not items:
        print("no manual-sort items or audits awaiting review", file=sys.stderr)
        return
    header = ("id", "kind", "time", "label", "confidence", "bin", "bin_conf", "image")
    rows = [(str(it["id"]), it["kind"] or "", (it["created_at"] or "")[:19].replace("T", " "), it["label"] or "",
             _pct(it["confidence"]), it["bin"] or "", _pct(it["bin_confidence"]), it["image_name"] or "")
            for it in items]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if total > len(items):
        print(f"({total - len(items)} more; --limit shows more)", file=sys.stderr)


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (containers): still record the review
        return "unknown"


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"
