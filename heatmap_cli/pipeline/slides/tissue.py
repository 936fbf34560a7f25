"""Tissue and background: a mask from the slide's thumbnail, and which cells it keeps.

The automatic mask is Otsu's threshold on the saturation of the thumbnail (HSV ``S``), as
WSInfer, TIAToolbox and CLAM do: glass and the white background are unsaturated, stained tissue
is not. The threshold is never taken below :data:`MIN_SATURATION` (a slide that is all glass
would otherwise split its noise in two), and the mask is cleaned with a 3x3 majority vote,
which removes isolated pixels and fills pinholes.

A cell is tissue when at least ``min_tissue`` of its window's area is tissue in the mask, read
from a summed-area table of the mask (every cell's fraction exactly, row by row, in bounded
memory). A mask of the user's own (``tissue=FILE``) is any image the size of the slide or a
scaled copy of it: non-zero pixels are tissue.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from heatmap_cli.errors import ImageReadError, InvalidOptionError, setting
from heatmap_cli.pipeline.slides.geometry import SlideGeometry

__all__ = [
    "DEFAULT_MIN_TISSUE",
    "MIN_SATURATION",
    "cell_tissue",
    "mask_from_file",
    "otsu_threshold",
    "parse_tissue",
    "tissue_mask",
]

MIN_SATURATION = 20
"""Lowest saturation threshold (0..255) of the automatic mask."""

DEFAULT_MIN_TISSUE = 0.25
"""A cell is tissue when at least this fraction of its window is tissue."""


def parse_tissue(text: str) -> str:
    """``tissue``: ``auto``, ``off``, or the path of a mask image (checked to exist).

    Raises:
        InvalidOptionError: A path that is not a file.
    """
    value = str(text).strip()
    if value.lower() in ("auto", "off"):
        return value.lower()
    if not Path(value).is_file():
        raise InvalidOptionError(f"must be auto, off or a mask image file; {value!r} is not a file")
    return value


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 values: the level that best splits them in two classes.

    Returns:
        ``t`` such that values ``> t`` are the upper class (0 for constant input).
    """
    histogram = np.bincount(values.reshape(-1), minlength=256).astype(np.float64)
    total = histogram.sum()
    if total == 0:
        return 0
    levels = np.arange(256, dtype=np.float64)
    weight = np.cumsum(histogram)
    mean = np.cumsum(histogram * levels)
    upper = total - weight
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean[-1] * weight / total - mean) ** 2 / (weight * upper / total)
    between[~np.isfinite(between)] = -1
    return int(np.argmax(between))


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """uint8 HSV saturation, ``255 * (max - min) / max`` (0 where black), in bands of rows."""
    out = np.empty(rgb.shape[:2], dtype=np.uint8)
    for start in range(0, rgb.shape[0], 256):
        band = rgb[start : start + 256]
        high = band.max(axis=2).astype(np.int32)
        low = band.min(axis=2).astype(np.int32)
        out[start : start + 256] = (255 * (high - low)) // np.maximum(high, 1)
    return out


def _majority(mask: np.ndarray) -> np.ndarray:
    """3x3 majority vote: a pixel is kept when at least 5 of its 9 neighbours are set."""
    padded = np.pad(mask.astype(np.uint8), 1, mode="edge")
    votes = sum(
        padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
        for dy in range(3)
        for dx in range(3)
    )
    return votes >= 5


def tissue_mask(thumbnail: np.ndarray) -> np.ndarray:
    """The automatic tissue mask of a slide thumbnail.

    Args:
        thumbnail: uint8 ``(h, w, 3)`` RGB.

    Returns:
        bool ``(h, w)``: True on tissue.
    """
    saturation = _saturation(thumbnail)
    threshold = max(MIN_SATURATION, otsu_threshold(saturation))
    return _majority(saturation > threshold)


def mask_from_file(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A user's mask image, resized (nearest) to ``shape``: non-zero pixels are tissue.

    Args:
        path: Any image Pillow reads (PNG, TIFF...), covering the whole slide.
        shape: ``(h, w)`` of the thumbnail it is laid on.

    Raises:
        ImageReadError: The file cannot be read as an image (the message names it).
    """
    try:
        with Image.open(path) as image:
            grey = image.convert("L").resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(
            Path(path), f"cannot read it as a mask image for {setting('tissue')} ({error})"
        ) from error
    return np.asarray(grey) > 0


def cell_tissue(
    mask: np.ndarray,
    mask_downsample: float,
    geometry: SlideGeometry,
    min_tissue: float = DEFAULT_MIN_TISSUE,
) -> np.ndarray:
    """Which cells are tissue: at least ``min_tissue`` of their window lies on the mask.

    Args:
        mask: bool ``(h, w)`` over the whole slide.
        mask_downsample: Level-0 pixels per mask pixel.
        geometry: The slide's grid.
        min_tissue: Fraction of a window's area, in ``[0, 1]``; 0 keeps every cell that
            touches tissue at all.

    Returns:
        bool ``(rows, cols)``.
    """
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int32)  # 4096^2 fits
    np.cumsum(mask, axis=0, dtype=np.int32, out=table[1:, 1:])
    np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
    width, height = geometry.window_level0()
    xs = geometry.corners(1) / mask_downsample
    x0 = np.clip(np.round(xs).astype(np.int64), 0, mask.shape[1])
    x1 = np.clip(np.round(xs + width / mask_downsample).astype(np.int64), 0, mask.shape[1])
    x1 = np.maximum(x1, np.minimum(x0 + 1, mask.shape[1]))
    rows = geometry.shape[0]
    out = np.zeros((rows, len(xs)), dtype=bool)
    for row, y in enumerate(geometry.corners(0) / mask_downsample):
        y0 = int(np.clip(round(y), 0, mask.shape[0]))
        y1 = int(np.clip(round(y + height / mask_downsample), 0, mask.shape[0]))
        y1 = max(y1, min(y0 + 1, mask.shape[0]))
        area = (y1 - y0) * (x1 - x0)
        inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
        with np.errstate(divide="ignore", invalid="ignore"):
            fraction = np.where(area > 0, inside / np.maximum(area, 1), 0.0)
        out[row] = (fraction >= min_tissue) & (inside > 0)
    return out
