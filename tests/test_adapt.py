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
