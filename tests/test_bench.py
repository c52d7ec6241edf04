"""`wastenet bench` and its Python call `bench(...)`: one row per (model, recipe, loss), finished runs reused."""

import csv

from wastenet.cli import main

TINY_SETS = ["--set", "weights=none", "--set", "img_size=48", "--set", "batch_size=8", "--set", "head_epochs=1",
             "--set", "head_views=1", "--set", "amp=off"]


def test_bench_writes_the_table_and_reuses_finished_runs(tmp_path, image_folder, capsys):
    out = tmp_path / "bench"
    args = ["bench", "--data", str(image_folder), "--models", "test_resnet", "--recipes", "linear",
            "--latency-runs", "2", "--out", str(out), *TINY_SETS]
    assert main(args) == 0
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert [(r["model"], r["recipe"], r["loss"], r["seeds"]) for r in rows] == [("test_resnet", "linear", "ce", "1")]
    assert float(rows[0]["accuracy"]) >= 0 and float(rows[0]["latency_ms"]) > 0
    assert "| test_resnet | linear | ce | 1 |" in (out / "bench.md").read_text()
    assert "| model | recipe |" in capsys.readouterr().out
    best = out / "test_resnet-linear-ce-s0" / "best.pt"
    stamp = best.stat().st_mtime_ns
    assert main(args) == 0  # the finished run is read back, not trained again
    assert best.stat().st_mtime_ns == stamp

    from wastenet.training.bench import bench  # the same benchmark as a Python call

    again = bench(str(image_folder), out=out, models=["test_resnet"], recipes=["linear"], latency_runs=2,
                  overrides={"weights": "none", "img_size": 48, "batch_size": 8, "head_epochs": 1, "head_views": 1,
                             "amp": "off"})
    assert [(r["model"], r["accuracy"]) for r in again] == [("test_resnet", rows[0]["accuracy"])]
    assert best.stat().st_mtime_ns == stamp


def test_a_bad_set_fails_in_one_line_before_any_run(tmp_path, image_folder, capsys):
    rc = main(["bench", "--data", str(image_folder), "--out", str(tmp_path / "b"), "--set", "epochs"])
    assert rc == 2 and "--set needs KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    rc = main(["bench", "--data", str(image_folder), "--out", str(tmp_path / "b"), "--seeds", "0,x"])
    assert rc == 2 and "--seeds" in capsys.readouterr().err
