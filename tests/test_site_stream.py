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
    cmap = tmp_path / "map.yaml"
    cmap.write_text("classes:\n  glass: glass\n  metal: metal\n  paper: paper\n  food: new:compostable\n")
    out = tmp_path / "result.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "site_stream.py"), "--checkpoint", str(split_model),
                          "--stream", str(stream), "--class-map", str(cmap), "--window", "10", "--review-every", "3",
                          "--audit-rate", "0.5", "--out", str(out), "--plot", str(tmp_path / "p.png")],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    assert LAST_LINE.match(run.stdout.strip().splitlines()[-1]), run.stdout
    r = json.loads(out.read_text())
    assert r["items"] == 30 and [w["n"] for w in r["windows"]] == [10, 10, 10]
    assert r["final"]["n"] == 10 and r["lost_reviewed_labels"] == 0 and r["review_refused"] == []
    assert all(w["server_errors_5xx"] == 0 for w in r["windows"])
    assert (tmp_path / "p.png").stat().st_size > 1000
    # the reviewer labelled what the queue held, new kinds with their bin
    assert r["reviewed"] > 0
    with sqlite3.connect(r["log_db"]) as conn:
        kinds = dict(conn.execute("SELECT reviewed_label, reviewed_bin FROM decisions WHERE reviewed_label = 'food'"))
    assert kinds == {"food": "compostable"}


def test_a_bad_class_map_is_one_line(split_model, tmp_path):
    stream = make_dataset(tmp_path / "s", per_class=2, classes=("glass",))
    cmap = tmp_path / "map.yaml"
    cmap.write_text("classes:\n  glass: banana\n")
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "site_stream.py"), "--checkpoint", str(split_model),
                          "--stream", str(stream), "--class-map", str(cmap), "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode != 0 and "banana" in run.stderr.strip().splitlines()[-1]
    assert "Traceback" not in run.stderr
