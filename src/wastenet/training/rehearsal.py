"""The rehearsal set's features for site adaptation: computed once per frozen backbone, keyed, stored.

Adaptation re-fits only the head, so the rehearsal set's features (the original training data's train
rows with their augmented views, and its val rows) are the same for every run from a version of one
model. :func:`rehearsal_features` computes them, :func:`cache_file` says where they are kept for a
backbone and a draw of rows, :func:`read_cache`/:func:`write_cache` keep them (bounded, atomic)::

    path = cache_file("runs/x/models/.feature-cache", backbone_key(model, prep), mix, train_rows, val_rows, cfg)
    stored = read_cache(path)                           # None: compute them
    write_cache(path, *rehearsal_features(passes, adapt_augment(), train_cache, val_cache, cfg))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wastenet.data.datasets import Row

if TYPE_CHECKING:
    import torch

    from wastenet.training.adapt import AdaptConfig

__all__ = ["CACHE_KEEP", "adapt_augment", "cache_file", "features_with_views", "read_cache", "rehearsal_features",
           "rehearsal_key", "write_cache"]


def adapt_augment() -> "torch.nn.Module":
    """The views adaptation learns from: the training recipe's augmentation and the camera's jitter."""
    import torch

    from wastenet.data.augment import AugmentConfig, KerasAugment
    from wastenet.data.composite import CameraJitter

    return torch.nn.Sequential(KerasAugment(AugmentConfig()), CameraJitter())


def features_with_views(passes: Any, augment: Any, c: Any, n_views: int,
                        desc: str) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Features of cached images ``c``: the clean ones first (rows ``:len(c)``, reused for the unknown-item rule),
    then ``n_views`` augmented passes; and their labels, tiled alike."""
    import torch

    feats = [torch.from_numpy(passes(c.images, desc=f"{desc} (clean)")[0])]
    feats += [torch.from_numpy(passes(c.images, augment=augment, desc=f"{desc} (view {v + 1}/{n_views})")[0])
              for v in range(n_views)]
    return torch.cat(feats), torch.from_numpy(np.tile(c.labels, 1 + n_views)).long()


def rehearsal_features(passes: Any, augment: Any, train: Any, val: Any, cfg: "AdaptConfig",
                       dim: int = 0) -> tuple["torch.Tensor", ...]:
    """``(x_mix, y_mix, x_val, y_val)`` of the rehearsal set's cached train (clean + views) and val images (clean);
    either may be None (no rows: empty tensors of width ``dim``). The views are drawn from ``cfg.seed`` alone, so
    the features depend only on what :func:`rehearsal_key` hashes, whichever run or process computes them."""
    import torch

    torch.manual_seed(cfg.seed)
    none = (torch.zeros(0, dim), torch.zeros(0, dtype=torch.long))
    x_mix, y_mix = (features_with_views(passes, augment, train, cfg.views, "rehearsal features")
                    if train is not None else none)
    if val is not None:
        x_val = torch.from_numpy(passes(val.images, desc="validation features (rehearsal)")[0])
        y_val = torch.from_numpy(val.labels).long()
    else:
        x_val, y_val = torch.zeros(0, x_mix.shape[1] if len(x_mix) else dim), none[1]
    return x_mix, y_mix, x_val, y_val


#: Rehearsal files kept in a cache folder (one per backbone and draw of rows; normally one).
CACHE_KEEP = 3


def rehearsal_key(backbone: str, mix: Any, mix_train: list[Row], mix_val: list[Row], cfg: "AdaptConfig") -> str:
    """What the rehearsal features depend on: the backbone (its weights but the head's, and the
    preprocessing: :func:`~wastenet.training.feature_store.backbone_key`), the rows and their labels,
    the views and the seed."""
    import hashlib

    rows = [(r.path, r.label) for r in mix_train] + [("val", r.path, r.label) for r in mix_val]
    return hashlib.sha256(repr((backbone, str(Path(mix).resolve()), rows, cfg.views, cfg.seed)).encode()).hexdigest()[:20]


def cache_file(feature_cache: str | Path | None, backbone: str | None, mix: Any, mix_train: list[Row],
               mix_val: list[Row], cfg: "AdaptConfig") -> Path | None:
    """Where the rehearsal features of these rows through this backbone are kept; None without a cache or rows."""
    if not (feature_cache and backbone and mix_train):
        return None
    return Path(feature_cache) / f"rehearsal-{rehearsal_key(backbone, mix, mix_train, mix_val, cfg)}.npz"


def read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """``{"x_mix", "y_mix", "x_val", "y_val"}`` from ``path``; None when it is missing or unreadable."""
    try:
        with np.load(path) as z:
            return {k: z[k] for k in ("x_mix", "y_mix", "x_val", "y_val")}
    except (OSError, KeyError, ValueError):
        return None  # none yet, or unreadable: computed again


def write_cache(path: Path, x_mix: Any, y_mix: Any, x_val: Any, y_val: Any) -> None:
    """Keep the four tensors at ``path`` (atomically), and only the newest :data:`CACHE_KEEP` files beside it."""
    import io

    from wastenet.files import write_atomic

    buf = io.BytesIO()
    np.savez(buf, x_mix=x_mix.numpy(), y_mix=y_mix.numpy(), x_val=x_val.numpy(), y_val=y_val.numpy())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())
    # bounded: a cache per backbone and rehearsal set; the newest few stay (one, normally)
    for old in sorted(path.parent.glob("rehearsal-*.npz"), key=lambda p: p.stat().st_mtime)[:-CACHE_KEEP]:
        old.unlink(missing_ok=True)
