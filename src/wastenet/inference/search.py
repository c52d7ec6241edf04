"""Item search: look at a photo through windows and let the most item-like one decide.

A bin camera's frame is mostly floor (on our field set the item covers a median 5-8% of it), and
a centre crop of the whole frame is mostly floor too. With ``search`` the classifier also sees
overlapping square windows of the photo at two sizes (half and about a third of its shorter side,
half-overlapping) and keeps the window its unknown-item score finds most familiar, i.e. the one
that looks most like a training item; that window's probabilities and score decide. A photo of
an empty floor has no familiar window and still goes to manual sort. Without an unknown-item
rule the most confident window decides::

    wins = windows(img)                 # [full photo, 15 + 35 windows for a 320 x 427 frame]
    best = pick(ood_scores, probs)      # index into wins

The deciding window is the *least* unusual of ~51, so its score runs lower than a whole photo's:
a threshold fitted on whole photos lets empty floors through. Training therefore also fits the
threshold the way search runs (``fit_search_thresholds``: the deciding window's score of a
sample of validation photos) and ``predict(search=True)`` uses that one::

    rule["search_thresholds"] = fit_search_thresholds(clf, calibration_sample(val_paths))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from wastenet.inference.predictor import Classifier, ImageInput
    from wastenet.preprocessing import Preprocessing

#: window sides as shares of the photo's shorter side: an item with a little floor around it
#: (0.35, the field set's item-crop framing for a median item) and with more context (0.5)
WINDOW_SIDES: tuple[float, ...] = (0.5, 0.35)
OVERLAP = 0.5      # a window's step is (1 - OVERLAP) of its side
MIN_SIDE = 32      # pixels; smaller windows say nothing
TYPICAL_WINDOWS = 51   # model inputs for a 320 x 427 or 384 x 512 photo (the full photo + 15 + 35)


def windows(img: Image.Image, sides: Sequence[float] = WINDOW_SIDES, overlap: float = OVERLAP) -> list[Image.Image]:
    """The whole photo first, then every square window of each size, row by row."""
    w, h = img.size
    out = [img]
    for share in sides:
        side = int(round(share * min(w, h)))
        if side < MIN_SIDE:
            continue
        step = max(1, int(round(side * (1 - overlap))))
        for top in _starts(h, side, step):
            for left in _starts(w, side, step):
                out.append(img.crop((left, top, left + side, top + side)))
    return out


def _starts(length: int, side: int, step: int) -> list[int]:
    """Window offsets covering ``length``, the last one flush with the far edge."""
    starts = list(range(0, max(1, length - side + 1), step))
    if starts[-1] + side < length:
        starts.append(length - side)
    return starts


def searched_side(prep: "Preprocessing") -> int:
    """The shorter side a photo needs so that its smallest window still fills the model's resize
    along both axes (``serve --search`` shrinks uploads to this, not to the model's input). A
    window is square, so an aspect-preserving H x W model needs ``max(H, W)`` pixels of it::

        searched_side(Preprocessing(input_size=224))                   # 732: 256 / 0.35
        searched_side(Preprocessing(input_size=256, input_width=320))  # 915: 320 / 0.35
    """
    return int(np.ceil(max(prep.resize_size, *prep.hw) / min(WINDOW_SIDES)))


def photos_per_batch(batch_size: int) -> int:
    """Photos decoded together under search: ``batch_size`` model inputs hold ~1/16 as many photos
    (51 windows each), so a prepared batch stays near the size of an unsearched one in memory."""
    return max(1, int(batch_size) // 16)


def pick(ood_scores: np.ndarray | None, probs: np.ndarray) -> int:
    """The window that decides: the lowest unknown-item score, else the highest top probability."""
    if ood_scores is not None:
        return int(np.argmin(ood_scores))
    return int(np.argmax(np.asarray(probs).max(axis=1)))


#: validation photos the searched threshold is fitted on: a seeded sample, since each photo is ~51
#: model inputs (96 photos: ~25 s for MobileNetV2, ~2 min for DenseNet121 on 2 CPU cores)
CALIBRATION_PHOTOS = 96
#: fewer searched photos than this give no quantile worth keeping (predict falls back to the whole-photo one)
MIN_CALIBRATION_PHOTOS = 20


def calibration_sample(photos: Sequence["ImageInput"], n: int = CALIBRATION_PHOTOS, seed: int = 0) -> list["ImageInput"]:
    """At most ``n`` of ``photos``, a seeded sample in their original order."""
    if len(photos) <= n:
        return list(photos)
    keep = np.sort(np.random.default_rng(seed).choice(len(photos), n, replace=False))
    return [photos[int(i)] for i in keep]


def fit_search_thresholds(clf: "Classifier", photos: Sequence["ImageInput"], keep: float | None = None,
                          batch_size: int = 64, progress: bool = False) -> dict[str, float]:
    """``{method: threshold}`` for searched photos: the score under which ``keep`` (default: the
    rule's) of the deciding windows of known ``photos`` fall; ``{}`` without a rule or with fewer
    than ``MIN_CALIBRATION_PHOTOS`` readable photos."""
    from wastenet import ood

    if not clf.ood:
        return {}
    keep = float(keep if keep is not None else clf.ood.get("keep") or ood.DEFAULT_KEEP)
    preds = clf.predict(photos, search=True, unknown_rule=False, batch_size=batch_size, progress=progress,
                        progress_desc="unknown-item threshold (searched val)")
    scores = [p.ood_score for p in preds if p.ok and p.ood_score is not None]
    if len(scores) < MIN_CALIBRATION_PHOTOS:
        return {}
    return {clf.ood["method"]: ood.threshold_for_coverage(np.asarray(scores), keep)}
