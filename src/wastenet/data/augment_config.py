"""The augmentation settings, their defaults and the fill modes: torch-free, so that ``TrainConfig``
and the command line (built for every mode, also on the edge) take their defaults from here::

    cfg = AugmentConfig(zoom=0.2, rotation=20, shift=0.1)
    cfg = AugmentConfig.from_config(train_config)      # a run's own settings (fields of the same name)

:mod:`wastenet.data.augment` builds the augmentation from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["AUTO_AUGMENT_MODES", "AugmentConfig", "COMPOSITE_MODES", "FILL_MODES"]

FILL_MODES = ("nearest", "constant", "reflect")  # Keras fill_mode names
#: ``--composite``: auto (when the training photos are studio-like), on, off
COMPOSITE_MODES = ("auto", "on", "off")
#: ``--auto-augment``: none, or kornia's TrivialAugment / RandAugment
AUTO_AUGMENT_MODES = ("none", "trivial", "rand")


@dataclass
class AugmentConfig:
    """The augmentation settings; ``TrainConfig`` has a field of the same name and default for each."""

    zoom: float = 0.2          # scale in [1 - zoom, 1 + zoom]
    rotation: float = 20.0     # degrees
    shift: float = 0.1         # fraction of width/height
    hflip: bool = True
    vflip: bool = False
    fill: str = "nearest"      # nearest (replicate border) | constant | reflect
    # Field augmentation (data/composite.py): applied when `composite` is on, or "auto" and the
    # training photos are studio-like (an item on a plain board, as in TrashNet).
    composite: str = "auto"         # auto | on | off: items onto new backgrounds
    scale_jitter: bool = True       # the item covers min_cover..max_cover of the frame
    min_cover: float = 0.05
    max_cover: float = 1.0
    backgrounds: str | None = None  # real background photos mixed with procedural ones
    color_jitter: float = 0.3       # brightness/contrast/saturation + white balance (0 = off)
    blur_jpeg: float = 0.25         # probability of blur, JPEG, sensor noise each (0 = off)
    auto_augment: str = "none"      # none | trivial | rand (kornia)

    @classmethod
    def from_config(cls, cfg: Any) -> "AugmentConfig":
        """The fields of the same name from a TrainConfig (or anything with those attributes)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})
