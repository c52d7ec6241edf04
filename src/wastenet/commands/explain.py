"""``wastenet explain``: a Grad-CAM heat map of where the model looked, over its input crop.

Usage::

    wastenet explain --checkpoint runs/x/best.pt bottle.jpg                 # -> bottle_gradcam.png
    wastenet explain --checkpoint runs/x/best.pt bottle.jpg --out heat.png --class plastic
    wastenet explain --checkpoint runs/x/best.pt bottle.jpg --device cuda

Prints the prediction and the output path. Exit status: 0 done, 1 the image cannot be
decoded, 2 bad checkpoint (missing, not a .pt) or unknown class name. Torch is imported
inside ``run`` only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Grad-CAM heat map of the evidence behind a prediction (needs a .pt checkpoint)."
# renders as "": stops ArgumentDefaultsHelpFormatter appending "(default: None)" where None means "see text"
_NO_DEFAULT = "%(default).0s"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="FILE.pt", help="training checkpoint (.pt)" + _NO_DEFAULT)
    parser.add_argument("image", metavar="IMAGE", help="the image to explain")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="where to write the PNG overlay (default: IMAGE_gradcam.png in the current folder)" + _NO_DEFAULT)
    parser.add_argument("--class", dest="target_class", default=None, metavar="NAME",
                        help="class to explain (default: the predicted class)" + _NO_DEFAULT)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="where the model runs")


def run(args: argparse.Namespace) -> int:
    from wastenet.errors import ConfigError
    from wastenet.files import check_output

    if Path(args.checkpoint).suffix.lower() != ".pt":
        raise ConfigError(f"explain needs a .pt checkpoint (Grad-CAM needs gradients), got {args.checkpoint}")
    out = check_output(args.out if args.out else f"{Path(args.image).stem}_gradcam.png")

    from wastenet.inference.explain import class_index, explain, save_overlay
    from wastenet.inference.predictor import Classifier

    clf = Classifier.load(args.checkpoint, device=args.device)
    target = class_index(clf.classes, args.target_class)  # bad name: exit 2 before any work
    overlay, _heatmap, pred = explain(clf, args.image, target_class=target)  # undecodable: exit 1
    save_overlay(overlay, out)
    explained = clf.classes[target] if target is not None else pred.label
    print(pred)
    print(f"Grad-CAM for class {explained!r} written to {out}")
    return 0
