"""heatmap-cli: where a pretrained image classifier finds a class in a photo.

The public API is imported lazily so that ``heatmap --help`` answers without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "convolutionalize": "heatmap_cli.convert.network",
    "ConvolutionalizedNet": "heatmap_cli.convert.network",
    "score_grid": "heatmap_cli.grid.score",
    "GridGeometry": "heatmap_cli.grid.geometry",
}

__all__ = [
    "ConvolutionalizedNet",
    "GridGeometry",
    "__version__",
    "convolutionalize",
    "score_grid",
]

if TYPE_CHECKING:
    from heatmap_cli.convert.network import ConvolutionalizedNet, convolutionalize
    from heatmap_cli.grid import score_grid
    from heatmap_cli.grid.geometry import GridGeometry


def __getattr__(name: str) -> Any:
    """Imports a public name from its module on first use."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'heatmap_cli' has no attribute {name!r}")
