"""Score grids: cell ``(i, j)`` is the classifier's answer on one window of the image.

Every method returns ``(N, K, rows, cols)`` logits where cell ``(i, j)`` is the window whose
top-left corner is ``(i * stride, j * stride)`` in the input. Each is a
:class:`~heatmap_cli.grid.registry.GridMethod` in its own module, registered in the order below:

* :mod:`~heatmap_cli.grid.dense`: one pass of the converted network, at its native stride;
* :mod:`~heatmap_cli.grid.stitch`: a finer stride ``s/f`` from ``f*f`` shifted passes;
* :mod:`~heatmap_cli.grid.dilate`: the same finer stride in one pass of an "a trous" network;
* :mod:`~heatmap_cli.grid.crops`: the unmodified model on every window, the exact reference;
* :mod:`~heatmap_cli.grid.refine`: dense, then exact windows where its answer is in doubt.

:func:`~heatmap_cli.grid.score.score_grid` runs any of them, converting a model once
(:mod:`~heatmap_cli.grid.conversions`: the window it records, one conversion per model while it
stays the same); :mod:`~heatmap_cli.grid.geometry` maps cells to pixels;
:mod:`~heatmap_cli.grid.tiling` evaluates huge inputs in exact tiles. Nothing here imports the
application (``pipeline``, ``cli``, ``io``, ``report``).
"""

from __future__ import annotations

from heatmap_cli.grid.registry import (
    GridFunction,
    GridMethod,
    NetworkBuilder,
    StrideRule,
    get_method,
    method_names,
    register_method,
    unregister_method,
)

# The built-in methods register themselves on import, in this order (``--method``'s listing).
from heatmap_cli.grid.dense import DENSE  # isort: skip
from heatmap_cli.grid.stitch import STITCH  # isort: skip
from heatmap_cli.grid.dilate import DILATE  # isort: skip
from heatmap_cli.grid.crops import CROPS  # isort: skip
from heatmap_cli.grid.refine import REFINE  # isort: skip
from heatmap_cli.grid.score import as_convolutional, score_grid  # isort: skip
from heatmap_cli.grid.conversions import forget_conversions, recorded_window  # isort: skip

__all__ = [
    "CROPS",
    "DENSE",
    "DILATE",
    "REFINE",
    "STITCH",
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
