"""The Python prediction API: Classifier (torch and ONNX backends), Prediction, the bin decision."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wastenet.errors import ConfigError
from wastenet.inference.predictor import MANUAL_SORT, Classifier, Prediction, softmax
from wastenet.taxonomy import Taxonomy

ROW_KEYS = ["path", "label", "confidence", "bin", "decision", "error", "bin_confidence", "reason", "ood_score"]
# splits the fixture's classes over two bins, so bin probabilities are never exactly 0 or 1
SPLIT_TAXONOMY = {"name": "split", "bins": {"recyclable": ["glass", "metal"], "compostable": ["paper"],
                                            "landfill": []}}


@pytest.fixture(scope="module")
def clf(tiny_checkpoint) -> Classifier:
    return Classifier.load(tiny_checkpoint)


@pytest.fixture(scope="module")
def images(image_folder) -> list[Path]:
    # two of each class, from both nesting depths
    return [image_folder / c / d / f"{c}_{i}.jpg" for c in ("glass", "metal", "paper")
            for d, i in (("default", 0), ("real_world", 1))]


def _copy_checkpoint(src: Path, dst: Path, **changes) -> Path:
    from wastenet import checkpoint

    ckpt = checkpoint.load(src)
    ckpt.update(changes)
    return checkpoint.save(ckpt, dst)


# --------------------------------------------------------------------------- loading
def test_load_reads_checkpoint_metadata(clf):
    assert clf.classes == ["glass", "metal", "paper"]
    assert clf.backend_name == "torch"
    assert clf.arch == "test_resnet"
    assert clf.taxonomy.bin_of("paper") == "recyclable"
    assert clf.temperature == 1.0 and clf.threshold == 0.9
    assert clf.preprocessing.input_size == 64


@pytest.mark.parametrize("name", ["missing.pt", "missing.onnx", "model.h5"])
def test_load_rejects_missing_or_unknown_files(tmp_path, name):
    if name.endswith(".h5"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ConfigError):
        Classifier.load(tmp_path / name)


def test_checkpoint_without_taxonomy_gets_one_bin_per_class(tiny_checkpoint, tmp_path):
    clf = Classifier.load(_copy_checkpoint(tiny_checkpoint, tmp_path / "notax.pt", taxonomy=None))
    assert clf.taxonomy.bins == {"glass": ["glass"], "metal": ["metal"], "paper": ["paper"]}


# --------------------------------------------------------------------------- predict
def test_mixed_inputs_keep_order_and_a_broken_file_does_not_stop_the_batch(clf, images, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    pil = Image.open(images[2]).convert("RGB")
    arr = np.asarray(Image.open(images[4]).convert("RGB"))
    inputs = [str(images[0]), images[1], pil, broken, arr, tmp_path / "gone.png", images[5]]

    preds = clf.predict(inputs, batch_size=2)

    assert len(preds) == len(inputs)
    assert [p.path for p in preds[:2]] == [str(images[0]), str(images[1])]
    assert preds[3].path == str(broken) and preds[6].path == str(images[5])
    for bad in (preds[3], preds[5]):
        assert bad.decision == "error" and bad.error
        assert bad.label is None and bad.confidence is None and bad.bin is None
    assert preds[5].error == "file not found"
    for good in (preds[0], preds[1], preds[2], preds[4], preds[6]):
        assert good.ok and good.error is None and good.label in clf.classes
    # a PIL image / array gives the same answer as the file it came from
    ref = clf.predict([images[2], images[4]])
    assert preds[2].confidence == pytest.approx(ref[0].confidence, abs=1e-6)
    assert preds[4].confidence == pytest.approx(ref[1].confidence, abs=1e-6)


def test_batch_size_and_prefetch_do_not_change_results(clf, images):
    one = clf.predict(images, batch_size=1)
    many = clf.predict(images, batch_size=32)
    assert [p.path for p in one] == [str(p) for p in images]
    assert [p.label for p in one] == [p.label for p in many]
    np.testing.assert_allclose([p.confidence for p in one], [p.confidence for p in many], atol=1e-5)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_decoding_in_line_or_in_threads_gives_the_same_answers_in_input_order(clf, images, workers):
    ref = clf.predict(images, batch_size=2, decode_workers=0)
    got = clf.predict(images, batch_size=2, decode_workers=workers)
    assert [p.path for p in got] == [str(p) for p in images]
    assert [p.label for p in got] == [p.label for p in ref]
    np.testing.assert_allclose([p.confidence for p in got], [p.confidence for p in ref], atol=1e-6)


def test_probabilities_are_softmax_of_logits_over_temperature(clf, images):
    pred = clf.predict_one(images[0])
    x = clf.preprocess([Image.open(images[0]).convert("RGB")])
    probs = softmax(clf.predict_arrays(x))[0]
    assert pred.confidence == pytest.approx(probs.max(), abs=1e-6)
    assert pred.label == clf.classes[int(probs.argmax())]


def test_temperature_from_the_checkpoint_is_applied(tiny_checkpoint, tmp_path, images):
    hot = Classifier.load(_copy_checkpoint(tiny_checkpoint, tmp_path / "t2.pt", temperature=2.0))
    cold = Classifier.load(tiny_checkpoint)
    assert hot.temperature == 2.0
    for a, b in zip(hot.predict(images), cold.predict(images)):
        assert a.label == b.label
        assert a.confidence < b.confidence


def test_json_form_has_topk_and_bin_probs(clf, images):
    d = clf.predict([images[0]], topk=2)[0].to_dict()
    assert list(d)[: len(ROW_KEYS)] == ROW_KEYS
    assert len(d["topk"]) == 2 and set(d["topk"][0]) == {"label", "probability"}
    assert d["topk"][0]["label"] == d["label"]
    assert d["topk"][0]["probability"] >= d["topk"][1]["probability"]
    assert sum(d["bin_probs"].values()) == pytest.approx(1.0, abs=1e-5)
    assert set(d["bin_probs"]) == {"recyclable", "compostable", "landfill"}
    json.dumps(d)  # JSON-serialisable as is


def test_row_form_columns_and_error_row():
    ok = Prediction("a.jpg", "glass", 0.5, "recyclable", 0.75, "manual_sort")
    row = ok.to_row()
    assert list(row) == ROW_KEYS
    assert row["confidence"] == "0.500000" and row["error"] == ""
    err = Prediction.failed("b.jpg", "truncated JPEG").to_row()
    assert err == {"path": "b.jpg", "label": "", "confidence": "", "bin": "", "decision": "error",
                   "error": "truncated JPEG", "bin_confidence": "", "reason": "", "ood_score": ""}
    assert "manual_sort" in str(ok) and "truncated JPEG" in str(Prediction.failed("b.jpg", "truncated JPEG"))


def test_threshold_zero_never_sends_to_manual_sort(clf, images):
    preds = clf.predict(images, threshold=0.0, taxonomy=SPLIT_TAXONOMY)
    assert all(p.decision == p.bin for p in preds)


def test_threshold_one_sends_everything_uncertain_to_manual_sort(clf, images):
    split = clf.predict(images, threshold=1.0, taxonomy=SPLIT_TAXONOMY)
    assert all(p.decision == MANUAL_SORT and p.bin_confidence < 1.0 for p in split)
    # the fixture's taxonomy puts every class in one bin: its probability is 1, float sums aside
    whole = clf.predict(images, threshold=1.0)
    assert all(p.decision == "recyclable" for p in whole)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_threshold_outside_unit_interval_is_a_config_error(clf, images, bad):
    with pytest.raises(ConfigError):
        clf.predict(images[:1], threshold=bad)


def test_taxonomy_override_and_bad_taxonomy(clf, images):
    preds = clf.predict(images[:2], taxonomy={"bins": {"landfill": ["glass", "metal", "paper"]}})
    assert all(p.bin == "landfill" and p.bin_probs == {"landfill": pytest.approx(1.0)} for p in preds)
    with pytest.raises(ConfigError):
        clf.predict(images[:1], taxonomy={"bins": {"recyclable": ["glass", "metal"]}})  # paper unmapped
    with pytest.raises(ConfigError):
        clf.predict(images[:1], taxonomy="household")  # not these classes


def test_tta_averages_image_and_its_mirror(clf, images):
    x = clf.preprocess([Image.open(images[0]).convert("RGB")])
    expected = (softmax(clf.predict_arrays(x)) + softmax(clf.predict_arrays(x[..., ::-1].copy()))) / 2
    plain = clf.predict_one(images[0])
    tta = clf.predict_one(images[0], tta=True)
    assert tta.confidence == pytest.approx(expected.max(), abs=1e-6)
    assert tta.confidence != pytest.approx(plain.confidence, abs=1e-7)


def test_progress_bar_and_empty_input(clf, images):
    assert clf.predict([]) == []
    assert len(clf.predict(images[:3], progress=True)) == 3


# --------------------------------------------------------------------------- decision rule
TORN = ["newspaper", "office_paper", "straw"]
TORN_TAX = Taxonomy("t", {"recyclable": ["newspaper", "office_paper"], "compostable": [], "landfill": ["straw"]})


def decide(probs, classes, tax, threshold):
    """One item through the one rule, as Classifier.predict decides it (wastenet.decision.decide
    on the bin totals); ``bin_probs`` is the row Prediction.bin_probs shows."""
    from types import SimpleNamespace

    from wastenet.decision import decide as decide_rows

    bp = tax.bin_probabilities(np.asarray(probs, dtype=np.float64)[None, :], classes)
    d = decide_rows(bp, tax.bin_names, threshold)
    return SimpleNamespace(bin=str(d.bin[0]), bin_confidence=float(d.confidence[0]), decision=str(d.decision[0]),
                           bin_probs={b: min(float(v), 1.0) for b, v in zip(tax.bin_names, bp[0])})


def test_item_torn_between_two_recyclable_classes_is_confidently_recyclable():
    d = decide([0.45, 0.45, 0.10], TORN, TORN_TAX, threshold=0.9)
    assert d.bin == "recyclable" and d.decision == "recyclable"  # 0.9 >= 0.9: at the threshold counts
    assert d.bin_confidence == pytest.approx(0.9)
    assert d.bin_probs == {"recyclable": pytest.approx(0.9), "compostable": 0.0, "landfill": pytest.approx(0.1)}
    assert decide([0.45, 0.45, 0.10], TORN, TORN_TAX, threshold=0.95).decision == MANUAL_SORT


def test_bin_is_not_the_top_class_bin():
    # the single most likely class is landfill, but recycling holds more probability in total
    d = decide([0.3, 0.3, 0.4], TORN, TORN_TAX, threshold=0.5)
    assert d.bin == "recyclable" and d.bin_confidence == pytest.approx(0.6) and d.decision == "recyclable"
    assert decide([0.3, 0.3, 0.4], TORN, TORN_TAX, threshold=0.61).decision == MANUAL_SORT


def test_a_bin_holding_every_class_passes_threshold_one_despite_float_rounding():
    probs = [0.20381898702851367, 0.7463113329614236, 0.049869680010062596]  # sums to 0.9999999999999999
    tax = Taxonomy("one", {"recyclable": list(TORN), "landfill": []})
    d = decide(probs, TORN, tax, threshold=1.0)
    assert d.decision == "recyclable" and d.bin_confidence <= 1.0


# --------------------------------------------------------------------------- ONNX backend
def _export_onnx(tiny_checkpoint: Path, path: Path, with_metadata: bool = True) -> Path:
    import onnx
    import torch

    from wastenet import checkpoint
    from wastenet.models import model_from_checkpoint

    ckpt = checkpoint.load(tiny_checkpoint)
    model = model_from_checkpoint(ckpt)
    s = ckpt["preprocessing"]["input_size"]
    with warnings.catch_warnings():  # the legacy exporter warns that it is legacy
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, torch.zeros(1, 3, s, s), str(path), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False, opset_version=17)
    if with_metadata:
        m = onnx.load(str(path))
        meta = {k: ckpt[k] for k in ("arch", "classes", "taxonomy", "preprocessing", "temperature", "threshold")}
        onnx.helper.set_model_props(m, {"wastenet": json.dumps(meta)})
        onnx.save(m, str(path))
    return path


@pytest.fixture(scope="module")
def onnx_file(tiny_checkpoint, tmp_path_factory) -> Path:
    return _export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def test_onnx_backend_matches_torch(onnx_file, clf, image_folder):
    from wastenet.data.images import iter_image_files

    files = iter_image_files(image_folder)
    onnx_clf = Classifier.load(onnx_file)
    assert onnx_clf.backend_name == "onnx"
    assert onnx_clf.classes == clf.classes and onnx_clf.taxonomy.bins == clf.taxonomy.bins
    a, b = onnx_clf.predict(files, batch_size=8), clf.predict(files, batch_size=8)
    assert [p.label for p in a] == [p.label for p in b]
    np.testing.assert_allclose([p.confidence for p in a], [p.confidence for p in b], atol=1e-4)


def test_onnx_without_metadata_is_a_config_error(tiny_checkpoint, tmp_path):
    path = _export_onnx(tiny_checkpoint, tmp_path / "bare.onnx", with_metadata=False)
    with pytest.raises(ConfigError, match="metadata"):
        Classifier.load(path)


def test_onnx_predictions_run_without_torch(onnx_file, images):
    # the edge install has no torch: make every `import torch` fail, then predict
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from wastenet.inference.predictor import Classifier\n"
        f"preds = Classifier.load({str(onnx_file)!r}).predict([{str(images[0])!r}])\n"
        "assert preds[0].ok, preds[0]\n"
        "print(preds[0].label)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("glass", "metal", "paper")


def test_the_public_names_stay_importable_from_predictor():
    import wastenet.inference.predictor as predictor
    from wastenet.inference import inputs, results

    assert predictor.Prediction is results.Prediction and predictor.ImageInput is inputs.ImageInput
    for name in predictor.__all__:
        assert hasattr(predictor, name), name
    # the one decision rule is wastenet.decision.decide: no one-item copy of it here
    assert "decide" not in predictor.__all__ and not hasattr(predictor, "Decision")
