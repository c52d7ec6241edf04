"""Site adaptation: the head re-fitted on reviewed items, calibration and the unknown-item rule re-fitted."""

from __future__ import annotations

import subprocess
import sys

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


def test_reviewed_classes_must_be_the_models(tiny_checkpoint, tmp_path):
    from wastenet.training.adapt import adapt

    (tmp_path / "reviewed" / "banana").mkdir(parents=True)
    from conftest import make_image

    make_image("glass", 0).save(tmp_path / "reviewed" / "banana" / "a.jpg")
    with pytest.raises(ConfigError, match="does not know: banana"):
        adapt(tiny_checkpoint, tmp_path / "reviewed", tmp_path / "out")


def test_adapt_cli_checks_options_before_work(tiny_checkpoint, image_folder, tmp_path):
    r = subprocess.run([sys.executable, "-m", "wastenet", "adapt", "--checkpoint", str(tiny_checkpoint),
                        "--data", str(image_folder), "--out", str(tmp_path / "o"), "--eval-data", str(image_folder)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--class-map go together" in r.stderr and "Traceback" not in r.stderr


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
