"""``wastenet predict``: classify photos and decide a bin for each, as a table, CSV or JSON.

Usage::

    wastenet predict --checkpoint runs/x/best.pt photos/ extra.jpg --format csv --out preds.csv
    wastenet predict --checkpoint model.onnx "shots/**/*.jpg" --threshold 0.8 --taxonomy household
    wastenet predict --checkpoint runs/x/best.pt bottle.jpg        # aligned table on stdout

PATHs are files, folders (searched recursively, files sorted) or glob patterns; the output
keeps their order. Exit status: 0 all inputs predicted, 1 some inputs failed (their rows
say why; the others are still written), 2 usage or configuration error (before any work).
Nothing here imports torch at module level: ONNX files run on the torch-free install.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from wastenet.decision import DEFAULT_THRESHOLD
from wastenet.files import check_output, write_atomic

HELP = "Classify images and decide which bin each goes in (manual_sort when unsure)."

#: Column order of the CSV output: the six documented columns first (README), then extras.
CSV_COLUMNS = ("path", "label", "confidence", "bin", "decision", "error", "bin_confidence", "reason", "ood_score")

_PROGRESS_MIN_INPUTS = 16
# renders as "": stops ArgumentDefaultsHelpFormatter appending "(default: None)" where None means "see text"
_NO_DEFAULT = "%(default).0s"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="model file: a training checkpoint (.pt) or an exported model (.onnx)" + _NO_DEFAULT)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files, folders (searched recursively) or glob patterns (quote them)")
    parser.add_argument("--threshold", type=float, default=None, metavar="P",
                        help="minimum bin probability to trust the bin, else manual_sort, in [0, 1] "
                             f"(default: the model file's, normally {DEFAULT_THRESHOLD:g})" + _NO_DEFAULT)
    parser.add_argument("--bin-thresholds", default=None, metavar="BIN=P,...|FILE.yaml",
                        help="per-bin thresholds, e.g. recyclable=0.97,landfill=0.6 (other bins: --threshold)"
                             + _NO_DEFAULT)
    parser.add_argument("--ood-threshold", type=float, default=None, metavar="S",
                        help="unknown-item score above which an item goes to manual_sort with reason unknown "
                             "(default: the model's, chosen on validation data)" + _NO_DEFAULT)
    parser.add_argument("--group-by", default=None, metavar="DIR|REGEX",
                        help="several photos of one item: DIR groups by folder, a regex by its first group (or "
                             "whole match) on the path; one decision per group from the combined probabilities "
                             "and unknown-item scores" + _NO_DEFAULT)
    parser.add_argument("--search", action="store_true",
                        help="also look at windows of each photo and let the most item-like one decide "
                             "(for a small item in a wide frame; ~50x the model calls)")
    parser.add_argument("--taxonomy", default=None, metavar="FILE|trashnet|household",
                        help="class -> bin map to use instead of the model's (YAML file or built-in name)" + _NO_DEFAULT)
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table",
                        help="output format")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="write the output to FILE (atomically) instead of stdout" + _NO_DEFAULT)
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per model call")
    parser.add_argument("--topk", type=int, default=3, metavar="K", help="classes listed per image in JSON output")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average the image's and its mirror image's probabilities "
                             "(twice the compute)" + _NO_DEFAULT)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"),
                        help="where the model runs")


def make_group_key(spec: str) -> Any:
    """``DIR``: photos in one folder are one item; otherwise a regex whose first group (or whole
    match) on the path names the item (``r"(.*)_\\d+\\.jpg"``: ``can_1.jpg``, ``can_2.jpg``)."""
    import os
    import re

    from wastenet.errors import ConfigError

    if spec == "DIR":
        return lambda path: os.path.dirname(os.fspath(path)) or "."
    try:
        pattern = re.compile(spec)
    except re.error as exc:
        raise ConfigError(f"--group-by: not DIR and not a valid regular expression ({exc})") from None

    def key(path: str) -> str:
        m = pattern.search(os.fspath(path))
        if m is None:
            return os.fspath(path)  # a photo the pattern does not match is an item of its own
        return m.group(1) if m.groups() else m.group(0)

    return key


def run(args: argparse.Namespace) -> int:
    from wastenet.decision import check_threshold, cli_threshold
    from wastenet.errors import ConfigError
    from wastenet.inference.predictor import Classifier, Prediction
    from wastenet.taxonomy import load_taxonomy

    # every usage / configuration check happens before any image is read
    threshold = None if args.threshold is None else check_threshold(args.threshold, name="--threshold")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.topk < 1:
        raise ConfigError(f"--topk must be at least 1, got {args.topk}")
    out = check_output(args.out) if args.out else None  # before the model is even loaded
    group_key = make_group_key(args.group_by) if args.group_by else None
    clf = Classifier.load(args.checkpoint, device=args.device)
    taxonomy = load_taxonomy(args.taxonomy, clf.classes) if args.taxonomy else None
    threshold = cli_threshold(threshold, args.bin_thresholds, (taxonomy or clf.taxonomy).bin_names, clf.threshold)

    not_regular: list[Path] = []
    inputs, missing = expand_paths(args.paths, not_regular)
    progress = sys.stderr.isatty() and len(inputs) > _PROGRESS_MIN_INPUTS
    options = dict(threshold=threshold, taxonomy=taxonomy, batch_size=args.batch_size, topk=args.topk,
                   progress=progress, tta=args.tta, ood_threshold=args.ood_threshold, search=args.search)
    preds: list[Prediction] = []
    if group_key is not None:  # one row per item, in order of its first photo
        groups: dict[str, list[str]] = {}
        for path in inputs:
            groups.setdefault(group_key(path), []).append(path)
        preds = clf.predict_groups(groups, **options) + [Prediction.failed(*missing[i]) for i in sorted(missing)]
    else:
        predicted = iter(clf.predict(inputs, **options))
        # merge back the patterns that matched nothing, at their place in the input order
        for i in range(len(inputs) + len(missing)):
            preds.append(Prediction.failed(*missing[i]) if i in missing else next(predicted))

    text = format_predictions(preds, args.format)
    if out is not None:
        write_atomic(out, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    failed = sum(not p.ok for p in preds)
    if out is not None:
        print(f"wrote {len(preds)} predictions to {out}", file=sys.stderr)
    if not_regular:
        n = len(not_regular)
        print(f"wastenet predict: skipped {n} folder {'entry that is' if n == 1 else 'entries that are'} not a "
              f"regular file (FIFO, device, socket, broken link), e.g. {not_regular[0]}", file=sys.stderr)
    if failed:
        print(f"wastenet predict: {failed} of {len(preds)} inputs failed (see the error column)",
              file=sys.stderr)
        return 1
    return 0


def expand_paths(specs: Sequence[str], not_regular: list[Path] | None = None
                 ) -> tuple[list[str], dict[int, tuple[str, str]]]:
    """Command-line PATHs -> (image paths in order, {output position: (spec, reason)} for no match).

    A folder gives its images (recursive, sorted; entries that are not regular files go to
    ``not_regular`` when given, unread); a path that does not exist literally is tried as a glob
    (``**`` recursive); a plain missing file stays in the list so that its row reports
    ``file not found``.
    """
    from wastenet.data.images import IMAGE_EXTENSIONS, iter_image_files

    paths: list[str] = []
    missing: dict[int, tuple[str, str]] = {}
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = [str(f) for f in iter_image_files(p, not_regular)]
            if not found:
                missing[len(paths) + len(missing)] = (spec, "no image files in folder")
            paths.extend(found)
        elif p.exists() or not glob.has_magic(spec):
            paths.append(spec)
        else:
            found = []
            for match in sorted(glob.glob(spec, recursive=True)):
                if os.path.isdir(match):
                    found.extend(str(f) for f in iter_image_files(match, not_regular))
                elif os.path.splitext(match)[1].lower() in IMAGE_EXTENSIONS:
                    found.append(match)
            if not found:
                missing[len(paths) + len(missing)] = (spec, "no image files match this pattern")
            paths.extend(found)
    return paths, missing


def format_predictions(preds: Sequence[Any], fmt: str) -> str:
    """Render predictions as ``table``, ``csv`` or ``json`` text."""
    if fmt == "json":
        return json.dumps([p.to_dict() for p in preds], indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for p in preds:
            writer.writerow(p.to_row())
        return buf.getvalue()
    if fmt == "table":
        return _table(preds)
    raise ValueError(f"unknown format {fmt!r}")


def _table(preds: Sequence[Any]) -> str:
    header = ("path", "label", "conf", "bin", "bin_conf", "decision", "error")
    rows = [header]
    for p in preds:
        rows.append((p.path, p.label or "", "" if p.confidence is None else f"{p.confidence:.3f}",
                     p.bin or "", "" if p.bin_confidence is None else f"{p.bin_confidence:.3f}",
                     p.decision, p.error or ""))
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    numeric = {2, 4}
    lines = []
    for r in rows:
        cells = [r[c].rjust(widths[c]) if c in numeric else r[c].ljust(widths[c]) for c in range(len(header))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
