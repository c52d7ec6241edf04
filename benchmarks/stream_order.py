"""Stream orders for ``benchmarks/site_stream.py --order``: a CSV whose ``path`` column is the stream.

The field set by floor surface (one surface after another, so later windows bring floors the
model has not seen yet; surfaces as ``adapt_curve.py`` finds them: k-means over the floor's
colour and texture beside each item box), or one split of a split file (TrashNet's test rows)::

    python benchmarks/stream_order.py --field ../shared/data/field-drinkingwaste \\
        --class-map benchmarks/field/drinkingwaste.yaml --out benchmarks/results/field-order.csv
    python benchmarks/stream_order.py --split-file ../shared/data/trashnet-split.csv --split test \\
        --out benchmarks/results/trashnet-test-order.csv

A kind the base model has no class for (``--new-kind CLASS``, a base trained on a split file without
it): every photo of CLASS mixed with half of the other classes' ``--split`` photos, shuffled; the other
half (never streamed) goes to ``--check-out``, to measure what the old classes lose::

    python benchmarks/stream_order.py --split-file ../shared/data/trashnet-split.csv --new-kind cardboard \
        --out benchmarks/results/new-class-cardboard-order.csv \
        --check-out benchmarks/results/new-class-cardboard-check.csv

Within a surface (or the split) the order is shuffled by ``--seed``.

Photos of no item in the field stream (``--floors-out DIR``): every ``--floors-every``-th item is
followed by an empty-floor square of its own photo (``field.floor_crop``: the largest square beside
its box), as a bin's camera sees its empty floor between items. DIR gets the squares in
``not_an_item/`` and links to the item folders, and the CSV's paths are relative to it: stream DIR
with ``benchmarks/field/drinkingwaste-floors.yaml`` (``not_an_item: not_an_item``: the reviewer
labels them so, BENCHMARKS.md "Not an item")::

    python benchmarks/stream_order.py --field ../shared/data/field-drinkingwaste \
        --class-map benchmarks/field/drinkingwaste.yaml --floors-out /tmp/field-floors --floors-every 5 \
        --out benchmarks/results/field-floors-order.csv
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapt_curve import kmeans, surface_features  # noqa: E402 - one surface rule


def field_order(root: Path, class_map: str, boxes: Path | None, surfaces: int, seed: int) -> list[tuple[str, int]]:
    import yaml

    from wastenet.evaluation.field import Target, field_items

    raw = (yaml.safe_load(Path(class_map).read_text()) or {}).get("classes") or {}
    targets = {str(k): Target("class", str(v)) for k, v in raw.items()}  # only the folders matter here
    items = field_items(root, targets, boxes)
    surface = kmeans(surface_features(root, items), surfaces, seed)
    by_surface: dict[int, list[str]] = {}
    for it, s in zip(items, surface):
        by_surface.setdefault(int(s), []).append(it.path)
    rng = random.Random(seed)
    out = []
    for rank, s in enumerate(sorted(by_surface, key=lambda s: (-len(by_surface[s]), s))):  # the commonest floor first
        paths = sorted(by_surface[s])
        rng.shuffle(paths)
        out += [(p, rank) for p in paths]
    return out


def with_floors(root: Path, order: list[tuple[str, int]], out: Path, every: int) -> list[tuple[str, int]]:
    """``order`` with an empty-floor square of every ``every``-th item's photo after it (items without a
    box or room beside it: the next item's); the squares written to ``out/not_an_item``, the item
    folders linked into ``out``."""
    from wastenet.data.images import load_image
    from wastenet.evaluation.field import floor_crop, read_boxes
    from wastenet.ood import NOT_AN_ITEM

    boxes = read_boxes(root / "labels.csv")
    (out / NOT_AN_ITEM).mkdir(parents=True, exist_ok=True)
    for folder in sorted({Path(p).parts[0] for p, _ in order}):
        link = out / folder
        if not link.exists():
            link.symlink_to((root / folder).resolve(), target_is_directory=True)
    rows, due = [], 0
    for path, surface in order:
        rows.append((path, surface))
        due += 1
        crop = floor_crop(load_image(root / path), boxes[path]) if due >= every and path in boxes else None
        if crop is not None:
            name = f"{NOT_AN_ITEM}/{Path(path).parts[0]}-{Path(path).stem}.jpg"
            crop.save(out / name, quality=95)
            rows.append((name, surface))
            due = 0
    return rows


def new_kind_order(split_file: str, split: str, kind: str, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(stream, check): every ``kind`` photo plus half of the other classes' ``split`` photos, shuffled;
    the other half of those as the check set (path, label)."""
    with open(split_file, newline="") as f:
        rows = list(csv.DictReader(f))
    rng = random.Random(seed)
    new = sorted(r["path"] for r in rows if r["label"] == kind)
    if not new:
        raise SystemExit(f"no {kind!r} rows in {split_file}")
    old = sorted((r["path"], r["label"]) for r in rows if r["label"] != kind and r["split"] == split)
    rng.shuffle(old)
    half = (len(old) + 1) // 2
    stream = [(p, kind) for p in new] + old[:half]
    rng.shuffle(stream)
    return stream, sorted(old[half:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--field", help="a field folder with labels.csv item boxes")
    ap.add_argument("--class-map")
    ap.add_argument("--surfaces", type=int, default=6)
    ap.add_argument("--split-file")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--new-kind", help="with --split-file: a class the base model was trained without")
    ap.add_argument("--check-out", help="with --new-kind: the never-streamed old-class photos (path,label)")
    ap.add_argument("--floors-out", help="with --field: a folder for the stream with empty-floor squares")
    ap.add_argument("--floors-every", type=int, default=5, help="an empty floor after every N items")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if bool(args.field) == bool(args.split_file):
        ap.error("give either --field (with --class-map) or --split-file")
    if args.floors_out and (not args.field or args.floors_every < 1):
        ap.error("--floors-out needs --field and --floors-every >= 1")
    if args.field:
        root = Path(args.field)
        rows = field_order(root, args.class_map, root / "labels.csv" if (root / "labels.csv").is_file() else None,
                           args.surfaces, args.seed)
        if args.floors_out:
            rows = with_floors(root, rows, Path(args.floors_out), args.floors_every)
        header = ("path", "surface")
    elif args.new_kind:
        if not args.check_out:
            ap.error("--new-kind needs --check-out")
        rows, check = new_kind_order(args.split_file, args.split, args.new_kind, args.seed)
        header = ("path", "label")
        with open(args.check_out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(check)
    else:
        with open(args.split_file, newline="") as f:
            paths = [r["path"] for r in csv.DictReader(f) if r["split"] == args.split]
        random.Random(args.seed).shuffle(paths)
        rows = [(p, args.split) for p in paths]
        header = ("path", "split")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    print(f"{len(rows)} paths -> {args.out} ({dict(Counter(r[1] for r in rows))})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
