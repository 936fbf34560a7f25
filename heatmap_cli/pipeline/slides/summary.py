"""What a slide's outputs say of its scores: probabilities on tissue, rankings, peaks, tiles.

Every figure is taken over the tissue cells only (the others were not scored): the slide-level
ranking pools each class over them, peaks are searched among them, and the npz marks the rest
with NaN. :func:`aggregate_tiles` turns a dense grid into non-overlapping tiles of about one
window each (the size of WSInfer's patches), each holding the mean of its tissue cells: what the
QuPath GeoJSON carries, a size QuPath handles even for a 100k x 100k slide at stride 32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from heatmap_cli.pipeline.activations import apply_activation
from heatmap_cli.pipeline.slides.geometry import SlideGeometry

__all__ = [
    "DISPLAY_SPACING",
    "GEOJSON_BYTES",
    "SlideTiles",
    "aggregate_tiles",
    "block_means",
    "cell_boxes",
    "display_block",
    "display_centres",
    "display_grid",
    "masked_scores",
    "rank_slide",
    "slide_peak",
    "tile_side",
]


def masked_scores(
    logits: np.ndarray, tissue: np.ndarray, activation: str
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and probabilities in memory, NaN outside the tissue.

    Args:
        logits: float32 ``(K, rows, cols)`` (a memory map is read once).
        tissue: bool ``(rows, cols)``.
        activation: ``"softmax"``, ``"sigmoid"`` or ``"none"``.

    Returns:
        float32 ``(K, rows, cols)`` logits and probabilities.
    """
    values = np.array(logits, dtype=np.float32)
    values[:, ~tissue] = 0.0  # never scored: zeros, made NaN below after the activation
    probs = apply_activation(values, activation).astype(np.float32, copy=False)
    values[:, ~tissue] = np.nan
    probs[:, ~tissue] = np.nan
    return values, probs


DISPLAY_SPACING = 4.0
"""Fewest overlay pixels between drawn cells: denser grids are averaged down to this."""


def display_grid(
    values: np.ndarray, geometry: SlideGeometry, downsample: float
) -> tuple[np.ndarray, np.ndarray]:
    """A class map made fit to draw on a thumbnail: cells averaged in blocks, centres moved.

    A 100k x 100k slide at stride 32 has 9.7 million cells, 1.3 thumbnail pixels apart at 4096
    pixels: drawing them all costs gigabytes for nothing the eye sees. Blocks of ``k x k`` cells
    (``k`` the least that puts :data:`DISPLAY_SPACING` pixels between them,
    :func:`display_block`) are averaged over their tissue cells.

    Args:
        values: float32 ``(rows, cols)``, NaN off the tissue.
        geometry: The slide's grid.
        downsample: Level-0 pixels per thumbnail pixel.

    Returns:
        float32 ``(r, c)`` values (NaN where a block has no tissue) and float32 ``(r, c, 2)``
        centres in thumbnail pixels.
    """
    k = display_block(geometry, downsample)
    reduced = block_means(values, k)
    return reduced, display_centres(geometry, downsample, k, reduced.shape)


def display_block(geometry: SlideGeometry, downsample: float) -> int:
    """Cells per side of the blocks :func:`display_grid` averages."""
    step = geometry.stride * geometry.downsample / downsample
    return max(1, int(np.ceil(DISPLAY_SPACING / step)))


def block_means(values: np.ndarray, k: int) -> np.ndarray:
    """float32 ``(ceil(rows / k), ceil(cols / k))``: means of the finite cells of ``k x k`` blocks.

    Rows may come in bands of a multiple of ``k`` rows: the bands' results, stacked, equal the
    whole map's.
    """
    rows, cols = values.shape
    out_rows, out_cols = -(-rows // k), -(-cols // k)
    padded = np.full((out_rows * k, out_cols * k), np.nan, dtype=np.float32)
    padded[:rows, :cols] = values
    blocks = padded.reshape(out_rows, k, out_cols, k)
    finite = np.isfinite(blocks)
    counts = finite.sum(axis=(1, 3))
    sums = np.where(finite, blocks, 0).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).astype(np.float32)


def display_centres(
    geometry: SlideGeometry, downsample: float, k: int, shape: tuple[int, ...]
) -> np.ndarray:
    """float32 ``(r, c, 2)``: the centres of :func:`block_means`' blocks in thumbnail pixels."""
    out_rows, out_cols = shape
    width, height = geometry.window_level0()
    cell = geometry.stride * geometry.downsample
    centres = np.empty((out_rows, out_cols, 2), dtype=np.float32)
    first_x, first_y = width / 2 + (k - 1) * cell / 2, height / 2 + (k - 1) * cell / 2
    centres[..., 0] = ((first_x + np.arange(out_cols) * k * cell) / downsample)[None, :]
    centres[..., 1] = ((first_y + np.arange(out_rows) * k * cell) / downsample)[:, None]
    return centres


def rank_slide(scores: np.ndarray, top_k: int, pooling: str = "max") -> list[tuple[int, float]]:
    """The slide-level ranking: each class pooled over the tissue cells, best first.

    Args:
        scores: float32 ``(K, rows, cols)``, NaN outside the tissue.
        top_k: How many classes.
        pooling: ``"max"`` or ``"mean"``.

    Returns:
        ``[(index, pooled score), ...]``, at most ``top_k``; empty when no cell is tissue.
    """
    flat = scores.reshape(scores.shape[0], -1)
    finite = np.isfinite(flat[0]) if flat.shape[1] else np.zeros(0, dtype=bool)
    if not finite.any():
        return []
    kept = flat[:, finite]
    pooled = kept.max(axis=1) if pooling == "max" else kept.mean(axis=1)
    order = np.argsort(-pooled, kind="stable")[:top_k]
    return [(int(i), float(pooled[i])) for i in order]


def slide_peak(values: np.ndarray, geometry: SlideGeometry) -> tuple[float, float, float]:
    """``(peak, x, y)``: a class's highest tissue cell and its window centre in level-0 pixels."""
    if not np.isfinite(values).any():
        return float("nan"), 0.0, 0.0
    row, col = np.unravel_index(int(np.nanargmax(values)), values.shape)
    width, height = geometry.window_level0()
    x = float(geometry.corners(1)[col] + width / 2)
    y = float(geometry.corners(0)[row] + height / 2)
    return float(values[row, col]), x, y


def cell_boxes(geometry: SlideGeometry, tissue: np.ndarray, first_row: int = 0) -> np.ndarray:
    """int64 ``(n, 4)``: ``minx, miny, width, height`` in level-0 pixels of each tissue cell.

    Row-major order of the grid, as ``scores[:, tissue]`` gives the cells' values. ``tissue``
    may be a band of the grid's rows, starting at row ``first_row``.
    """
    rows, cols = np.nonzero(tissue)
    rows = rows + first_row
    width, height = geometry.window_level0()
    xs, ys = geometry.corners(1)[cols], geometry.corners(0)[rows]
    boxes = np.empty((len(rows), 4), dtype=np.int64)
    boxes[:, 0] = np.round(xs)
    boxes[:, 1] = np.round(ys)
    boxes[:, 2] = round(width)
    boxes[:, 3] = round(height)
    return boxes


@dataclass(frozen=True)
class SlideTiles:
    """Non-overlapping tiles of a slide's grid, each the mean of its tissue cells.

    Attributes:
        boxes: int64 ``(n, 4)``: ``minx, miny, width, height`` in level-0 pixels.
        values: float32 ``(n, K)``: each tile's mean score per class.
        cells: int64 ``(n,)``: tissue cells averaged in each tile.
        side: Cells per tile side.
    """

    boxes: np.ndarray
    values: np.ndarray
    cells: np.ndarray
    side: int


GEOJSON_BYTES = 80_000_000
"""The size a slide's GeoJSON is kept under, about: QuPath imports some 100 MB comfortably."""

_FEATURE_BYTES = 270
"""One tile feature without its measurements: id, polygon, properties (as written)."""
_MEASUREMENT_BYTES = 26
"""One ``"prob_<class>": 0.1234567`` measurement, with a class name of average length."""


def tile_side(geometry: SlideGeometry, tissue_cells: int = 0, classes: int = 1) -> int:
    """Cells per side of :func:`aggregate_tiles`' tiles: one window, coarser for a huge grid.

    Args:
        geometry: The slide's grid.
        tissue_cells: Tissue cells to aggregate (0: no size limit).
        classes: Measurements per tile besides the cell count.

    Returns:
        ``round(window / stride)`` (at least 1), or more where the tiles would make a GeoJSON
        larger than about :data:`GEOJSON_BYTES` (small windows at a fine stride on a huge
        slide): then the side whose tiles fit.
    """
    side = max(1, round(min(geometry.window) / geometry.stride))
    if tissue_cells > 0:
        per_tile = _FEATURE_BYTES + _MEASUREMENT_BYTES * (classes + 1)
        most = max(1, GEOJSON_BYTES // per_tile)
        side = max(side, math.ceil(math.sqrt(tissue_cells / most)))
    return side


def aggregate_tiles(
    scores: np.ndarray, geometry: SlideGeometry, side: int | None = None, first_row: int = 0
) -> SlideTiles:
    """Groups the grid into ``side`` x ``side`` cells, each group the mean of its tissue cells.

    Args:
        scores: float32 ``(K, rows, cols)``, NaN outside the tissue.
        geometry: The slide's grid.
        side: Cells per tile side; default ``round(window / stride)`` (one window per tile, like
            WSInfer's non-overlapping patches; 1 at a stride as large as the window).
        first_row: The grid row ``scores`` starts at, a multiple of ``side`` (a band of rows:
            the bands' tiles, concatenated, equal the whole grid's).

    Returns:
        The tiles holding at least one tissue cell; each tile's box is the area whose nearest
        window centres are its cells.
    """
    count, rows, cols = scores.shape
    side = tile_side(geometry) if side is None else side
    out_rows, out_cols = -(-rows // side), -(-cols // side)
    padded = np.full((count, out_rows * side, out_cols * side), np.nan, dtype=np.float32)
    padded[:, :rows, :cols] = scores
    blocks = padded.reshape(count, out_rows, side, out_cols, side)
    finite = np.isfinite(blocks[0])
    cells = finite.sum(axis=(1, 3))
    sums = np.where(np.isfinite(blocks), blocks, 0).sum(axis=(2, 4))
    keep = cells > 0
    means = sums[:, keep] / cells[keep]
    step = geometry.stride * geometry.downsample
    width, height = geometry.window_level0()
    block_rows, block_cols = np.nonzero(keep)
    block_rows = block_rows + first_row // side
    boxes = np.empty((len(block_rows), 4), dtype=np.int64)
    boxes[:, 0] = np.round(block_cols * side * step + width / 2 - step / 2)
    boxes[:, 1] = np.round(block_rows * side * step + height / 2 - step / 2)
    boxes[:, 2] = round(side * step)
    boxes[:, 3] = round(side * step)
    return SlideTiles(boxes, means.T.astype(np.float32), cells[keep].astype(np.int64), side)
