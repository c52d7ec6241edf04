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
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

#: window sides as shares of the photo's shorter side: an item with a little floor around it
#: (0.35, the field set's item-crop framing for a median item) and with more context (0.5)
WINDOW_SIDES: tuple[float, ...] = (0.5, 0.35)
OVERLAP = 0.5      # a window's step is (1 - OVERLAP) of its side
MIN_SIDE = 32      # pixels; smaller windows say nothing


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


def photos_per_batch(batch_size: int) -> int:
    """Photos decoded together under search: ``batch_size`` model inputs hold ~1/16 as many photos
    (51 windows each), so a prepared batch stays near the size of an unsearched one in memory."""
    return max(1, int(batch_size) // 16)


def pick(ood_scores: np.ndarray | None, probs: np.ndarray) -> int:
    """The window that decides: the lowest unknown-item score, else the highest top probability."""
    if ood_scores is not None:
        return int(np.argmin(ood_scores))
    return int(np.argmax(np.asarray(probs).max(axis=1)))
