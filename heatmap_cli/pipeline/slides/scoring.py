"""Scoring a whole slide: tiles read from the file as they are needed, background skipped.

:func:`score_slide` plans the slide's grid at the model's microns per pixel
(:mod:`~heatmap_cli.pipeline.slides.geometry`), makes the tissue mask from a thumbnail
(:mod:`~heatmap_cli.pipeline.slides.tissue`), cuts the grid into tiles and scores only the tiles
that hold a tissue cell, each read from the slide (:mod:`~heatmap_cli.pipeline.slides.regions`)
in a reader thread while the network scores the one before. Scores go into a
:class:`~heatmap_cli.pipeline.slides.store.GridStore` tile by tile, so memory stays bounded by
one tile whatever the slide's size, and a run that stops resumes from the tiles it kept.

Tiles of a convolutional method are the exact tiles of ``heatmap_cli.grid.tiling``: on the
stride lattice, overlapping by each cell's receptive field, so the grid equals one pass of the
network over the whole slide at that scale. ``crops`` (and any method that cannot be tiled) is
scored in blocks of :data:`CROPS_BLOCK` x :data:`CROPS_BLOCK` cells: each cell is its own window
whatever block it is in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from heatmap_cli.grid.tiling import Tile, choose_tile, minimum_tile, plan_tiles, receptive_field
from heatmap_cli.grid.tiling.field import lattice_period
from heatmap_cli.io.slides import Slide
from heatmap_cli.pipeline.engine import GridEngine
from heatmap_cli.pipeline.limits import release_free_memory
from heatmap_cli.pipeline.profiling import timed
from heatmap_cli.pipeline.slide_settings import (
    DEFAULT_SLIDE_TILE,
    DEFAULT_SLIDES,
    SLIDE_MEMORY_BUDGET,
    SlideSettings,
    parse_context,
)
from heatmap_cli.pipeline.slides.geometry import SlideGeometry, plan_slide
from heatmap_cli.pipeline.slides.regions import read_model_region
from heatmap_cli.pipeline.slides.store import GridStore
from heatmap_cli.pipeline.slides.tissue import (
    cell_tissue,
    mask_from_file,
    tissue_mask,
)

__all__ = [
    "CROPS_BLOCK",
    "DEFAULT_SLIDES",
    "DEFAULT_SLIDE_TILE",
    "SLIDE_MEMORY_BUDGET",
    "Progress",
    "SlideScores",
    "SlideSettings",
    "full_context",
    "parse_context",
    "plan_slide_tiles",
    "score_slide",
    "shrink_to_tissue",
    "tile_margins",
]

CROPS_BLOCK = 8
"""Cells per side of a block of ``crops``."""

Progress = Callable[[int, int], None]
"""Called as ``progress(tiles done, tiles in all)`` after each tile (resumed tiles count)."""




@dataclass
class SlideScores:
    """What scoring a slide gives.

    Attributes:
        geometry: Level, scale, grid.
        logits: float32 ``(K, rows, cols)``; meaningful where ``tissue`` (a read-only memory map
            when the store is on disk).
        tissue: bool ``(rows, cols)``: the cells scored.
        thumbnail: uint8 ``(h, w, 3)``: the whole slide, small.
        thumbnail_downsample: Level-0 pixels per thumbnail pixel.
        mask: bool ``(h, w)``: the tissue mask on the thumbnail (all True with tissue off).
        full_context: bool ``(rows, cols)``: the tissue cells scored with their whole receptive
            field, so equal to one pass over the slide (all of them with the exact context,
            and with crops, whose cells are their own windows).
        tiles: Tiles that hold tissue (scored now or before).
        resumed: Of those, the tiles an earlier run had scored.
        tile_side: The tile side used (None: blocks of crops).
        store: Where the logits are; discard it once the outputs are written.
    """

    geometry: SlideGeometry
    logits: np.ndarray
    tissue: np.ndarray
    thumbnail: np.ndarray
    thumbnail_downsample: float
    mask: np.ndarray
    full_context: np.ndarray
    tiles: int
    resumed: int
    tile_side: int | None
    store: GridStore = field(repr=False)


def plan_slide_tiles(
    engine: GridEngine,
    geometry: SlideGeometry,
    tile: int | None = None,
    context: int | None = None,
) -> tuple[tuple[Tile, ...], int | None]:
    """The tiles of a slide's grid, and the tile side (None for blocks of crops).

    Args:
        engine: The converted model (its network, method and memory budget).
        geometry: The slide's grid.
        tile: Wanted tile side in model pixels (None: the default, within the budget).
        context: Model pixels of neighbours each tile carries around the windows it keeps;
            None: each cell's whole receptive field (the grid of one pass over the slide).

    Returns:
        Tiles whose kept cells fill the grid exactly once, row-major.
    """
    if not engine.grid_method.tileable:
        return _blocks(geometry, CROPS_BLOCK, 0, 1), None
    side = tile or DEFAULT_SLIDE_TILE
    if tile is None:  # the budget may want smaller tiles
        budget = engine.settings.memory_budget or SLIDE_MEMORY_BUDGET
        side = choose_tile(engine.network, (side, side), budget, figures=engine.figures) or side
    if context is not None:
        lattice = lattice_period(engine.network, geometry.stride)
        margin = -(-max(0, context) // (geometry.stride * lattice)) * lattice
        block = (side - min(geometry.window)) // geometry.stride + 1 - 2 * margin
        block = max(lattice, block // lattice * lattice)
        return _blocks(geometry, block, margin, lattice), side
    side = max(side, minimum_tile(engine.network))
    plan = plan_tiles(engine.network, geometry.covered, side)
    return plan.tiles, side


def tile_margins(
    engine: GridEngine, geometry: SlideGeometry, context: int | None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Cells of context a kept cell needs on each side: ``((above, below), (left, right))``.

    The receptive field's reach for exact tiles (``context`` None), ``context`` pixels in
    whole cells otherwise, none for crops.
    """
    if not engine.grid_method.tileable:
        return (0, 0), (0, 0)
    if context is None:
        return receptive_field(engine.network, geometry.covered).cells_dropped(geometry.window)
    cells = -(-max(0, context) // geometry.stride)
    return (cells, cells), (cells, cells)


def full_context(
    engine: GridEngine, geometry: SlideGeometry, tiles: Sequence[Tile], tissue: np.ndarray
) -> np.ndarray:
    """The tissue cells whose tile held their whole receptive field: bool ``(rows, cols)``.

    A kept cell equals the cell of one pass over the slide when its tile reaches the cell's
    field on every side, or stops where one pass stops too (the grid's first and last cells).
    A tile read with a limited context cuts the field of the cells near its edges: they see
    zeros where one pass sees neighbours.

    Args:
        engine: The converted model.
        geometry: The slide's grid.
        tiles: The tiles scored (their kept cells fill the tissue cells).
        tissue: bool ``(rows, cols)``: the cells scored.
    """
    if not engine.grid_method.tileable:  # crops: every cell is its own window
        return tissue.copy()
    margins = tile_margins(engine, geometry, None)
    out = np.zeros(geometry.shape, dtype=bool)
    for t in tiles:
        rows = _within_field(t.top, t.height, t.out_rows, margins[0], geometry, 0)
        cols = _within_field(t.left, t.width, t.out_cols, margins[1], geometry, 1)
        out[t.out_rows, t.out_cols] = rows[:, None] & cols[None, :]
    return out & tissue


def _within_field(
    start: int,
    length: int,
    kept: slice,
    margin: tuple[int, int],
    geometry: SlideGeometry,
    axis: int,
) -> np.ndarray:
    """One axis of :func:`full_context` for one tile: bool ``(kept cells,)``."""
    stride, count = geometry.stride, geometry.shape[axis]
    first = start // stride  # first cell the tile reads
    stop = first + (length - geometry.window[axis]) // stride + 1
    cells = np.arange(kept.start, kept.stop)
    return ((cells - margin[0] >= first) | (first == 0)) & (
        (cells + margin[1] < stop) | (stop == count)
    )


def shrink_to_tissue(
    tile: Tile,
    tissue: np.ndarray,
    geometry: SlideGeometry,
    margins: tuple[tuple[int, int], tuple[int, int]],
) -> Tile:
    """``tile`` cut down to the rows and columns of its kept cells that hold tissue.

    The tile is then read with ``margins`` cells of context around the cells it keeps (clipped
    at the slide's edges, where one pass sees zero padding too), so in exact tiling each kept
    cell still has its whole receptive field. A tile without tissue is returned as it is (it
    is skipped). Only for networks whose tiles may start on any cell (lattice 1).
    """
    kept = tissue[tile.out_rows, tile.out_cols]
    if not kept.any():
        return tile
    rows, cols = geometry.shape
    row_span = _shrunk_axis(kept.any(axis=1), tile.out_rows, margins[0], rows, geometry, 0)
    col_span = _shrunk_axis(kept.any(axis=0), tile.out_cols, margins[1], cols, geometry, 1)
    (top, height, rows_kept, out_rows), (left, width, cols_kept, out_cols) = row_span, col_span
    return Tile(top, left, height, width, rows_kept, cols_kept, out_rows, out_cols)


def _shrunk_axis(
    any_tissue: np.ndarray,
    out: slice,
    margin: tuple[int, int],
    count: int,
    geometry: SlideGeometry,
    axis: int,
) -> tuple[int, int, slice, slice]:
    """One axis of :func:`shrink_to_tissue`: ``(start, length, kept in tile, kept in grid)``."""
    stride, window = geometry.stride, geometry.window[axis]
    hits = np.flatnonzero(any_tissue)
    kept_start, kept_stop = out.start + int(hits[0]), out.start + int(hits[-1]) + 1
    read_start, read_stop = max(0, kept_start - margin[0]), min(count, kept_stop + margin[1])
    return (
        read_start * stride,
        window + stride * (read_stop - read_start - 1),
        slice(kept_start - read_start, kept_stop - read_start),
        slice(kept_start, kept_stop),
    )


def _blocks(geometry: SlideGeometry, block: int, margin: int, lattice: int) -> tuple[Tile, ...]:
    """Blocks of ``block`` x ``block`` kept cells, each read with ``margin`` cells around it.

    ``lattice`` divides ``block`` and ``margin``: every tile starts on the network's lattice.
    """
    rows, cols = geometry.shape
    stride, window = geometry.stride, geometry.window

    def spans(count: int) -> list[tuple[int, int, int]]:  # (first cell read, first kept, kept)
        return [
            (max(0, start - margin), start, min(block, count - start))
            for start in range(0, count, block)
        ]

    tiles = []
    for row_read, row_kept, row_count in spans(rows):
        row_end = min(rows, row_kept + row_count + margin)
        for col_read, col_kept, col_count in spans(cols):
            col_end = min(cols, col_kept + col_count + margin)
            tiles.append(
                Tile(
                    row_read * stride,
                    col_read * stride,
                    window[0] + stride * (row_end - row_read - 1),
                    window[1] + stride * (col_end - col_read - 1),
                    slice(row_kept - row_read, row_kept - row_read + row_count),
                    slice(col_kept - col_read, col_kept - col_read + col_count),
                    slice(row_kept, row_kept + row_count),
                    slice(col_kept, col_kept + col_count),
                )
            )
    return tuple(tiles)


def _tissue(
    slide: Slide, geometry: SlideGeometry, settings: SlideSettings
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Thumbnail, its downsample, the mask on it and the tissue cells."""
    with timed("decode"):
        thumbnail, downsample = slide.thumbnail(settings.thumbnail_side)
    if settings.tissue == "off":
        mask = np.ones(thumbnail.shape[:2], dtype=bool)
        return thumbnail, downsample, mask, np.ones(geometry.shape, dtype=bool)
    if settings.tissue == "auto":
        mask = tissue_mask(thumbnail)
    else:
        mask = mask_from_file(Path(settings.tissue), thumbnail.shape[:2])
    cells = cell_tissue(mask, downsample, geometry, settings.min_tissue)
    return thumbnail, downsample, mask, cells


def store_key(
    engine: GridEngine, geometry: SlideGeometry, tile_side: int | None, settings: SlideSettings
) -> dict[str, object]:
    """What a slide's stored tiles depend on: a store made under another key is not resumed."""
    return {
        "model": engine.loaded.name,
        "weights": engine.loaded.source,
        "classes": engine.loaded.num_classes,
        "method": engine.method,
        "stride": engine.stride,
        "precision": engine.precision,
        "level": geometry.level,
        "scale": geometry.scale,
        "size": list(geometry.size),
        "tile": tile_side,
        "context": settings.context,
        "tissue": settings.tissue,
        "min_tissue": settings.min_tissue,
    }


def score_slide(
    slide: Slide,
    engine: GridEngine,
    settings: SlideSettings = DEFAULT_SLIDES,
    *,
    store_folder: Path | None = None,
    key: Mapping[str, object] | None = None,
    progress: Progress | None = None,
) -> SlideScores:
    """Scores the tissue of a slide, tile by tile, resuming from ``store_folder`` if given.

    Args:
        slide: The opened slide.
        engine: The converted model.
        settings: Scale, tissue and tiling choices.
        store_folder: Where scored tiles are kept across runs (None: in memory only).
        key: More of what the numbers depend on (the caller's settings), for resuming.
        progress: Called after each tile.

    Returns:
        The scores; the caller discards ``scores.store`` once it has written them.

    Raises:
        SlideReadError: The slide's mpp is needed and unknown, or a tile cannot be decoded.
        GeometryError: The slide is smaller than one window at the model's scale.
    """
    geometry = plan_slide(
        slide,
        engine.window,
        engine.stride,
        model_mpp=settings.model_mpp,
        slide_mpp=settings.slide_mpp,
    )
    thumbnail, downsample, mask, tissue = _tissue(slide, geometry, settings)
    tiles, side = plan_slide_tiles(engine, geometry, settings.tile, settings.context)
    if not engine.grid_method.tileable or lattice_period(engine.network, engine.stride) == 1:
        margins = tile_margins(engine, geometry, settings.context)
        tiles = tuple(shrink_to_tissue(t, tissue, geometry, margins) for t in tiles)
    needed = [i for i, t in enumerate(tiles) if tissue[t.out_rows, t.out_cols].any()]
    shape = (engine.loaded.num_classes, *geometry.shape)
    full_key = {**store_key(engine, geometry, side, settings), **dict(key or {})}
    store = GridStore(shape, store_folder, full_key)
    resumed = len(store.done.intersection(needed))
    try:
        _run_tiles(slide, engine, geometry, tiles, needed, store, settings, progress)
    finally:
        store.checkpoint()
    return SlideScores(
        geometry=geometry,
        logits=store.logits(),
        tissue=tissue,
        thumbnail=thumbnail,
        thumbnail_downsample=downsample,
        mask=mask,
        full_context=full_context(engine, geometry, [tiles[i] for i in needed], tissue),
        tiles=len(needed),
        resumed=resumed,
        tile_side=side,
        store=store,
    )


def _run_tiles(
    slide: Slide,
    engine: GridEngine,
    geometry: SlideGeometry,
    tiles: Sequence[Tile],
    needed: Sequence[int],
    store: GridStore,
    settings: SlideSettings,
    progress: Progress | None,
) -> None:
    """Scores every needed tile not already in the store, reading ahead in a thread."""
    todo = [i for i in needed if i not in store.done]
    done = len(needed) - len(todo)
    if progress is not None:
        progress(done, len(needed))
    stack = 1 if engine.grid_method.tileable else max(1, engine.settings.batch_size)
    interpolation = engine.loaded.interpolation

    def read(index: int) -> np.ndarray:
        t = tiles[index]
        with timed("decode"):
            return read_model_region(
                slide, geometry, (t.top, t.left, t.height, t.width), interpolation
            )

    for batch in _batches(todo, tiles, stack, read, settings.read_ahead):
        pixels = np.stack([p for _, p in batch]) if len(batch) > 1 else batch[0][1][None]
        with timed("network"):
            # unrefined: a refinement per tile would depend on where the tiles fall
            grids = engine.score_batch(pixels, refine=False).grid
        for (index, _), grid in zip(batch, grids.numpy(), strict=True):
            t = tiles[index]
            store.write(t.out_rows, t.out_cols, grid[:, t.rows, t.cols])
            store.mark_done(index)
        done += len(batch)
        release_free_memory()  # this tile's activations, before the next one allocates
        if progress is not None:
            progress(done, len(needed))


def _batches(
    todo: Sequence[int],
    tiles: Sequence[Tile],
    stack: int,
    read: Callable[[int], np.ndarray],
    read_ahead: int,
) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Tiles read ahead in a thread, grouped by equal size up to ``stack`` per group."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="heatmap-slide-reader")
    pending: deque[tuple[int, Future[np.ndarray]]] = deque()
    queue = iter(todo)
    try:
        group: list[tuple[int, np.ndarray]] = []
        while True:
            while len(pending) < max(1, read_ahead) + stack - 1:
                index = next(queue, None)
                if index is None:
                    break
                pending.append((index, pool.submit(read, index)))
            if not pending:
                break
            index, future = pending.popleft()
            pixels = future.result()
            if group and (len(group) >= stack or group[0][1].shape != pixels.shape):
                yield group
                group = []
            group.append((index, pixels))
        if group:
            yield group
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
