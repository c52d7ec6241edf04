"""The network plus its unknown-item score, as one module: logits and a Mahalanobis score.

The same module runs in PyTorch and is what ``wastenet export`` writes to ONNX (outputs
``logits`` and ``ood``), so the torch-free runtime gets the feature-space score from the graph
without carrying the statistics separately::

    net = ScoredNet(model, stats)         # stats = wastenet.ood.fit_mahalanobis(...)
    logits, ood = net(x)                  # [N, C], [N]; same numbers as ood.mahalanobis_score
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from wastenet.models import extract_features


class MahalanobisScore(nn.Module):
    """``wastenet.ood.mahalanobis_score`` as graph operations (opset 13: MatMul, Sub, ReduceSum, Min)."""

    def __init__(self, stats: Mapping[str, Any]) -> None:
        super().__init__()

        def t(name: str) -> torch.Tensor:
            return torch.as_tensor(np.asarray(stats[name], dtype=np.float32))

        means, basis = t("means"), t("basis")
        self.register_buffer("basis", basis)                       # [D, k]
        self.register_buffer("means", means)                       # [C, D]
        self.register_buffer("inv_var", t("inv_var"))              # [k]
        self.register_buffer("inv_rest", t("inv_rest").reshape(()))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        # differences first, then squares: expanding ||f - mu||^2 loses digits in fp32
        diff = f.float()[:, None, :] - self.means[None]             # [N, C, D]
        z = diff @ self.basis                                       # [N, C, k]
        inside = (z ** 2 * self.inv_var).sum(-1)                    # [N, C]
        residual = torch.clamp((diff ** 2).sum(-1) - (z ** 2).sum(-1), min=0.0)
        return (inside + residual * self.inv_rest).min(dim=1).values


class ScoredNet(nn.Module):
    """A classifier that also returns the unknown-item score of its pooled features."""

    def __init__(self, model: nn.Module, stats: Mapping[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.score = MahalanobisScore(stats)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(x)
        # pooling twice costs nothing next to the backbone, and works for every head layout
        pooled = self.model.forward_head(feats, pre_logits=True)
        return self.model.forward_head(feats), self.score(pooled)


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features the score is fitted on (what the head sees)."""
    return extract_features(model, x)


class FeaturesAndLogits(nn.Module):
    """Pooled features and logits side by side ``[N, D + C]``: one frozen pass gives both."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.model.forward_features(x)
        return torch.cat([self.model.forward_head(f, pre_logits=True), self.model.forward_head(f)], dim=1)


@torch.no_grad()
def features_and_logits(model: nn.Module, images_u8: np.ndarray, prep: Any, device: Any = "cpu",
                        batch_size: int = 64, desc: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Pooled fp32 features ``[N, D]`` and logits ``[N, C]`` of cached uint8 squares (eval transform),
    through the frozen-pass backend rule and progress of :mod:`wastenet.training.frozen`."""
    from wastenet.training.frozen import FrozenRunner, choose_backend, frozen_pass, prep_hw

    model.eval()
    if len(images_u8) == 0:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    device = torch.device(device)
    both = FeaturesAndLogits(model).eval()
    n_logits = int(model.forward_head(model.forward_features(
        torch.zeros(1, 3, *prep_hw(prep), device=device))).shape[1])
    runner = FrozenRunner(both, device, None, False, choose_backend("auto", device, len(images_u8)),
                          input_hw=prep_hw(prep))
    out = frozen_pass(runner, images_u8, prep, device=device, desc=desc, batch_size=batch_size).float().cpu().numpy()
    return out[:, :-n_logits], out[:, -n_logits:]


def fit_unknown_detector(model: nn.Module, prep: Any, train: tuple[np.ndarray, np.ndarray],
                         val_images: np.ndarray, n_classes: int, temperature: float,
                         device: Any = "cpu", keep: float | None = None, method: str | None = None) -> dict[str, Any]:
    """Fit the unknown-item scores at the end of training; thresholds from the validation split only.

    Computes the clean features of the train and validation images, then :func:`unknown_rule`.
    """
    train_feats, _ = features_and_logits(model, train[0], prep, device, desc="unknown-item statistics (train)")
    val_feats, val_logits = features_and_logits(model, val_images, prep, device, desc="unknown-item threshold (val)")
    return unknown_rule(train_feats, train[1], val_feats, val_logits, n_classes, temperature, keep, method)


def unknown_rule(train_feats: np.ndarray, train_labels: np.ndarray, val_feats: np.ndarray, val_logits: np.ndarray,
                 n_classes: int, temperature: float, keep: float | None = None,
                 method: str | None = None) -> dict[str, Any]:
    """The checkpoint's ``ood`` entry from features already computed.

    The default method, a threshold per method (the score under which ``keep`` of the
    validation items fall) and the Mahalanobis statistics as tensors
    (``torch.load(weights_only=True)`` reads tensors, not NumPy arrays).
    """
    from wastenet import ood

    keep = ood.DEFAULT_KEEP if keep is None else keep
    method = method or ood.DEFAULT_METHOD
    stats = ood.fit_mahalanobis(train_feats, train_labels, n_classes)
    val_scores = {m: ood.scores(m, val_logits, temperature, val_feats, stats) for m in ood.METHODS}
    return {
        "method": method,
        "keep": float(keep),
        "thresholds": {m: ood.threshold_for_coverage(s, keep) for m, s in val_scores.items()},
        "dims": int(np.asarray(stats["basis"]).shape[1]),
        "stats": {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in stats.items()},
        "fitted_on": {"train": int(len(train_feats)), "val": int(len(val_feats))},
    }
