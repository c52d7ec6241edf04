"""Site adaptation: the head re-fitted on reviewed items, calibration and the unknown-item rule re-fitted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wastenet.errors import ConfigError


@pytest.mark.slow
def test_adapt_refits_the_head_and_keeps_taxonomy_and_threshold(tiny_checkpoint, image_folder, tmp_path):
    from wastenet import checkpoint
    from wastenet.training.adapt import AdaptConfig, adapt

    result = adapt(tiny_checkpoint, image_folder, tmp_path / "site", cfg=AdaptConfig(views=1, epochs=3))
    before, after = checkpoint.load(tiny_checkpoint), checkpoint.load(result["checkpoint"])
    head = [k for k in after["state_dict"] if k.startswith("fc.")]
    assert head and any(not torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in head)
    body = [k for k in after["state_dict"] if not k.startswith("fc.")]
    assert all(torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in body)  # frozen backbone
    assert after["taxonomy"] == before["taxonomy"] and after["threshold"] == before["threshold"]
    # a fresh unknown-item rule (the tiny base has none, nor an ImageNet head): the k-NN score
    assert after["ood"]["method"] == "knn" and after["temperature"] > 0
    assert after["adapted"]["reviewed_train"] + after["adapted"]["reviewed_val"] == 36


@pytest.mark.slow
def test_an_aspect_preserving_model_adapts_on_photos_of_its_own_shape(tiny_checkpoint, image_folder, tmp_path,
                                                                      monkeypatch):
    """A 64x80 model (``--img-size HxW``, the edge model's 256x320 mode) sees its exact input shape: the
    ONNX pass of a bigger one refused the squares it was given (``Got: 32 Expected: 320``)."""
    from wastenet import checkpoint
    from wastenet.inference.runner import FeaturePasses
    from wastenet.training.adapt import AdaptConfig, adapt

    ckpt = checkpoint.load(tiny_checkpoint)
    ckpt["preprocessing"]["input_width"] = 80
    wide = checkpoint.save(ckpt, tmp_path / "wide.pt")
    shapes = set()
    call = FeaturePasses.__call__
    monkeypatch.setattr(FeaturePasses, "__call__",
                        lambda self, images, *a, **k: shapes.add(tuple(images.shape[-2:])) or call(self, images, *a, **k))
    result = adapt(wide, image_folder, tmp_path / "site", cfg=AdaptConfig(views=1, epochs=2))
    assert shapes == {(64, 80)}
    assert checkpoint.load(result["checkpoint"])["preprocessing"]["input_width"] == 80


def test_reviewed_classes_must_be_the_models(tiny_checkpoint, tmp_path):
    from wastenet.training.adapt import adapt

    (tmp_path / "reviewed" / "banana").mkdir(parents=True)
    from conftest import make_image

    make_image("glass", 0).save(tmp_path / "reviewed" / "banana" / "a.jpg")
    with pytest.raises(ConfigError, match="does not know: banana"):
        adapt(tiny_checkpoint, tmp_path / "reviewed", tmp_path / "out")


def test_without_a_rehearsal_set_the_error_says_how_many_items_of_a_class_give_validation_rows(tiny_checkpoint,
                                                                                             tmp_path):
    """A fifth of a class's reviewed items (rounded down) is held out for validation, so 4 of each give none."""
    from conftest import make_image

    from wastenet.training.adapt import adapt

    for cls in ("glass", "metal", "paper"):
        (tmp_path / "reviewed" / cls).mkdir(parents=True)
        for i in range(4):
            make_image(cls, i).save(tmp_path / "reviewed" / cls / f"{i}.jpg")
    with pytest.raises(ConfigError, match="at least 5 reviewed items of one class, or --data-mix"):
        adapt(tiny_checkpoint, tmp_path / "reviewed", tmp_path / "out")


def test_adapt_cli_checks_options_before_work(tiny_checkpoint, image_folder, tmp_path):
    r = subprocess.run([sys.executable, "-m", "wastenet", "adapt", "--checkpoint", str(tiny_checkpoint),
                        "--data", str(image_folder), "--out", str(tmp_path / "o"), "--eval-data", str(image_folder)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--class-map go together" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "wastenet", "adapt", "--checkpoint", str(tiny_checkpoint),
                        "--data", str(image_folder), "--out", str(tmp_path / "o"), "--max-forgetting", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--max-forgetting goes with --from-log" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "wastenet", "adapt", "--checkpoint", str(tiny_checkpoint),
                        "--data", str(image_folder), "--out", str(tmp_path / "o"), "--compare", "sorted"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--compare goes with --from-log" in r.stderr and "Traceback" not in r.stderr


def test_the_rehearsal_features_are_read_back_on_the_next_run(tiny_checkpoint, image_folder, tmp_path, capsys):
    """The backbone is frozen: a second run on the same rehearsal set reads its features, and fits the same."""
    from wastenet.data.datasets import Row, scan_folder, write_split_file
    from wastenet.training.adapt import AdaptConfig, adapt

    rows, _ = scan_folder(image_folder)
    split = write_split_file([Row(r.path, r.label, ("train", "val")[i % 2]) for i, r in enumerate(rows)],
                             tmp_path / "split.csv")
    cfg = AdaptConfig(epochs=2, views=1, mix_per_class=4)
    kw = dict(mix=image_folder, mix_split=split, cfg=cfg, search=False, feature_cache=tmp_path / "cache")
    first = adapt(tiny_checkpoint, image_folder, tmp_path / "a", **kw)
    assert len(list((tmp_path / "cache").glob("rehearsal-*.npz"))) == 1
    capsys.readouterr()
    second = adapt(tiny_checkpoint, image_folder, tmp_path / "b", **kw)
    assert "rehearsal features read from" in capsys.readouterr().err
    assert second["val_accuracy"] == first["val_accuracy"]  # the same features: the same fit
    assert second["mix_train"] == first["mix_train"]


def test_prepared_rehearsal_features_are_what_the_first_run_reads(tiny_checkpoint, image_folder, tmp_path, capsys):
    """``prepare_rehearsal`` (the service's start) stores the features a run from this model would compute,
    the same ones: the run reads them, and fits as one that computed them itself."""
    import numpy as np

    from wastenet.data.datasets import Row, scan_folder, write_split_file
    from wastenet.training.adapt import AdaptConfig, adapt, prepare_rehearsal

    rows, _ = scan_folder(image_folder)
    split = write_split_file([Row(r.path, r.label, ("train", "val")[i % 2]) for i, r in enumerate(rows)],
                             tmp_path / "split.csv")
    cfg = AdaptConfig(epochs=2, views=1, mix_per_class=4)
    prepared = prepare_rehearsal(tiny_checkpoint, image_folder, split, tmp_path / "prepared", cfg)
    assert prepared["computed"] and prepared["mix_train"] == 12 and Path(prepared["cache"]).is_file()
    assert not prepare_rehearsal(tiny_checkpoint, image_folder, split, tmp_path / "prepared", cfg)["computed"]
    capsys.readouterr()
    kw = dict(mix=image_folder, mix_split=split, cfg=cfg, search=False)
    read = adapt(tiny_checkpoint, image_folder, tmp_path / "a", feature_cache=tmp_path / "prepared", **kw)
    assert "rehearsal features read from" in capsys.readouterr().err
    adapt(tiny_checkpoint, image_folder, tmp_path / "b", feature_cache=tmp_path / "computed", **kw)
    (own,) = (tmp_path / "computed").glob("rehearsal-*.npz")
    assert own.name == Path(prepared["cache"]).name  # one key for the same model, rows and views
    with np.load(own) as a, np.load(prepared["cache"]) as b:
        for k in ("x_mix", "y_mix", "x_val", "y_val"):
            np.testing.assert_allclose(a[k], b[k], atol=1e-4)
    assert read["mix_train"] == 12


def test_prepare_rehearsal_cli_needs_its_inputs(tiny_checkpoint, tmp_path):
    r = subprocess.run([sys.executable, "-m", "wastenet", "adapt", "--checkpoint", str(tiny_checkpoint),
                        "--prepare-rehearsal"], capture_output=True, text=True)
    assert r.returncode == 2 and "--prepare-rehearsal needs --data-mix, --mix-split-file and --versions" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "wastenet", "adapt", "--checkpoint", str(tiny_checkpoint),
                        "--data", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "--out is required" in r.stderr and "Traceback" not in r.stderr


def test_a_later_run_passes_only_the_reviewed_photos_it_has_not_seen(tiny_checkpoint, image_folder, tmp_path, capsys):
    """The service adapts again on a log that only grows: stored photos' features are read, new ones passed."""
    import shutil

    import numpy as np

    from wastenet.training.adapt import AdaptConfig, adapt
    from wastenet.training.feature_store import ItemFeatureStore

    reviewed = tmp_path / "reviewed"
    shutil.copytree(image_folder, reviewed)
    extra = sorted(reviewed.rglob("*.jpg"))[:2]
    held = tmp_path / "later"
    held.mkdir()
    moved = {held / f"{i}{p.suffix}": p for i, p in enumerate(extra)}
    for away, p in moved.items():  # two photos the first run does not have
        shutil.move(p, away)
    cfg = AdaptConfig(epochs=2, views=2)
    kw = dict(cfg=cfg, search=False, feature_cache=tmp_path / "cache")
    first = adapt(tiny_checkpoint, reviewed, tmp_path / "a", **kw)
    n = first["reviewed_train"] + first["reviewed_val"]
    assert f"reviewed features: 0 of {n} photos" in capsys.readouterr().err
    for away, p in moved.items():
        shutil.move(away, p)
    adapt(tiny_checkpoint, reviewed, tmp_path / "b", **kw)
    assert f"reviewed features: {n} of {n + 2} photos" in capsys.readouterr().err
    (store_file,) = (tmp_path / "cache").glob("items-*.npz")
    with np.load(store_file) as z:  # the file holds the latest run's photos, each with its views
        assert len(z["keys"]) == n + 2 and z["views"].shape[:1] == (2,)
    assert ItemFeatureStore.keys_of(np.zeros((2, 3, 4, 4), np.uint8))[0] == ItemFeatureStore.keys_of(
        np.zeros((1, 3, 4, 4), np.uint8))[0]  # a photo is its pixels


@pytest.mark.slow
def test_a_grown_kind_starts_from_its_reviewed_photos_not_from_zero(tiny_checkpoint, image_folder, tmp_path):
    """No epoch of fitting (epochs=0): what adapt leaves in the grown row is where the fit would start."""
    import shutil

    from wastenet import checkpoint
    from wastenet.training.adapt import AdaptConfig, adapt

    reviewed = tmp_path / "reviewed"
    shutil.copytree(image_folder, reviewed)
    shutil.copytree(image_folder / "paper", reviewed / "food_waste")
    rows = {}
    for imprint in (True, False):
        result = adapt(tiny_checkpoint, reviewed, tmp_path / f"site-{imprint}", search=False,
                       cfg=AdaptConfig(views=1, epochs=0, imprint_new=imprint), new_classes={"food_waste": "compostable"})
        rows[imprint] = checkpoint.load(result["checkpoint"])["state_dict"]["fc.weight"]
    old_norm = rows[True][:-1].norm(dim=1).mean()
    assert torch.isclose(rows[True][-1].norm(), old_norm)  # imprinted: as long as the old rows
    assert not rows[False][-1].any()  # the zero start it replaces
    assert torch.equal(rows[True][:-1], rows[False][:-1])  # the old rows are the same either way
