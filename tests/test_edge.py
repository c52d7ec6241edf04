"""The PyTorch-free edge runtime: ONNX predictions without torch, preprocessing without torch
proven equal to timm's PyTorch transform, and the Jetson-compatible opset-13 export."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wastenet.export import onnx as ex
from wastenet.preprocessing import Preprocessing, preprocess_images

from conftest import make_image

# not in the core + [edge] install: PyTorch and everything that only training/export need
BLOCKED = ("torch", "timm", "torchvision", "onnx", "onnxscript", "safetensors", "kornia", "torchmetrics",
           "matplotlib", "pytorch_grad_cam", "huggingface_hub", "kagglehub")


def _blocker(root: Path) -> Path:
    """A folder that, first on PYTHONPATH, makes the ``BLOCKED`` packages unimportable."""
    for name in BLOCKED:
        pkg = root / name
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").write_text(f'raise ImportError("{name} is blocked")\n')
    return root


def _env_without_torch(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_blocker(tmp_path / "blocked")), env.get("PYTHONPATH", "")])
    return env


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# ------------------------------------------------------------------ (a) predict without torch
def test_predict_onnx_without_torch(tmp_path, tiny_checkpoint, image_folder):
    onnx_path = tmp_path / "model.onnx"
    ex.export_onnx(tiny_checkpoint, onnx_path)
    images = [str(p) for p in sorted(image_folder.rglob("*.jpg"))[::3]]
    env = _env_without_torch(tmp_path)

    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "torch is blocked" in probe.stderr  # the blocker works

    cmd = [sys.executable, "-m", "wastenet", "predict", "--checkpoint", str(onnx_path), *images, "--format", "csv"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = _csv_rows(res.stdout)

    from wastenet.inference.predictor import Classifier  # reference: the torch checkpoint, in-process

    expected = Classifier.load(tiny_checkpoint).predict(images)
    assert [r["path"] for r in rows] == images
    assert [r["label"] for r in rows] == [p.label for p in expected]
    assert [r["decision"] for r in rows] == [p.decision for p in expected]
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], [p.confidence for p in expected], atol=1e-4)


def test_serve_app_loads_onnx_without_torch(tmp_path, tiny_checkpoint):
    """`wastenet serve` on an .onnx file needs no torch: build the app and answer /api/health."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    onnx_path = tmp_path / "model.onnx"
    ex.export_onnx(tiny_checkpoint, onnx_path)
    code = (
        "import json, sys\n"
        "from fastapi.testclient import TestClient\n"
        "from wastenet.serve.app import create_app\n"
        f"app = create_app({str(onnx_path)!r}, log_path={str(tmp_path / 'log.sqlite')!r})\n"
        "with TestClient(app, base_url='http://127.0.0.1') as c:\n"
        "    r = c.get('/api/health')\n"
        "    print(json.dumps(r.json()))\n"
        "assert 'torch' not in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=_env_without_torch(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert '"status": "ok"' in res.stdout


# ------------------------------------------------------------------ (b) numpy preprocessing == timm
def _odd_images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    sizes = [(224, 224), (97, 131), (300, 20), (20, 300), (1000, 999), (257, 256), (33, 33)]
    imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for w, h in sizes]
    imgs.append(make_image("glass", seed=1, size=(48, 64)))
    return imgs


@pytest.mark.parametrize("arch,overrides", [
    ("mobilenetv2_100", {}),                                            # bicubic, crop 0.875
    ("test_resnet", {}),                                                # timm's own test config
    ("resnet18", {"interpolation": "bilinear", "crop_pct": 1.0}),
    ("densenet121", {"input_size": (3, 160, 160), "crop_pct": 0.9}),
])
def test_numpy_preprocessing_equals_timm_transform(arch, overrides, trashnet_root):
    import timm
    import torch

    model = timm.create_model(arch, pretrained=False, num_classes=2)
    cfg = timm.data.resolve_data_config(dict(overrides), model=model)
    transform = timm.data.create_transform(**cfg)  # timm's PyTorch eval transform
    prep = Preprocessing.from_data_config(cfg)
    real = [Image.open(p).convert("RGB") for p in sorted(trashnet_root.glob("*/*.jpg"))[::500]]
    images = real + _odd_images()
    ours = preprocess_images(images, prep)
    theirs = torch.stack([transform(im) for im in images]).numpy()
    assert ours.shape == theirs.shape == (len(images), 3, cfg["input_size"][1], cfg["input_size"][2])
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ (c) opset 13 for TensorRT 8.2
def test_opset13_export_is_valid_single_file_dynamic_batch(tmp_path, tiny_checkpoint):
    import onnx
    import torch

    from wastenet import checkpoint
    from wastenet.models import model_from_checkpoint

    out = tmp_path / "wastenet13.onnx"
    r = ex.export_onnx(tiny_checkpoint, out, opset=13)
    assert r.opset == 13 and r.max_abs_diff <= 1e-3
    assert [p.name for p in tmp_path.iterdir()] == ["wastenet13.onnx"]  # no external .onnx.data
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}.get("", 0) == 13
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic batch axis

    ckpt = checkpoint.load(tiny_checkpoint)
    torch_model = model_from_checkpoint(ckpt)
    sess = ex.onnx_session(out, threads=1)
    size = ckpt["preprocessing"]["input_size"]
    for n in (1, 3):
        x = np.random.default_rng(n).normal(size=(n, 3, size, size)).astype(np.float32)
        got = sess.run(["logits"], {"input": x})[0]
        with torch.no_grad():
            want = torch_model(torch.from_numpy(x)).numpy()
        assert got.shape == (n, len(ckpt["classes"]))
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_same_padding_exports_as_constant_pads(tmp_path):
    """mobilenetv2 with TF 'same' padding: no run-time shape arithmetic in the graph, and
    every Pad's amounts are an initializer (TensorRT 8.2 requires that)."""
    import onnx

    from wastenet import checkpoint
    from wastenet.models import create_model

    built = create_model("mobilenetv2_050", 3, weights=None, model_kwargs={"pad_type": "same"}, img_size=64)
    ckpt_path = checkpoint.save(checkpoint.make_checkpoint(built, classes=["a", "b", "c"]), tmp_path / "m.pt")
    out = tmp_path / "m13.onnx"
    r = ex.export_onnx(ckpt_path, out, opset=13)
    assert r.max_abs_diff <= 1e-3
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Shape", "Gather", "Ceil", "ConstantOfShape", "Constant"}
    inits = {i.name for i in model.graph.initializer}
    pads = [n for n in model.graph.node if n.op_type == "Pad"]
    assert pads and all(n.input[1] in inits for n in pads)
