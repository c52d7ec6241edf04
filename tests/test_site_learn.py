"""The bin learns from its reviewed items: versions beside the log, a held-out comparison, the promotion
rule, new kinds grown into the head, and `wastenet adapt --from-log` (issue 23 items 2-4)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from conftest import make_image
from wastenet.serve.decision_log import DecisionLog
from wastenet.site.learn import learn_from_log, promotion, split_newest
from wastenet.site.versions import VersionStore

CONT = {"recyclable": {"value": 0.1}}


@pytest.mark.parametrize("current, candidate, promoted", [
    ({"class_accuracy": 0.6, "contamination": CONT}, {"class_accuracy": 0.8, "contamination": CONT}, True),
    ({"class_accuracy": 0.6, "contamination": CONT}, {"class_accuracy": 0.6, "contamination": CONT}, False),  # a tie
    ({"class_accuracy": 0.6, "contamination": CONT}, {"class_accuracy": 0.5, "contamination": {}}, False),
    ({"class_accuracy": 0.6, "contamination": CONT},  # better accuracy, but one bin more contaminated
     {"class_accuracy": 0.9, "contamination": {"recyclable": {"value": 0.2}}}, False),
    ({"class_accuracy": 0.6, "contamination": CONT},  # same accuracy, a cleaner bin
     {"class_accuracy": 0.6, "contamination": {"recyclable": {"value": 0.0}}}, True),
    ({"class_accuracy": 1.0, "contamination": {}, "auto_share": 0.1, "auto_class_accuracy": 1.0},  # a tie, but
     {"class_accuracy": 1.0, "contamination": CONT | {"recyclable": {"value": 0.0}},  # fewer manual sorts,
      "auto_share": 0.6, "auto_class_accuracy": 1.0}, True),                          # all of them right
    ({"class_accuracy": 1.0, "contamination": {}, "auto_share": 0.0, "auto_class_accuracy": None},
     {"class_accuracy": 1.0, "contamination": {}, "auto_share": 0.6, "auto_class_accuracy": 0.9}, False),  # a wrong one
    ({"class_accuracy": 0.9, "contamination": {}, "auto_share": 0.5, "auto_class_accuracy": 0.9},
     {"class_accuracy": 0.9, "contamination": {}, "auto_share": 0.4, "auto_class_accuracy": 1.0}, False),  # sorts less
])
def test_a_candidate_must_be_no_worse_anywhere_and_better_somewhere(current, candidate, promoted):
    got, why = promotion({"n": 10, **current}, {"n": 10, **candidate})
    assert got is promoted and why


FLOORS_V10 = ({"class_accuracy": 1.0, "contamination": {"recyclable": {"value": 0.0}}, "auto_share": 0.28,
               "auto_class_accuracy": 1.0},  # the floors stream's version 10 against the model it would replace:
              {"class_accuracy": 0.98, "contamination": {"recyclable": {"value": 0.0}}, "auto_share": 0.30,
               "auto_class_accuracy": 1.0})  # one refused item's top-1 label wrong, more sorted, all right


@pytest.mark.parametrize("current, candidate, promoted", [
    (*FLOORS_V10, True),
    ({**FLOORS_V10[0], "auto_share": 0.30}, FLOORS_V10[1], False),  # sorts no more: a tie
    (FLOORS_V10[0], {**FLOORS_V10[1], "auto_class_accuracy": 0.95}, False),  # a wrong one among those it sorts
    (FLOORS_V10[0], {**FLOORS_V10[1], "contamination": {"recyclable": {"value": 0.05}}}, False),
    ({**FLOORS_V10[0], "auto_class_accuracy": 0.9}, {**FLOORS_V10[1], "auto_share": 0.2}, True),  # fewer, all right
    ({**FLOORS_V10[0], "auto_share": 0.0, "auto_class_accuracy": None}, {**FLOORS_V10[1], "auto_share": 0.0,
                                                                         "auto_class_accuracy": None}, False),
])
def test_compared_on_what_it_sorts_a_refused_items_label_changes_nothing(current, candidate, promoted):
    """``--compare sorted``: the class accuracy of the items each model sorts itself replaces class accuracy;
    the default (``class``) keeps the first case out (0.98 < 1.0)."""
    got, why = promotion({"n": 50, **current}, {"n": 50, **candidate}, compare="sorted")
    assert got is promoted and why
    assert promotion({"n": 50, **FLOORS_V10[0]}, {"n": 50, **FLOORS_V10[1]})[0] is False


def test_the_newest_fifth_is_held_out():
    items = [{"id": i, "reviewed_at": f"2026-12-03T10:{i:02d}"} for i in range(10)]
    train, held = split_newest(items)
    assert [it["id"] for it in held] == [8, 9] and [it["id"] for it in train] == list(range(8))
    assert split_newest(items[:2])[1] == [items[1]]  # two items: one is held out


def test_a_cap_holds_out_at_most_that_many_of_the_newest():
    """``--holdout-max N``: an old log holds back N of its newest items, not a fifth of all it ever reviewed."""
    items = [{"id": i, "reviewed_at": f"2026-12-03T10:{i:02d}"} for i in range(50)]
    train, held = split_newest(items, max_held=3)
    assert [it["id"] for it in held] == [47, 48, 49] and len(train) == 47
    assert len(split_newest(items[:10], max_held=3)[1]) == 2  # below the cap, the share decides


def test_versions_are_files_and_the_active_one_survives_a_reopen(tmp_path):
    base = tmp_path / "best.pt"
    base.write_bytes(b"base weights")
    cand = tmp_path / "cand.pt"
    cand.write_bytes(b"candidate weights")
    store = VersionStore(tmp_path / "models", base=base)
    assert store.active_id() == 0 and store.file_of(0) == base.resolve()
    vid = store.add(cand, parent=0, inputs={"trained_on": [1]}, scores={}, promoted=False, reason="a tie")
    assert vid == 1 and store.active_id() == 0  # kept, with its reason, not active
    assert store.add(cand, parent=0, inputs={}, scores={}, promoted=True, reason="better") == 2
    again = VersionStore(tmp_path / "models")
    assert again.active_id() == 2 and (tmp_path / "models" / "0002.pt").read_bytes() == b"candidate weights"
    listed = again.list()
    assert [(v["id"], v["active"], v["promoted"]) for v in listed] == [(0, False, True), (1, False, False),
                                                                        (2, True, True)]
    assert set(listed[1]) >= {"id", "file", "created_at", "active", "parent", "inputs", "scores", "promoted", "reason"}
    again.activate(0)  # a rollback
    assert VersionStore(tmp_path / "models").active_id() == 0
    with pytest.raises(KeyError):
        again.activate(7)


def _reviewed_log(path, per_class=8, new_kind=6, empty=0):
    log = DecisionLog(path)
    log.set_classes(["glass", "metal", "paper"], {"glass": "recyclable", "metal": "recyclable", "paper": "recyclable"},
                    ["recyclable", "compostable", "landfill"])
    n = 0
    labels = ([c for c in ("glass", "metal", "paper") for _ in range(per_class)] + ["food_waste"] * new_kind
              + ["not_an_item"] * empty)
    labels = [labels[(7 * i) % len(labels)] for i in range(len(labels))]  # interleaved, as a site's come
    for i, label in enumerate(labels):
        buf = io.BytesIO()
        photo = make_image({"food_waste": "paper", "not_an_item": "glass"}.get(label, label), 500 + i)
        (photo.convert("L").convert("RGB") if label == "not_an_item" else photo).save(buf, "JPEG")
        row = log.record({"label": "glass", "confidence": 0.4, "bin": "recyclable", "decision": "manual_sort"},
                         buf.getvalue(), f"{i}.jpg", 0.9, "m.pt")
        log.review(row, label, bin="compostable" if label == "food_waste" else None)
        n += 1
    log.close()
    return path


def test_a_photo_of_no_item_is_scored_right_when_refused_and_contaminates_the_bin_it_is_sorted_into():
    from types import SimpleNamespace

    from wastenet.inference.results import Prediction
    from wastenet.ood import NOT_AN_ITEM
    from wastenet.site.learn import score

    decided = [("metal", "recyclable"), ("glass", "manual_sort"), ("metal", "recyclable"), ("glass", "recyclable")]
    clf = SimpleNamespace(threshold=0.5, taxonomy=SimpleNamespace(bin_of=lambda c: "recyclable"),
                          predict=lambda images, threshold: [Prediction("p.jpg", c, decision=d) for c, d in decided])
    items = [{"label": "metal", "bin": None}, {"label": NOT_AN_ITEM, "bin": None},
             {"label": NOT_AN_ITEM, "bin": None}, {"label": "glass", "bin": None}]
    got = score(clf, ["photo"] * 4, items)
    assert got["class_accuracy"] == 3 / 4    # the refused empty photo is right, the sorted one wrong
    assert got["auto_share"] == 3 / 4 and got["auto_class_accuracy"] == 2 / 3
    assert got["contamination"]["recyclable"]["k"] == 1 and got["contamination"]["recyclable"]["n"] == 3


def test_a_candidate_from_the_log_is_scored_on_held_out_items_and_grows_new_kinds(tiny_checkpoint, tmp_path):
    from wastenet import checkpoint

    db = _reviewed_log(tmp_path / "decisions.sqlite")
    result = learn_from_log(db, tiny_checkpoint, tmp_path / "cand", new_class_min=3, versions=tmp_path / "models")
    trained, held = set(result["inputs"]["trained_on"]), set(result["inputs"]["held_out"])
    assert len(held) == 6 and not trained & held  # the newest 6 of 30, never trained on
    assert max(trained) < min(held)
    assert result["inputs"]["new_classes"] == {"food_waste": "compostable"}
    grown = checkpoint.load(result["candidate"])
    assert grown["classes"] == ["glass", "metal", "paper", "food_waste"]
    assert "food_waste" in grown["taxonomy"]["bins"]["compostable"]
    for side in ("current", "candidate"):
        assert result["scores"][side]["n"] == 6
    version = VersionStore(tmp_path / "models").get(result["version"])
    assert version["promoted"] == result["promoted"] and version["reason"] == result["reason"]
    assert 0 < version["timing"]["adapt_seconds"] <= version["timing"]["seconds"]  # how long it took to make

    # a version is a checkpoint like any other: its ONNX export carries the new class and its bin
    pytest.importorskip("onnxruntime")
    from wastenet.export.onnx import export_onnx
    from wastenet.inference.predictor import Classifier

    onnx_model = Classifier.load(export_onnx(version["file"], tmp_path / "v.onnx").path)
    assert onnx_model.classes[-1] == "food_waste" and onnx_model.taxonomy.bin_of("food_waste") == "compostable"


def test_a_log_of_only_a_new_kind_below_its_minimum_says_that_it_waits_for_more(tiny_checkpoint, tmp_path):
    from wastenet.errors import ConfigError

    db = _reviewed_log(tmp_path / "decisions.sqlite", per_class=0, new_kind=10)
    with pytest.raises(ConfigError, match=r"new kinds below --new-class-min 10: food_waste 8\)"):
        learn_from_log(db, tiny_checkpoint, tmp_path / "cand", versions=tmp_path / "models")


def test_photos_of_no_item_are_learned_from_but_never_become_a_class(tiny_checkpoint, tmp_path):
    from wastenet import checkpoint

    db = _reviewed_log(tmp_path / "decisions.sqlite", new_kind=0, empty=6)
    result = learn_from_log(db, tiny_checkpoint, tmp_path / "cand", new_class_min=3, versions=tmp_path / "models")
    assert result["inputs"]["new_classes"] == {}
    assert checkpoint.load(result["candidate"])["classes"] == ["glass", "metal", "paper"]
    assert result["scores"]["candidate"]["n"] == 6  # the newest fifth of 30, photos of no item among them


def test_adapt_from_log_on_the_command_line(tiny_checkpoint, tmp_path):
    db = _reviewed_log(tmp_path / "decisions.sqlite", new_kind=0)
    out = subprocess.run([sys.executable, "-m", "wastenet", "adapt", "--checkpoint", str(tiny_checkpoint),
                          "--from-log", str(db), "--out", str(tmp_path / "site"), "--skip-search-threshold",
                          "--epochs", "3"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "held-out class accuracy" in out.stdout
    assert json.loads((tmp_path / "site" / "adapt.json").read_text())["scores"]["candidate"]["n"] == 4
    both = subprocess.run([sys.executable, "-m", "wastenet", "adapt", "--checkpoint", str(tiny_checkpoint),
                           "--from-log", str(db), "--data", str(tmp_path), "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=600)
    assert both.returncode == 2 and "not allowed with" in both.stderr


def _swapped_log(path, per_class=20):
    """A reviewer who swaps two classes every time: glass photos labelled metal, metal photos glass."""
    log = DecisionLog(path)
    log.set_classes(["glass", "metal", "paper"], {"glass": "recyclable", "metal": "recyclable", "paper": "recyclable"},
                    ["recyclable", "compostable", "landfill"])
    swap = {"glass": "metal", "metal": "glass", "paper": "paper"}
    for i in range(3 * per_class):
        photo = ("glass", "metal", "paper")[i % 3]
        buf = io.BytesIO()
        make_image(photo, 900 + i).save(buf, "JPEG")
        row = log.record({"label": photo, "confidence": 0.4, "bin": "recyclable", "decision": "manual_sort"},
                         buf.getvalue(), f"{i}.jpg", 0.9, "m.pt")
        log.review(row, swap[photo])
    log.close()
    return path


def test_a_candidate_that_forgets_the_training_classes_is_not_promoted(tiny_checkpoint, image_folder, tmp_path):
    """The held-out items are the site's (here: a reviewer's systematic mistake, which the candidate learns and
    so wins on them); the rehearsal set's validation rows are what shows forgetting, against version 0."""
    from wastenet.data.datasets import Row, scan_folder, write_split_file
    from wastenet.training.adapt import AdaptConfig, adapt

    rows, _ = scan_folder(image_folder)
    first = {}  # two validation photos per class: the site's swapped items outweigh them in early stopping
    for i, r in enumerate(rows):
        first.setdefault(r.label, []).append(i)
    val = {i for idx in first.values() for i in idx[:2]}
    split = write_split_file([Row(r.path, r.label, "val" if i in val else "train") for i, r in enumerate(rows)],
                             tmp_path / "split.csv")
    # the site's rehearsal rehearses paper only: nothing holds glass and metal against the reviewer's swap
    paper_only = write_split_file([Row(r.path, r.label, "val" if i in val else "train") for i, r in enumerate(rows)
                                   if i in val or r.label == "paper"], tmp_path / "paper-only.csv")
    # the tiny model's random features are small numbers: a large step size lets its head learn them
    fast = AdaptConfig(epochs=40, views=1, lr=0.3, weight_decay=0.0, patience=40)
    base = adapt(tiny_checkpoint, image_folder, tmp_path / "base", mix=image_folder, mix_split=split, cfg=fast,
                 search=False)["checkpoint"]
    db = _swapped_log(tmp_path / "decisions.sqlite")
    kw = dict(mix=str(image_folder), mix_split=str(paper_only), versions=tmp_path / "models", cfg=fast)
    VersionStore(tmp_path / "models", base=base)
    result = learn_from_log(db, base, tmp_path / "cand", **kw)
    f = result["scores"]["forgetting"]
    assert f["reference"] >= 0.8 and f["before"] == f["reference"]  # version 0 is the input here
    assert f["reference"] - f["candidate"] > 0.01 and f["n"] == 6  # every rehearsal val row of its classes
    assert result["scores"]["candidate"]["class_accuracy"] > result["scores"]["current"]["class_accuracy"]
    assert not result["promoted"] and result["reason"].startswith("forgets: rehearsal validation accuracy")
    assert VersionStore(tmp_path / "models").get(result["version"])["scores"]["forgetting"] == f  # shown with it

    # the allowed loss is a setting; at 100 points the same candidate wins on the held-out items alone
    again = learn_from_log(db, base, tmp_path / "cand2", max_forgetting=100, **kw)
    assert again["promoted"] and again["scores"]["forgetting"]["reference"] == f["reference"]

    # a later candidate starts from version 0 again, not from the version it competes with (whose drift it
    # would inherit): here that version is the swapped one, and the new candidate's start is version 0's head
    current = VersionStore(tmp_path / "models").file_of(again["version"])
    third = learn_from_log(db, current, tmp_path / "cand3", max_forgetting=100, **kw)
    assert third["inputs"]["from"] == str(VersionStore(tmp_path / "models").file_of(0))
    assert third["inputs"]["compared_with"] == str(current)
    assert third["scores"]["forgetting"]["before"] == f["reference"]  # it started from version 0's head
