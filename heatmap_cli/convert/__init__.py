"""Graph rewriting: a classifier's fully-connected head turned into convolutions, and more.

Nothing here imports the application (``pipeline``, ``cli``, ``io``, ``report``) or the grid
methods; the grid methods build on it.

* :mod:`~heatmap_cli.convert.network`: :func:`convolutionalize` and the
  :class:`ConvolutionalizedNet` it returns;
* :mod:`~heatmap_cli.convert.head`: the FC -> CONV rewrite of the head;
* :mod:`~heatmap_cli.convert.atrous`: the "a trous" rewrite for finer strides;
* :mod:`~heatmap_cli.convert.ops`: the modules the rewrites insert (sliding head, a-trous ops);
* :mod:`~heatmap_cli.convert.tf_same`: TensorFlow "same" padding, once;
* :mod:`~heatmap_cli.convert.folding`: batch norms folded into convolutions, the tiles' copy;
* :mod:`~heatmap_cli.convert.fx`: the ``torch.fx`` toolkit (tracing, op tables) all of them read;
* :mod:`~heatmap_cli.convert.shapes`: shape-only passes on storage-less copies;
* :mod:`~heatmap_cli.convert.windows`: how many windows fit an input.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from heatmap_cli.convert.network import ConvolutionalizedNet, convolutionalize

__all__ = ["ConvolutionalizedNet", "convolutionalize"]


def __getattr__(name: str) -> Any:
    """Imports the network module (and torch) on first use: ``windows`` and errors need none."""
    if name in __all__:
        return getattr(importlib.import_module("heatmap_cli.convert.network"), name)
    raise AttributeError(f"module 'heatmap_cli.convert' has no attribute {name!r}")
