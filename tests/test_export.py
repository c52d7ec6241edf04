"""ONNX export: CLI, metadata round trip, the parity guard, INT8 (QDQ) quantisation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from wastenet.cli import main
from wastenet.errors import ConfigError, WastenetError
from wastenet.export import int8
from wastenet.export import onnx as ex


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, tiny_checkpoint, image_folder) -> Path:
    """The tiny checkpoint exported once (opset 17), shared by the read-only tests below."""
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    ex.export_onnx(tiny_checkpoint, out, check_images=sorted(image_folder.rglob("*.jpg"))[:4])
    return out


def _images(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.jpg"))


def test_cli_export_default_path_and_output(tmp_path, tiny_checkpoint, capsys):
    ckpt = shutil.copy(tiny_checkpoint, tmp_path / "best.pt")
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx"]) == 0
    out = tmp_path / "best.onnx"
    assert out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.onnx", "best.pt"]  # no .onnx.data, no temp
    text = capsys.readouterr().out
    assert "best.onnx" in text and "opset 17" in text and "max |Δlogit|" in text


def test_metadata_round_trip(tiny_onnx, tiny_checkpoint):
    import onnx

    from wastenet import checkpoint

    ckpt = checkpoint.load(tiny_checkpoint)
    meta = ex.read_metadata(tiny_onnx)
    assert meta["arch"] == ckpt["arch"] == "test_resnet"
    assert meta["classes"] == ckpt["classes"]
    assert meta["taxonomy"] == ckpt["taxonomy"]
    assert meta["preprocessing"] == ckpt["preprocessing"]
    assert meta["temperature"] == ckpt["temperature"] and meta["threshold"] == ckpt["threshold"]
    assert meta["opset"] == 17 and meta["precision"] == "fp32"
    assert meta["exported_from"] == str(Path(tiny_checkpoint).resolve())
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert not any(n.op_type in ("Softmax", "ArgMax") for n in model.graph.node)  # softmax stays outside
    assert json.loads({p.key: p.value for p in model.metadata_props}["wastenet"]) == meta


def test_onnx_classifier_matches_checkpoint(tiny_onnx, tiny_checkpoint, image_folder):
    from wastenet.inference.predictor import Classifier

    imgs = _images(image_folder)[::4]
    a = Classifier.load(tiny_checkpoint).predict(imgs)
    b = Classifier.load(tiny_onnx).predict(imgs)
    assert [p.label for p in a] == [p.label for p in b]
    assert [p.decision for p in a] == [p.decision for p in b]
    np.testing.assert_allclose([p.confidence for p in a], [p.confidence for p in b], atol=1e-5)


def test_parity_failure_raises_and_writes_nothing(tmp_path, tiny_checkpoint, monkeypatch):
    import torch

    real_export = ex._torch_export

    def corrupted(model, path, size, opset, *outputs):  # what a wrong export would do: different weights
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        real_export(model, path, size, opset, *outputs)

    monkeypatch.setattr(ex, "_torch_export", corrupted)
    out = tmp_path / "bad.onnx"
    with pytest.raises(WastenetError, match=r"parity check failed: max \|Δlogit\| = .* > tolerance"):
        ex.export_onnx(tiny_checkpoint, out)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temp copy is left behind


def test_bad_opset_is_config_error(tmp_path, tiny_checkpoint):
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--opset", "9",
                 "--out", str(tmp_path / "x.onnx")]) == 2


def test_int8_without_calib_data_exits_2(tmp_path, tiny_checkpoint, capsys):
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--int8", "--out", str(tmp_path / "q.onnx")]) == 2
    assert "--calib-data" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_int8_quantisation_is_qdq_and_smaller(tmp_path, tiny_onnx, image_folder):
    import onnx

    out = tmp_path / "tiny.int8.onnx"
    r = int8.quantize_int8(tiny_onnx, out, _images(image_folder), n_calib=12, check_count=6)
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert r.size_bytes == out.stat().st_size < tiny_onnx.stat().st_size
    assert r.precision == "int8" and r.details["calibration_images"] == 12 and r.n_images == 6
    meta = ex.read_metadata(out)
    fp32_meta = ex.read_metadata(tiny_onnx)
    assert meta["classes"] == fp32_meta["classes"] and meta["preprocessing"] == fp32_meta["preprocessing"]
    assert meta["precision"] == "int8" and meta["quantization"]["format"] == "QDQ"
    assert "score_tables" not in meta["quantization"]  # the tiny model's tables are too small to be stored apart
    # still a working wastenet model file
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    assert ex.onnx_session(out, threads=1).run(["logits"], {"input": x})[0].shape == (2, 3)


def test_int8_exclude_keeps_classifier_in_float(tmp_path, tiny_onnx, image_folder):
    import onnx

    out = tmp_path / "q.onnx"
    r = int8.quantize_int8(tiny_onnx, out, _images(image_folder), n_calib=8, exclude=("classifier", "first_conv"))
    assert len(r.details["excluded_nodes"]) == 2
    model = onnx.load(str(out))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    # a float Gemm reads float weights (an initializer), not a DequantizeLinear output
    assert producers.get(gemm.input[1]) != "DequantizeLinear"
    with pytest.raises(ConfigError, match="matches no node"):
        int8.quantize_int8(tiny_onnx, tmp_path / "z.onnx", _images(image_folder), n_calib=4, exclude=("nope.9",))


def test_cli_int8_calibrates_on_train_rows_only(tmp_path, tiny_checkpoint, image_folder, capsys):
    from wastenet.export.int8 import calibration_images

    imgs = _images(image_folder)
    split = tmp_path / "split.csv"
    rows = ["path,label,split"] + [f"{p.relative_to(image_folder).as_posix()},{p.parts[-3]},"
                                   f"{'train' if i % 3 else 'test'}" for i, p in enumerate(imgs)]
    split.write_text("\n".join(rows) + "\n")
    train = calibration_images(str(image_folder), str(split))
    assert len(train) == sum(1 for i in range(len(imgs)) if i % 3) and all(imgs.index(p) % 3 for p in train)

    out = tmp_path / "m.int8.onnx"
    rc = main(["export", "--checkpoint", str(tiny_checkpoint), "--int8", "--calib-data", str(image_folder),
               "--calib-split-file", str(split), "--calib-count", "8", "--check-count", "4", "--out", str(out)])
    assert rc == 0
    assert out.is_file() and (tmp_path / "m.onnx").is_file()  # fp32 beside the int8 file
    assert ex.read_metadata(out)["quantization"]["calibration_images"] == 8
    assert "train rows" in capsys.readouterr().out


def test_generated_images_are_varied():
    imgs = ex.generated_images(4)
    assert len({im.size for im in imgs}) == 4 and all(im.mode == "RGB" for im in imgs)


# --------------------------------------------------------------------------- model files that lie


def _with_metadata(src: Path, dst: Path, **changes) -> Path:
    import onnx

    model = onnx.load(str(src))
    meta = ex.read_metadata(src)
    for key, value in changes.items():
        if key == "input_size":
            meta["preprocessing"] = {**meta["preprocessing"], "input_size": value}
        else:
            meta[key] = value
    ex.set_metadata(model, meta)
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize("changes, message", [
    ({"classes": 5}, "classes must be a non-empty list"),  # model_metadata.check_metadata
    ({"classes": ["a", "b", "c", "d", "e"], "taxonomy": None}, "names 5 classes"),
    ({"input_size": 40}, "40 px input"),
])
def test_an_onnx_file_whose_metadata_disagrees_with_its_graph_fails_on_load(
        tmp_path, tiny_onnx, image_folder, changes, message, capsys):
    bad = _with_metadata(tiny_onnx, tmp_path / "bad.onnx", **changes)
    image = str(_images(image_folder)[0])
    assert main(["predict", "--checkpoint", str(bad), image]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    pytest.importorskip("fastapi")
    from wastenet.serve.app import create_app

    with pytest.raises(ConfigError, match=message):  # `wastenet serve` exits 2 instead of 500 per request
        create_app(bad, log_path=tmp_path / "d.sqlite")


def test_a_checkpoint_whose_classes_do_not_match_its_head_is_one_line_exit_2(tmp_path, tiny_checkpoint,
                                                                              image_folder, capsys):
    from wastenet import checkpoint

    ck = checkpoint.load(tiny_checkpoint)
    ck["classes"] = ck["classes"] + ["plastic", "trash"]
    ck["taxonomy"] = None
    bad = checkpoint.save(ck, tmp_path / "bad.pt")
    assert main(["predict", "--checkpoint", str(bad), str(_images(image_folder)[0])]) == 2
    err = capsys.readouterr().err
    assert "do not fit" in err and "5 classes" in err and len(err.strip().splitlines()) == 1
