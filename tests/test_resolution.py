"""The aspect-preserving input (`--img-size 256x320`): whole photo resized, no crop, carried
through the cache, the checkpoint, predict, export and the ONNX metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from wastenet.errors import ConfigError
from wastenet.preprocessing import Preprocessing, preprocess_images
from wastenet.training.config import TrainConfig, parse_img_size

from test_train_cli import TINY


def test_parse_img_size():
    assert parse_img_size("256x320") == (256, 320) and parse_img_size("288") == 288 and parse_img_size(None) is None
    with pytest.raises(ConfigError, match="HxW"):
        parse_img_size("256by320")
    with pytest.raises(ConfigError, match="at least 32"):
        TrainConfig(img_size="16x320").validate()


def _photo(w=512, h=384) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_whole_photo_is_resized_not_cropped_and_the_dict_round_trips():
    prep = Preprocessing(input_size=256, mean=(0.5,) * 3, std=(0.5,) * 3, input_width=320)
    assert prep.hw == (256, 320) and prep.resize_size == 256 and prep.cache_size == (256, 320)
    img = _photo()
    x = preprocess_images([img], prep)
    assert x.shape == (1, 3, 256, 320)
    want = np.asarray(img.resize((320, 256), Image.Resampling.BICUBIC), np.float32) / 255 * 2 - 1
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), want, atol=1e-6)  # every pixel column kept
    assert Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict()))) == prep
    old = {k: v for k, v in Preprocessing().to_dict().items() if k != "input_width"}  # an older checkpoint
    assert Preprocessing.from_dict(old).hw == (224, 224)


def test_training_cache_equals_the_eval_transform(tmp_path):
    from wastenet.data.augment import to_model_batch
    from wastenet.data.datasets import Row, build_cache

    (tmp_path / "a").mkdir()
    _photo().save(tmp_path / "a" / "x.png")
    prep = Preprocessing(input_size=96, input_width=128)
    cache = build_cache(tmp_path, [Row("a/x.png", "a", "train")], ["a"], prep.cache_size, prep.interpolation)
    assert cache.images.shape == (1, 3, 96, 128)
    x = to_model_batch(torch.from_numpy(cache.images), prep).numpy()
    np.testing.assert_allclose(x, preprocess_images([Image.open(tmp_path / "a" / "x.png")], prep), atol=1e-5)


def test_train_predict_export_carry_height_and_width(tmp_path, image_folder):
    import onnx

    from wastenet import checkpoint
    from wastenet.cli import main
    from wastenet.export import onnx as ex
    from wastenet.inference.predictor import Classifier

    out = tmp_path / "run"
    args = [a if a != "48" else "40x56" for a in TINY]  # TINY's --img-size 48 -> 40 x 56
    assert main(["train", "--data", str(image_folder), "--out", str(out), *args]) == 0
    ck = checkpoint.load(out / "best.pt")
    assert (ck["preprocessing"]["input_size"], ck["preprocessing"]["input_width"]) == (40, 56)
    images = sorted(image_folder.rglob("*.jpg"))[:4]
    torch_preds = Classifier.load(out / "best.pt").predict(images)
    onnx_path = ex.export_onnx(out / "best.pt", tmp_path / "m.onnx", opset=13).path
    meta = ex.read_metadata(onnx_path)
    assert (meta["preprocessing"]["input_size"], meta["preprocessing"]["input_width"]) == (40, 56)
    dims = onnx.load(str(onnx_path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 40, 56]
    onnx_preds = Classifier.load(onnx_path).predict(images)
    assert [p.label for p in onnx_preds] == [p.label for p in torch_preds]
    np.testing.assert_allclose([p.confidence for p in onnx_preds], [p.confidence for p in torch_preds], atol=1e-4)
