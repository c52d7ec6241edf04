"""Folder datasets, split files and the in-memory image cache.

A dataset is ``ROOT/<class>/**/<image>``; a split file is CSV ``path,label,split`` with paths
relative to ROOT::

    rows, classes = scan_folder("../shared/data/trashnet")
    rows = stratified_split(rows, seed=0)              # adds split = train/val/test (50/25/25)
    write_split_file(rows, "runs/x/split.csv")
    cache = build_cache(root, rows, size=256)          # decoded once, uint8 [N, 3, 256, 256]
"""

from __future__ import annotations

import csv
import io
import posixpath
import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Callable, Iterable

import numpy as np

from wastenet.data.images import IMAGE_EXTENSIONS, ImageDecodeError, iter_image_files, load_image
from wastenet.errors import ConfigError
from wastenet.files import write_atomic
from wastenet.preprocessing import cache_image

SPLITS = ("train", "val", "test")


@dataclass
class Row:
    path: str  # relative to the dataset root, with forward slashes
    label: str
    split: str = ""


def scan_folder(root: str | Path, min_classes: int = 2) -> tuple[list[Row], list[str]]:
    """Every image below ``ROOT/<class>/`` (any depth) and the sorted class names.

    Training needs two classes; reviewed items or a field set may hold one (``min_classes=1``).
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"dataset folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows = [
        Row(path=f.relative_to(root).as_posix(), label=cls)
        for cls in classes
        for f in iter_image_files(root / cls)
    ]
    classes = [c for c in classes if any(r.label == c for r in rows)]
    if len(classes) < min_classes:
        need = "a class folder" if min_classes == 1 else f"at least {min_classes} class folders"
        raise ConfigError(f"{root} needs {need} with images ({IMAGE_EXTENSIONS})")
    return rows, classes


def read_split_file(path: str | Path, root: str | Path | None = None, *, skip_missing: bool = False) -> list[Row]:
    """Read ``path,label,split`` rows; every mistake is one ``ConfigError`` line, before any pixel.

    Refused: a file that is not UTF-8 text or holds a NUL byte, missing columns, unknown split
    names, no rows, and (with ``root``) a path that escapes ``root`` (absolute, ``..``, or a
    symlink whose target lies outside it: :func:`check_inside`), a file listed twice, in two
    splits or with two labels, a label that is not a class folder of ``root``, and a row naming
    a file that does not exist (the split is a contract; ``skip_missing=True``, the CLI's
    ``--skip-missing``, drops such rows instead). See :func:`check_split_coverage` for the
    checks training adds.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"split file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a spreadsheet's byte-order mark is fine
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"split file {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line})") from None
    if "\0" in text:  # csv would pass it on, and every file call on that path raises ValueError
        raise ConfigError(f"split file {path} holds a NUL byte on line {text[: text.index(chr(0))].count(chr(10)) + 1}"
                          " (not a text file)")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames or not {"path", "label", "split"} <= set(reader.fieldnames):
        raise ConfigError(f"split file {path} must have columns path,label,split")
    rows, lines = [], []
    for r in reader:
        rows.append(Row((r["path"] or "").strip(), (r["label"] or "").strip(), (r["split"] or "").strip()))
        lines.append(reader.line_num)
    bad = [r for r in rows if r.split not in SPLITS]
    if bad:
        raise ConfigError(f"split file {path}: split must be one of {SPLITS}, got {bad[0].split!r} for {bad[0].path}")
    if not rows:
        raise ConfigError(f"split file {path} has no rows")
    seen: dict[str, tuple[Row, int]] = {}
    for row, line in zip(rows, lines):
        where = f"split file {path}, line {line}"
        if not row.path or not row.label:
            raise ConfigError(f"{where}: empty path or label")
        norm = posixpath.normpath(row.path.replace("\\", "/"))
        if posixpath.isabs(norm) or norm == ".." or norm.startswith("../") or PureWindowsPath(row.path).drive:
            raise ConfigError(f"{where}: {row.path!r} is outside the dataset folder (paths are relative to --data)")
        if norm in seen:
            first, first_line = seen[norm]
            if first.label != row.label:
                why = f"has two labels ({first.label!r} on line {first_line}, {row.label!r})"
            elif first.split != row.split:
                why = f"is in two splits ({first.split} on line {first_line}, {row.split}): that leaks it"
            else:
                why = f"is listed twice (line {first_line} too)"
            raise ConfigError(f"{where}: {row.path} {why}")
        seen[norm] = (row, line)
    if root is not None:
        root = Path(root)
        folders = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        foreign = sorted({r.label for r in rows} - folders)
        if foreign:
            raise ConfigError(f"split file {path}: label {foreign[0]!r} is not a class folder of {root} "
                              f"(classes: {', '.join(sorted(folders))})")
        check_inside(root, rows, f"split file {path}")
        missing = [r.path for r in rows if not (root / r.path).is_file()]
        if len(missing) == len(rows):
            raise ConfigError(f"none of the files in {path} exist under {root} (e.g. {missing[0]})")
        if missing and not skip_missing:
            line = lines[[r.path for r in rows].index(missing[0])]
            more = f" ({len(missing) - 1} more rows too)" if len(missing) > 1 else ""
            raise ConfigError(f"split file {path}, line {line}: {missing[0]} does not exist under {root}{more}; "
                              "fix the split or pass --skip-missing to leave such rows out")
        if missing:
            gone = set(missing)
            rows = [r for r in rows if r.path not in gone]
    return rows


def check_inside(root: str | Path, rows: Iterable[Row], source: str) -> None:
    """Refuse a row whose file, links followed, lies outside ``root`` (as a ``../`` path is refused).

    A symlink that stays inside ``root`` is fine; one that leads out would let a split file
    (or a dataset folder) train on, evaluate or calibrate with files the user did not hand over.
    """
    real_root = Path(root).resolve()
    for r in rows:
        target = (real_root / r.path).resolve()
        if target != real_root and real_root not in target.parents:
            raise ConfigError(f"{source}: {r.path!r} is a link to {target}, outside the dataset folder {root}")


def check_split_coverage(rows: list[Row], source: str = "the split") -> None:
    """What training needs of a split: two classes or more, each with a train and a val image.

    >>> check_split_coverage([Row("a.jpg", "glass", "train"), Row("b.jpg", "glass", "val")])
    Traceback (most recent call last):
    wastenet.errors.ConfigError: the split has one class only ('glass'): a classifier needs two or more
    """
    classes = sorted({r.label for r in rows})
    if len(classes) < 2:
        raise ConfigError(f"{source} has one class only ({classes[0]!r}): a classifier needs two or more"
                          if classes else f"{source} has no rows")
    for split in ("train", "val"):
        have = {r.label for r in rows if r.split == split}
        lacking = [c for c in classes if c not in have]
        if lacking:
            n = sum(r.label == lacking[0] for r in rows)
            raise ConfigError(f"{source}: class {lacking[0]!r} has no {split} image ({n} in all)"
                              + (f"; {len(lacking) - 1} more classes lack one too" if len(lacking) > 1 else ""))


def write_split_file(rows: Iterable[Row], path: str | Path) -> Path:
    """``path,label,split`` rows, written atomically (``files.write_atomic``)."""
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(["path", "label", "split"])
    for r in rows:
        w.writerow([r.path, r.label, r.split])
    return write_atomic(path, text.getvalue())


def stratified_split(rows: list[Row], seed: int = 0, fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)) -> list[Row]:
    """Assign train/val/test per class in the given proportions, reproducibly for a seed."""
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must sum to 1, got {fractions}")
    by_class: dict[str, list[Row]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r.path):
        by_class[r.label].append(r)
    out: list[Row] = []
    rng = random.Random(seed)
    for label in sorted(by_class):
        items = by_class[label][:]
        rng.shuffle(items)
        n = len(items)
        # at least one train and one val image per class when there are two (round(0.5) is 0)
        n_train = max(1, int(round(n * fractions[0])))
        n_val = min(n - n_train, max(1, int(round(n * fractions[1]))))
        for i, r in enumerate(items):
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            out.append(Row(r.path, r.label, split))
    return sorted(out, key=lambda r: r.path)


@dataclass
class ImageCache:
    """Decoded images as one uint8 array ``[N, 3, S, S]`` plus labels; bad files listed, not fatal."""

    images: np.ndarray
    labels: np.ndarray
    rows: list[Row]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, split: str) -> "ImageCache":
        idx = [i for i, r in enumerate(self.rows) if r.split == split]
        return ImageCache(self.images[idx], self.labels[idx], [self.rows[i] for i in idx])


def build_cache(
    root: str | Path,
    rows: list[Row],
    classes: list[str],
    size: int | tuple[int, int],
    interpolation: str = "bicubic",
    workers: int = 2,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> ImageCache:
    """Decode every image once (EXIF, alpha, modes handled by ``load_image``) into a cache of
    ``size`` squares, or of exact (height, width) images for the aspect-preserving mode.

    Files that cannot be read are reported in ``skipped`` with the reason and left out.
    """
    root = Path(root)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({r.label for r in rows} - set(index))
    if unknown:
        raise ConfigError(f"labels not among the classes {classes}: {unknown}")

    def decode(row: Row) -> np.ndarray | str:
        try:
            return cache_image(load_image(root / row.path), size, interpolation)
        except ImageDecodeError as exc:
            return exc.reason

    h, w = (size, size) if isinstance(size, int) else size
    images = np.empty((len(rows), 3, h, w), np.uint8)
    keep: list[int] = []
    skipped: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL releases the GIL while decoding
        results: Iterable = pool.map(decode, rows)
        if progress is not None:
            results = progress(results)
        for i, (row, res) in enumerate(zip(rows, results)):
            if isinstance(res, str):
                skipped.append((row.path, res))
                continue
            images[len(keep)] = res.transpose(2, 0, 1)
            keep.append(i)
    images = images[: len(keep)]
    kept_rows = [rows[i] for i in keep]
    labels = np.asarray([index[r.label] for r in kept_rows], np.int64)
    return ImageCache(images=images, labels=labels, rows=kept_rows, skipped=skipped)
