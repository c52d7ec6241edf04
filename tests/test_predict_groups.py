"""One item, many photos; errors that cost differently (per-bin thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from wastenet.decision import combine_thresholds, parse_bin_thresholds
from wastenet.errors import ConfigError


def test_bin_thresholds_parse_from_text_or_yaml_and_are_checked(tmp_path):
    assert parse_bin_thresholds("recyclable=0.97, landfill=0.6") == {"recyclable": 0.97, "landfill": 0.6}
    f = tmp_path / "t.yaml"
    f.write_text("recyclable: 0.95\n")
    assert parse_bin_thresholds(str(f), ["recyclable", "landfill"]) == {"recyclable": 0.95}
    for bad in ("recyclable", "recyclable=1.5", "compost=0.5"):
        with pytest.raises(ConfigError):
            parse_bin_thresholds(bad, ["recyclable", "landfill"])
    assert combine_thresholds(0.8, {"recyclable": 0.97}, ["recyclable", "landfill"]) == {"recyclable": 0.97,
                                                                                      "landfill": 0.8}


def test_a_group_is_decided_once_from_the_mean_of_its_photos(tiny_checkpoint, image_folder):
    from wastenet.inference.predictor import Classifier

    clf = Classifier.load(tiny_checkpoint)
    files = sorted(image_folder.rglob("*.jpg"))[:4]
    singles = clf.predict(files, topk=3)
    grouped = clf.predict_groups({"item": files[:3], "other": files[3:]}, topk=3)
    assert [p.path for p in grouped] == ["item", "other"]
    mean = np.mean([[dict(p.topk)[c] for c in clf.classes] for p in singles[:3]], axis=0)
    assert grouped[0].label == clf.classes[int(mean.argmax())]
    assert grouped[0].confidence == pytest.approx(float(mean.max()), abs=1e-6)
    assert grouped[1].label == singles[3].label


def test_a_group_with_no_readable_photo_is_an_error_row(tiny_checkpoint, tmp_path):
    from wastenet.inference.predictor import Classifier

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    p = Classifier.load(tiny_checkpoint).predict_groups({"item": [str(bad)]})[0]
    assert p.decision == "error" and p.error


def test_predict_cli_groups_by_folder_and_applies_bin_thresholds(tiny_checkpoint, image_folder):
    run = lambda *extra: subprocess.run([sys.executable, "-m", "wastenet", "predict", "--checkpoint",
                                          str(tiny_checkpoint), str(image_folder), "--format", "json", *extra],
                                         capture_output=True, text=True)
    r = run("--group-by", "DIR")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    folders = {str(p.parent) for p in image_folder.rglob("*.jpg")}
    assert sorted(d["path"] for d in rows) == sorted(folders)
    strict = json.loads(run("--bin-thresholds", "recyclable=1.0", "--threshold", "0").stdout)
    assert all(d["decision"] == "manual_sort" for d in strict if d["bin"] == "recyclable" and d["bin_confidence"] < 1)
    bad = run("--bin-thresholds", "compost=0.5")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
