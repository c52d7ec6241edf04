"""Frozen passes: the backend rule, onnxruntime giving PyTorch's numbers, and progress lines
with ETA that also reach a log file when stderr is not a terminal."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from wastenet.errors import ConfigError
from wastenet.progress import Progress, format_seconds, set_log_file
from wastenet.inference import runner as frozen
from wastenet.models import FeatureHead


def test_progress_writes_one_line_per_tenth_to_stream_and_log_file(tmp_path):
    stream, log = io.StringIO(), tmp_path / "train.log"
    set_log_file(log)
    try:
        with Progress(95, "[head] features view 1/5", stream=stream, tty=False) as bar:
            for _ in range(19):
                bar.update(5)
    finally:
        set_log_file(None)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10  # 10%, 21% (a step of 5 jumps past 20%), ..., 100%: one line per tenth
    assert lines[-1].startswith("[head] features view 1/5: 100% (95/95 img)")
    assert all("ETA" in line and "img/s" in line for line in lines)
    assert log.read_text().count("[head] features view 1/5:") == 10


def test_progress_on_a_terminal_keeps_the_bar_off_the_log_but_records_the_total(tmp_path):
    stream, log = io.StringIO(), tmp_path / "train.log"
    set_log_file(log)
    try:
        with Progress(10, "test pass", stream=stream, tty=True) as bar:
            bar.update(10)
    finally:
        set_log_file(None)
    assert "\r" in stream.getvalue() or "test pass" in stream.getvalue()  # tqdm drew a bar
    assert log.read_text().count("test pass: 100% (10/10 img)") == 1


def test_format_seconds():
    assert (format_seconds(9), format_seconds(75), format_seconds(3700)) == ("9s", "1m15s", "1h01m")


def test_backend_rule():
    cpu = torch.device("cpu")
    assert frozen.choose_backend("auto", cpu, frozen.ORT_MIN_IMAGES - 1) == "torch"  # export would not pay
    assert frozen.choose_backend("auto", cpu, 5000) == ("onnxruntime" if frozen.onnxruntime_available() else "torch")
    assert frozen.choose_backend("auto", torch.device("cuda"), 5000) == "torch"
    assert frozen.choose_backend("torch", cpu, 5000) == "torch"
    with pytest.raises(ConfigError, match="--frozen-backend"):
        frozen.choose_backend("tensorrt", cpu, 10)


@pytest.mark.skipif(not frozen.onnxruntime_available(), reason="onnxruntime not installed")
def test_onnxruntime_features_and_logits_equal_pytorch(image_folder):
    from wastenet.data.datasets import build_cache, scan_folder
    from wastenet.models import create_model

    rows, classes = scan_folder(image_folder)
    built = create_model("test_resnet", len(classes), weights=None, img_size=48)
    torch.nn.init.normal_(built.model.get_classifier().weight, std=0.1)
    cache = build_cache(image_folder, rows[:20], classes, built.preprocessing.resize_size)
    model, cpu = built.model.eval(), torch.device("cpu")
    feats = {}
    for backend in ("torch", "onnxruntime"):
        run = frozen.FrozenRunner(FeatureHead(model), cpu, None, True, backend, input_hw=(48, 48))
        feats[backend] = frozen.frozen_pass(run, cache.images, built.preprocessing, device=cpu, desc="f", batch_size=8)
    assert feats["torch"].shape == (20, model.num_features)
    torch.testing.assert_close(feats["onnxruntime"], feats["torch"], atol=1e-4, rtol=1e-4)
    logits = {b: frozen.frozen_logits(model, cache.images, built.preprocessing, cpu, backend=b, tta=True)
              for b in ("torch", "onnxruntime")}
    assert logits["torch"].shape == (20, len(classes)) and logits["torch"].abs().max() > 0.01
    torch.testing.assert_close(logits["onnxruntime"], logits["torch"], atol=1e-4, rtol=1e-4)


def _tiny(image_folder, n=20):
    from wastenet.data.datasets import build_cache, scan_folder
    from wastenet.models import create_model

    rows, classes = scan_folder(image_folder)
    built = create_model("test_resnet", len(classes), weights=None, img_size=48)
    torch.nn.init.normal_(built.model.get_classifier().weight, std=0.1)
    cache = build_cache(image_folder, rows[:n], classes, built.preprocessing.resize_size)
    return built.model.eval(), built.preprocessing, cache


def test_a_frozen_pass_gives_the_numbers_of_predict_logits(image_folder):
    """One batching/views/TTA loop: the frozen passes (calibration, test) and the training-time
    validation logits agree exactly on the PyTorch backend, with and without TTA."""
    from wastenet.inference.runtime import predict_logits

    model, prep, cache = _tiny(image_folder)
    cpu = torch.device("cpu")
    for tta in (False, True):
        frozen_logits = frozen.frozen_logits(model, cache.images, prep, cpu, backend="torch", tta=tta)
        assert torch.equal(frozen_logits, predict_logits(model, cache.images, prep, cpu, None, batch_size=64, tta=tta))
    empty = frozen.frozen_logits(model, cache.images[:0], prep, cpu, backend="torch")
    assert empty.shape == (0,) and torch.equal(empty, predict_logits(model, cache.images[:0], prep, cpu, None))


def test_feature_passes_give_the_head_features_and_the_logits_of_one_forward(image_folder):
    """The unknown-item fit's passes (features and logits side by side) and the head stage's
    features are the same pooled features; the logits are the model's."""
    model, prep, cache = _tiny(image_folder)
    cpu = torch.device("cpu")
    feats, logits = frozen.FeaturePasses(model, prep, cpu, n_images=len(cache.images))(cache.images, desc="f")
    run = frozen.FrozenRunner(FeatureHead(model), cpu, None, False, "torch", input_hw=prep.hw)
    head_feats = frozen.frozen_pass(run, cache.images, prep, device=cpu, desc="f").numpy()
    assert feats.shape == (20, model.num_features) and logits.shape == (20, 3)
    np.testing.assert_array_equal(feats, head_feats)
    from wastenet.data.augment import to_model_batch

    with torch.no_grad():
        direct = model(to_model_batch(torch.from_numpy(cache.images), prep)).numpy()
    np.testing.assert_allclose(logits, direct, atol=1e-5, rtol=1e-5)


def test_the_frozen_backend_choices_are_one_constant_readable_without_torch():
    import subprocess
    import sys

    from wastenet.cli import build_parser
    from wastenet.training.config import TrainConfig

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    option = next(a for a in train._actions if "--frozen-backend" in a.option_strings)
    assert tuple(option.choices) == frozen.BACKENDS
    with pytest.raises(ConfigError, match="--frozen-backend must be auto, torch, onnxruntime"):
        TrainConfig(frozen_backend="tensorrt").validate()
    probe = "import sys; sys.modules['torch'] = None\nfrom wastenet.inference.runner import BACKENDS\nprint(BACKENDS)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
