"""A reviewer may name a kind of item the model has no class for, with its bin (issue 23 item 4;
DESIGN "The site loop": ``{"label": "food_waste", "bin": "compostable"}``)."""

from __future__ import annotations

import io

import pytest

from conftest import make_image
from wastenet.serve.review_label import LabelRule, normalise_kind

RULE = LabelRule(classes=["glass", "metal", "paper"], class_bins={"glass": "recyclable", "metal": "recyclable",
                                                                   "paper": "recyclable"},
                 bins=["recyclable", "compostable", "landfill"], new_kinds={"coffee_cup": "landfill"})


@pytest.mark.parametrize("label, bin, want", [
    ("glass", None, ("glass", "recyclable")),                 # a class: its own bin
    ("glass", "recyclable", ("glass", "recyclable")),
    ("Food waste", "compostable", ("food_waste", "compostable")),  # a new kind, normalised
    ("coffee_cup", None, ("coffee_cup", "landfill")),         # a known new kind keeps its bin
    ("Coffee cup", "landfill", ("coffee_cup", "landfill")),
    (" Glass ", None, ("glass", "recyclable")),               # a class, however it is typed
    ("Not an item", None, ("not_an_item", None)),             # the photo shows no item: no bin
])
def test_what_a_reviewer_may_say(label, bin, want):
    assert RULE.check(label, bin) == want


@pytest.mark.parametrize("label, bin, why", [
    ("glass", "landfill", "goes to 'recyclable'"),            # a class's bin is the taxonomy's
    ("banana", None, "give a new kind its bin"),
    ("food", "garden", "a new bin needs"),                     # an unknown bin, without --allow-new-bins
    ("coffee_cup", "compostable", "one kind has one bin"),
    ("../x", "landfill", "letters, digits"),                  # a kind becomes a folder and a class name
    ("", None, "label must be one of"),
    (3, None, "label must be one of"),
    ("not_an_item", "landfill", "goes to no bin"),
])
def test_what_a_reviewer_may_not_say(label, bin, why):
    with pytest.raises(ValueError, match=why):
        RULE.check(label, bin)


def test_a_new_bin_only_when_allowed():
    rule = LabelRule(RULE.classes, RULE.class_bins, RULE.bins, allow_new_bins=True)
    assert rule.check("batteries", "Hazardous") == ("batteries", "hazardous")
    assert normalise_kind("  E-waste  ") == "e-waste"


# ------------------------------------------------------------------ through the service

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from wastenet.serve.app import create_app  # noqa: E402


def test_new_kinds_are_labelled_with_their_bin_and_counted_by_the_service(unsure_classifier, tmp_path):
    app = create_app(unsure_classifier, log_path=tmp_path / "d.sqlite", threshold=1.0, new_class_min=3)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        auth = {"Authorization": f"Bearer {c.app.state.review_token}"}
        ids = []
        for i in range(3):
            buf = io.BytesIO()
            make_image("paper", i).save(buf, "JPEG")
            ids.append(c.post("/api/predict", files={"file": (f"{i}.jpg", buf.getvalue(), "image/jpeg")}).json()["id"])
        r = c.post(f"/api/review/{ids[0]}", json={"label": "food waste", "bin": "compostable"}, headers=auth)
        assert r.status_code == 200 and (r.json()["reviewed_label"], r.json()["reviewed_bin"]) == ("food_waste",
                                                                                                    "compostable")
        assert c.post(f"/api/review/{ids[1]}", json={"label": "food_waste"}, headers=auth).json()["reviewed_bin"] == \
            "compostable"  # its bin is remembered
        bad = c.post(f"/api/review/{ids[2]}", json={"label": "food_waste", "bin": "landfill"}, headers=auth)
        assert bad.status_code == 400 and "one kind has one bin" in bad.json()["error"]
        assert c.post(f"/api/review/{ids[2]}", json={"label": "shoe", "bin": "garden"}, headers=auth).status_code == 400
        empty = c.post(f"/api/review/{ids[2]}", json={"label": "Not an item"}, headers=auth)
        assert empty.status_code == 200 and (empty.json()["reviewed_label"], empty.json()["reviewed_bin"]) == (
            "not_an_item", None)
        queue = c.get("/api/review", headers=auth).json()
        assert queue["new_kinds"] == [{"label": "food_waste", "bin": "compostable", "reviewed": 2}]
        assert queue["new_class_min"] == 3 and queue["bins"] == ["recyclable", "compostable", "landfill"]


def test_review_set_takes_a_new_kind_with_its_bin(tmp_path, capsys):
    from wastenet.cli import main
    from wastenet.serve.decision_log import DecisionLog

    log = DecisionLog(tmp_path / "d.sqlite")
    log.set_classes(["glass"], {"glass": "recyclable"}, ["recyclable", "landfill"])
    row = log.record({"label": "glass", "confidence": 0.4, "bin": "recyclable", "decision": "manual_sort"},
                     None, "x.jpg", 0.9, "m.pt")
    db = str(log.path)
    assert main(["review", "--log-db", db, "--set", str(row), "Coffee cup"]) == 2
    assert "give a new kind its bin (recyclable, landfill)" in capsys.readouterr().err
    assert main(["review", "--log-db", db, "--set", str(row), "Coffee cup", "--bin", "landfill"]) == 0
    assert (log.get(row)["reviewed_label"], log.get(row)["reviewed_bin"]) == ("coffee_cup", "landfill")
