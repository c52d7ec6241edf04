"""Datasets: class folders at any depth, split files, stratified seeded splits, the decode cache."""

from collections import Counter
from pathlib import Path

import pytest

from wastenet.data.datasets import Row, build_cache, read_split_file, scan_folder, stratified_split, write_split_file
from wastenet.errors import ConfigError


def test_scan_finds_images_at_any_depth_below_the_class_folder(image_folder):
    rows, classes = scan_folder(image_folder)
    assert classes == ["glass", "metal", "paper"]
    assert len(rows) == 36
    assert any("/real_world/" in r.path for r in rows) and any("/default/" in r.path for r in rows)


def test_missing_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        scan_folder(tmp_path / "nope")


def test_stratified_split_is_50_25_25_per_class_and_reproducible(image_folder):
    rows, _ = scan_folder(image_folder)
    a = stratified_split(rows, seed=3)
    b = stratified_split(rows, seed=3)
    c = stratified_split(rows, seed=4)
    assert [(r.path, r.split) for r in a] == [(r.path, r.split) for r in b]
    assert [(r.path, r.split) for r in a] != [(r.path, r.split) for r in c]
    counts = Counter((r.label, r.split) for r in a)
    for cls in ("glass", "metal", "paper"):
        assert (counts[(cls, "train")], counts[(cls, "val")], counts[(cls, "test")]) == (6, 3, 3)


def test_split_file_round_trip_and_validation(tmp_path, image_folder):
    rows = stratified_split(scan_folder(image_folder)[0], seed=0)
    path = write_split_file(rows, tmp_path / "split.csv")
    again = read_split_file(path, image_folder)
    assert [(r.path, r.label, r.split) for r in again] == [(r.path, r.label, r.split) for r in rows]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,split\na.jpg,glass,training\n")
    with pytest.raises(ConfigError, match="split must be one of"):
        read_split_file(bad)
    with pytest.raises(ConfigError, match="columns"):
        (tmp_path / "cols.csv").write_text("file,class\n")
        read_split_file(tmp_path / "cols.csv")


def test_canonical_trashnet_split_reads(trashnet_root):
    rows = read_split_file(trashnet_root.parent / "trashnet-split.csv", trashnet_root)
    assert Counter(r.split for r in rows) == {"train": 1263, "val": 630, "test": 634}


def test_cache_skips_broken_files_with_a_reason(tmp_path, image_folder):
    rows, classes = scan_folder(image_folder)
    broken = image_folder.parent / "broken"
    (broken / "glass").mkdir(parents=True, exist_ok=True)
    (broken / "glass" / "zero.jpg").write_bytes(b"")
    good = rows[0]
    cache = build_cache(image_folder, [good, Row("../broken/glass/zero.jpg", "glass")], classes, size=40)
    assert cache.images.shape == (1, 3, 40, 40) and cache.images.dtype.name == "uint8"
    assert [p for p, _ in cache.skipped] == ["../broken/glass/zero.jpg"]
    assert cache.skipped[0][1]  # a reason is given


def test_unknown_label_is_a_config_error(image_folder):
    rows, _ = scan_folder(image_folder)
    with pytest.raises(ConfigError, match="not among the classes"):
        build_cache(image_folder, rows[:1], ["paper"], size=32)
