"""The Python API of `wastenet eval` (Evaluator), mirroring the command line."""

from __future__ import annotations

import json

import pytest

from wastenet.errors import ConfigError
from wastenet.evaluation.evaluator import Evaluator


def test_evaluator_writes_the_report_and_says_what_eval_prints(tiny_checkpoint, image_folder, tmp_path):
    logged: list[str] = []
    report = Evaluator.load(tiny_checkpoint, device="cpu").evaluate(
        image_folder, threshold={"recyclable": 0.5}, out=tmp_path / "ev", log=logged.append)
    assert report.split == "all" and any("no split file" in m for m in logged)  # no split.csv beside it
    assert report.metrics["n"] == 36 and report.decision["threshold"]["recyclable"] == 0.5
    assert (tmp_path / "ev" / "report.md").is_file()
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]["n"] == 36
    assert report.summary().splitlines()[0].startswith("all: 36 images")


def test_evaluator_checks_its_options(tiny_checkpoint, image_folder, tmp_path):
    ev = Evaluator.load(tiny_checkpoint, device="cpu")
    for kwargs, message in (({"threshold": 2.0}, "--threshold"), ({"target_contamination": 1.0}, "contamination"),
                            ({"split": "dev"}, "--split")):
        with pytest.raises(ConfigError, match=message):
            ev.evaluate(image_folder, out=tmp_path, **kwargs)
    with pytest.raises(ConfigError, match="dataset folder not found"):
        ev.evaluate(tmp_path / "nowhere")
