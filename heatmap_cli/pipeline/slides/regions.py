"""Reading a region of a slide in model pixels: the level's pixels, resampled where needed.

Model pixel ``x`` covers level pixels ``[x * scale, (x + 1) * scale)``. A region is read with a
margin of level pixels as wide as the filter reaches, and resized with Pillow's ``box``
(fractional source coordinates): each output pixel is weighted from the same source pixels as in
one resize of the whole level, so tiles resampled apart join without seams and equal the whole
level resized at once (``resize(size, box=(0, 0, W * scale, H * scale))``) up to Pillow's
fixed-point rounding: at most one grey level, on about 1% of the pixels (the filter weights are
computed from box offsets that differ by whole pixels, which floats round differently). At the
slide's edges the region is clipped, as the whole level's resize is.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from heatmap_cli.errors import InvalidOptionError
from heatmap_cli.io.slides import Slide
from heatmap_cli.pipeline.slides.geometry import SlideGeometry

__all__ = ["read_model_region", "resampling_filter"]

_SUPPORT = {"nearest": 0.5, "box": 0.5, "bilinear": 1.0, "hamming": 1.0, "bicubic": 2.0}


def resampling_filter(name: str) -> Image.Resampling:
    """Pillow's filter for a model's interpolation name (``"bilinear"``, ``"bicubic"``...).

    Raises:
        InvalidOptionError: A name Pillow does not know.
    """
    try:
        return Image.Resampling[name.upper()]
    except KeyError:
        raise InvalidOptionError(f"unknown interpolation {name!r}") from None


def read_model_region(
    slide: Slide,
    geometry: SlideGeometry,
    region: tuple[int, int, int, int],
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Pixels of a region of the slide as the network sees them.

    Args:
        slide: The opened slide.
        geometry: Its grid (level and scale).
        region: ``(top, left, height, width)`` in model pixels, inside ``geometry.size``.
        interpolation: The model's resampling filter, used when ``geometry.scale`` is not 1.

    Returns:
        uint8 ``(height, width, 3)``.

    Raises:
        SlideReadError: The region cannot be decoded.
    """
    top, left, height, width = region
    level, scale = geometry.level, geometry.scale
    if scale == 1.0:
        return slide.read(level, top, left, height, width)
    rows, cols = slide.levels[level].size
    margin = math.ceil(_SUPPORT.get(interpolation.lower(), 3.0) * max(scale, 1.0)) + 2
    y0, y1 = top * scale, (top + height) * scale
    x0, x1 = left * scale, (left + width) * scale
    read_top, read_left = max(0, math.floor(y0) - margin), max(0, math.floor(x0) - margin)
    read_bottom = min(rows, math.ceil(y1) + margin)
    read_right = min(cols, math.ceil(x1) + margin)
    pixels = slide.read(level, read_top, read_left, read_bottom - read_top, read_right - read_left)
    box = (x0 - read_left, y0 - read_top, x1 - read_left, y1 - read_top)
    resized = Image.fromarray(pixels).resize(
        (width, height), resampling_filter(interpolation), box=box
    )
    return np.asarray(resized)
