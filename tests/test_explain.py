"""Grad-CAM: target layers, frozen backbones, overlays and `wastenet explain`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from wastenet.cli import main
from wastenet.errors import ConfigError
from wastenet.inference.explain import explain, explain_batch, find_target_layer, save_overlay
from wastenet.inference.predictor import Classifier


@pytest.fixture(scope="module")
def cam_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny model with a non-negative head: Grad-CAM channel weights are then positive, so
    the (ReLU'd) map is never all zero, whatever the random init (a random head often is)."""
    from wastenet import checkpoint

    ckpt = checkpoint.load(tiny_checkpoint)
    ckpt["state_dict"]["fc.weight"] = ckpt["state_dict"]["fc.weight"].abs()
    return checkpoint.save(ckpt, tmp_path_factory.mktemp("cam") / "cam.pt")


@pytest.fixture()
def frozen(cam_checkpoint) -> Classifier:
    clf = Classifier.load(cam_checkpoint)
    for p in clf.model.parameters():
        p.requires_grad_(False)  # as after linear probing: no gradient reaches the backbone by itself
    return clf


@pytest.fixture(scope="module")
def image(image_folder):
    return image_folder / "glass" / "default" / "glass_0.jpg"


def test_explain_frozen_model_writes_png_of_the_input_crop(frozen, image, tmp_path):
    overlay, heatmap, pred = explain(frozen, image)
    s = frozen.preprocessing.input_size
    assert heatmap.shape == (s, s) and heatmap.dtype == np.float32
    assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0
    assert heatmap.max() - heatmap.min() > 0.1  # a real map, not a constant
    assert pred.ok and pred.path == str(image)
    out = save_overlay(overlay, tmp_path / "heat.png")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (s, s) and img.mode == "RGB"
    assert not any(p.requires_grad for p in frozen.model.parameters())  # left frozen


def test_explain_other_class_and_unknown_class(frozen, image):
    _, top, pred = explain(frozen, image)
    other = next(c for c in frozen.classes if c != pred.label)
    _, alt, pred2 = explain(frozen, image, target_class=other)
    assert pred2.label == pred.label  # the prediction does not depend on the explained class
    assert not np.allclose(top, alt)
    with pytest.raises(ConfigError, match="unknown class"):
        explain(frozen, image, target_class="banana")


def test_explain_batch_restores_train_mode_and_works_under_inference_mode(frozen, image_folder):
    model = frozen.model.train()
    files = sorted((image_folder / "metal" / "default").iterdir())[:3]
    x = frozen.preprocess([Image.open(f).convert("RGB") for f in files])
    with torch.inference_mode():
        maps = explain_batch(model, x, targets=[0, 1, 2])
    assert maps.shape == (3, x.shape[2], x.shape[3])
    assert model.training
    model.eval()


def _timm(name: str) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=3)


def test_find_target_layer_known_architectures():
    resnet = _timm("test_resnet")
    assert find_target_layer(resnet) is resnet.layer4[-1]
    dense = _timm("densenet121")
    assert find_target_layer(dense) is dense.features.norm5
    mobile = _timm("mobilenetv2_100")
    assert find_target_layer(mobile) is mobile.bn2


def test_densenet_gradcam_runs_at_small_size():
    dense = _timm("densenet121").eval()
    maps = explain_batch(dense, torch.randn(1, 3, 64, 64), targets=[1])
    assert maps.shape == (1, 64, 64)


def test_find_target_layer_generic_fallback_is_last_spatial_map():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    assert find_target_layer(net) is net[3]  # not the 1x1 pooled map
    maps = explain_batch(net, torch.randn(2, 3, 32, 32))
    assert maps.shape == (2, 32, 32)


def test_explain_cli(capsys, tiny_checkpoint, image, tmp_path):
    out = tmp_path / "h.png"
    code = main(["explain", "--checkpoint", str(tiny_checkpoint), str(image), "--out", str(out)])
    stdout, _ = capsys.readouterr()
    assert code == 0 and out.is_file() and str(out) in stdout and str(image) in stdout


def test_explain_cli_errors(capsys, tiny_checkpoint, image, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    cases = [
        (["--checkpoint", str(tiny_checkpoint), str(image), "--class", "banana"], 2),
        (["--checkpoint", str(tmp_path / "missing.pt"), str(image)], 2),
        (["--checkpoint", str(tmp_path / "model.onnx"), str(image)], 2),
        (["--checkpoint", str(tiny_checkpoint), str(bad), "--out", str(tmp_path / "x.png")], 1),
    ]
    for args, expected in cases:
        code = main(["explain", *args])
        _, err = capsys.readouterr()
        assert code == expected, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()
