"""`wastenet export`: a checkpoint as one self-contained ONNX file (optionally INT8 too).

    wastenet export --checkpoint runs/x/best.pt                       # -> runs/x/best.onnx
    wastenet export --checkpoint runs/x/best.pt --opset 13 --out wastenet13.onnx   # Jetson
    wastenet export --checkpoint runs/x/best.pt --int8 --calib-data data/trashnet \\
        --calib-split-file runs/x/split.csv                          # -> best.onnx + best.int8.onnx

Every export is checked: ``onnx.checker`` plus PyTorch vs onnxruntime logits on real or
generated images (the file is not written if they disagree beyond ``--tolerance``).
Heavy libraries are imported inside ``run`` only. The policies (which images calibrate, what
``--int8-exclude`` means) live in :mod:`wastenet.export.int8`; this module parses and prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wastenet.errors import ConfigError
from wastenet.files import check_output

# renders as "": stops ArgumentDefaultsHelpFormatter appending "(default: None)"
_NO_DEFAULT = "%(default).0s"

HELP = "Export a checkpoint to ONNX (fp32, optionally INT8) for onnxruntime / TensorRT."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from wastenet.export.int8 import CALIBRATION_METHODS  # torch-free
    p.add_argument("--checkpoint", required=True, metavar="FILE.pt",
                   help="wastenet checkpoint to export (an fp32 .onnx file is accepted with --int8)" + _NO_DEFAULT)
    p.add_argument("--format", default="onnx", choices=["onnx"], help="output format")
    p.add_argument("--opset", type=int, default=17,
                   help="ONNX opset (13 for TensorRT 8.2 / JetPack 4.6 on a Jetson Nano)")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="output file; when not given: NAME.onnx beside the checkpoint, or NAME.int8.onnx "
                        "with --int8 (the fp32 file then goes beside the INT8 one)" + _NO_DEFAULT)
    p.add_argument("--check-data", nargs="+", metavar="DIR_OR_FILE", default=None,
                   help="images for the PyTorch-vs-ONNX parity check; generated images when not given" + _NO_DEFAULT)
    p.add_argument("--check-count", type=int, default=16,
                   help="at most this many images, evenly spread, from each --check-data folder")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed |logit difference|")
    q = p.add_argument_group("INT8 (static QDQ quantisation, onnxruntime)")
    q.add_argument("--int8", action="store_true", help="also write an INT8 model calibrated on --calib-data")
    q.add_argument("--calib-data", metavar="DIR", default=None, help="dataset folder for calibration" + _NO_DEFAULT)
    q.add_argument("--calib-split-file", metavar="CSV", default=None,
                   help="split file (path,label,split): calibrate on its train rows only; all images "
                        "under --calib-data when not given" + _NO_DEFAULT)
    q.add_argument("--calib-count", type=int, default=200, help="calibration images (evenly spread)")
    q.add_argument("--calib-method", default="minmax", choices=CALIBRATION_METHODS,
                   help="activation range calibration")
    q.add_argument("--int8-exclude", default="auto", metavar="LIST",
                   help="comma list kept in float: first_conv, classifier, module names (blocks.0) or "
                        "node names; 'auto' = the measured default for the architecture, 'none' = nothing")


def _int8_paths(ckpt: Path, out: str | None) -> tuple[Path, Path]:
    """(fp32 path, int8 path) for an --int8 export."""
    int8 = Path(out) if out else ckpt.with_name(f"{ckpt.stem}.int8.onnx")
    name = int8.name
    fp32_name = name[: -len(".int8.onnx")] + ".onnx" if name.endswith(".int8.onnx") else f"{int8.stem}.fp32.onnx"
    return int8.with_name(fp32_name), int8


def _check_images(specs: list[str] | None, count: int) -> list[Path] | None:
    from wastenet.data.images import iter_image_files
    from wastenet.export.onnx import spread

    if specs is None:
        return None
    paths: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            paths += spread(iter_image_files(p), count)
        elif p.is_file():
            paths.append(p)
        else:
            raise ConfigError(f"--check-data: no such file or folder: {p}")
    if not paths:
        raise ConfigError("--check-data: no images found")
    return paths


def run(args: argparse.Namespace) -> int:
    ckpt = Path(args.checkpoint)
    if args.int8 and not args.calib_data:
        raise ConfigError("--int8 needs --calib-data DIR (training images to calibrate activation ranges)")
    if not args.int8 and (args.calib_data or args.calib_split_file):
        raise ConfigError("--calib-data/--calib-split-file only apply with --int8")
    if args.calib_count < 1 or args.check_count < 1:
        raise ConfigError("--calib-count and --check-count must be at least 1")
    if not ckpt.is_file():
        raise ConfigError(f"checkpoint not found: {ckpt}")
    from_onnx = ckpt.suffix.lower() == ".onnx"
    if from_onnx and not args.int8:
        raise ConfigError(f"{ckpt} is already ONNX: pass a .pt checkpoint (or --int8 to quantise it)")
    from wastenet.export.int8 import calibration_images, parse_exclude, quantize_int8
    from wastenet.export.onnx import export_onnx

    exclude = parse_exclude(args.int8_exclude)
    calib = calibration_images(args.calib_data, args.calib_split_file) if args.int8 else []
    checks = _check_images(args.check_data, args.check_count)

    if args.int8:
        fp32_path, int8_path = _int8_paths(ckpt, args.out)
    else:
        fp32_path, int8_path = (Path(args.out) if args.out else ckpt.with_suffix(".onnx")), None
    for path in ([] if from_onnx else [fp32_path]) + ([int8_path] if int8_path else []):
        check_output(path, option="--out" if args.out else "")

    if from_onnx:
        fp32_path = ckpt
    else:
        r = export_onnx(ckpt, fp32_path, opset=args.opset, check_images=checks, tolerance=args.tolerance)
        source = "generated images" if checks is None else "images"
        print(f"wrote {r.path}  fp32  {r.size_mb:.2f} MB  opset {r.opset}")
        print(f"  parity vs PyTorch: max |Δlogit| = {r.max_abs_diff:.2e} over {r.n_images} {source} "
              f"(tolerance {args.tolerance:g})")
        for msg in r.details.get("skipped_check_images", []):
            print(f"  skipped check image {msg}", file=sys.stderr)
    if int8_path is not None:
        q = quantize_int8(fp32_path, int8_path, calib, n_calib=args.calib_count, method=args.calib_method,
                          exclude=exclude, check_count=args.check_count)
        kept = ", ".join(q.details.get("excluded", ())) or "nothing"
        origin = "train rows" if args.calib_split_file else "all images"
        print(f"wrote {q.path}  int8 (QDQ, {args.calib_method})  {q.size_mb:.2f} MB  opset {q.opset}")
        print(f"  calibrated on {q.details['calibration_images']} images ({origin} of {args.calib_data}); "
              f"kept in float: {kept}")
        if q.n_images:
            print(f"  vs fp32 ONNX: max |Δlogit| = {q.max_abs_diff:.3g}, top-1 agreement "
                  f"{q.agreement:.1%} over {q.n_images} calibration images")
        for msg in q.details.get("skipped", []):
            print(f"  skipped calibration image {msg}", file=sys.stderr)
    return 0
