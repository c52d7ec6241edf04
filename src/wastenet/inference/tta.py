"""Test-time augmentation, defined once: the image and its horizontal mirror, probabilities averaged.

TTA averages the *probabilities* of the views (a mixture of their predictive distributions, as
an ensemble of models is averaged) rather than their logits: a view whose logits are merely
larger in scale cannot outvote the other, and the result reads as "how often would a view say
this". It is returned as logits, ``log(mean_v softmax(view_v))``, so that temperature scaling,
calibration fitting, eval and predict all treat a TTA model like any other model::

    logits = tta_logits(np.stack([model(x), model(x[..., ::-1])]))    # [V, N, C] -> [N, C]
    probs = softmax(logits, temperature)

NumPy only (the edge runtime uses it with onnxruntime).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["VIEWS", "tta_logits"]

#: The views TTA looks at: the image as it is, and mirrored left-right (``x[..., ::-1]``).
VIEWS = ("identity", "hflip")


def _logsumexp(z: np.ndarray, axis: int) -> np.ndarray:
    m = z.max(axis=axis, keepdims=True)
    return np.squeeze(m, axis=axis) + np.log(np.exp(z - m).sum(axis=axis))


def tta_logits(view_logits: Any) -> np.ndarray:
    """``[V, N, C]`` logits of ``V`` views -> ``[N, C]`` logits whose softmax is the views' mean probability.

    >>> z = tta_logits(np.array([[[2.0, 0.0]], [[0.0, 0.0]]]))
    >>> (np.exp(z) / np.exp(z).sum()).round(4)      # mean of softmax([2, 0]) and softmax([0, 0])
    array([[0.6904, 0.3096]], dtype=float32)
    """
    z = np.asarray(view_logits, dtype=np.float64)
    if z.ndim != 3:
        raise ValueError(f"view logits must be [V, N, C], got shape {z.shape}")
    log_probs = z - _logsumexp(z, axis=-1)[..., None]
    # float32, like every backend's logits
    return (_logsumexp(log_probs, axis=0) - math.log(z.shape[0])).astype(np.float32)
