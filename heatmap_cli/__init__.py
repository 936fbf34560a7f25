"""heatmap-cli: where a pretrained image classifier finds a class in a photo.

The public API is imported lazily so that ``heatmap --help`` answers without importing torch:
``load_model``, ``HeatmapModel`` and ``ScoreMap`` (the notebook API, :mod:`heatmap_cli.api`),
``convolutionalize`` and ``score_grid`` (the graph core).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "heatmap_cli.api",
    "HeatmapModel": "heatmap_cli.api",
    "ScoreMap": "heatmap_cli.api",
    "convolutionalize": "heatmap_cli.convert.network",
    "ConvolutionalizedNet": "heatmap_cli.convert.network",
    "score_grid": "heatmap_cli.grid.score",
    "GridGeometry": "heatmap_cli.grid.geometry",
}

__all__ = [
    "ConvolutionalizedNet",
    "GridGeometry",
    "HeatmapModel",
    "ScoreMap",
    "__version__",
    "convolutionalize",
    "load_model",
    "score_grid",
]

if TYPE_CHECKING:
    from heatmap_cli.api import HeatmapModel, ScoreMap, load_model
    from heatmap_cli.convert.network import ConvolutionalizedNet, convolutionalize
    from heatmap_cli.grid import score_grid
    from heatmap_cli.grid.geometry import GridGeometry


def __getattr__(name: str) -> Any:
    """Imports a public name from its module on first use."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'heatmap_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names, for tab completion in a notebook."""
    return sorted(__all__)
