"""Turning a grid of class scores into pictures: heat images, overlays, labels, contact sheets.

Everything here is a pure function of numpy arrays (in the spirit of pytorch-grad-cam's
``show_cam_on_image``): images are ``uint8`` arrays of shape ``(H, W, 3)`` in RGB order, heat
maps are ``float32`` arrays of shape ``(H, W)`` in ``[0, 1]``. Nothing is read from or written to
disk; :mod:`heatmap_cli.cli.records` encodes the returned arrays.

* :mod:`~heatmap_cli.render.heat`: scores to a heat image (placement between window centres);
* :mod:`~heatmap_cli.render.colour`: colormaps, the opacity rule, blending over the photo;
* :mod:`~heatmap_cli.render.scale`: colour scales (absolute, shared, per-class);
* :mod:`~heatmap_cli.render.text`: text labels, colour bars, contact sheets;
* :mod:`~heatmap_cli.render.class_overlay`: one class's overlay, composed from the above.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from heatmap_cli.errors import RenderError

if TYPE_CHECKING:
    from heatmap_cli.render.class_overlay import LabelPlace, render_class_overlay
    from heatmap_cli.render.colour import (
        DEFAULT_CMAP,
        OpacityRule,
        check_cmap,
        is_diverging,
        overlay,
    )
    from heatmap_cli.render.heat import (
        MarginFade,
        cell_values_to_image,
        margin_fade,
        normalize_scores,
        peak_cell,
        peak_location,
    )
    from heatmap_cli.render.scale import (
        DEFAULT_SCALE,
        SCALES,
        ColourScale,
        check_scale,
        colour_scales,
    )
    from heatmap_cli.render.text import (
        SHEET_TILE_SIDE,
        add_colorbar,
        annotate,
        contact_sheet,
        sheet_tile,
    )

_EXPORTS = {
    "LabelPlace": "heatmap_cli.render.class_overlay",
    "render_class_overlay": "heatmap_cli.render.class_overlay",
    "DEFAULT_CMAP": "heatmap_cli.render.colormaps",
    "OpacityRule": "heatmap_cli.render.colour",
    "check_cmap": "heatmap_cli.render.colormaps",
    "is_diverging": "heatmap_cli.render.colormaps",
    "overlay": "heatmap_cli.render.colour",
    "MarginFade": "heatmap_cli.render.heat",
    "cell_values_to_image": "heatmap_cli.render.heat",
    "margin_fade": "heatmap_cli.render.heat",
    "normalize_scores": "heatmap_cli.render.heat",
    "peak_cell": "heatmap_cli.render.heat",
    "peak_location": "heatmap_cli.render.heat",
    "DEFAULT_SCALE": "heatmap_cli.render.scale",
    "SCALES": "heatmap_cli.render.scale",
    "ColourScale": "heatmap_cli.render.scale",
    "check_scale": "heatmap_cli.render.scale",
    "colour_scales": "heatmap_cli.render.scale",
    "SHEET_TILE_SIDE": "heatmap_cli.render.text",
    "add_colorbar": "heatmap_cli.render.text",
    "annotate": "heatmap_cli.render.text",
    "contact_sheet": "heatmap_cli.render.text",
    "sheet_tile": "heatmap_cli.render.text",
}

__all__ = [
    "DEFAULT_CMAP",
    "DEFAULT_SCALE",
    "SCALES",
    "SHEET_TILE_SIDE",
    "ColourScale",
    "LabelPlace",
    "MarginFade",
    "OpacityRule",
    "RenderError",
    "add_colorbar",
    "annotate",
    "cell_values_to_image",
    "check_cmap",
    "check_scale",
    "colour_scales",
    "contact_sheet",
    "is_diverging",
    "margin_fade",
    "normalize_scores",
    "overlay",
    "peak_cell",
    "peak_location",
    "render_class_overlay",
    "sheet_tile",
]


def __getattr__(name: str) -> Any:
    """Imports a name's module on first use: numpy and matplotlib only to draw."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'heatmap_cli.render' has no attribute {name!r}")
