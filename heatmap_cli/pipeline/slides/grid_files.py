"""A slide's grid file: a ``.npz``, or a chunked ``.zarr`` store when the grid is too large.

Both hold the same arrays under the same names: ``logits``, ``probs`` ``(K, rows, cols)`` (NaN
off the tissue, in the chosen dtype), ``tissue`` and ``full_context`` bool ``(rows, cols)``,
``centers`` float32 ``(rows, cols, 2)`` (level-0 window centres). The npz holds the grid's
scalars (``window``, ``stride``, ``classes``, ``level``, ...) as small arrays; the zarr store
holds them as attributes of its group (NaN mpp as null). The npz is built whole in memory; the
zarr store is written a band of rows at a time (:mod:`heatmap_cli.pipeline.slides.bands`), each
band a whole row of chunks, so its writing holds one band whatever the grid's size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from heatmap_cli.io import write_npz
from heatmap_cli.io.zarr_grid import ZARR_CHUNK, ZarrGridWriter
from heatmap_cli.pipeline.slides.bands import GridBand
from heatmap_cli.pipeline.slides.geometry import SlideGeometry
from heatmap_cli.pipeline.slides.scoring import SlideScores

__all__ = ["Bands", "grid_attributes", "write_grid_npz", "write_grid_zarr"]

Bands = Callable[[int], Iterator[GridBand]]
"""The grid's bands, each a multiple of the given number of rows (top to bottom)."""


def grid_attributes(
    geometry: SlideGeometry, categories: Sequence[str], classes: list[int] | None
) -> dict[str, object]:
    """The grid's scalars and small arrays, as JSON values (what the npz holds beside the maps).

    Returns:
        ``class_indices`` (only when ``classes`` keeps some), ``classes``, ``window`` (width,
        height, level-0 pixels), ``window_input`` (model pixels), ``stride``, ``input_size``,
        ``level``, ``downsample``, ``slide_mpp`` and ``model_mpp`` (None when unknown).
    """
    width, height = geometry.window_level0()
    extra = {} if classes is None else {"class_indices": [int(i) for i in classes]}
    return {
        **extra,
        "classes": [str(name) for name in categories],
        "window": [float(np.float32(width)), float(np.float32(height))],
        "window_input": [int(v) for v in geometry.window[::-1]],
        "stride": int(geometry.stride),
        "input_size": [int(v) for v in geometry.size],
        "level": int(geometry.level),
        "downsample": float(geometry.downsample),
        "slide_mpp": None if geometry.slide_mpp is None else float(geometry.slide_mpp),
        "model_mpp": None if geometry.model_mpp is None else float(geometry.model_mpp),
    }


def write_grid_npz(
    path: Path,
    scores: SlideScores,
    bands: Bands,
    attributes: dict[str, object],
    classes: list[int] | None,
    dtype: str,
) -> None:
    """Writes the grid as one ``.npz`` (the maps gathered whole, in ``dtype``)."""
    count = len(classes) if classes is not None else scores.store.shape[0]
    keep: slice | list[int] = slice(None) if classes is None else classes
    rows, cols = scores.tissue.shape
    logits = np.empty((count, rows, cols), dtype=dtype)
    probs = np.empty((count, rows, cols), dtype=dtype)
    for band in bands(1):
        stop = band.start + band.tissue.shape[0]
        logits[:, band.start : stop] = band.logits[keep]
        probs[:, band.start : stop] = band.probs[keep]
    scalars = {
        name: np.asarray(value, dtype=_NPZ_TYPES.get(name))
        for name, value in attributes.items()
        if name != "classes"
    }
    for name in ("slide_mpp", "model_mpp"):
        scalars[name] = np.float64(np.nan if attributes[name] is None else attributes[name])
    write_npz(
        path,
        logits=logits,
        probs=probs,
        tissue=scores.tissue,
        full_context=scores.full_context,
        centers=scores.geometry.centers(),
        classes=np.array(attributes["classes"], dtype=str),
        **scalars,
    )


_NPZ_TYPES: dict[str, type] = {
    "class_indices": np.int64,
    "window": np.float32,
    "window_input": np.int64,
    "stride": np.int64,
    "input_size": np.int64,
    "level": np.int64,
    "downsample": np.float64,
}


def write_grid_zarr(
    path: Path,
    scores: SlideScores,
    bands: Bands,
    attributes: dict[str, object],
    classes: list[int] | None,
    dtype: str,
) -> None:
    """Writes the grid as a zarr store, band by band (bands of whole rows of chunks).

    Raises:
        OutputWriteError: zarr is missing (the message says how to install it), or the store
            cannot be written.
    """
    count = len(classes) if classes is not None else scores.store.shape[0]
    keep: slice | list[int] = slice(None) if classes is None else classes
    rows, cols = scores.tissue.shape
    side = ZARR_CHUNK
    maps = ((count, rows, cols), dtype, (1, side, side), np.nan)
    writer = ZarrGridWriter(
        path,
        {
            "logits": maps,
            "probs": maps,
            "tissue": ((rows, cols), bool, (side, side), False),
            "full_context": ((rows, cols), bool, (side, side), False),
            "centers": ((rows, cols, 2), np.float32, (side, side, 2), 0.0),
        },
        {**attributes, "grid_format": "heatmap-cli slide grid, zarr format 2"},
    )
    for band in bands(side):
        stop = band.start + band.tissue.shape[0]
        here = slice(band.start, stop)
        writer.write("logits", (slice(None), here), band.logits[keep].astype(dtype, copy=False))
        writer.write("probs", (slice(None), here), band.probs[keep].astype(dtype, copy=False))
        writer.write("tissue", (here,), band.tissue)
        writer.write("full_context", (here,), scores.full_context[here])
        writer.write("centers", (here,), scores.geometry.centers(band.start, stop))
    writer.close()
