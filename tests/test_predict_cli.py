"""`wastenet predict`: inputs, output formats, exit status and error messages."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from wastenet.cli import main
from wastenet.data.images import iter_image_files

HEADER = ["path", "label", "confidence", "bin", "decision", "error", "bin_confidence", "reason", "ood_score"]


def predict(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["predict", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture()
def broken(tmp_path) -> Path:
    p = tmp_path / "broken.jpg"
    p.write_bytes(b"this is not a jpeg")
    return p


def test_csv_keeps_input_order_and_reports_a_broken_file(capsys, tiny_checkpoint, image_folder, broken):
    a = image_folder / "metal" / "default" / "metal_0.jpg"
    b = image_folder / "glass" / "real_world" / "glass_1.jpg"
    code, out, err = predict(capsys, "--checkpoint", tiny_checkpoint, "--format", "csv", a, broken, b)
    assert code == 1
    assert out.splitlines()[0] == ",".join(HEADER)
    got = rows(out)
    assert [r["path"] for r in got] == [str(a), str(broken), str(b)]
    bad = got[1]
    assert bad["decision"] == "error" and bad["error"]
    assert bad["label"] == bad["confidence"] == bad["bin"] == bad["bin_confidence"] == ""
    for r in (got[0], got[2]):
        assert r["error"] == "" and r["label"] in {"glass", "metal", "paper"}
        assert 0.0 <= float(r["confidence"]) <= 1.0 and r["bin"] == "recyclable"
    assert "1 of 3 inputs failed" in err and "Traceback" not in err


def test_all_good_inputs_exit_zero_and_json_has_topk_and_bin_probs(capsys, tiny_checkpoint, image_folder):
    files = iter_image_files(image_folder / "paper")[:2]
    code, out, _ = predict(capsys, "--checkpoint", tiny_checkpoint, "--format", "json", "--topk", "2", *files)
    assert code == 0
    data = json.loads(out)
    assert [d["path"] for d in data] == [str(f) for f in files]
    for d in data:
        assert list(d)[: len(HEADER)] == HEADER
        assert len(d["topk"]) == 2 and d["topk"][0]["label"] == d["label"]
        assert sum(d["bin_probs"].values()) == pytest.approx(1.0, abs=1e-5)
        assert d["error"] is None


def test_folder_is_expanded_recursively_and_sorted(capsys, tiny_checkpoint, image_folder):
    code, out, _ = predict(capsys, "--checkpoint", tiny_checkpoint, "--format", "csv", image_folder / "glass")
    assert code == 0
    paths = [r["path"] for r in rows(out)]
    assert len(paths) == 12  # both default/ and real_world/
    assert paths == [str(p) for p in iter_image_files(image_folder / "glass")]


def test_glob_is_expanded_and_an_unmatched_pattern_is_an_error_row(capsys, tiny_checkpoint, image_folder):
    pattern = str(image_folder / "**" / "paper_1*.jpg")
    nothing = str(image_folder / "*.heic")
    code, out, _ = predict(capsys, "--checkpoint", tiny_checkpoint, "--format", "csv", nothing, pattern)
    got = rows(out)
    assert code == 1
    assert got[0]["path"] == nothing and got[0]["decision"] == "error"
    assert sorted(Path(r["path"]).name for r in got[1:]) == ["paper_1.jpg", "paper_10.jpg", "paper_11.jpg"]
    assert all(r["error"] == "" for r in got[1:])


def test_missing_checkpoint_exits_2_with_one_line(capsys, image_folder, tmp_path):
    code, out, err = predict(capsys, "--checkpoint", tmp_path / "nope.pt", image_folder)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "nope.pt" in err


@pytest.mark.parametrize("bins", [{"recyclable": ["glass", "metal"]},                    # paper unmapped
                                  {"recyclable": ["glass", "metal", "paper"], "landfill": ["paper"]}])
def test_bad_taxonomy_exits_2_before_any_work(capsys, tiny_checkpoint, image_folder, tmp_path, bins):
    tax = tmp_path / "bad.yaml"
    tax.write_text(json.dumps({"bins": bins}))  # JSON is YAML
    code, out, err = predict(capsys, "--checkpoint", tiny_checkpoint, "--taxonomy", tax, image_folder)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("wastenet predict: error:")


def test_builtin_taxonomy_that_does_not_fit_the_classes_exits_2(capsys, tiny_checkpoint, image_folder):
    code, out, err = predict(capsys, "--checkpoint", tiny_checkpoint, "--taxonomy", "household", image_folder)
    assert code == 2 and out == "" and "household" in err


def test_taxonomy_override_changes_the_bins(capsys, tiny_checkpoint, image_folder, tmp_path):
    tax = tmp_path / "all_landfill.yaml"
    tax.write_text("bins:\n  recyclable: []\n  landfill: [glass, metal, paper]\n")
    code, out, _ = predict(capsys, "--checkpoint", tiny_checkpoint, "--taxonomy", tax, "--format", "csv",
                           image_folder / "metal")
    assert code == 0
    assert {r["bin"] for r in rows(out)} == {"landfill"}


@pytest.mark.parametrize("value", ["1.5", "-0.2"])
def test_threshold_outside_unit_interval_exits_2(capsys, tiny_checkpoint, image_folder, value):
    code, out, err = predict(capsys, "--checkpoint", tiny_checkpoint, "--threshold", value, image_folder)
    assert code == 2 and out == "" and "threshold" in err


def test_threshold_option_sets_the_decision(capsys, tiny_checkpoint, image_folder, tmp_path):
    tax = tmp_path / "split.yaml"
    tax.write_text("bins:\n  recyclable: [glass, metal]\n  compostable: [paper]\n")
    base = ["--checkpoint", tiny_checkpoint, "--taxonomy", tax, "--format", "csv", image_folder / "glass"]
    _, out0, _ = predict(capsys, *base, "--threshold", "0")
    _, out1, _ = predict(capsys, *base, "--threshold", "1")
    assert all(r["decision"] == r["bin"] for r in rows(out0))
    assert all(r["decision"] == "manual_sort" for r in rows(out1))


def test_out_writes_the_file_and_nothing_on_stdout(capsys, tiny_checkpoint, image_folder, tmp_path):
    target = tmp_path / "sub" / "preds.csv"
    files = iter_image_files(image_folder / "metal")[:3]
    code, out, err = predict(capsys, "--checkpoint", tiny_checkpoint, "--format", "csv", "--out", target, *files)
    assert code == 0 and out == "" and str(target) in err
    _, direct, _ = predict(capsys, "--checkpoint", tiny_checkpoint, "--format", "csv", *files)
    assert target.read_text() == direct
    assert [p.name for p in target.parent.iterdir()] == ["preds.csv"]  # no temp file left


def test_table_is_aligned_with_one_line_per_input(capsys, tiny_checkpoint, image_folder, broken):
    files = iter_image_files(image_folder / "glass")[:2]
    code, out, _ = predict(capsys, "--checkpoint", tiny_checkpoint, *files, broken)
    lines = out.splitlines()
    assert code == 1 and len(lines) == 4
    assert lines[0].split()[:2] == ["path", "label"]
    col = lines[0].index("decision")
    assert [ln[col:].split()[0] for ln in lines[1:]] == ["recyclable", "recyclable", "error"]


def test_tta_option_runs(capsys, tiny_checkpoint, image_folder):
    f = iter_image_files(image_folder / "glass")[0]
    _, plain, _ = predict(capsys, "--checkpoint", tiny_checkpoint, "--format", "csv", f)
    code, tta, _ = predict(capsys, "--checkpoint", tiny_checkpoint, "--format", "csv", "--tta", f)
    assert code == 0
    assert rows(tta)[0]["confidence"] != rows(plain)[0]["confidence"]


def test_python_dash_m_wastenet_predict(tiny_checkpoint, image_folder):
    f = iter_image_files(image_folder / "paper")[0]
    proc = subprocess.run([sys.executable, "-m", "wastenet", "predict", "--checkpoint", str(tiny_checkpoint),
                           "--format", "csv", str(f)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    got = rows(proc.stdout)
    assert len(got) == 1 and got[0]["path"] == str(f) and got[0]["decision"] == "recyclable"
