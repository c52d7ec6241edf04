"""Losses: cross-entropy with label smoothing, and a correct softmax focal loss.

    loss_fn = build_loss("focal", num_classes=6, class_counts=[403, 501, 410, 594, 482, 137],
                         alpha="balanced", gamma=2.0)
    loss = loss_fn(logits, targets)

The focal loss takes ``pt`` from the *unweighted* cross-entropy, so ``pt`` is the model's
probability of the true class; class weights enter only through ``alpha[y]`` (the seed
project multiplied them into the CE first, which makes ``exp(-ce)`` meaningless).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from wastenet.errors import ConfigError
from wastenet.training.config import LOSSES


def balanced_weights(class_counts: Sequence[int]) -> torch.Tensor:
    """scikit-learn's ``balanced`` weights: n_samples / (n_classes * count)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float32).clamp(min=1)
    return counts.sum() / (len(counts) * counts)


class FocalLoss(nn.Module):
    """Multiclass softmax focal loss: ``-alpha[y] * (1 - p_y)**gamma * log p_y`` (Lin et al. 2017)."""

    def __init__(self, gamma: float = 2.0, alpha: torch.Tensor | None = None, reduction: str = "mean") -> None:
        super().__init__()
        if gamma < 0:
            raise ConfigError("focal gamma must be >= 0")
        self.gamma = float(gamma)
        self.register_buffer("alpha", alpha.float() if alpha is not None else None)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), target, reduction="none")  # unweighted on purpose
        pt = torch.exp(-ce)
        loss = (1.0 - pt).pow(self.gamma) * ce
        if self.alpha is not None:
            loss = self.alpha.to(loss.device)[target] * loss
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


def _alpha(alpha: str | Sequence[float] | None, num_classes: int, class_counts: Sequence[int] | None) -> torch.Tensor | None:
    if alpha in (None, "none"):
        return None
    if alpha == "balanced":
        if class_counts is None:
            raise ConfigError("alpha='balanced' needs the class counts")
        return balanced_weights(class_counts)
    values = torch.as_tensor(list(alpha), dtype=torch.float32)
    if values.numel() == 1:
        return values.expand(num_classes).clone()
    if values.numel() != num_classes:
        raise ConfigError(f"alpha needs {num_classes} values, got {values.numel()}")
    return values


def build_loss(
    name: str,
    num_classes: int,
    *,
    label_smoothing: float = 0.0,
    gamma: float = 2.0,
    alpha: str | Sequence[float] | None = None,
    class_counts: Sequence[int] | None = None,
) -> nn.Module:
    """``ce`` (optionally class-weighted via ``alpha``, with label smoothing) or ``focal``."""
    weights = _alpha(alpha, num_classes, class_counts)
    if name == "ce":
        return nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)
    if name == "focal":
        return FocalLoss(gamma=gamma, alpha=weights)
    raise ConfigError(f"unknown loss {name!r}; choose from {LOSSES}")
