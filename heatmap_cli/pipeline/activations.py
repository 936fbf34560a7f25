"""From a grid's logits to its scores: softmax, sigmoid, or nothing.

``--activation auto`` picks what the classifier's training used: a sigmoid for a single output
(a binary classifier: a softmax over one class is 1 everywhere, a silently wrong map), a softmax
over the classes otherwise. A model whose head ends in a softmax or a sigmoid returns
probabilities already; they are kept as they are (``"none"``), never given a second activation.
A head ending in a log-softmax returns log-probabilities, whose softmax gives its probabilities.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from heatmap_cli.errors import InvalidOptionError
from heatmap_cli.pipeline.settings import ACTIVATIONS, Activation, resolve_activation

__all__ = [
    "ACTIVATIONS",
    "BAND_VALUES",
    "Activation",
    "apply_activation",
    "resolve_activation",
    "sigmoid",
    "softmax",
]

BAND_VALUES = 1 << 22
"""Scores computed per band of about this many values (float64 temporaries of 32 MiB), so an
activation over a huge grid (1000 classes over 250x250 cells: 62.5 million values) needs its
float32 result and a few small temporaries, not several float64 copies of the grid."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Per-cell softmax over classes, computed in float64 band by band.

    Args:
        logits: float ``(K, ...)``, e.g. ``(K, rows, cols)``.

    Returns:
        float32 array of the same shape, summing to 1 over ``K`` in every cell.
    """
    return _banded(logits, _softmax_band)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Per-value logistic function: float ``(K, ...)`` -> float32 in ``[0, 1]``, in bands."""
    return _banded(logits, _sigmoid_band)


def _softmax_band(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=0, keepdims=True)
    exp = np.exp(shifted)
    exp /= exp.sum(axis=0, keepdims=True)
    return exp


def _sigmoid_band(logits: np.ndarray) -> np.ndarray:
    wide = logits.astype(np.float64)
    # exp of a non-positive number only: no overflow for large logits of either sign
    exp = np.exp(-np.abs(wide))
    return np.where(wide >= 0, 1 / (1 + exp), exp / (1 + exp))


def _banded(logits: np.ndarray, band: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``band`` applied to slices of ``logits`` along its second axis, into one float32 array.

    Every value depends on its own cell only (the classes of axis 0 stay together), so the
    result equals ``band(logits)`` bit for bit whatever the band size.
    """
    logits = np.asarray(logits)
    out = np.empty(logits.shape, dtype=np.float32)
    if logits.ndim < 2 or logits.size == 0:
        out[...] = band(logits)
        return out
    per_row = max(1, logits.size // logits.shape[1])
    rows = max(1, BAND_VALUES // per_row)
    for top in range(0, logits.shape[1], rows):
        part = slice(top, top + rows)
        out[:, part] = band(logits[:, part])
    return out


def apply_activation(logits: np.ndarray, activation: str) -> np.ndarray:
    """A grid's scores: ``activation`` applied to its ``(K, rows, cols)`` logits (float32)."""
    if activation == "softmax":
        return softmax(logits)
    if activation == "sigmoid":
        return sigmoid(logits)
    if activation == "none":
        return logits.astype(np.float32, copy=False)
    raise InvalidOptionError(f"activation must be softmax, sigmoid or none, got {activation!r}")
