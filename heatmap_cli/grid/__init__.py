"""Score grids: cell ``(i, j)`` is the classifier's answer on one window of the image.

Every method returns ``(N, K, rows, cols)`` logits where cell ``(i, j)`` is the window whose
top-left corner is ``(i * stride, j * stride)`` in the input. Each is a
:class:`~heatmap_cli.grid.registry.GridMethod` in its own module, declared without torch in
:mod:`~heatmap_cli.grid.methods` and registered in the order below:

* :mod:`~heatmap_cli.grid.dense`: one pass of the converted network, at its native stride;
* :mod:`~heatmap_cli.grid.stitch`: a finer stride ``s/f`` from ``f*f`` shifted passes;
* :mod:`~heatmap_cli.grid.dilate`: the same finer stride in one pass of an "a trous" network;
* :mod:`~heatmap_cli.grid.crops`: the unmodified model on every window, the exact reference;
* :mod:`~heatmap_cli.grid.refine`: dense, then exact windows where its answer is in doubt.

:func:`~heatmap_cli.grid.score.score_grid` runs any of them, converting a model once
(:mod:`~heatmap_cli.grid.conversions`: the window it records, one conversion per model while it
stays the same); :mod:`~heatmap_cli.grid.geometry` maps cells to pixels;
:mod:`~heatmap_cli.grid.tiling` evaluates huge inputs in exact tiles. Nothing here imports the
application (``pipeline``, ``cli``, ``io``, ``report``). Importing the package imports no torch:
the registry and the methods' declarations are plain Python, and :func:`score_grid`,
:func:`as_convolutional`, :func:`forget_conversions` and :func:`recorded_window` are imported on
first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from heatmap_cli.grid.methods import CROPS, DENSE, DILATE, REFINE, STITCH
from heatmap_cli.grid.registry import (
    DeferredFunction,
    GridFunction,
    GridMethod,
    NetworkBuilder,
    StrideRule,
    get_method,
    method_names,
    register_method,
    unregister_method,
)

if TYPE_CHECKING:
    from heatmap_cli.grid.conversions import forget_conversions, recorded_window
    from heatmap_cli.grid.score import as_convolutional, score_grid

_DEFERRED = {
    "as_convolutional": "heatmap_cli.grid.score",
    "score_grid": "heatmap_cli.grid.score",
    "forget_conversions": "heatmap_cli.grid.conversions",
    "recorded_window": "heatmap_cli.grid.conversions",
}

__all__ = [
    "CROPS",
    "DENSE",
    "DILATE",
    "REFINE",
    "STITCH",
    "DeferredFunction",
    "GridFunction",
    "GridMethod",
    "NetworkBuilder",
    "StrideRule",
    "as_convolutional",
    "forget_conversions",
    "get_method",
    "method_names",
    "recorded_window",
    "register_method",
    "score_grid",
    "unregister_method",
]


def __getattr__(name: str) -> Any:
    """Imports the functions that need torch (and torch) on first use."""
    if name in _DEFERRED:
        return getattr(importlib.import_module(_DEFERRED[name]), name)
    raise AttributeError(f"module 'heatmap_cli.grid' has no attribute {name!r}")
