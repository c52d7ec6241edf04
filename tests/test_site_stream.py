"""benchmarks/site_stream.py keeps its contract (DESIGN "The site loop"): a real server, a reviewer that
labels what the queue shows, windows, a final block and the last printed line; new kinds go in labelled."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_dataset

REPO = Path(__file__).resolve().parents[1]
LAST_LINE = re.compile(r"^last third: coverage (\d\.\d{3}|n/a); recycling-bin contamination (\d\.\d{3}|n/a); "
                       r"class accuracy of auto-sorted (\d\.\d{3}|n/a)$")


@pytest.fixture(scope="module")
def split_model(tiny_checkpoint, tmp_path_factory):
    from wastenet import checkpoint

    ckpt = checkpoint.load(tiny_checkpoint)
    ckpt["taxonomy"] = {"name": "split", "bins": {"recyclable": ["glass"], "compostable": ["paper"],
                                                  "landfill": ["metal"]}}
    return checkpoint.save(ckpt, tmp_path_factory.mktemp("stream-model") / "best.pt")


def test_the_stream_contract_end_to_end(split_model, tmp_path):
    stream = make_dataset(tmp_path / "stream", per_class=8, classes=("glass", "metal", "paper"))
    make_dataset(tmp_path / "more", per_class=6, classes=("paper",))
    (tmp_path / "more" / "paper").rename(stream / "food")  # a kind the model has no class for
    make_dataset(tmp_path / "floor", per_class=4, classes=("glass",))
    (tmp_path / "floor" / "glass").rename(stream / "empty")  # photos of no item
    cmap = tmp_path / "map.yaml"
    cmap.write_text("classes:\n  glass: glass\n  metal: metal\n  paper: paper\n  food: new:compostable\n"
                    "  empty: not_an_item\n")
    out = tmp_path / "result.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "site_stream.py"), "--checkpoint", str(split_model),
                          "--stream", str(stream), "--class-map", str(cmap), "--window", "10", "--review-every", "3",
                          "--audit-rate", "0.5", "--out", str(out), "--plot", str(tmp_path / "p.png")],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    assert LAST_LINE.match(run.stdout.strip().splitlines()[-1]), run.stdout
    r = json.loads(out.read_text())
    # windows of 10 items (30: glass, metal, paper, food); the 4 empty floors join the windows they fall in
    assert r["items"] == 34 and sum(w["n"] for w in r["windows"]) == 34
    assert [w["n"] - w["empty_n"] for w in r["windows"]] == [10, 10, 10]
    assert [(w["item_start"], w["item_end"]) for w in r["windows"]] == [(0, 10), (10, 20), (20, 30)]
    assert r["final"]["n"] == 11 and r["lost_reviewed_labels"] == 0 and r["review_refused"] == []
    assert sum(w["empty_n"] for w in r["windows"]) == 4  # counted apart from the items
    assert r["failed_adaptations"] == []  # (a run that exits non-zero is listed there and named on stderr)
    assert all(w["server_errors_5xx"] == 0 for w in r["windows"])
    assert (tmp_path / "p.png").stat().st_size > 1000
    # the reviewer labelled what the queue held, new kinds with their bin
    assert r["reviewed"] > 0
    with sqlite3.connect(r["log_db"]) as conn:
        kinds = dict(conn.execute("SELECT reviewed_label, reviewed_bin FROM decisions "
                                  "WHERE reviewed_label IN ('food', 'not_an_item')"))
    assert kinds.get("food") == "compostable"
    assert "not_an_item" in kinds and kinds["not_an_item"] is None  # a photo of no item goes to no bin


def test_a_bad_class_map_is_one_line(split_model, tmp_path):
    stream = make_dataset(tmp_path / "s", per_class=2, classes=("glass",))
    cmap = tmp_path / "map.yaml"
    cmap.write_text("classes:\n  glass: banana\n")
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "site_stream.py"), "--checkpoint", str(split_model),
                          "--stream", str(stream), "--class-map", str(cmap), "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 2 and "banana" in run.stderr.strip().splitlines()[-1]
    assert "Traceback" not in run.stderr


def _site_stream():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import site_stream

    return site_stream


@pytest.mark.parametrize("order, says", [
    (None, "--order file not found"),
    ("name\nglass/default/glass_0.jpg\n", "needs a 'path' column"),
    ("path\nglass/default/nope.jpg\n", "no photo in a class folder"),
    ("path\nlabels.csv\n", "no photo in a class folder"),
])
def test_a_bad_order_file_is_one_line_before_any_server_starts(tmp_path, order, says):
    stream = make_dataset(tmp_path / "s", per_class=2, classes=("glass",))
    (stream / "labels.csv").write_text("path\n")
    cmap = tmp_path / "map.yaml"
    cmap.write_text("classes:\n  glass: glass\n")
    csv_path = tmp_path / "order.csv"
    if order is not None:
        csv_path.write_text(order)
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "site_stream.py"), "--checkpoint", "no-model.pt",
                          "--stream", str(stream), "--class-map", str(cmap), "--order", str(csv_path),
                          "--out", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 2 and says in run.stderr.strip().splitlines()[-1], run.stderr
    assert "Traceback" not in run.stderr and "wastenet serve" not in run.stderr  # refused before a server started


def test_a_missing_or_broken_class_map_is_one_line(tmp_path):
    stream = make_dataset(tmp_path / "s", per_class=2, classes=("glass",))
    for text, says in ((None, "class map not found"), ("classes: [unclosed\n", "cannot parse class map")):
        cmap = tmp_path / "map.yaml"
        if text is not None:
            cmap.write_text(text)
        run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "site_stream.py"), "--checkpoint", "x.pt",
                              "--stream", str(stream), "--class-map", str(cmap), "--out", str(tmp_path / "r.json")],
                             capture_output=True, text=True, timeout=120, cwd=REPO)
        assert run.returncode == 2 and says in run.stderr.strip().splitlines()[-1], run.stderr
        assert "Traceback" not in run.stderr


def test_the_default_order_reads_photos_as_every_command_does(tmp_path):
    ss = _site_stream()
    stream = make_dataset(tmp_path / "s", per_class=3, classes=("glass", "metal"))
    (stream / "glass" / "._glass_0.jpg").write_bytes(b"AppleDouble")   # a macOS copy's shadow file
    (stream / "glass" / "notes.txt").write_text("not a photo")
    (stream / "README.md").write_text("beside the class folders")
    (tmp_path / "more").mkdir()
    make_dataset(tmp_path / "more", per_class=2, classes=("paper",))
    (stream / "paper").symlink_to(tmp_path / "more" / "paper")            # a class folder assembled by a link
    paths = ss.stream_paths(stream, None, seed=0)
    assert len(paths) == 8 and sum(p.startswith("paper/") for p in paths) == 2
    assert not any("._" in p or p.endswith((".txt", ".md")) for p in paths)
    assert paths == ss.stream_paths(stream, None, seed=0) != sorted(paths)  # seeded shuffle


def test_a_window_counts_items_and_an_empty_floor_joins_the_item_before_it():
    ss = _site_stream()
    item, empty = {"truth": {"label": "glass"}}, {"truth": {"label": ss.NOT_AN_ITEM}}
    rows = [empty, item, empty, item, item, empty, item, item]
    assert ss.window_spans(rows, 2) == [(0, 4, 0, 2), (4, 7, 2, 4), (7, 8, 4, 5)]
    assert ss.window_spans([item] * 5, 2) == [(0, 2, 0, 2), (2, 4, 2, 4), (4, 5, 4, 5)]  # no empties: as before
    assert ss.window_spans([empty, empty], 2) == [(0, 2, 0, 0)] and ss.window_spans([], 2) == []


def test_no_answer_is_no_5xx_and_the_recycling_bin_is_named():
    ss = _site_stream()
    truth = {"class": "glass", "bin": "recyclable", "label": "glass", "review_bin": None}
    rows = [{"status": 200, "kind": "auto", "decision": "recyclable", "label": "glass", "reason": None, "ms": 50.0,
             "truth": truth},
            {"status": 503, "kind": None, "decision": None, "label": None, "reason": None, "ms": 5.0, "truth": truth},
            {"status": None, "kind": None, "decision": None, "label": None, "reason": None, "ms": 9000.0,
             "truth": truth}]
    f = ss.figures(rows, ["recyclable", "landfill"])
    assert (f["server_errors_5xx"], f["other_errors"]) == (1, 1)
    assert f["p99_ms"] == 50.0  # a request nobody answered has no latency
    assert ss.recycling_bin(["landfill", "recycling"]) == ("recycling", None)
    name, note = ss.recycling_bin(["recyclable", "landfill"])
    assert name == "recyclable" and "no bin called 'recycling'" in note
    name, note = ss.recycling_bin(["paper", "rest"])
    assert name == "paper" and "no recycling bin" in note


def test_photos_of_no_item_are_counted_apart_and_contaminate_the_bin_they_are_sorted_into():
    ss = _site_stream()
    item = {"class": "glass", "bin": "recyclable", "label": "glass", "review_bin": None}
    empty = {"class": None, "bin": None, "label": "not_an_item", "review_bin": None}

    def row(truth, kind, decision):
        return {"status": 200, "kind": kind, "decision": decision, "label": "glass", "reason": None, "ms": 50.0,
                "truth": truth}

    f = ss.figures([row(item, "auto", "recyclable"), row(item, "manual_sort", "manual_sort"),
                    row(empty, "manual_sort", "manual_sort"), row(empty, "auto", "recyclable")], ["recyclable"])
    assert f["coverage"] == 0.5 and f["manual_sort_rate"] == 0.5   # of the two items
    assert (f["empty_n"], f["empty_sorted"], f["empty_refused_rate"]) == (2, 1, 0.5)
    assert f["contamination"]["recyclable"] == {"value": 0.5, "n": 2, "k": 1}  # the sorted empty photo
    assert f["auto_class_accuracy"] == 1.0                                     # of items with a class


def test_a_folder_the_class_map_does_not_name_is_one_line_before_any_server_starts(tmp_path):
    stream = make_dataset(tmp_path / "s", per_class=2, classes=("glass", "metal"))
    cmap = tmp_path / "map.yaml"
    cmap.write_text("classes:\n  glass: glass\n")
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "site_stream.py"), "--checkpoint", "no-model.pt",
                          "--stream", str(stream), "--class-map", str(cmap), "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].endswith("these folders are: metal"), run.stderr
    assert "Traceback" not in run.stderr and "wastenet serve" not in run.stderr


def test_a_server_that_refuses_to_start_is_one_line(tmp_path):
    stream = make_dataset(tmp_path / "s", per_class=2, classes=("glass",))
    cmap = tmp_path / "map.yaml"
    cmap.write_text("classes:\n  glass: glass\n")
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "site_stream.py"),
                          "--checkpoint", str(tmp_path / "missing.pt"), "--stream", str(stream),
                          "--class-map", str(cmap), "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 2 and last.startswith("wastenet serve did not start:") and "missing.pt" in last, run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "r.json").exists()
