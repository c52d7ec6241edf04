"""Class probabilities from logits: the softmax with a temperature, defined once (NumPy only, torch-free).

Predict, serve, eval and calibration all turn logits into probabilities here, so a temperature
means the same everywhere::

    from wastenet.probabilities import softmax
    probs = softmax(logits, temperature=1.3)        # float64 [N, C], rows sum to 1
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["softmax"]


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax of ``logits / temperature`` over the last axis (float64).

    Example::

        probs = softmax(np.array([[2.0, 0.0, -1.0]]), temperature=1.5)
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    # Subtracting the row max keeps exp() from overflowing; the result is unchanged.
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
