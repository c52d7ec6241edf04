"""Batched Keras-style augmentation and the tensor half of preprocessing.

The paper used Keras' ``ImageDataGenerator``: zoom, rotation, shifts, horizontal flip and
``fill_mode="nearest"`` (new pixels copy the nearest edge pixel). torchvision's RandomAffine
only fills with a constant, so we use kornia's, which replicates the border, on whole
batches of cached uint8 squares::

    aug = KerasAugment(AugmentConfig(zoom=0.2, rotation=20, shift=0.1))
    aug = KerasAugment(AugmentConfig.from_config(train_config))   # a run's own settings (data/augment_config.py)
    x = to_model_batch(cache_u8[idx], prep, augment=aug)    # float [B, 3, S, S], normalised
"""

from __future__ import annotations

import torch
import torch.nn as nn

from wastenet.data.augment_config import FILL_MODES, AugmentConfig
from wastenet.preprocessing import Preprocessing

__all__ = ["AugmentConfig", "KerasAugment", "build_augment", "center_crop_tensor", "field_augment_on",
           "to_model_batch"]


def field_augment_on(cfg: AugmentConfig, studio_like: bool) -> bool:
    """Whether field augmentation runs: ``composite`` on, or ``auto`` on studio-like photos."""
    return cfg.composite == "on" or (cfg.composite == "auto" and studio_like)


def build_augment(cfg: AugmentConfig, studio_like: bool) -> nn.Module:
    """The training augmentation: field augmentation (if on) around the Keras-style affine.

    Order: composite (new background, new item scale) -> affine and flips -> camera (colour,
    white balance, blur, JPEG, noise) -> optional TrivialAugment/RandAugment.
    """
    from wastenet.data.composite import CameraJitter, PolicyAugment, StudioComposite

    field_on = field_augment_on(cfg, studio_like)
    ops: list[nn.Module] = []
    if field_on:
        ops.append(StudioComposite(min_cover=cfg.min_cover if cfg.scale_jitter else None,
                                   max_cover=cfg.max_cover, backgrounds=cfg.backgrounds))
    ops.append(KerasAugment(cfg))
    if field_on and (cfg.color_jitter > 0 or cfg.blur_jpeg > 0):
        ops.append(CameraJitter(cfg.color_jitter, cfg.blur_jpeg))
    if cfg.auto_augment != "none":
        ops.append(PolicyAugment(cfg.auto_augment))
    return nn.Sequential(*ops)


_PADDING = dict(zip(FILL_MODES, ("border", "zeros", "reflection")))  # kornia's names for them


class KerasAugment(nn.Module):
    """Random zoom, rotation, shift and flips on a float batch ``[B, 3, H, W]`` in [0, 1]."""

    def __init__(self, cfg: AugmentConfig | None = None) -> None:
        super().__init__()
        import kornia.augmentation as K

        cfg = cfg or AugmentConfig()
        if cfg.fill not in _PADDING:
            raise ValueError(f"fill must be one of {sorted(_PADDING)}")
        ops: list[nn.Module] = []
        if cfg.zoom or cfg.rotation or cfg.shift:
            ops.append(K.RandomAffine(
                degrees=cfg.rotation,
                translate=(cfg.shift, cfg.shift) if cfg.shift else None,
                scale=(1 - cfg.zoom, 1 + cfg.zoom) if cfg.zoom else None,
                padding_mode=_PADDING[cfg.fill],
                p=1.0,
            ))
        if cfg.hflip:
            ops.append(K.RandomHorizontalFlip())
        if cfg.vflip:
            ops.append(K.RandomVerticalFlip())
        self.ops = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x) if len(self.ops) else x


def center_crop_tensor(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Centre crop ``[..., H, W]`` to a side or (height, width) with torchvision's rounding
    (matches ``preprocessing.center_crop``)."""
    ch, cw = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return x[..., top : top + ch, left : left + cw]


def to_model_batch(
    images_u8: torch.Tensor,
    prep: Preprocessing,
    augment: nn.Module | None = None,
    device: torch.device | str = "cpu",
    hflip: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """Cached uint8 squares ``[B, 3, R, R]`` -> normalised model input ``[B, 3, S, S]``.

    Augmentation runs on the full cached square (so shifts and zoom-outs have real pixels to
    show) before the centre crop; without it this equals the eval transform exactly.
    """
    x = images_u8.to(device, non_blocking=True).float().div_(255.0)
    if augment is not None:
        x = augment(x)
    x = center_crop_tensor(x, prep.hw)  # the identity in the aspect-preserving mode
    if hflip:
        x = x.flip(-1)
    mean = torch.tensor(prep.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
