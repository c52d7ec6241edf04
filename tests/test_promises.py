"""docs/promises.md, "one line and exit 2": every mode, walked with a table of bad inputs.

Each row runs a mode as a user does and asserts what they are promised: exit status 2,
exactly one line on stderr, no traceback, and nothing half-written (no run folder, no report
folder, no output file, no log database). Most rows call ``wastenet.cli.main`` in this process
(a traceback there fails the test as an uncaught exception; ``uvicorn.run`` is replaced so
that a serve which got past its checks fails instead of serving); the rows in
``REAL_ENTRY_POINT`` run ``python -m wastenet`` in a fresh process, as installed.

The bad inputs: outputs that cannot be written (checked before any work), split files with a
NUL byte, not UTF-8, naming a missing file or a symlink out of the dataset, and model files
whose metadata is malformed (``preprocessing`` without ``input_size``, temperature <= 0) or that
carry code (a malicious pickle, which must never run). Below the table: the promises of the
same issue that are not refusals (eval takes ONNX files, ``--skip-missing``, predict names
what its folder scan skipped, a run records its CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest

from conftest import make_dataset

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
       "WASTENET_REVIEW_TOKEN": "promises-test-token"}  # serve prints a generated token otherwise
EVIL_MESSAGE = "not a wastenet checkpoint (it contains code objects); refusing to load it"


def wastenet(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed command as a user runs it (a fresh interpreter, the real ``__main__``)."""
    return subprocess.run([sys.executable, "-m", "wastenet", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Evil:
    """Pickles as a call to os.system: what a hostile "checkpoint" carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _onnx_with(src: Path, dst: Path, change: Callable[[dict], None]) -> Path:
    import onnx

    from wastenet.export.onnx import set_metadata
    from wastenet.inference.onnx_runtime import read_metadata

    meta = read_metadata(src)
    change(meta)
    model = onnx.load(str(src))
    set_metadata(model, meta)
    onnx.save_model(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def f(tmp_path_factory, tiny_checkpoint, image_folder) -> SimpleNamespace:
    """The bad files, made once: checkpoints, ONNX files, split files and a dataset with a symlink out."""
    import torch

    from wastenet import checkpoint
    from wastenet.data.datasets import scan_folder, stratified_split, write_split_file
    from wastenet.export.onnx import export_onnx

    d = tmp_path_factory.mktemp("bad")
    ns = SimpleNamespace(ckpt=tiny_checkpoint, data=image_folder, dir=d,
                         image=sorted(image_folder.rglob("*.jpg"))[0])
    good = checkpoint.load(tiny_checkpoint)

    def spoil(name: str, **changes) -> Path:
        return checkpoint.save({**good, **changes}, d / name)

    prep = dict(good["preprocessing"])
    prep.pop("input_size")
    ns.no_input_size = spoil("no_input_size.pt", preprocessing=prep)
    ns.prep_text = spoil("prep_text.pt", preprocessing="224")
    ns.temp_zero = spoil("temp_zero.pt", temperature=0.0)
    ns.temp_negative = spoil("temp_negative.pt", temperature=-1.0)
    ns.marker = d / "pwned"
    ns.evil = d / "evil.pt"
    torch.save({"format": "wastenet-checkpoint", "payload": _Evil(ns.marker)}, ns.evil)

    ns.onnx = export_onnx(tiny_checkpoint, d / "tiny.onnx").path
    ns.onnx_no_input_size = _onnx_with(ns.onnx, d / "no_input_size.onnx",
                                       lambda m: m["preprocessing"].pop("input_size"))
    ns.onnx_temp_zero = _onnx_with(ns.onnx, d / "temp_zero.onnx", lambda m: m.update(temperature=0.0))

    rows = stratified_split(scan_folder(image_folder)[0], seed=0)
    ns.split = write_split_file(rows, d / "split.csv")
    text = ns.split.read_text()
    ns.split_nul = d / "split_nul.csv"
    ns.split_nul.write_text(text + "glass/de\x00fault/x.jpg,glass,train\n")
    ns.split_latin1 = d / "split_latin1.csv"
    ns.split_latin1.write_bytes(text.encode() + "glass/caf\u00e9.jpg,glass,train\n".encode("latin-1"))
    ns.split_missing = d / "split_missing.csv"
    ns.split_missing.write_text(text + "glass/default/not_there.jpg,glass,train\n")

    # a dataset whose glass folder holds a link to a photo outside it
    linked = make_dataset(d / "linked")
    outside = d / "outside.jpg"
    shutil.copy(ns.image, outside)
    (linked / "glass" / "escape.jpg").symlink_to(outside)
    ns.linked = linked
    ns.split_symlink = write_split_file(stratified_split(scan_folder(linked)[0], seed=0), d / "split_symlink.csv")
    assert "glass/escape.jpg" in ns.split_symlink.read_text()
    return ns


TINY_TRAIN = ["--model", "test_resnet", "--weights", "none", "--img-size", "48", "--batch-size", "8",
              "--head-epochs", "1", "--head-views", "1", "--step-epochs", "1", "--epochs", "1",
              "--unfreeze-groups", "1", "--amp", "off"]

# (id, arguments from (files, tmp), words the one line must hold, paths under tmp that must not exist)
Case = tuple[str, Callable[[SimpleNamespace, Path], list], str, tuple[str, ...]]
CASES: list[Case] = [
    # ------------------------------------------------ outputs that cannot be written: refused before the work
    ("predict-out-no-parent", lambda f, t: ["predict", "--checkpoint", f.ckpt, f.image, "--out", "/proc/nope/o.csv"],
     "cannot write", ()),
    ("predict-out-is-folder", lambda f, t: ["predict", "--checkpoint", f.ckpt, f.image, "--out", t],
     "is a folder", ()),
    ("predict-out-proc-version", lambda f, t: ["predict", "--checkpoint", f.ckpt, f.image, "--out", "/proc/version"],
     "cannot write", ()),
    ("export-out-no-parent", lambda f, t: ["export", "--checkpoint", f.ckpt, "--out", "/proc/nope/x.onnx"],
     "cannot write", ()),
    ("export-out-is-folder", lambda f, t: ["export", "--checkpoint", f.ckpt, "--out", t], "is a folder", ()),
    ("export-out-proc-version", lambda f, t: ["export", "--checkpoint", f.ckpt, "--out", "/proc/version"],
     "cannot write", ()),
    ("export-int8-out-no-parent", lambda f, t: ["export", "--checkpoint", f.ckpt, "--int8", "--calib-data", f.data,
                                                "--out", "/proc/nope/x.int8.onnx"], "cannot write", ()),
    ("explain-out-no-parent", lambda f, t: ["explain", "--checkpoint", f.ckpt, f.image, "--out", "/proc/nope/h.png"],
     "cannot write", ()),
    ("explain-out-proc-version", lambda f, t: ["explain", "--checkpoint", f.ckpt, f.image, "--out", "/proc/version"],
     "cannot write", ()),
    ("eval-out-no-parent", lambda f, t: ["eval", "--checkpoint", f.ckpt, "--data", f.data, "--out", "/proc/nope/ev"],
     "cannot write", ()),
    ("eval-out-is-a-file", lambda f, t: ["eval", "--checkpoint", f.ckpt, "--data", f.data, "--out", "/proc/version"],
     "is not a folder", ()),
    ("eval-field-out-no-parent", lambda f, t: ["eval", "--checkpoint", f.ckpt, "--data", f.data, "--class-map",
                                               _identity_map(t), "--out", "/proc/nope/ev"], "cannot write", ()),
    ("train-out-no-parent", lambda f, t: ["train", "--data", f.data, *TINY_TRAIN, "--out", "/proc/nope/run"],
     "cannot write", ()),
    ("train-out-is-a-file", lambda f, t: ["train", "--data", f.data, *TINY_TRAIN, "--out", "/proc/version"],
     "is not a folder", ()),
    ("adapt-out-no-parent", lambda f, t: ["adapt", "--checkpoint", f.ckpt, "--data", f.data, "--out", "/proc/nope/a"],
     "cannot write", ()),
    ("bench-out-no-parent", lambda f, t: ["bench", "--data", f.data, "--models", "test_resnet", "--recipes", "linear",
                                          "--out", "/proc/nope/bench"], "cannot write", ()),
    # ------------------------------------------------ a model file the mode cannot take
    ("explain-onnx-file", lambda f, t: ["explain", "--checkpoint", f.onnx, f.image, "--out", t / "h.png"],
     "needs a .pt checkpoint", ()),
    ("export-onnx-without-int8", lambda f, t: ["export", "--checkpoint", f.onnx, "--out", t / "x.onnx"],
     "already ONNX", ()),
    # ------------------------------------------------ split files: refused before a run folder exists
    ("train-split-nul", lambda f, t: ["train", "--data", f.data, "--split-file", f.split_nul, *TINY_TRAIN,
                                      "--out", t / "run"], "NUL", ("run",)),
    ("train-split-not-utf8", lambda f, t: ["train", "--data", f.data, "--split-file", f.split_latin1, *TINY_TRAIN,
                                           "--out", t / "run"], "not UTF-8", ("run",)),
    ("train-split-missing-file", lambda f, t: ["train", "--data", f.data, "--split-file", f.split_missing,
                                               *TINY_TRAIN, "--out", t / "run"], "does not exist", ("run",)),
    ("train-split-symlink-out", lambda f, t: ["train", "--data", f.linked, "--split-file", f.split_symlink,
                                              *TINY_TRAIN, "--out", t / "run"], "outside the dataset folder", ("run",)),
    ("train-data-symlink-out", lambda f, t: ["train", "--data", f.linked, *TINY_TRAIN, "--out", t / "run"],
     "outside the dataset folder", ("run",)),
    ("eval-split-missing-file", lambda f, t: ["eval", "--checkpoint", f.ckpt, "--data", f.data,
                                              "--split-file", f.split_missing, "--out", t / "ev"], "--skip-missing",
     ("ev",)),
    ("eval-split-symlink-out", lambda f, t: ["eval", "--checkpoint", f.ckpt, "--data", f.linked,
                                             "--split-file", f.split_symlink, "--out", t / "ev"],
     "outside the dataset folder", ("ev",)),
    ("eval-split-nul", lambda f, t: ["eval", "--checkpoint", f.ckpt, "--data", f.data, "--split-file", f.split_nul,
                                     "--out", t / "ev"], "NUL", ("ev",)),
    ("eval-split-not-utf8", lambda f, t: ["eval", "--checkpoint", f.ckpt, "--data", f.data,
                                          "--split-file", f.split_latin1, "--out", t / "ev"], "not UTF-8", ("ev",)),
    ("export-calib-split-not-utf8", lambda f, t: ["export", "--checkpoint", f.ckpt, "--int8", "--calib-data", f.data,
                                                  "--calib-split-file", f.split_latin1, "--out", t / "x.int8.onnx"],
     "not UTF-8", ("x.int8.onnx", "x.onnx")),
    # ------------------------------------------------ model files: validated once, at load
    *[(f"{mode}-{bad}", (lambda mode, bad: lambda f, t: _model_args(mode, getattr(f, bad), f, t))(mode, bad), words,
       ("o.csv", "x.onnx", "h.png", "ev", "a", "log.db"))
      for bad, words in [("no_input_size", "input_size"), ("prep_text", "preprocessing"),
                         ("temp_zero", "temperature"), ("temp_negative", "temperature"), ("evil", EVIL_MESSAGE)]
      for mode in ("predict", "eval", "eval-field", "export", "explain", "serve", "serve-workers", "adapt")],
    *[(f"{mode}-{bad}", (lambda mode, bad: lambda f, t: _model_args(mode, getattr(f, bad), f, t))(mode, bad), words,
       ("o.csv", "x.int8.onnx", "ev", "log.db"))
      for bad, words in [("onnx_no_input_size", "input_size"), ("onnx_temp_zero", "temperature")]
      for mode in ("predict", "serve", "serve-workers", "export-int8", "eval")],
]

#: rows run as ``python -m wastenet`` in a fresh interpreter (one of each kind of refusal)
REAL_ENTRY_POINT = {"predict-out-no-parent", "export-out-proc-version", "train-split-nul", "train-split-not-utf8",
                    "eval-evil", "serve-onnx_temp_zero", "export-temp_zero"}


def _identity_map(tmp: Path) -> Path:
    path = tmp / "map.yaml"
    path.write_text("classes: {glass: glass, metal: metal, paper: paper}\n")
    return path


def _model_args(mode: str, model: Path, f: SimpleNamespace, t: Path) -> list:
    """A run of ``mode`` that is fine but for its model file."""
    return {
        "predict": ["predict", "--checkpoint", model, f.image, "--out", t / "o.csv"],
        "eval": ["eval", "--checkpoint", model, "--data", f.data, "--split-file", f.split, "--out", t / "ev"],
        "eval-field": ["eval", "--checkpoint", model, "--data", f.data, "--class-map", _identity_map(t.parent),
                       "--out", t / "ev"],
        "export": ["export", "--checkpoint", model, "--out", t / "x.onnx"],
        "export-int8": ["export", "--checkpoint", model, "--int8", "--calib-data", f.data, "--out", t / "x.int8.onnx"],
        "explain": ["explain", "--checkpoint", model, f.image, "--out", t / "h.png"],
        "serve": ["serve", "--checkpoint", model, "--port", _free_port(), "--log-db", t / "log.db"],
        # several processes: each worker loads the model, so the parent must check it before its token line
        "serve-workers": ["serve", "--checkpoint", model, "--port", _free_port(), "--log-db", t / "log.db",
                          "--workers", "2"],
        "adapt": ["adapt", "--checkpoint", model, "--data", f.data, "--out", t / "a"],
    }[mode]


def in_process(args: list, cwd: Path, monkeypatch, capsys) -> tuple[int, str]:
    """``wastenet ARGS`` through ``cli.main`` here: (exit status, stderr)."""
    import uvicorn

    from wastenet.cli import main

    def no_serving(*_a, **_k):
        raise AssertionError("serve got past its checks and started serving")

    monkeypatch.setattr(uvicorn, "run", no_serving)
    monkeypatch.delenv("WASTENET_REVIEW_TOKEN", raising=False)  # serve makes one: its line must wait for the checks
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own one-line errors
        rc = exc.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_exit_2_and_nothing_half_written(case: Case, f, tmp_path, monkeypatch, capsys):
    _id, build, words, never = case
    work = tmp_path / "work"
    work.mkdir()
    args = build(f, work)
    before = sorted(p.name for p in work.iterdir())
    if _id in REAL_ENTRY_POINT:
        proc = wastenet(*args, cwd=work)
        rc, err = proc.returncode, proc.stderr
    else:
        rc, err = in_process(args, work, monkeypatch, capsys)
    assert "Traceback" not in err, err
    assert rc == 2, (rc, err)
    assert len(err.strip().splitlines()) == 1, err
    assert words in err, err
    for name in never:
        assert not (work / name).exists(), f"{name} was written"
    assert sorted(p.name for p in work.iterdir()) == before  # nothing else either (a default output name)
    assert not f.marker.exists()  # the pickle's code never ran
    assert not list(Path(f.ckpt).parent.glob("*.onnx"))  # nor beside the checkpoint (export's default)
    assert not list(Path(f.ckpt).parent.glob("eval-*"))  # nor eval's default report folder


def test_every_mode_is_walked():
    from wastenet.cli import MODES

    walked = {c[0].split("-")[0] for c in CASES}
    assert walked >= set(MODES) - {"review"}, set(MODES) - walked  # review has its own: tests/test_review.py


# ---------------------------------------------------------------- the promises that are not refusals
@pytest.fixture(scope="module")
def int8_onnx(f) -> Path:
    """The edge file, made as a user makes it from an fp32 ONNX file (export takes one with --int8)."""
    from wastenet.cli import main

    out = f.dir / "tiny.int8.onnx"
    assert main(["export", "--checkpoint", str(f.onnx), "--int8", "--calib-data", str(f.data), "--calib-count", "12",
                 "--check-count", "4", "--out", str(out)]) == 0
    return out


def _metrics(folder: Path) -> dict:
    assert (folder / "report.md").is_file()
    return json.loads((folder / "metrics.json").read_text())


def test_eval_takes_an_onnx_file_as_predict_and_serve_do(f, int8_onnx, tmp_path, monkeypatch, capsys):
    common = ["--data", f.data, "--split-file", f.split]
    assert in_process(["eval", "--checkpoint", f.ckpt, *common, "--out", tmp_path / "pt"], tmp_path,
                      monkeypatch, capsys)[0] == 0
    assert in_process(["eval", "--checkpoint", f.onnx, *common, "--out", tmp_path / "onnx"], tmp_path,
                      monkeypatch, capsys)[0] == 0
    proc = wastenet("eval", "--checkpoint", int8_onnx, *common, "--out", tmp_path / "int8", cwd=tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    pt, fp32, q = (_metrics(tmp_path / name) for name in ("pt", "onnx", "int8"))
    n = pt["metrics"]["n"]
    assert fp32["metrics"]["n"] == q["metrics"]["n"] == n > 0
    assert set(fp32) == set(q) == set(pt) and set(fp32["metrics"]) == set(pt["metrics"])  # the same report
    assert abs(fp32["metrics"]["accuracy"] - pt["metrics"]["accuracy"]) <= 1 / n  # the same model, fp32
    assert fp32["calibration"]["temperature"] == pt["calibration"]["temperature"]
    # field mode too, on the edge file
    rc, err = in_process(["eval", "--checkpoint", int8_onnx, "--data", f.data, "--class-map", _identity_map(tmp_path),
                          "--out", tmp_path / "field"], tmp_path, monkeypatch, capsys)
    assert rc == 0, err
    assert (tmp_path / "field" / "report.md").is_file()
    # what eval cannot do with an ONNX file is one line
    rc, err = in_process(["eval", "--checkpoint", f.onnx, *common, "--recalibrate", "--out", tmp_path / "re"],
                         tmp_path, monkeypatch, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--recalibrate" in err, err


def test_a_missing_split_row_is_skipped_only_when_asked(f, tmp_path, monkeypatch, capsys):
    from wastenet.cli import build_parser
    from wastenet.commands.train import config_from_args
    from wastenet.data.datasets import read_split_file
    from wastenet.errors import ConfigError

    with pytest.raises(ConfigError, match="not_there.jpg does not exist.*--skip-missing"):
        read_split_file(f.split_missing, f.data)
    assert read_split_file(f.split_missing, f.data, skip_missing=True) == read_split_file(f.split, f.data)
    args = build_parser().parse_args(["train", "--data", str(f.data), "--skip-missing"])
    assert config_from_args(args).skip_missing is True  # the option reaches training's split reader
    rc, err = in_process(["eval", "--checkpoint", f.ckpt, "--data", f.data, "--split-file", f.split_missing,
                          "--skip-missing", "--out", tmp_path / "ev"], tmp_path, monkeypatch, capsys)
    assert rc == 0 and (tmp_path / "ev" / "report.md").is_file(), err


def test_predict_says_how_many_folder_entries_it_did_not_read(f, tmp_path, monkeypatch, capsys):
    shots = tmp_path / "shots"
    shots.mkdir()
    shutil.copy(f.image, shots / "a.jpg")
    os.mkfifo(shots / "camera.jpg")  # reading it would block forever: nobody writes
    (shots / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    rc, err = in_process(["predict", "--checkpoint", f.ckpt, shots, "--format", "csv", "--out", tmp_path / "o.csv"],
                         tmp_path, monkeypatch, capsys)
    assert rc == 0, err
    assert "skipped 2 folder entries that are not a regular file" in err, err
    assert len((tmp_path / "o.csv").read_text().splitlines()) == 2  # the header and a.jpg


def test_the_cpu_is_described_in_one_place_from_proc_cpuinfo():
    from wastenet.machine import PRECISION_FLAGS, cpu_description, cpu_info

    info = cpu_info()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = set(next(line.split(":", 1)[1].split() for line in lines if line.startswith("flags")))
        assert info == {"model": model, "isa": [x for x in PRECISION_FLAGS if x in flags]}
    assert cpu_description().startswith(info["model"])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import _common
    finally:
        sys.path.pop(0)
    assert _common.cpu_description is cpu_description  # the benchmarks print the run's description
