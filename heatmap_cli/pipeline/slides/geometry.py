"""Where a slide's grid lies: the level read, the resampling, and every cell in level-0 pixels.

The network sees the slide at the model's microns per pixel (``model_mpp``): one *model pixel*
is ``model_mpp / slide_mpp`` level-0 pixels. The level read is the coarsest whose pixels are at
least that fine (OpenSlide's and WSInfer's rule: never upsample what a finer level has), and
the rest is resampled: model pixel ``x`` covers level pixels ``[x * scale, (x + 1) * scale)``.
Without a model mpp the slide is scored at its own level-0 pixels (``scale`` 1, no resampling).

The window stays in model pixels (the network's training input), and so does the stride; the
grid covers the slide as a photo's grid covers the photo: cell ``(i, j)`` is the window whose
top-left corner is model pixel ``(i * stride, j * stride)``, and only whole windows count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from heatmap_cli.errors import GeometryError, SlideReadError, setting
from heatmap_cli.grid.geometry import grid_shape
from heatmap_cli.io.slides import Slide

__all__ = ["SlideGeometry", "plan_slide", "resolve_mpp"]

_SAME_SCALE = 1e-3  # relative difference under which a level is read without resampling


@dataclass(frozen=True)
class SlideGeometry:
    """The grid of one slide.

    Attributes:
        slide_size: ``(H, W)`` of level 0.
        level: The level read.
        level_downsample: Level-0 pixels per pixel of that level.
        scale: Level pixels per model pixel (1: read as is; above 1: shrunk; below 1: enlarged).
        size: ``(H, W)`` of the slide in model pixels.
        window: ``(h, w)`` window of a cell, in model pixels (the network's input size).
        stride: Spacing of the cells, in model pixels.
        slide_mpp: Microns per level-0 pixel (None when neither the file nor the user says).
        model_mpp: Microns per model pixel (None: the slide's own pixels).
    """

    slide_size: tuple[int, int]
    level: int
    level_downsample: float
    scale: float
    size: tuple[int, int]
    window: tuple[int, int]
    stride: int
    slide_mpp: float | None
    model_mpp: float | None

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the grid."""
        return grid_shape(self.size, self.window, self.stride)

    @property
    def covered(self) -> tuple[int, int]:
        """``(H, W)`` model pixels the windows cover (``window + stride * k``)."""
        rows, cols = self.shape
        return self.window[0] + self.stride * (rows - 1), self.window[1] + self.stride * (cols - 1)

    @property
    def downsample(self) -> float:
        """Level-0 pixels per model pixel."""
        return self.level_downsample * self.scale

    def window_level0(self) -> tuple[float, float]:
        """``(width, height)`` of a window in level-0 pixels."""
        return self.window[1] * self.downsample, self.window[0] * self.downsample

    def corners(self, axis: int) -> np.ndarray:
        """float64 ``(n,)``: level-0 coordinate of each cell's window start along an axis.

        Args:
            axis: 0 for rows (``y``), 1 for columns (``x``).
        """
        count = self.shape[axis]
        return np.arange(count, dtype=np.float64) * self.stride * self.downsample

    def centers(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 ``(rows, cols, 2)``: the ``(x, y)`` centre of every window in level-0 pixels.

        ``start``/``stop`` give a band of the grid's rows (all of them by default).
        """
        width, height = self.window_level0()
        ys = (self.corners(0)[start:stop] + height / 2).astype(np.float32)
        out = np.empty((len(ys), self.shape[1], 2), dtype=np.float32)
        out[..., 0] = (self.corners(1) + width / 2).astype(np.float32)[None, :]
        out[..., 1] = ys[:, None]
        return out


def resolve_mpp(slide: Slide, slide_mpp: float | None, model_mpp: float | None) -> float | None:
    """The slide's microns per level-0 pixel: given, else from its metadata, else None.

    Raises:
        SlideReadError: ``model_mpp`` is set, and the slide's mpp is neither given nor in its
            metadata (the message names the option that gives it).
    """
    if slide_mpp is not None:
        return float(slide_mpp)
    if slide.mpp is not None:
        return float(sum(slide.mpp) / 2)
    if model_mpp is None:
        return None
    raise SlideReadError(
        slide.path,
        f"has no microns per pixel in its metadata, needed to read it at "
        f"{setting('mpp')} {model_mpp:g}; give it with {setting('slide_mpp')}",
    )


def plan_slide(
    slide: Slide,
    window: tuple[int, int],
    stride: int,
    *,
    model_mpp: float | None = None,
    slide_mpp: float | None = None,
) -> SlideGeometry:
    """The grid of a slide: which level is read, how it is resampled, how many cells.

    Args:
        slide: The opened slide.
        window: ``(h, w)`` network input in model pixels.
        stride: Cell spacing in model pixels.
        model_mpp: Microns per pixel the model was trained at; None reads level 0 as is.
        slide_mpp: Microns per level-0 pixel, overriding the file's metadata.

    Returns:
        The geometry.

    Raises:
        SlideReadError: The slide's mpp is needed and unknown.
        GeometryError: A non-positive mpp, or a slide smaller than one window at that scale.
    """
    for name, value in (("mpp", model_mpp), ("slide_mpp", slide_mpp)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise GeometryError(f"{setting(name)} must be a positive number, got {value}")
    mpp = resolve_mpp(slide, slide_mpp, model_mpp)
    wanted = 1.0 if model_mpp is None or mpp is None else model_mpp / mpp
    level = slide.level_at_most(wanted)
    downsample = slide.levels[level].downsample
    scale = wanted / downsample
    if abs(scale - 1.0) < _SAME_SCALE:
        scale = 1.0
    rows, cols = slide.levels[level].size
    size = (math.floor(rows / scale + 1e-9), math.floor(cols / scale + 1e-9))
    if size[0] < window[0] or size[1] < window[1]:
        raise GeometryError(
            f"{slide.path}: the slide is {size[1]}x{size[0]} pixels at {model_mpp} um/px, "
            f"smaller than the model's {window[1]}x{window[0]} window"
        )
    return SlideGeometry(
        slide_size=slide.size,
        level=level,
        level_downsample=downsample,
        scale=scale,
        size=size,
        window=window,
        stride=stride,
        slide_mpp=mpp,
        model_mpp=model_mpp,
    )
