"""One class's colour layer over a photo: colour bins and opacities, computed where it pays.

A class map is smooth between window centres that lie tens to hundreds of pixels apart (on a
12-megapixel photo at ``--size 384``, 252 pixels): spreading it over every pixel of the photo in
float64 and colouring it there took 0.4 s per class. :func:`colour_layer` computes the heat, its
colour bins and its opacities at a modest resolution, at least :data:`SAMPLES_PER_CELL` samples
between neighbouring centres and at least :data:`MIN_SIDE` pixels on the longer side, and
resizes the two 8-bit layers once, bilinearly, to the photo's size. Photos whose longer side is
below ``2 * MIN_SIDE`` are computed at their own resolution. The upsampled layers differ from
ones computed at every pixel by at most a few of 256 levels where the map is steep, and not at
all where it is flat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from heatmap_cli.io.pixels import image_array
from heatmap_cli.render.colour import OpacityRule, heat_index
from heatmap_cli.render.heat import (
    Interpolation,
    cell_values_to_image,
    lattice_axes,
    margin_fade,
    row_bands,
)

__all__ = ["MIN_SIDE", "SAMPLES_PER_CELL", "ColourLayer", "colour_layer", "layer_factor"]

SAMPLES_PER_CELL = 16
"""Least samples of the heat between two neighbouring window centres."""
MIN_SIDE = 512
"""Least pixels on the longer side of the resolution the heat is computed at."""


@dataclass(frozen=True)
class ColourLayer:
    """What a class map draws over a photo, per pixel.

    Attributes:
        index: uint8 ``(H, W)`` colour bins (``colour.heat_index``).
        opacity: uint8 ``(H, W)`` opacities, 0 (untouched) to 255 (opaque), margin fade included.
    """

    index: np.ndarray
    opacity: np.ndarray

    def hidden(self, rows: slice, cols: slice) -> float:
        """The opacity summed over a box (in ``[0, 1]`` per pixel): what a label there hides."""
        return float(self.opacity[rows, cols].sum(dtype=np.int64)) / 255.0


def layer_factor(centers: np.ndarray, image_size: tuple[int, int]) -> int:
    """How many photo pixels one pixel of the reduced layer spans along each side (at least 1).

    Args:
        centers: ``(rows, cols, 2)`` window centres ``(x, y)`` in the photo's pixels.
        image_size: ``(H, W)`` of the photo.
    """
    xs, ys = lattice_axes(centers, centers.shape[:2])
    gaps = [float(np.diff(axis).min()) for axis in (xs, ys) if len(axis) > 1]
    spacing = min(gaps) if gaps else float(max(image_size))
    return max(1, min(int(spacing // SAMPLES_PER_CELL), max(image_size) // MIN_SIDE))


def colour_layer(
    heat_cells: np.ndarray,
    centers: np.ndarray,
    image_size: tuple[int, int],
    rule: OpacityRule,
    *,
    method: Interpolation = "pchip",
    fade_margins: bool = True,
) -> ColourLayer:
    """Spreads one class's heat over the photo and turns it into colour bins and opacities.

    Args:
        heat_cells: ``(rows, cols)`` heat per cell, in ``[0, 1]`` (``heat.normalize_scores``).
        centers: ``(rows, cols, 2)`` window centres ``(x, y)`` in the photo's pixels.
        image_size: ``(H, W)`` of the photo.
        rule: The opacity of each heat value.
        method: Interpolation between centres (``heat.cell_values_to_image``).
        fade_margins: Fade the map out beyond the outermost window centres.

    Returns:
        The layer at the photo's size.

    Raises:
        RenderError: For cells and centres that do not match, or a non-positive size.
    """
    height, width = image_size
    factor = layer_factor(np.asarray(centers, dtype=np.float64), image_size)
    low = (math.ceil(height / factor), math.ceil(width / factor))
    # Pixel k of the reduced layer is centred on photo pixel (k + 0.5) * size / low, where
    # Pillow's bilinear resize puts it back.
    scaled = np.asarray(centers, dtype=np.float64) * np.array([low[1] / width, low[0] / height])
    heat = cell_values_to_image(heat_cells, scaled, low, method=method)
    fade = margin_fade(scaled, low) if fade_margins else None
    index, opacity = np.empty(low, dtype=np.uint8), np.empty(low, dtype=np.uint8)
    for part in row_bands(*low):  # float temporaries of a band, not of the whole picture
        index[part] = heat_index(heat[part])
        opacity[part] = rule.levels(heat[part], None if fade is None else fade.region(part))
    if low != (height, width):
        index, opacity = _resized(index, image_size), _resized(opacity, image_size)
    return ColourLayer(index, opacity)


def _resized(layer: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    picture = Image.fromarray(layer).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return image_array(picture)
