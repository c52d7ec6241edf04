"""Features of reviewed photos, kept between adaptation runs of one frozen backbone.

Adaptation re-fits only the head, so a photo's features (its clean pass and its augmented views)
are the same in every run from a version of one model. The service adapts again and again on a
log whose reviewed items only grow; without a store each run passes every reviewed photo through
the backbone ``1 + views`` times, and the run's time grows with the log (densenet121, one niced
thread: 196 s on 201 reviewed items without it on a shared CPU, 17 s on 164 with it on an idle one; BENCHMARKS.md "Site stream on
the default model"). With it, a run passes only the photos it has not seen::

    store = ItemFeatureStore("runs/x/models/.feature-cache", backbone_key(model), views=4, seed=0)
    clean, views = store.features(cache, passes, augment)   # [N, D], [views, N, D]; new photos computed
    store.save()

A photo is keyed by its decoded pixels (the same photo under another id is the same item). The
augmented views of the photos new to a run come from one generator seeded by ``seed`` and those
photos' keys, so the features do not depend on which runs came before. The file holds the photos
of the latest run only (the log's reviewed items are bounded by its cap, so the file is too), and
it is written atomically; an unreadable file is computed again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ItemFeatureStore", "backbone_key"]

KEEP = 3  # item files kept in a folder


def backbone_key(model: Any, *extra: Any) -> str:
    """A hash of the model's weights except its head's, plus ``extra`` (preprocessing, rows, ...)."""
    head = {id(p) for p in model.get_classifier().parameters()}
    h = hashlib.sha256()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in head:
            continue
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(extra).encode())
    return h.hexdigest()[:20]


class ItemFeatureStore:
    """Clean and augmented features of photos, by pixel content, in ``folder/items-KEY.npz``."""

    def __init__(self, folder: str | Path, key: str, views: int, seed: int = 0) -> None:
        self.path = Path(folder) / f"items-{key}-v{views}-s{seed}.npz"
        self.views, self.seed = views, seed
        self._clean: dict[str, np.ndarray] = {}
        self._views: dict[str, np.ndarray] = {}
        self._used: set[str] = set()
        try:
            with np.load(self.path) as z:
                keys = [str(k) for k in z["keys"]]
                self._clean = dict(zip(keys, z["clean"]))
                has = [str(k) for k in z["view_keys"]]
                self._views = dict(zip(has, np.moveaxis(z["views"], 1, 0))) if len(has) else {}
        except (OSError, KeyError, ValueError):
            pass  # none yet, or unreadable: computed again
        self.reused = 0

    @staticmethod
    def keys_of(images_u8: np.ndarray) -> list[str]:
        return [hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images_u8]

    def features(self, cache: Any, passes: Any, augment: Any = None, desc: str = "reviewed features",
                 with_views: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """``(clean [N, D], views [V, N, D] or None)`` of ``cache.images``; only photos not stored are passed."""
        import torch

        keys = self.keys_of(cache.images)
        self._used.update(keys)
        need_clean = [i for i, k in enumerate(keys) if k not in self._clean]
        if need_clean:
            feats = passes(cache.images[need_clean], desc=f"{desc} (clean, {len(need_clean)} new)")[0]
            self._clean.update({keys[i]: f for i, f in zip(need_clean, feats)})
        views = None
        if with_views and self.views:
            need = sorted({i for i, k in enumerate(keys) if k not in self._views}, key=lambda i: keys[i])
            if need:
                seed = int(hashlib.sha1(repr((self.seed, [keys[i] for i in need])).encode()).hexdigest()[:8], 16)
                torch.manual_seed(seed)  # the augmentations: from the seed and these photos only
                new = [passes(cache.images[need], augment=augment, desc=f"{desc} (view {v + 1}/{self.views}, "
                                                                          f"{len(need)} new)")[0]
                       for v in range(self.views)]
                for j, i in enumerate(need):
                    self._views[keys[i]] = np.stack([n[j] for n in new])
            views = np.stack([self._views[k] for k in keys], axis=1)
        self.reused += len(keys) - len(need_clean)
        return np.stack([self._clean[k] for k in keys]), views

    def save(self) -> Path:
        """Write the photos this run used (and nothing else), atomically."""
        from wastenet.files import write_atomic

        keys = sorted(self._used)
        view_keys = [k for k in keys if k in self._views]
        dim = next(iter(self._clean.values())).shape[0] if self._clean else 0
        clean = np.stack([self._clean[k] for k in keys]) if keys else np.zeros((0, dim), np.float32)
        views = (np.stack([self._views[k] for k in view_keys], axis=1) if view_keys
                 else np.zeros((self.views, 0, dim), np.float32))
        path = write_atomic(self.path, lambda f: np.savez(f, keys=np.array(keys), clean=clean,
                                                           view_keys=np.array(view_keys), views=views))
        # bounded: one file per backbone; the newest few stay (one, normally: versions of one model)
        for old in sorted(self.path.parent.glob("items-*.npz"), key=lambda p: p.stat().st_mtime)[:-KEEP]:
            old.unlink(missing_ok=True)
        return path
